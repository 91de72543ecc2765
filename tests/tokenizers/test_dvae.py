"""The discrete VAE tokenizer: shapes, gradients through the relaxation, KL / code statistics, schedules."""

import itertools
import math

import pytest
import torch

from sslvit.methods.dvae import gumbel_temperature, kl_weight_at
from sslvit.tokenizers import DVAE, VisualTokenizer, kl_to_uniform


def tiny_dvae(**overrides) -> DVAE:
    return DVAE(**{"vocab_size": 16, "downsample": 4, "hidden_dim": 8, "blocks_per_group": 1, **overrides})


def test_shapes_and_ranges():
    torch.manual_seed(0)
    dvae = tiny_dvae()
    assert isinstance(dvae, VisualTokenizer)
    images = torch.rand(2, 3, 16, 24)
    ids = dvae.encode(images)
    assert ids.shape == (2, 4, 6) and ids.dtype == torch.int64
    assert ids.min() >= 0 and ids.max() < 16
    assert dvae.grid_size(16, 24) == (4, 6)
    out = dvae(images, temperature=0.5)
    assert out.logits.shape == out.codes.shape == (2, 16, 4, 6)
    assert torch.allclose(out.codes.sum(dim=1), torch.ones(2, 4, 6), atol=1e-5)  # a distribution per token
    assert out.reconstruction.shape == images.shape
    assert out.reconstruction.min() >= 0 and out.reconstruction.max() <= 1
    assert dvae.decode(ids).shape == images.shape
    # 8x downsampling is four encoder groups: three 2x poolings
    assert DVAE(vocab_size=16, downsample=8, hidden_dim=4).encode(torch.rand(1, 3, 16, 16)).shape == (1, 2, 2)


def test_bad_sizes_fail_clearly():
    with pytest.raises(ValueError, match="power of two"):
        tiny_dvae(downsample=6)
    with pytest.raises(ValueError, match="not a multiple"):
        tiny_dvae().encode(torch.rand(1, 3, 18, 16))


@pytest.mark.parametrize("hard", [False, True])
def test_reconstruction_gradient_reaches_the_encoder(hard):
    torch.manual_seed(0)
    dvae = tiny_dvae()
    images = torch.rand(2, 3, 16, 16)
    out = dvae(images, temperature=1.0, hard=hard)
    if hard:  # forward pass sees exact one-hots, backward the soft sample's gradient
        assert set(out.codes.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(out.codes.sum(dim=1), torch.ones(2, 4, 4))
    torch.nn.functional.mse_loss(out.reconstruction, images).backward()
    encoder_grads = [p.grad for p in dvae.encoder.parameters()]
    assert all(g is not None for g in encoder_grads)
    assert sum(float(g.abs().sum()) for g in encoder_grads) > 0
    assert dvae.encoder.blocks.input.w.grad.abs().sum() > 0  # the very first layer


def test_kl_to_uniform_hand_values():
    k = 4
    assert float(kl_to_uniform(torch.zeros(3, k, 2, 2))) == pytest.approx(0.0, abs=1e-6)
    # q = (1/2, 1/2, 0, 0) at every position: KL = log 4 - log 2 = log 2
    logits = torch.tensor([0.0, 0.0, -1e4, -1e4]).view(1, k, 1, 1).expand(2, k, 3, 3)
    assert float(kl_to_uniform(logits)) == pytest.approx(math.log(2), abs=1e-5)


def test_temperature_and_kl_schedules_hit_their_end_points():
    steps = 11
    assert gumbel_temperature(0, steps, 1.0, 1 / 16) == pytest.approx(1.0)
    assert gumbel_temperature(5, steps, 1.0, 1 / 16) == pytest.approx((1 + 1 / 16) / 2)  # cosine midpoint
    assert gumbel_temperature(steps - 1, steps, 1.0, 1 / 16) == pytest.approx(1 / 16)
    assert gumbel_temperature(10 * steps, steps, 1.0, 1 / 16) == pytest.approx(1 / 16)
    values = [gumbel_temperature(s, steps, 1.0, 1 / 16) for s in range(steps)]
    assert all(a > b for a, b in itertools.pairwise(values))  # strictly annealed
    assert kl_weight_at(0, steps, 0.5) == 0.0
    assert kl_weight_at(steps - 1, steps, 0.5) == pytest.approx(0.5)
    assert kl_weight_at(10 * steps, steps, 0.5) == pytest.approx(0.5)
    assert kl_weight_at(0, 0, 0.5) == pytest.approx(0.5)  # no warm-up: the full weight from step 0
