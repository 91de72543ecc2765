"""Run by ``torch.distributed.run`` with 2 CPU processes (gloo) from test_ddp.py.

Each rank feeds its own shard of a fixed global batch to the distributed building blocks and rank 0
saves the results, which the test compares with one process holding the concatenated batch.
"""

import sys

import torch
import torch.distributed as dist

from sslvit.losses import Centering


def global_teacher_logits() -> torch.Tensor:
    return torch.randn(8, 5, generator=torch.Generator().manual_seed(123))  # (world * 4, K)


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    shard = global_teacher_logits().chunk(world)[rank]

    centering = Centering(out_dim=5, momentum=0.9)
    centering.update(shard)
    centering.update(shard * 2.0)

    if rank == 0:
        torch.save({"center": centering.center, "world": world}, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
