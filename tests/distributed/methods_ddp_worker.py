"""Trains every method for a few steps with ``Trainer.fit``; run by ``torch.distributed.run`` (2 CPU
processes, gloo) from test_methods_ddp.py, which runs :func:`train` itself for the one-process reference.

Each process feeds the real LightningModule its contiguous half of fixed global batches through a DDP
strategy; rank 0 saves, per method, the state dict (weights, EMA teacher, centers, codebook), the
optimizer moments and the logged training metrics of every step. The same processes check
``GlobalBatchNorm1d`` against batch norm on the concatenated batch (forward and gradients).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for method_toys

import method_toys as toys

from sslvit.heads import GlobalBatchNorm1d
from sslvit.losses import KoLeoLoss
from sslvit.methods import GramConfig

GLOBAL_BATCH, STEPS = 8, 3
# Every method, DINO with batch norm in its head (statistics of the global batch) and DINOv2 with Gram
# anchoring (its Gram teacher refreshed before steps 0 and 2, fed 2x crops).
RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    **{method: (method, {}) for method in toys.METHODS},
    "dino_bn": ("dino", {"use_bn_in_head": True}),
    "dinov2_gram": ("dinov2", {"gram": GramConfig(enabled=True, refresh_every=2)}),
}


class PerShardKoLeo(torch.nn.Module):
    """KoLeo averaged over ``shards`` equal slices of the batch: what ``shards`` DDP processes compute.

    The official DINOv2 code computes KoLeo within each GPU's batch (nearest neighbours among that
    process's images only), and DDP averages the processes' gradients; the one-process reference uses
    this to compute the same quantity, rather than KoLeo over its whole batch.
    """

    def __init__(self, shards: int) -> None:
        super().__init__()
        self.koleo, self.shards = KoLeoLoss(), shards

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.koleo(part) for part in features.chunk(self.shards)]).mean()


class StepRecorder(L.Callback):
    """The logged ``train/*`` metrics after every step (floats: a host sync is fine in a test)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        metrics = trainer.callback_metrics
        self.steps.append({k: float(v) for k, v in metrics.items() if k.startswith("train/")})


class NoiseRows(L.Callback):
    """Points the fixed Gumbel noise at this step and this process's rows (dVAE only)."""

    def __init__(self, noise: toys.FixedGumbelNoise, rows: slice) -> None:
        self.noise, self.rows = noise, rows

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        self.noise.step, self.noise.rows = batch_idx, self.rows


def gumbel_noise() -> torch.Tensor:
    """(steps, B, K, h, w) standard Gumbel samples for the tiny dVAE (vocabulary 8 on a 4x4 grid)."""
    uniform = torch.rand(STEPS, GLOBAL_BATCH, 8, 4, 4, generator=torch.Generator().manual_seed(3))
    return -torch.log(-torch.log(uniform.clamp(1e-9, 1 - 1e-9)))


def train(run: str, out_dir: Path, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Fit run ``run`` for STEPS steps on this process's share of the global batches; its final state."""
    method, kwargs = RUNS[run]
    model = toys.build(method, GLOBAL_BATCH // world, **kwargs)
    if method in ("dinov2", "distill") and world == 1:
        model.koleo_loss = PerShardKoLeo(shards=2)  # the per-process KoLeo of the 2-process run
    batches = [
        toys.shard(toys.global_batch(method, GLOBAL_BATCH, seed), rank, world) for seed in range(STEPS)
    ]
    recorder = StepRecorder()
    noise = toys.FixedGumbelNoise(gumbel_noise())
    share = GLOBAL_BATCH // world
    strategy: Any = "auto"
    if world > 1:
        strategy = L.pytorch.strategies.DDPStrategy(
            process_group_backend="gloo", find_unused_parameters=False
        )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy=strategy,
        max_steps=STEPS,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # each process reads exactly its own slice of each global batch
        default_root_dir=out_dir / run,
        callbacks=[recorder, NoiseRows(noise, slice(rank * share, (rank + 1) * share))],
    )
    with noise:
        trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None))
    optimizer = trainer.optimizers[0].state_dict()["state"]
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "moments": {i: {k: v.clone() for k, v in s.items() if k != "step"} for i, s in optimizer.items()},
        "logged": recorder.steps,
    }


def batch_norm_check() -> dict[str, torch.Tensor]:
    """GlobalBatchNorm1d on this process's rows (3 on rank 0, 5 on rank 1) of a fixed (8, 6) input."""
    rank = dist.get_rank()
    x = norm_input()
    rows = slice(0, 3) if rank == 0 else slice(3, 8)
    local = x[rows].clone().requires_grad_(True)
    norm = norm_module()
    out = norm(local)
    # A loss that sums over all rows of all processes: its gradients are the full-batch loss's.
    (out * norm_target()[rows]).sum().backward()
    grads = {name: p.grad.clone() for name, p in norm.named_parameters()}
    for grad in grads.values():  # DDP would average parameter gradients over processes; sum instead
        dist.all_reduce(grad)
    padded = torch.zeros(2, 8, 6)  # (output, input gradient), padded to 8 rows: gloo gathers equal shapes
    padded[0, rows], padded[1, rows] = out.detach(), local.grad
    gathered = [torch.empty(2, 8, 6) for _ in range(2)]
    dist.all_gather(gathered, padded)
    merged = torch.cat([gathered[0][:, :3], gathered[1][:, 3:]], dim=1)
    return {"out": merged[0], "input_grad": merged[1], **{f"{k}_grad": v for k, v in grads.items()}}


def norm_input() -> torch.Tensor:
    # features with a large shared part, as a fresh ViT's: the variance must not cancel
    return 5.0 + torch.randn(8, 6, generator=torch.Generator().manual_seed(11))


def norm_target() -> torch.Tensor:
    return torch.randn(8, 6, generator=torch.Generator().manual_seed(12))


def norm_module() -> GlobalBatchNorm1d:
    norm = GlobalBatchNorm1d(6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 1.5, 6))
        norm.bias.copy_(torch.linspace(-0.2, 0.3, 6))
    return norm


def main(out_dir: str) -> None:
    out = Path(out_dir)
    results: dict[str, Any] = {}
    for run in RUNS:
        # Lightning's first fit creates the process group (torch.distributed.run set the environment).
        results[run] = train(run, out, rank=int(os.environ["RANK"]), world=int(os.environ["WORLD_SIZE"]))
    results["world"] = dist.get_world_size()
    results["batch_norm"] = batch_norm_check()
    if dist.get_rank() == 0:
        torch.save(results, out / "ddp.pt")
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1])
