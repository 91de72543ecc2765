"""Teacher temperatures and iBOT's late start of masked image modelling, in fitted methods.

The expected arrays are the official ones (see tests/utils/test_schedules.py for where they come from):
DINO and iBOT change the teacher temperature once per epoch, DINOv2 every step.
"""

from typing import Any

import lightning as L
import pytest
import torch
from method_toys import build, global_batch


def fit(model: Any, method: str, epochs: int, steps_per_epoch: int, tmp_path, callbacks=()) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=list(callbacks),
    )  # fmt: skip
    batches = [global_batch(method, 4, seed=s) for s in range(steps_per_epoch)]
    trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


def test_dino_teacher_temperature_is_constant_within_an_epoch(tmp_path) -> None:
    model = build("dino", 4, warmup_teacher_temp_epochs=3)
    fit(model, "dino", epochs=4, steps_per_epoch=2, tmp_path=tmp_path)
    temps = [model.teacher_temp_at(step) for step in range(8)]
    # linspace(0.04, 0.07, 3)[epoch], then 0.07: the final value in epoch 2, not at the end of it
    expected = [0.04, 0.04, 0.055, 0.055, 0.07, 0.07, 0.07, 0.07]
    assert temps == pytest.approx(expected, rel=1e-12)


def test_dinov2_teacher_temperature_changes_every_step(tmp_path) -> None:
    model = build("dinov2", 4, warmup_teacher_temp_epochs=2)
    fit(model, "dinov2", epochs=3, steps_per_epoch=2, tmp_path=tmp_path)
    temps = [model.teacher_temp_at(step) for step in range(6)]
    assert temps == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07, 0.07], rel=1e-12)  # linspace over 4 steps


def test_a_fractional_per_epoch_warmup_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="warmup_teacher_temp_epochs must be a whole number of epochs"):
        build("dino", 4, warmup_teacher_temp_epochs=0.5)
    with pytest.raises(ValueError, match="mim_start_epoch must be a whole number of epochs"):
        build("ibot", 4, mim_start_epoch=1.5)


class PerStep(L.Callback):
    """The logged iBOT loss terms and the gradients of the mask token and the patch head, per step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, module: Any, optimizer: Any) -> None:
        metrics = trainer.callback_metrics
        head_grads = [p.grad for p in module.student["patch_head"].parameters() if p.grad is not None]
        self.steps.append(
            {
                "loss": float(metrics["train/loss"]),
                "dino": float(metrics["train/dino_loss"]),
                "ibot": float(metrics["train/ibot_loss"]),
                "patch_temp": float(metrics["sched/teacher_patch_temp"]),
                "mask_token_grad": float(module.student["backbone"].mask_token.grad.abs().sum()),
                "patch_head_grad": float(sum(g.abs().sum() for g in head_grads)),
                "patch_head_params_with_grad": len(head_grads),
            }
        )


@pytest.mark.parametrize("use_bn_in_head", [False, True])
def test_ibot_masks_nothing_before_mim_start_epoch(tmp_path, use_bn_in_head: bool) -> None:
    model = build(
        "ibot",
        4,
        mim_start_epoch=1,
        warmup_teacher_temp_epochs=2,
        shared_head=False,
        use_bn_in_head=use_bn_in_head,
    )
    record = PerStep()
    fit(model, "ibot", epochs=3, steps_per_epoch=2, tmp_path=tmp_path, callbacks=[record])
    first, later = record.steps[:2], record.steps[2:]
    num_head_params = sum(p.requires_grad for p in model.student["patch_head"].parameters())
    for step in first:  # epoch 0: no masked patch, no patch term, the loss is the CLS term alone
        assert step["ibot"] == pytest.approx(0.0, abs=1e-12)
        assert step["loss"] == pytest.approx(step["dino"], rel=1e-6)
        assert step["mask_token_grad"] == pytest.approx(0.0, abs=1e-12)
        assert step["patch_head_grad"] == pytest.approx(0.0, abs=1e-12)
        # every parameter still receives a (zero) gradient: DDP waits for none in vain
        assert step["patch_head_params_with_grad"] == num_head_params
    for step in later:  # from epoch 1 on, masked image modelling
        assert step["ibot"] > 0.1 and step["mask_token_grad"] > 0 and step["patch_head_grad"] > 0
    # linspace(0.04, 0.07, 2) per epoch: the CLS temperature from epoch 0, the patch temperature from
    # epoch 1, when masked image modelling starts (iBOTLoss.teacher_temp2_schedule with mim_start_epoch=1)
    cls_temps = [model.teacher_temps_at(step)[0] for step in range(6)]
    assert cls_temps == pytest.approx([0.04, 0.04, 0.07, 0.07, 0.07, 0.07], rel=1e-12)
    patch_temps = [s["patch_temp"] for s in record.steps]  # as logged (fp32)
    assert patch_temps == pytest.approx([0.04, 0.04, 0.04, 0.04, 0.07, 0.07], rel=1e-6)
