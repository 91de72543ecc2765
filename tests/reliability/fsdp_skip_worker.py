"""Worker of test_nonfinite_gradients.py: under FSDP a NaN in one rank's gradient shard has every rank
skip the step (2 CPU processes, gloo; run with torch.distributed.run)."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FullyShardedDataParallel

from sslvit.methods.step_guard import NonFiniteStepGuard, SkippingAdamW


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(6, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x)).square().mean()


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    toy = Toy()
    root = FullyShardedDataParallel(toy, use_orig_params=True, device_id=torch.device("cpu"))
    optimizer = SkippingAdamW(root.parameters(), lr=0.1)
    guard = NonFiniteStepGuard()
    networks = {"backbone": toy.backbone, "head": toy.head}
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    applied, unchanged, groups, nan_on = [], [], [], []
    for step in range(3):
        optimizer.zero_grad()
        root(x).backward()
        grad = toy.head.weight.grad
        if step == 1 and grad is not None and grad.numel():  # on the rank holding the head's shard
            grad.view(-1)[0] = float("nan")
            nan_on.append(rank)
        before = [p.detach().clone() for p in toy.parameters()]
        guard(optimizer, networks, 1.0, "per_network", sharded=True)
        optimizer.step()
        applied.append(float(guard.applied))  # type: ignore[arg-type]
        unchanged.append(all(torch.equal(a, p) for a, p in zip(before, toy.parameters(), strict=True)))
        groups.append(guard.nonfinite_groups())
    torch.save(
        {"applied": applied, "unchanged": unchanged, "groups": groups, "nan_on": nan_on}, f"{out_path}.{rank}"
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
