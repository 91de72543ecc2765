"""The pretraining base and its EMA teacher in a method: schedules, last-layer freeze, parameter groups
(via DINO)."""

import math

import lightning as L
import pytest
import torch
from toys import loader, multicrop_batches, tiny_dino


def fit(model, batches, **trainer_kwargs):
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(model, train_dataloaders=loader(batches))
    return trainer


def test_teacher_frozen_and_always_in_eval_mode():
    model = tiny_dino()
    model.train()
    assert model.student.training and not model.teacher.training
    assert not any(p.requires_grad for p in model.teacher.parameters())


def test_ema_runs_once_per_optimizer_step_under_accumulation(monkeypatch):
    model = tiny_dino()
    momenta = []
    original = model.teacher.ema_update
    monkeypatch.setattr(
        model.teacher,
        "ema_update",
        lambda s, m, applied, **kw: (momenta.append(m), original(s, m, applied, **kw)),
    )
    trainer = fit(model, multicrop_batches(6), max_epochs=1, accumulate_grad_batches=3)
    assert trainer.global_step == 2
    assert len(momenta) == 2
    # the official cosine_scheduler(0.996, 1, ...) over 2 steps: [0.996, 0.998], never 1
    assert momenta == pytest.approx([0.996, 0.998], rel=1e-12)


def test_last_layer_frozen_during_first_epoch_only():
    model = tiny_dino(freeze_last_layer_epochs=1)
    protos0 = model.student["head"].prototypes.detach().clone()
    mlp0 = model.student["head"].mlp[0].weight.detach().clone()
    fit(model, multicrop_batches(2), max_epochs=1)
    assert torch.equal(model.student["head"].prototypes, protos0)
    assert not torch.equal(model.student["head"].mlp[0].weight, mlp0)

    model = tiny_dino(freeze_last_layer_epochs=1)
    protos0 = model.student["head"].prototypes.detach().clone()
    fit(model, multicrop_batches(2), max_epochs=2)
    assert not torch.equal(model.student["head"].prototypes, protos0)


def test_param_groups_exempt_tokens_norms_and_biases():
    model = tiny_dino()
    groups = model.configure_optimizers().param_groups
    no_wd = {n for g in groups if not g["apply_wd"] for n in g["names"]}
    wd = {n for g in groups if g["apply_wd"] for n in g["names"]}
    for name in ["backbone.pos_embed", "backbone.cls_token", "backbone.mask_token", "backbone.norm.weight"]:
        assert name in no_wd
    assert "backbone.blocks.0.attn.qkv.bias" in no_wd
    assert "backbone.blocks.0.attn.qkv.weight" in wd
    assert "head.prototypes" in wd
    n_trainable = sum(1 for p in model.student.parameters() if p.requires_grad)
    assert len(no_wd) + len(wd) == n_trainable


def test_layer_decay_and_patch_embed_multiplier():
    model = tiny_dino(layer_decay=0.5, patch_embed_lr_mult=0.2)
    groups = model.configure_optimizers().param_groups
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    depth = 2
    assert scale["head.prototypes"] == pytest.approx(1.0)
    assert scale["backbone.blocks.1.mlp.fc1.weight"] == pytest.approx(0.5)  # layer 2 of 3
    assert scale["backbone.blocks.0.mlp.fc1.weight"] == pytest.approx(0.25)
    assert scale["backbone.cls_token"] == pytest.approx(0.5 ** (depth + 1))
    assert scale["backbone.patch_embed.proj.weight"] == pytest.approx(0.5 ** (depth + 1) * 0.2)


def test_lr_follows_schedule_and_batch_scaling():
    model = tiny_dino(base_lr=1e-3, lr_reference_batch=8, batch_size_per_device=4, min_lr=1e-5)
    trainer = fit(model, multicrop_batches(4), max_epochs=1)
    opt = trainer.optimizers[0]
    # last of 4 steps, as in the official cosine_scheduler: min_lr + (peak - min_lr) (1 + cos(3 pi / 4)) / 2
    last = 1e-5 + 0.5 * (1e-3 * 4 / 8 - 1e-5) * (1 + math.cos(3 * math.pi / 4))
    assert opt.param_groups[0]["lr"] == pytest.approx(last * opt.param_groups[0]["lr_scale"], rel=1e-9)
    values = model.schedule_values(0)
    assert values["lr"] == pytest.approx(1e-3 * 4 / 8)  # linear scaling, no warm-up
    assert values["wd"] == pytest.approx(0.04)


def test_training_changes_student_and_teacher_follows():
    model = tiny_dino()
    teacher0 = [p.detach().clone() for p in model.teacher.parameters()]
    trainer = fit(model, multicrop_batches(3), max_epochs=1)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "train/dino_loss" in trainer.callback_metrics
    moved = [not torch.equal(a, b) for a, b in zip(teacher0, model.teacher.parameters())]
    assert any(moved)
    # the center moved away from zero
    assert model.centering.center.abs().sum() > 0


@pytest.mark.parametrize("mode", ["global", "per_network", "per_parameter"])
def test_clipping_logs_the_gradient_norm_before_clipping(mode):
    """The step clips with the configured grouping and logs the norm of all gradients it saw."""
    model = tiny_dino(clip_grad=1e-4, clip_grad_mode=mode, freeze_last_layer_epochs=0)
    seen = []
    original = model.configure_gradient_clipping

    def clip_and_record(optimizer, *args, **kwargs):
        original(optimizer, *args, **kwargs)
        grads = [p.grad for p in model.student.parameters() if p.grad is not None]
        seen.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))

    model.configure_gradient_clipping = clip_and_record
    trainer = fit(model, multicrop_batches(1), max_epochs=1)
    logged = trainer.callback_metrics["train/grad_norm"]
    assert logged > 1e-3  # before clipping: far above the limit
    if mode == "per_parameter":  # every parameter's gradient at most 1e-4
        assert float(seen[0]) <= len(list(model.student.parameters())) ** 0.5 * 1e-4 * 1.001
    else:  # every group clipped to exactly the limit
        groups = 1 if mode == "global" else len(model.student)
        assert float(seen[0]) == pytest.approx(groups**0.5 * 1e-4, rel=1e-3)
