"""A step whose gradients are not finite never reaches the weights, the AdamW moments or the teacher;
it is counted, and too many in a row stop the run naming the clipping groups and the loss terms."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from toys import loader, multicrop_batches, tiny_dino
from two_processes import run_on_two_processes

from sslvit.callbacks import AtomicModelCheckpoint, FiniteLossGuard, NonFiniteGradientError
from sslvit.data.batch import MaskedImageBatch
from sslvit.methods import OptimConfig
from sslvit.methods.dvae import DVAETraining
from sslvit.methods.step_guard import SkippingAdamW
from sslvit.tokenizers import DVAE
from sslvit.utils.checkpoint_io import AtomicCheckpointIO


class NaNGradientAt(Callback):
    """After the backward pass of the given optimizer steps, one entry of one gradient becomes NaN."""

    def __init__(self, steps: set[int], param: torch.nn.Parameter) -> None:
        self.steps, self.param = steps, param

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step in self.steps:
            assert self.param.grad is not None
            self.param.grad.view(-1)[0] = float("nan")


class Snapshots(Callback):
    """The weights, the AdamW state and the teacher before and after each optimizer step."""

    def __init__(self) -> None:
        self.before: dict[int, dict[str, torch.Tensor]] = {}
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    @staticmethod
    def state(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        tensors = {f"module.{n}": t.detach().clone() for n, t in pl_module.state_dict().items()}
        names = {id(p): n for n, p in pl_module.named_parameters()}
        for param, state in trainer.optimizers[0].state.items():
            for key, value in state.items():
                tensors[f"adamw.{names[id(param)]}.{key}"] = value.detach().clone()
        return tensors

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.before[trainer.global_step] = self.state(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.after[trainer.global_step - 1] = self.state(trainer, pl_module)  # the step just taken


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> list[str]:
    return [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]


def trainer_for(callbacks: list[Callback], max_steps: int, **kwargs: Any) -> L.Trainer:
    settings = {"logger": False, "enable_checkpointing": False, "enable_model_summary": False, **kwargs}
    return L.Trainer(
        accelerator="cpu", max_steps=max_steps, enable_progress_bar=False, callbacks=callbacks, **settings
    )


def first_matrix(module: torch.nn.Module) -> tuple[str, torch.nn.Parameter]:
    return next((n, p) for n, p in module.named_parameters() if p.ndim == 2)


@pytest.mark.parametrize(("mode", "clip_grad"), [("per_parameter", 3.0), ("per_network", 0.0)])
def test_a_step_with_nan_gradients_moves_nothing_and_is_counted(mode, clip_grad):
    """clip_grad = 0 (no clipping) still measures the norms that detect the bad step."""
    model = tiny_dino(clip_grad=clip_grad, clip_grad_mode=mode, freeze_last_layer_epochs=0)
    _, param = first_matrix(model.student)
    snapshots = Snapshots()
    # 6 steps: the teacher's momentum reaches 1 (no EMA move) only at the last one
    trainer = trainer_for([NaNGradientAt({2}, param), snapshots], max_steps=6)
    trainer.fit(model, train_dataloaders=loader(multicrop_batches(6)))

    assert trainer.global_step == 6
    before, after = snapshots.before[2], snapshots.after[2]
    assert changed(before, after, "module.student.") == []
    assert changed(before, after, "module.teacher.") == []  # no EMA step towards an unchanged student
    assert changed(before, after, "adamw.") == []  # moments and step count as they were
    for step in (1, 3):  # the steps around it are applied: all three move
        for prefix in ("module.student.", "module.teacher.", "adamw."):
            assert changed(snapshots.before[step], snapshots.after[step], prefix), (step, prefix)
    # the step after the skipped one continues AdamW's count where it stood
    counts = [v for k, v in snapshots.after[3].items() if k.endswith(".step")]
    assert counts and all(float(c) == 3.0 for c in counts)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 1.0
    assert math.isfinite(float(trainer.callback_metrics["train/grad_norm"]))  # the last step's, applied


def test_skipping_adamw_leaves_everything_as_it_was_fused_or_not():
    """Fused (the kernel reads found_inf on the device) and unfused (read on the host) alike."""
    for fused in (True, False):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
        optimizer = SkippingAdamW(params, lr=0.1, weight_decay=0.1, fused=fused or None)
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()  # a first real step, so that there are moments to keep
        state = {k: [v.clone() for v in optimizer.state[p].values()] for k, p in enumerate(params)}
        weights = [p.detach().clone() for p in params]
        optimizer.found_inf = torch.tensor(1.0)  # type: ignore[attr-defined]
        for p in params:
            p.grad = torch.full_like(p, float("nan"))
        optimizer.step()
        assert all(torch.equal(p, w) for p, w in zip(params, weights, strict=True)), fused
        for k, p in enumerate(params):
            assert all(torch.equal(a, b) for a, b in zip(optimizer.state[p].values(), state[k])), fused
        optimizer.found_inf = torch.tensor(0.0)  # type: ignore[attr-defined]
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
        assert not any(torch.equal(p, w) for p, w in zip(params, weights, strict=True)), fused


def test_consecutive_skips_stop_the_run_naming_groups_terms_and_the_last_good_checkpoint(tmp_path):
    model = tiny_dino(clip_grad_mode="per_network", freeze_last_layer_epochs=0)
    name, param = first_matrix(model.student)
    ckpt = AtomicModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=1, save_last="link")
    trainer = trainer_for(
        [NaNGradientAt({2, 3, 4, 5, 6}, param), FiniteLossGuard(max_consecutive_skips=3), ckpt],
        max_steps=8,
        enable_checkpointing=True,  # the AtomicModelCheckpoint
        plugins=[AtomicCheckpointIO()],
    )
    with pytest.raises(NonFiniteGradientError) as err:
        trainer.fit(model, train_dataloaders=loader(multicrop_batches(8)))
    message = str(err.value)
    assert "\n" not in message
    # steps 2, 3, 4 skipped; the guard reads the count before step 5's backward pass
    assert message.startswith("3 optimizer steps in a row skipped up to global step 5")
    group = f"student.{name.split('.')[0]}"  # per_network: the student network holding the NaN
    assert f"clipping groups {group};" in message
    assert "all loss terms finite" in message
    # checkpoints of skipped steps hold the weights of step 2: finite, hence good
    good = tmp_path / "epoch=0-step=5.ckpt"
    assert f"the last good checkpoint is {good} (resume with ckpt_path={good}" in message
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _dvae_batches(n: int) -> list[MaskedImageBatch]:
    g = torch.Generator().manual_seed(0)
    return [
        MaskedImageBatch(
            images=torch.rand(2, 3, 16, 16, generator=g), labels=torch.zeros(2, dtype=torch.long)
        )
        for _ in range(n)
    ]


def test_the_dvae_trainer_skips_nan_gradients_too(tmp_path):
    torch.manual_seed(0)
    tokenizer = DVAE(vocab_size=8, downsample=4, hidden_dim=4, input_kernel=3)
    model = DVAETraining(tokenizer, OptimConfig(warmup_epochs=0, batch_size_per_device=2, clip_grad=0.0))
    param = next(tokenizer.parameters())
    snapshots = Snapshots()
    trainer = trainer_for([NaNGradientAt({1}, param), snapshots], max_steps=3, default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=loader(_dvae_batches(3)))  # type: ignore[arg-type]
    assert changed(snapshots.before[1], snapshots.after[1], "module.") == []
    assert changed(snapshots.before[1], snapshots.after[1], "adamw.") == []
    assert changed(snapshots.before[2], snapshots.after[2], "module.")
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 1.0


@pytest.mark.ddp
def test_under_fsdp_a_nan_in_one_shard_has_every_rank_skip(tmp_path):
    """The groups' squared norms are summed over the ranks' shards, so the NaN reaches every rank's
    decision: all skip the same step (a rank stepping alone would leave the shards inconsistent)."""
    worker = Path(__file__).with_name("fsdp_skip_worker.py")
    out = tmp_path / "result"
    run_on_two_processes(worker, out)
    results = [torch.load(f"{out}.{rank}") for rank in (0, 1)]
    assert sorted(rank for r in results for rank in r["nan_on"]) == [1]  # one rank's shard only
    for rank, result in enumerate(results):
        assert result["applied"] == [1.0, 0.0, 1.0], rank
        assert result["unchanged"] == [False, True, False], rank
        assert result["groups"] == [[], ["head"], []], rank
