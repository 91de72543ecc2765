"""Run by ``torch.distributed.run`` with 2 CPU processes (gloo) from test_ddp.py.

Each rank feeds its own shard of a fixed global batch to the distributed building blocks and rank 0
saves the results, which the test compares with one process holding the concatenated batch.
"""

import sys

import torch
import torch.distributed as dist

from sslvit.losses import Centering, SinkhornKnopp


def global_teacher_logits() -> torch.Tensor:
    return torch.randn(8, 5, generator=torch.Generator().manual_seed(123))  # (world * 4, K)


def uneven_patch_logits() -> torch.Tensor:
    """8 rows split 3 / 5 over two ranks, like masked patch tokens."""
    return torch.randn(8, 6, generator=torch.Generator().manual_seed(7))


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    shard = global_teacher_logits().chunk(world)[rank]

    centering = Centering(out_dim=5, momentum=0.9)
    centering.update(shard)
    centering.update(shard * 2.0)

    sinkhorn = SinkhornKnopp(num_iters=3).probs(shard, temperature=0.5)
    uneven = uneven_patch_logits()
    uneven_shard = uneven[:3] if rank == 0 else uneven[3:]
    uneven_targets = SinkhornKnopp(num_iters=3).probs(uneven_shard, temperature=0.5)
    sinkhorn_all = [torch.empty_like(sinkhorn) for _ in range(world)]
    dist.all_gather(sinkhorn_all, sinkhorn)
    padded = torch.zeros(5, 6)  # gloo gathers equal shapes: pad to the larger shard, trim after
    padded[: uneven_targets.shape[0]] = uneven_targets
    uneven_all = [torch.empty(5, 6) for _ in range(world)]
    dist.all_gather(uneven_all, padded)
    uneven_all = [uneven_all[0][:3], uneven_all[1][:5]]

    if rank == 0:
        torch.save(
            {
                "center": centering.center,
                "world": world,
                "sinkhorn": torch.cat(sinkhorn_all),
                "sinkhorn_uneven": torch.cat(uneven_all),
            },
            out_path,
        )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
