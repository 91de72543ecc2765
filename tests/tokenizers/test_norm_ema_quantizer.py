"""NormEMAQuantizer: k-means initialisation, both codebook updates (BEiT v2's official numbers and by
hand), usage, dead-entry restarts."""

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


# BEiT v2's official quantizer on two batches: microsoft/unilm at
# 768a3c873f598bb9b4d4dfb9267b099e35f8fe56, beit2/norm_ema_quantizer.py, NormEMAVectorQuantizer(5, 4,
# beta=1.0, decay=0.99, kmeans_init=False) in training mode, its embedding weight set to CODEBOOK, called
# on BATCH_1 then BATCH_2 (as (1, 4, 1, n) inputs). Entries used per batch: [3, 1, 0, 2, 0], then
# [1, 0, 2, 0, 1]: every entry is used 0, 1 and >= 2 times in some step; entry 4 is used in step 2 only.
CODEBOOK = F.normalize(torch.cat([torch.eye(4), -torch.ones(1, 4)]), dim=1)
BATCH_1 = torch.tensor(
    [
        [2.0, 0.3, -0.2, 0.1],
        [0.5, 0.1, 0.2, 0.0],
        [3.0, -0.6, 0.0, 0.4],
        [0.2, 1.5, 0.1, -0.3],
        [0.1, -0.2, 0.3, 0.9],
        [0.0, 0.4, -0.1, 2.0],
    ]
)
BATCH_2 = torch.tensor(
    [[1.0, 0.2, 0.3, -0.1], [0.1, 0.2, 1.2, 0.3], [-0.3, 0.1, 0.8, 0.0], [-0.5, -0.7, -0.4, -0.6]]
)
OFFICIAL_IDS = ([0, 0, 0, 1, 3, 3], [0, 2, 2, 4])
OFFICIAL_COMMIT_LOSSES = (0.02156858891248703, 0.024814708158373833)
OFFICIAL_CODEBOOK = torch.tensor(
    [
        [9.99990225e-01, 2.33914843e-03, 3.72653082e-03, -3.24124703e-04],
        [1.29407330e-03, 9.99997079e-01, 6.47036650e-04, -1.94111012e-03],
        [-1.38913409e-03, 1.42098416e-03, 9.99997318e-01, 1.23163639e-03],
        [5.33566810e-04, -4.84424163e-05, 1.34602748e-03, 9.99998987e-01],
        [-4.99553472e-01, -5.01335561e-01, -4.98662442e-01, -5.00444531e-01],
    ]
)


def test_batch_mean_update_equals_the_official_quantizer():
    quantizer = NormEMAQuantizer(num_codes=5, code_dim=4, decay=0.99, kmeans_init=False).train()
    assert quantizer.codebook_update == "batch_mean"  # the default
    with torch.no_grad():
        quantizer.codebook.copy_(CODEBOOK)
    for batch, ids, commit in zip((BATCH_1, BATCH_2), OFFICIAL_IDS, OFFICIAL_COMMIT_LOSSES, strict=True):
        out = quantizer(batch)
        assert out.ids.tolist() == ids
        assert out.commit_loss.item() == pytest.approx(commit, rel=1e-5)
    assert torch.allclose(quantizer.codebook, OFFICIAL_CODEBOOK, atol=1e-6)


def test_batch_mean_update_by_hand():
    """e_k <- l2norm(d e_k + (1 - d) l2norm(mean of the inputs assigned to k)); unused entries stay."""
    quantizer = NormEMAQuantizer(num_codes=3, code_dim=2, decay=0.5, kmeans_init=False).train()
    with torch.no_grad():
        quantizer.codebook.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    # entry 0 gets (0.8, 0.6) and (1, 0), mean (0.9, 0.3); entry 1 gets (0.6, 0.8); entry 2 nothing
    quantizer(torch.tensor([[0.8, 0.6], [1.0, 0.0], [0.6, 0.8]]))
    mean_0 = F.normalize(torch.tensor([0.9, 0.3]), dim=0)
    expected_0 = F.normalize(0.5 * torch.tensor([1.0, 0.0]) + 0.5 * mean_0, dim=0)
    expected_1 = F.normalize(0.5 * torch.tensor([0.0, 1.0]) + 0.5 * torch.tensor([0.6, 0.8]), dim=0)
    assert torch.allclose(quantizer.codebook[0], expected_0, atol=1e-6)
    assert torch.allclose(quantizer.codebook[1], expected_1, atol=1e-6)
    assert torch.allclose(quantizer.codebook[2], torch.tensor([-1.0, 0.0]), atol=1e-6)


def test_running_mean_update_matches_hand_computation():
    quantizer = NormEMAQuantizer(
        num_codes=2, code_dim=2, decay=0.5, eps=1e-12, kmeans_init=False, codebook_update="running_mean"
    ).train()
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
    with pytest.raises(ValueError, match="codebook_update"):
        NormEMAQuantizer(8, 4, codebook_update="vqvae")
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        NormEMAQuantizer(8, 4)(torch.zeros(2, 3))
