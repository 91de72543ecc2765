"""Vector quantiser with an l2-normalised codebook kept by exponential moving averages (BEiT v2's VQ-KD)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslvit.utils.codebook_stats import usage_and_perplexity
from sslvit.utils.distributed import all_gather_cat, all_reduce_sum, world_size
from sslvit.utils.id_counts import id_counts

CODEBOOK_UPDATES = ("batch_mean", "running_mean")


class Quantized(NamedTuple):
    """Output of :class:`NormEMAQuantizer`.

    Attributes:
        codes: ``(..., d)`` selected codebook entries; in training their gradient flows to the input
            (straight-through estimator).
        ids: ``(...)`` int64 index of the nearest entry.
        commit_loss: scalar ``mean ||sg[codes] - z||^2`` over the l2-normalised inputs z.
    """

    codes: Tensor
    ids: Tensor
    commit_loss: Tensor


def kmeans_plus_plus(pool: Tensor, num_clusters: int, seed: int) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007) on unit rows: each new centre is drawn with
    probability proportional to its squared distance ``2 (1 - cos)`` to the nearest centre so far, so
    well-separated clusters each get a centre (uniform draws leave a cluster out with high odds).

    The draws use a generator on the pool's device seeded with ``seed``: the same pool and seed give
    the same centres on every process. K sequential draws without host synchronisation (measured on one
    CPU thread: ~1.4 ms per draw from 2048 points). Once every point is a centre, further draws are
    uniform.
    """
    generator = torch.Generator(device=pool.device).manual_seed(seed)
    pool = pool.detach().float()
    picks = [torch.randint(pool.shape[0], (1,), generator=generator, device=pool.device)]
    nearest = (1.0 - pool @ pool[picks[0]].t()).squeeze(1).clamp(min=0.0)  # (n,) to the closest centre
    for _ in range(num_clusters - 1):
        # The tiny floor keeps the weights valid when every point already is a centre (uniform then).
        pick = torch.multinomial(nearest + 1e-12, 1, generator=generator)
        picks.append(pick)
        nearest = torch.minimum(nearest, (1.0 - pool @ pool[pick].t()).squeeze(1).clamp(min=0.0))
    return pool[torch.cat(picks)]


def spherical_kmeans(samples: Tensor, num_clusters: int, iters: int, seed: int) -> tuple[Tensor, Tensor]:
    """Spherical k-means (cosine assignment, l2-normalised means) of the samples of *every* process.

    The samples of all processes are gathered once for the k-means++ seeding (identical on every rank);
    each Lloyd step then assigns the local rows and all-reduces the per-cluster sums and counts, so the
    result is the k-means of the global batch and every process holds the same centres.

    Args:
        samples: ``(n, d)`` l2-normalised rows of this process (same ``n`` on every process).
        num_clusters: K.
        iters: Lloyd iterations.
        seed: seed of the k-means++ draws (the same on every process).

    Returns:
        ``centres (K, d)`` l2-normalised and ``counts (K,)`` float, the global cluster sizes of the last
        assignment. A cluster that loses all its members keeps its previous centre.
    """
    pool = all_gather_cat(samples)  # (world * n, d): a few MB even for 8192 codes on 64 GPUs
    centres = kmeans_plus_plus(pool, num_clusters, seed).to(samples.dtype)
    counts = torch.zeros(num_clusters, device=samples.device, dtype=samples.dtype)
    for _ in range(iters):
        assign = (samples @ centres.t()).argmax(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, samples)
        counts = id_counts(assign, num_clusters).to(samples.dtype)
        all_reduce_sum(sums)
        all_reduce_sum(counts)
        centres = torch.where(counts[:, None] > 0, F.normalize(sums, dim=1), centres)
    return centres, counts


