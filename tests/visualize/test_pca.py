"""DINOv2-style PCA maps separate a toy foreground from its background, whatever the PCA sign."""

import pytest
import torch

from sslvit.visualize import pca_figure, pca_maps, principal_components


def _toy(fg: torch.Tensor, bg: torch.Tensor, sub: torch.Tensor, seed: int = 0):
    """Two 6x6 feature maps: background ``bg`` everywhere, a 2x3 foreground block at a different place
    in each image whose left and right columns differ along ``sub``; small noise."""
    g = torch.Generator().manual_seed(seed)
    b, h, w, d = 2, 6, 6, fg.numel()
    feats = bg.expand(b, h, w, d).clone()
    truth = torch.zeros(b, h, w, dtype=torch.bool)
    for i, (r, c) in enumerate([(2, 1), (1, 2)]):
        truth[i, r : r + 2, c : c + 3] = True
        feats[i, r : r + 2, c : c + 3] = fg
        feats[i, r : r + 2, c] += sub
        feats[i, r : r + 2, c + 2] -= sub
    feats += 0.01 * torch.randn(b, h, w, d, generator=g)
    return feats.view(b, h * w, d), truth


@pytest.mark.parametrize("swap", [False, True])
def test_foreground_mask_separates_two_clusters(swap):
    d = 8
    a, b, sub = torch.zeros(d), torch.zeros(d), torch.zeros(d)
    a[0], b[0], sub[1] = 3.0, -3.0, 0.5
    fg, bg = (b, a) if swap else (a, b)  # swapping flips the raw PCA sign; the border rule must undo it
    feats, truth = _toy(fg, bg, sub)
    maps = pca_maps(feats, (6, 6))
    assert torch.equal(maps.foreground, truth)
    assert maps.rgb.shape == (2, 3, 6, 6)
    assert float(maps.rgb.permute(0, 2, 3, 1)[~truth].abs().max()) == 0.0  # background is black
    # The second PCA on the foreground: left and right columns of each block at opposite ends of red.
    red = maps.rgb[:, 0]
    left, right = red[0, 2:4, 1], red[0, 2:4, 3]
    assert float((left - right).abs().min()) > 0.9


def test_principal_components_sign_is_reproducible_and_scores_are_centred():
    x = torch.randn(50, 5, generator=torch.Generator().manual_seed(1))
    s1, s2 = principal_components(x, 3), principal_components(-x, 3)
    torch.testing.assert_close(s1.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        s1, -s2, atol=1e-4, rtol=0
    )  # -x has the same axes; the convention flips scores
    assert bool((s1.var(0)[:-1] >= s1.var(0)[1:]).all())  # ordered by variance


def test_pca_figure_and_bad_grid():
    feats, _ = _toy(torch.ones(4), -torch.ones(4), torch.zeros(4))
    maps = pca_maps(feats, (6, 6))
    picture = pca_figure(torch.rand(2, 3, 24, 24), maps)
    assert picture.shape == (3, 2 * 26 + 2, 3 * 26 + 2)
    with pytest.raises(ValueError, match="grid 5x6 does not match 36"):
        pca_maps(feats, (5, 6))
