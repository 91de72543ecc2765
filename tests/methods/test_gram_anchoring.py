"""DINOv2 with Gram anchoring: when the Gram teacher is snapshotted, what it gets, and what the loss sees."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from method_toys import HEAD, backbone, build, global_batch, optim

from sslvit.losses import GramLoss
from sslvit.methods import DINOv2, GramConfig


def backbone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


class Recorder(L.Callback):
    """Per optimizer step: the EMA teacher's backbone before the step, the Gram teacher's after it, the
    logged Gram loss, and whether any Gram-teacher parameter got a gradient or was trainable."""

    def __init__(self) -> None:
        self.teacher_before: list[dict[str, torch.Tensor]] = []
        self.gram_after: list[dict[str, torch.Tensor]] = []
        self.gram_loss: list[float | None] = []
        self.gram_grads: list[bool] = []

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        self.teacher_before.append(backbone_state(module.teacher["backbone"]))

    def on_after_backward(self, trainer: L.Trainer, module: Any) -> None:
        params = list(module.gram_teacher.parameters())
        self.gram_grads.append(any(p.grad is not None or p.requires_grad for p in params))
        in_optimizer = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        assert not in_optimizer & {id(p) for p in params}
        assert not module.gram_teacher.training and module.student.training

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, *args: Any) -> None:
        self.gram_after.append(backbone_state(module.gram_teacher.backbone))
        value = trainer.callback_metrics.get("train/gram_loss")
        self.gram_loss.append(None if value is None else float(value))


def fit(
    model: Any, batches: list[Any], root: Any, epochs: int = 2, ckpt_path: Any = None, callbacks: Any = ()
) -> tuple[Recorder, L.Trainer]:
    """``epochs`` epochs over ``batches``; returns the recorder and the trainer."""
    recorder = Recorder()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
        enable_checkpointing=bool(callbacks), enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, callbacks=[recorder, *callbacks],
    )  # fmt: skip
    trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None), ckpt_path=ckpt_path)
    return recorder, trainer


def gram_dinov2(**gram: Any) -> Any:
    # A fast EMA (momentum 0.5) so that the teacher visibly moves every step.
    return build("dinov2", 4, momentum_teacher=0.5, gram=GramConfig(enabled=True, **gram))


def test_gram_teacher_is_snapshotted_exactly_at_the_refresh_steps_and_gets_no_gradient(tmp_path) -> None:
    model = gram_dinov2(start_step=1, refresh_every=2, teacher_resolution_scale=1.0)
    initial = backbone_state(model.gram_teacher.backbone)
    batches = [global_batch("dinov2", 4, seed) for seed in range(3)]
    record, _ = fit(model, batches, tmp_path)  # 6 optimizer steps: snapshots before steps 1, 3 and 5
    assert len(record.gram_after) == 6
    assert record.gram_loss[0] is None  # step 0 is before start_step: no Gram loss yet
    assert all(value is not None and value > 0 for value in record.gram_loss[1:])
    assert record.gram_grads == [False] * 6
    # The step whose EMA teacher the Gram teacher is after each step (step 0: the copy made at
    # construction, which is the teacher of step 0).
    source = {0: 0, 1: 1, 2: 1, 3: 3, 4: 3, 5: 5}
    assert max_difference(record.gram_after[0], initial) < 1e-7
    for step, snapshot_step in source.items():
        assert max_difference(record.gram_after[step], record.teacher_before[snapshot_step]) < 1e-7, step
        # ...and not the EMA teacher of any other step (it moves by ~1e-4 or more per step here)
        for other in range(6):
            if other != snapshot_step:
                assert max_difference(record.gram_after[step], record.teacher_before[other]) > 1e-5


def test_gram_loss_with_registers_is_that_of_the_masked_student_and_a_2x_teacher_by_hand(tmp_path) -> None:
    torch.manual_seed(0)
    gram = GramConfig(enabled=True, refresh_every=100, teacher_resolution_scale=2.0, weight=0.5)
    model = DINOv2(
        backbone(num_register_tokens=2), optim(4), patch_out_dim=HEAD["out_dim"], **HEAD,
        warmup_teacher_temp_epochs=1, gram=gram,
    )  # fmt: skip
    batch = global_batch("dinov2", 4, seed=0)
    globals_ = torch.cat(batch.global_crops)  # (2*4, 3, 16, 16), 4x4 patches of 4 px
    with torch.no_grad():
        student = model.student["backbone"].forward_features(globals_, batch.masks)["x_norm_patchtokens"]
        teacher_in = F.interpolate(globals_, size=(32, 32), mode="bicubic", align_corners=False)
        tokens = model.teacher["backbone"].forward_features(teacher_in)["x_prenorm"]  # (8, 1 + 2 + 64, D)
        tokens = model.teacher["backbone"].norm(tokens)[:, 3:]  # patches only: CLS and 2 registers out
        maps = tokens.transpose(1, 2).reshape(8, -1, 8, 8)
        teacher = (
            F.interpolate(maps, size=(4, 4), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
        )
        expected = GramLoss()(student, teacher).item()
        assert model.gram_teacher.patch_features(globals_, (4, 4)).shape == (8, 16, model.embed_dim)
    record, _ = fit(model, [batch], tmp_path, epochs=1)
    assert record.gram_loss[0] == pytest.approx(expected, rel=1e-4)
    assert expected > 1e-3  # masking and the 2x input make student and snapshot differ at step 0


def test_resume_continues_with_the_saved_gram_teacher(tmp_path) -> None:
    """The snapshot of step 0 is still the Gram teacher after resuming at step 2 (refresh_every=10)."""
    batches = [global_batch("dinov2", 4, seed) for seed in range(2)]
    straight = gram_dinov2(refresh_every=10, teacher_resolution_scale=1.0)
    snapshot = backbone_state(straight.teacher["backbone"])  # what step 0 copies
    every_2 = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    straight_record, _ = fit(straight, batches, tmp_path / "straight", callbacks=[every_2])
    checkpoint = next((tmp_path / "ckpt").glob("*step=2.ckpt"))
    assert "gram_teacher.backbone.cls_token" in torch.load(checkpoint, weights_only=True)["state_dict"]

    resumed = gram_dinov2(refresh_every=10, teacher_resolution_scale=1.0)
    again = ModelCheckpoint(dirpath=tmp_path / "again", every_n_train_steps=2, save_top_k=-1)
    resumed_record, _ = fit(resumed, batches, tmp_path / "resumed", ckpt_path=checkpoint, callbacks=[again])
    assert len(resumed_record.gram_loss) == 2  # steps 2 and 3
    assert resumed_record.gram_loss == pytest.approx(straight_record.gram_loss[2:], rel=1e-5)
    final = backbone_state(resumed.gram_teacher.backbone)
    assert max_difference(final, snapshot) < 1e-7
    assert max_difference(final, backbone_state(straight.gram_teacher.backbone)) < 1e-7
    # a snapshot taken at resume would be the EMA teacher of step 2, which has moved
    assert max_difference(final, backbone_state(resumed.teacher["backbone"])) > 1e-5
    torch.testing.assert_close(
        resumed.student.state_dict(), straight.student.state_dict(), atol=1e-6, rtol=1e-5
    )


def test_disabled_gram_anchoring_holds_no_gram_teacher() -> None:
    model = build("dinov2", 4, gram=GramConfig(enabled=False))
    assert model.gram_teacher is None
    assert not any(key.startswith("gram_teacher.") for key in model.state_dict())
