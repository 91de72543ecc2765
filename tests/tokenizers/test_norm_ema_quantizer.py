"""NormEMAQuantizer: k-means initialisation, the EMA update by hand, usage, dead-entry restarts."""

import pytest
import torch
import torch.nn.functional as F

from sslvit.tokenizers.norm_ema_quantizer import NormEMAQuantizer


def clustered(num_clusters: int, per_cluster: int, dim: int, spread: float, seed: int = 0):
    """Unit vectors around ``num_clusters`` orthogonal centres (well separated on the sphere)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:num_clusters]
    points = centres.repeat_interleave(per_cluster, 0) + spread * torch.randn(
        num_clusters * per_cluster, dim, generator=g
    )
    return centres, F.normalize(points, dim=1)[torch.randperm(num_clusters * per_cluster, generator=g)]


def test_kmeans_init_puts_one_code_on_each_cluster():
    centres, points = clustered(num_clusters=6, per_cluster=40, dim=8, spread=0.05)
    quantizer = NormEMAQuantizer(num_codes=6, code_dim=8, decay=0.99, kmeans_init=True).train()
    assert not quantizer.initialised
    quantizer(points)
    assert quantizer.initialised
    cos = quantizer.codebook @ centres.t()  # (codes, clusters)
    best = cos.argmax(dim=1)
    assert sorted(best.tolist()) == list(range(6))  # every cluster got exactly one code
    assert cos.max(dim=1).values.min() > 0.99  # ... sitting on the cluster's centre
    # and the cluster sizes were recorded (one EMA step after init: 0.99 * 40 + 0.01 * 40)
    assert torch.allclose(quantizer.cluster_size, torch.full((6,), 40.0), atol=1e-4)


def test_ema_update_matches_hand_computation():
    quantizer = NormEMAQuantizer(num_codes=2, code_dim=2, decay=0.5, eps=1e-12, kmeans_init=False).train()
    with torch.no_grad():
        quantizer.codebook.copy_(torch.eye(2))
        quantizer.embed_sum.copy_(torch.eye(2))
        quantizer.cluster_size.fill_(1.0)
    z = torch.tensor([[0.6, 0.8], [1.0, 0.0], [0.8, 0.6]])
    out = quantizer(z)
    assert out.ids.tolist() == [1, 0, 0]
    # codes are the entries before the update: e1, e0, e0
    assert torch.allclose(out.codes, torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]))
    # commitment: ((0.6^2 + 0.2^2) + 0 + (0.2^2 + 0.6^2)) / 6 elements
    assert out.commit_loss.item() == pytest.approx(0.8 / 6, abs=1e-6)
    # N <- 0.5 [1, 1] + 0.5 [2, 1];  m0 <- 0.5 (1, 0) + 0.5 (1.8, 0.6);  m1 <- 0.5 (0, 1) + 0.5 (0.6, 0.8)
    assert torch.allclose(quantizer.cluster_size, torch.tensor([1.5, 1.0]))
    assert torch.allclose(quantizer.embed_sum, torch.tensor([[1.4, 0.3], [0.3, 0.9]]))
    expected = torch.tensor([[1.4, 0.3], [0.3, 0.9]])
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert torch.allclose(quantizer.codebook, expected, atol=1e-6)
    # eval mode: same lookup, no update
    before = quantizer.codebook.clone()
    quantizer.eval()(z)
    assert torch.equal(quantizer.codebook, before)


def test_inputs_are_normalised_and_straight_through_passes_gradient():
    quantizer = NormEMAQuantizer(num_codes=4, code_dim=3, kmeans_init=False).eval()
    z = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, -2.0]], requires_grad=True)
    out = quantizer(z)
    assert torch.allclose(out.codes.norm(dim=-1), torch.ones(2))
    (out.codes * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    # d codes / d z is the Jacobian of l2-normalisation (the quantisation step is skipped): non-zero,
    # orthogonal to z
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert torch.allclose((z.grad * z.detach()).sum(dim=1), torch.zeros(2), atol=1e-6)


def test_usage_statistics():
    quantizer = NormEMAQuantizer(num_codes=4, code_dim=2, kmeans_init=False).train()
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    quantizer(torch.tensor([[1.0, 0.1], [0.9, 0.0], [0.1, 1.0]]))
    quantizer(torch.tensor([[1.0, -0.1]]))
    assert quantizer.usage_counts.tolist() == [3.0, 1.0, 0.0, 0.0]
    assert quantizer.usage()[0] == pytest.approx(0.5)
    quantizer.reset_usage()
    assert quantizer.usage() == (0.0, 0.0)


def test_dead_code_restart_revives_unused_codes():
    """Data near +x; one code there, seven on the far side of the sphere: without restarts every input
    keeps mapping to the one code; with restarts the seven are re-seeded on the data and get used."""
    _, points = clustered(num_clusters=4, per_cluster=16, dim=4, spread=0.05)
    far = F.normalize(-torch.ones(7, 4) + 0.1 * torch.randn(7, 4, generator=torch.Generator().manual_seed(1)))
    codebook = torch.cat([F.normalize(torch.ones(1, 4)), far])

    def run(dead_code_steps: int) -> NormEMAQuantizer:
        quantizer = NormEMAQuantizer(8, 4, kmeans_init=False, dead_code_steps=dead_code_steps).train()
        with torch.no_grad():
            quantizer.codebook.copy_(codebook)
            quantizer.embed_sum.copy_(codebook)
        torch.manual_seed(0)
        for _ in range(6):
            quantizer(points)
        quantizer.reset_usage()
        quantizer(points)
        return quantizer

    without = run(dead_code_steps=0)
    assert without.usage()[0] == pytest.approx(1 / 8)
    assert without.num_restarted == 0

    with_restart = run(dead_code_steps=2)
    assert with_restart.num_restarted >= 7
    assert with_restart.usage()[0] >= 4 / 8  # at least one code per cluster
    # the seven far entries were moved onto the data (without restarts they stay where they were)
    assert (with_restart.codebook[1:] @ points.t()).max(dim=1).values.min() > 0.99
    assert torch.allclose(without.codebook[1:], codebook[1:])


def test_bad_arguments():
    with pytest.raises(ValueError, match="decay"):
        NormEMAQuantizer(8, 4, decay=1.0)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        NormEMAQuantizer(8, 4)(torch.zeros(2, 3))
