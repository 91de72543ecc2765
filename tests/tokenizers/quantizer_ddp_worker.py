"""Run by ``torch.distributed.run`` with 2 CPU processes (gloo) from test_quantizer_ddp.py.

Each rank quantises its half of three fixed global batches (k-means init on the first, codebook updates
on all three) with each codebook update rule, and rank 0 saves both ranks' codebook states, which the
test compares with one process holding the concatenated batches.
"""

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

from sslvit.tokenizers.norm_ema_quantizer import NormEMAQuantizer


def global_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [F.normalize(torch.randn(24, 8, generator=g), dim=1) for _ in range(3)]


RULES = ("batch_mean", "running_mean")


def make_quantizer(rule: str) -> NormEMAQuantizer:
    return NormEMAQuantizer(
        num_codes=16, code_dim=8, decay=0.9, kmeans_init=True, kmeans_iters=5, codebook_update=rule
    ).train()


def state(quantizer: NormEMAQuantizer) -> torch.Tensor:
    return torch.cat(
        [quantizer.codebook.flatten(), quantizer.cluster_size, quantizer.embed_sum.flatten(),
         quantizer.usage_counts]
    )  # fmt: skip


def main(out_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results: dict = {"world": world}
    for rule in RULES:
        quantizer = make_quantizer(rule)
        ids = []
        for batch in global_batches():
            ids.append(quantizer(batch.chunk(world)[rank]).ids)
        mine = state(quantizer)
        states = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(states, mine)
        all_ids = [torch.empty_like(ids[-1]) for _ in range(world)]
        dist.all_gather(all_ids, ids[-1])
        results[rule] = {"states": states, "last_ids": torch.cat(all_ids)}
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