class NormEMAQuantizer(nn.Module):
    """Nearest-neighbour quantiser on the unit sphere with an EMA codebook (Peng et al., 2022, BEiT v2,
    arXiv:2208.06366, section 2.2).

    Inputs and codebook entries are l2-normalised, so the nearest entry by Euclidean distance is the one
    with the largest cosine similarity. The codebook is not trained by gradients: each training call
    moves the entries towards the inputs assigned to them, by one of two rules (``codebook_update``):

    * ``"batch_mean"`` (default, BEiT v2's official quantizer): every entry used in this batch moves
      towards the direction of the mean of its assigned inputs, ``e_k <- l2norm(d e_k + (1 - d)
      l2norm(mean_k))``; unused entries stay where they are. Each step weighs an entry's batch mean the
      same whether one input or a thousand were assigned to it.
    * ``"running_mean"`` (van den Oord et al., 2017, arXiv:1711.00937): exponential moving averages of
      each entry's assignment count ``N_k`` and input sum ``m_k`` give ``e_k = l2norm(m_k / N~_k)``, with
      ``N~_k`` the Laplace-smoothed count (keeps the division finite for entries whose count has decayed
      to ~0; a positive per-row scale, so it never changes an entry's direction). An entry's position
      is the count-weighted average of its inputs over recent batches.

    Assignment counts and input sums are all-reduced before either rule, so the means are those of the
    global batch and every process holds the same codebook.

    The codebook starts from spherical k-means on the first training batch (all processes' vectors), and
    entries left unused for ``dead_code_steps`` consecutive updates can be re-seeded from the current
    batch's inputs (0 disables restarts).

    Args:
        num_codes: codebook size K (8192 in BEiT v2).
        code_dim: entry dimension d (32).
        decay: EMA decay d (0.99).
        eps: Laplace smoothing constant of ``"running_mean"``.
        kmeans_init: initialise with k-means on the first training batch (else random unit vectors).
        kmeans_iters: Lloyd iterations of that initialisation.
        dead_code_steps: re-seed entries unused for this many training updates (0 = never).
        seed: seed of the initial codebook and of the k-means++ draws (identical on every process).
        codebook_update: ``"batch_mean"`` or ``"running_mean"`` (see above).
    """

    codebook: Tensor  # (K, d) unit rows
    cluster_size: Tensor  # (K,) EMA of N_k ("running_mean")
    embed_sum: Tensor  # (K, d) EMA of m_k ("running_mean")
    initialised: Tensor  # () bool
    steps_unused: Tensor  # (K,) int64
    usage_counts: Tensor  # (K,) float

    def __init__(
        self,
        num_codes: int = 8192,
        code_dim: int = 32,
        decay: float = 0.99,
        eps: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_steps: int = 0,
        seed: int = 0,
        codebook_update: str = "batch_mean",
    ) -> None:
        super().__init__()
        if codebook_update not in CODEBOOK_UPDATES:
            raise ValueError(f"codebook_update must be one of {CODEBOOK_UPDATES}, got {codebook_update!r}")
        if num_codes < 1 or code_dim < 1 or not 0.0 <= decay < 1.0 or dead_code_steps < 0:
            raise ValueError(
                f"need num_codes, code_dim >= 1, 0 <= decay < 1, dead_code_steps >= 0; got {num_codes}, "
                f"{code_dim}, {decay}, {dead_code_steps}"
            )
        self.num_codes, self.code_dim = int(num_codes), int(code_dim)
        self.decay, self.eps = float(decay), float(eps)
        self.kmeans_iters, self.dead_code_steps = int(kmeans_iters), int(dead_code_steps)
        self.seed = int(seed)
        self.codebook_update = codebook_update
        codebook = F.normalize(
            torch.randn(num_codes, code_dim, generator=torch.Generator().manual_seed(seed)), dim=1
        )
        self.register_buffer("codebook", codebook)  # (K, d), unit rows
        # The running statistics of "running_mean", registered under either rule so that a tokenizer
        # file loads whichever rule is chosen.
        self.register_buffer("cluster_size", torch.ones(num_codes))  # EMA of N_k
        self.register_buffer("embed_sum", codebook.clone())  # EMA of m_k
        self.register_buffer("initialised", torch.tensor(not kmeans_init))
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.int64))
        # Usage since the last reset_usage() (global counts); not part of the checkpoint.
        self.register_buffer("usage_counts", torch.zeros(num_codes), persistent=False)
        self.num_restarted = 0  # entries re-seeded so far in this process's lifetime
        self._seen_initialised = False  # the buffer read True once: no device read per step after that

    def is_initialised(self) -> bool:
        """Whether the codebook has been initialised; reads the buffer (a GPU host sync) only until it
        first says so, not on every training step."""
        if not self._seen_initialised:
            self._seen_initialised = bool(self.initialised)
        return self._seen_initialised

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._seen_initialised = False  # a loaded ``initialised`` is read afresh
        super()._load_from_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------------------------ lookup
    def nearest(self, z: Tensor) -> Tensor:
        """``(n, d)`` l2-normalised rows -> ``(n,)`` index of the most cosine-similar entry."""
        return (z @ self.codebook.t()).argmax(dim=1)

    def forward(self, z: Tensor) -> Quantized:
        """Quantise ``z (..., d)``; in training mode also update the codebook (see the class docstring)."""
        if z.shape[-1] != self.code_dim:
            raise ValueError(f"expected inputs (..., {self.code_dim}), got shape {tuple(z.shape)}")
        # fp32 even under autocast: bf16 cosines of 8192 entries tie and flip the argmin.
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1)
            flat = z.reshape(-1, self.code_dim)  # (n, d)
            if self.training and not self.is_initialised():
                self.kmeans_init(flat.detach())
            ids = self.nearest(flat.detach())
            codes = self.codebook[ids].view_as(z)
            if self.training:
                self.ema_update(flat.detach(), ids)
            commit_loss = F.mse_loss(z, codes.detach())
            codes = z + (codes - z).detach()  # straight-through: the gradient of codes goes to z
        return Quantized(codes, ids.view(z.shape[:-1]), commit_loss)

    # ---------------------------------------------------------------------------------- updates
    @torch.no_grad()
    def kmeans_init(self, flat: Tensor) -> None:
        """Codebook <- spherical k-means of ``flat`` over all processes; EMA statistics to match."""
        centres, counts = spherical_kmeans(flat, self.num_codes, self.kmeans_iters, self.seed)
        self.codebook.copy_(centres)
        self.cluster_size.copy_(counts)
        # An entry's sum is its centre times its size; empty clusters keep a unit-length sum so that
        # their direction survives until they are used (or restarted).
        self.embed_sum.copy_(centres * counts.clamp(min=1.0)[:, None])
        self.initialised.fill_(True)
        self._seen_initialised = True

    @torch.no_grad()
    def ema_update(self, flat: Tensor, ids: Tensor) -> None:
        """One codebook step from this batch's (all-reduced) assignments, then optional restarts."""
        counts = id_counts(ids, self.num_codes).to(flat.dtype)  # n_k
        sums = torch.zeros_like(self.codebook).index_add_(0, ids, flat)  # sum of z assigned to k
        all_reduce_sum(counts)
        all_reduce_sum(sums)
        if self.codebook_update == "batch_mean":
            used = (counts > 0)[:, None]
            # The mean's direction is the sum's: normalising the sum skips the division by n_k.
            target = torch.where(used, F.normalize(sums, dim=1), self.codebook)
            self.codebook.copy_(F.normalize(self.codebook.lerp(target, 1.0 - self.decay), dim=1))
        else:
            self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
            total = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (total + self.num_codes * self.eps) * total
            self.codebook.copy_(F.normalize(self.embed_sum / smoothed[:, None], dim=1))
        self.usage_counts.add_(counts)
        self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
        if self.dead_code_steps > 0:
            self.restart_dead(flat)

    @torch.no_grad()
    def restart_dead(self, flat: Tensor) -> int:
        """Re-seed entries unused for ``dead_code_steps`` updates with random current inputs.

        Every process contributes an equal share of candidates, the gathered pool is identical on all
        of them, so the codebook stays in sync. Returns the number of entries restarted.
        """
        dead = (self.steps_unused >= self.dead_code_steps).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        share = -(-dead.numel() // world_size())  # ceil
        local = torch.randint(flat.shape[0], (share,), device=flat.device)  # own RNG: any rows will do
        pool = all_gather_cat(flat[local])[: dead.numel()]  # (num_dead, d), unit rows
        self.codebook[dead] = pool
        self.embed_sum[dead] = pool
        self.cluster_size[dead] = 1.0
        self.steps_unused[dead] = 0
        self.num_restarted += int(dead.numel())
        return int(dead.numel())

    # ------------------------------------------------------------------------------------- usage
    def usage(self) -> tuple[float, float]:
        """(fraction of entries used, perplexity of the usage distribution) since :meth:`reset_usage`."""
        used_fraction, perplexity = usage_and_perplexity(self.usage_counts)
        return float(used_fraction), float(perplexity)

    def reset_usage(self) -> None:
        self.usage_counts.zero_()
