"""DINO projection head: MLP -> bottleneck -> l2-normalise -> weight-normalised prototypes."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from sslvit.heads.global_batch_norm import GlobalBatchNorm1d


class DINOHead(nn.Module):
    """Projection head of DINO (Caron et al., 2021, arXiv:2104.14294), also used by iBOT and DINOv2.

    ``nlayers``-layer MLP (GELU) to a ``bottleneck_dim`` embedding, l2-normalised, then a linear layer to
    ``out_dim`` prototypes whose weight is normalised per prototype (weight normalisation). With
    ``norm_last_layer=True`` the weight-norm gain is fixed to 1, i.e. the logits are cosine similarities
    between the embedding and the prototypes; this stabilises training (paper, appendix).

    The prototype directions are stored unnormalised in ``prototypes`` (K, bottleneck) and normalised in
    every forward pass: this is exactly weight normalisation with g = 1 and gives the same gradients.

    Args:
        in_dim: backbone feature size.
        out_dim: number of prototypes K (65536 for DINO ViT-S/16).
        hidden_dim: MLP width (2048).
        bottleneck_dim: embedding size before the prototypes (256).
        nlayers: MLP depth (3); 1 means a single linear layer to the bottleneck.
        norm_last_layer: fix the prototype norm to 1 instead of learning a gain per prototype.
        use_bn: batch normalisation after each hidden linear layer (the official DINO code's
            ``use_bn_in_head``, off for ViTs there). It standardises the head's inputs over the batch, so the
            part of the features shared by every image (large in a freshly initialised ViT) no longer drowns
            the per-image differences that the teacher's targets are made of. Batch statistics are used in
            training *and* evaluation mode, as the official teacher (never put in eval mode) does. The
            statistics are those of the global batch over all processes (:class:`GlobalBatchNorm1d`), so
            N processes with B/N images each normalise as one process with B does.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"DINOHead needs nlayers >= 1, got {nlayers}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(d_in, d_out))
            if i < len(dims) - 2:
                if use_bn:
                    layers.append(GlobalBatchNorm1d(d_out))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        # Per-prototype gain of weight normalisation; frozen at 1 when norm_last_layer.
        self.prototype_gain = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    @property
    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen during the first epoch(s) (the prototypes)."""
        return [self.prototypes, self.prototype_gain]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> l2-normalised (..., bottleneck_dim) embedding."""
        # BatchNorm1d wants (N, C): flatten any leading dims (patch heads see (B, N, D)).
        flat = x.reshape(-1, x.shape[-1])
        embedded = F.normalize(self.mlp(flat), dim=-1)
        # The width is spelled out: a batch without masked patches gives 0 rows, where -1 is ambiguous.
        return embedded.reshape(*x.shape[:-1], embedded.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) features -> (..., out_dim) logits."""
        weight = self.prototype_gain * F.normalize(self.prototypes, dim=-1)
        return F.linear(self.embed(x), weight)
