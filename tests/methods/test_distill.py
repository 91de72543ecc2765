"""method=distill: a frozen teacher with its heads, a trained student, the EMA student as the final model."""

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from method_toys import backbone as toy_backbone
from method_toys import build, global_batch
from toys import CONF_DIR, compose_train_cfg

from sslvit.backbones import MaskedViT
from sslvit.backbones.distillation_teacher import DistillationTeacher
from sslvit.evaluate import load_backbone
from sslvit.heads import DINOHead
from sslvit.methods import Distillation, OptimConfig
from sslvit.train import train
from sslvit.utils.distillation_teacher_loader import load_distillation_teacher

# A 2-block ViT-test on 32-px fake images with 8-px patches (a 4x4 grid), small heads.
TINY_RUN = [
    "backbone=vit_test",
    "data=fake",
    "backbone.patch_size=8",
    "trainer=cpu",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "data.transform.num_local_crops=2",
    "method.hidden_dim=32",
    "method.bottleneck_dim=16",
]


class StepRecorder(L.Callback):
    """After every optimizer step: the student's parameters and the step's outputs."""

    def __init__(self) -> None:
        self.students: list[dict[str, torch.Tensor]] = []
        self.outputs: list[dict[str, Any]] = []
        self.grads: dict[str, bool] = {}

    def on_after_backward(self, trainer: L.Trainer, module: Any) -> None:
        self.grads = {
            n: p.grad is not None and bool(p.grad.abs().sum() > 0)
            for n, p in module.named_parameters()
            if p.requires_grad  # not the heads' fixed prototype gains
        }

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, *args: Any) -> None:
        self.students.append({n: p.detach().clone() for n, p in module.student.named_parameters()})
        self.outputs.append(outputs)


def fit(model: Any, steps: int, callbacks: list[L.Callback], tmp_path: Path) -> None:
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, callbacks=callbacks,
    )  # fmt: skip
    batches = [global_batch("distill", 4, seed) for seed in range(steps)]
    trainer.fit(model, torch.utils.data.DataLoader(batches, batch_size=None))


def test_student_learns_teacher_stays_and_the_ema_student_is_the_model(tmp_path):
    # EMA momentum 0.5 -> 1 over 3 steps, the official cosine (never reaching its end value):
    # m_i = 1 - 0.25 (1 + cos(pi i / 3)) = 0.5, 0.625 and 0.875 at steps 0, 1, 2 (by hand)
    model = build("distill", 4, ema_momentum=0.5)
    ema_start = {n: p.detach().clone() for n, p in model.student.named_parameters()}
    teacher_before = {k: v.clone() for k, v in model.frozen_teacher.state_dict().items()}
    record = StepRecorder()
    fit(model, 3, [record], tmp_path)

    # the student learns: every parameter but the (never used) mask token got a gradient
    assert (
        record.grads["student.backbone.blocks.0.attn.qkv.weight"]
        and record.grads["student.ibot_head.prototypes"]
    )
    assert {n for n, g in record.grads.items() if n.startswith("student.") and not g} == {
        "student.backbone.mask_token"
    }
    # the teacher does not: no gradient, no change, always in eval mode, no grad through its targets
    assert all(p.grad is None and not p.requires_grad for p in model.frozen_teacher.parameters())
    for name, value in model.frozen_teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name]), name
    model.train()
    assert not model.frozen_teacher.training and not model.teacher.training
    assert not any(out["teacher_probs"].requires_grad for out in record.outputs)
    optimised = {id(p) for group in model.configure_optimizers().param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.student.parameters() if p.requires_grad}

    # the EMA of the student, computed by hand: e1 = 0.5 e0 + 0.5 s1, e2 = 0.625 e1 + 0.375 s2,
    # e3 = 0.875 e2 + 0.125 s3
    s1, s2, s3 = record.students
    for name, ema in model.teacher.named_parameters():
        e1 = 0.5 * ema_start[name] + 0.5 * s1[name]
        e2 = 0.625 * e1 + 0.375 * s2[name]
        torch.testing.assert_close(ema, 0.875 * e2 + 0.125 * s3[name], atol=1e-6, rtol=1e-5, msg=name)
    moved = (
        (s2["backbone.blocks.0.attn.qkv.weight"] - ema_start["backbone.blocks.0.attn.qkv.weight"]).abs().max()
    )
    assert moved > 1e-4  # the steps moved the student: EMA and student differ, the check bites

    # evaluation reads the EMA student: forward() equals a backbone holding the hand-computed EMA weights
    by_hand = toy_backbone()
    by_hand.load_state_dict(
        {
            n.removeprefix("backbone."): v
            for n, v in model.teacher.state_dict().items()
            if n.startswith("backbone.")
        }
    )
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), by_hand.eval()(images), atol=1e-5, rtol=1e-5)
        assert (model(images) - model.student["backbone"](images)).abs().max() > 1e-4
    # the step's features (probe, health) are the EMA student's too
    assert record.outputs[-1]["features"].shape == (4, 24)


def test_no_masks_means_every_patch_token_of_both_global_crops(tmp_path):
    model = build("distill", 4)
    batch = global_batch("distill", 4, seed=0)
    batch.masks, batch.mask_indices = None, None
    globals_ = torch.cat(batch.global_crops)
    selected, indices = model.ibot_positions(batch, globals_)
    assert selected.shape == (8, 16) and bool(selected.all())  # 2 crops x 4 images, 4x4 grid
    assert torch.equal(indices, torch.arange(8 * 16))
    record = StepRecorder()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[record], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, torch.utils.data.DataLoader([batch], batch_size=None))
    assert torch.isfinite(record.outputs[0]["loss"]) and record.grads["student.ibot_head.prototypes"]


def test_student_heads_take_the_teacher_prototypes_and_widths_may_differ():
    model = build("distill", 4)
    assert model.student["dino_head"].prototypes.shape == (32, 8)  # teacher: 32 prototypes, bottleneck 6
    assert model.student["ibot_head"].prototypes.shape == (16, 8)
    assert model.embed_dim == 24 and model.frozen_teacher.embed_dim == 32


def test_patch_sizes_must_match():
    teacher = DistillationTeacher(
        MaskedViT(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2), DINOHead(32, 8, 16, 4)
    )
    optim = OptimConfig(batch_size_per_device=4)
    with pytest.raises(ValueError, match="teacher's patch size 8 differs from the student's 4"):
        Distillation(toy_backbone(), optim, teacher)


# ---------------------------------------------------------------- teachers from our own checkpoints


@pytest.fixture(scope="module")
def dinov2_checkpoint(tmp_path_factory) -> Path:
    """A DINOv2 run on fake data (ViT-test, 4x4 grid, 64 prototypes) trained for 2 steps: the teacher."""
    out = tmp_path_factory.mktemp("dinov2")
    run = ["method=dinov2", "method.out_dim=64", "trainer.max_steps=2", "callbacks=checkpoint"]
    return Path(train(compose_train_cfg(out, [*TINY_RUN, *run]))["checkpoints"]["last"])


def test_teacher_from_a_dinov2_run_has_its_ema_backbone_and_both_heads(dinov2_checkpoint):
    teacher = load_distillation_teacher(str(dinov2_checkpoint))
    state = torch.load(dinov2_checkpoint, weights_only=True)["state_dict"]
    for prefix, network in [
        ("backbone", teacher.backbone),
        ("dino_head", teacher.dino_head),
        ("ibot_head", teacher.ibot_head),
    ]:
        own = network.state_dict()
        assert own, prefix
        for name, value in own.items():
            assert torch.equal(value, state[f"teacher.{prefix}.{name}"]), f"{prefix}.{name}"
    assert teacher.embed_dim == 48 and teacher.patch_size == 8
    assert teacher.prototypes(teacher.dino_head) == teacher.prototypes(teacher.patch_head) == 64
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.train().training


def _derived(checkpoint: Path, out: Path, rename: dict[str, str], method: dict[str, Any]) -> Path:
    """The checkpoint with its teacher heads renamed and its stored method config replaced."""
    data = torch.load(checkpoint, weights_only=True)
    renamed = {}
    for key, value in data["state_dict"].items():
        for old, new in rename.items():
            if key.startswith(old):
                key = new + key.removeprefix(old) if new else ""  # "": dropped
        if key:
            renamed[key] = value
    data["state_dict"] = renamed
    data["sslvit_config"]["method"] = method
    torch.save(data, out)
    return out


SHARED_HEAD = {"teacher.dino_head.": "teacher.head.", "teacher.ibot_head.": ""}
SEPARATE_HEADS = {"teacher.dino_head.": "teacher.head.", "teacher.ibot_head.": "teacher.patch_head."}
NO_HEADS = {"teacher.dino_head.": "", "teacher.ibot_head.": ""}


def test_teacher_from_an_ibot_run_and_refusals(dinov2_checkpoint, tmp_path):
    ibot = "sslvit.methods.IBOT"
    # iBOT with one head for CLS and patches: the patch head is that head
    shared = _derived(
        dinov2_checkpoint, tmp_path / "a.ckpt", SHARED_HEAD, {"_target_": ibot, "shared_head": True}
    )
    teacher = load_distillation_teacher(str(shared))
    assert teacher.ibot_head is None and teacher.patch_head is teacher.dino_head
    # iBOT with a separate patch head
    separate = _derived(dinov2_checkpoint, tmp_path / "b.ckpt", SEPARATE_HEADS, {"_target_": ibot})
    teacher = load_distillation_teacher(str(separate))
    assert teacher.ibot_head is not None and teacher.patch_head is teacher.ibot_head
    # DINO: a CLS head only
    dino = _derived(dinov2_checkpoint, tmp_path / "c.ckpt", SHARED_HEAD, {"_target_": "sslvit.methods.DINO"})
    with pytest.raises(ValueError, match=r"no patch head \(a DINO run\)"):
        load_distillation_teacher(str(dino))
    # a run without DINO heads at all (BEiT-like)
    headless = _derived(dinov2_checkpoint, tmp_path / "d.ckpt", NO_HEADS, {"_target_": "sslvit.methods.BEiT"})
    with pytest.raises(ValueError, match=r"holds no DINO head \(sslvit.methods.BEiT\)"):
        load_distillation_teacher(str(headless))
    # a bare backbone file (what the releases are): refused, naming its layout
    bare = tmp_path / "backbone.pth"
    torch.save(load_distillation_teacher(str(dinov2_checkpoint)).backbone.state_dict(), bare)
    with pytest.raises(ValueError, match=r"is ViT weights \(sslvit layout\), not a checkpoint"):
        load_distillation_teacher(str(bare))
    with pytest.raises(ValueError, match=r"method=distill needs a teacher: teacher.path="):
        load_distillation_teacher(None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_distillation_teacher(str(tmp_path / "missing.ckpt"))


def test_train_py_distils_a_narrower_student_and_exports_the_ema_student(dinov2_checkpoint, tmp_path):
    # `python train.py method=distill backbone=vit_test teacher.path=... data=fake` for 3 steps, a
    # 32-d student of the 48-d teacher
    overrides = [
        *TINY_RUN, "method=distill", f"teacher.path={dinov2_checkpoint}", "backbone.embed_dim=32",
        "trainer.max_steps=3", "callbacks=checkpoint",
    ]  # fmt: skip
    cfg = compose_train_cfg(tmp_path, overrides)
    assert cfg.backbone.drop_path_rate == 0.0 and cfg.data.masking.mask_probability == 0.5
    summary = train(cfg)
    metrics = summary["metrics"]
    for key in ("train/dino_loss", "train/ibot_loss", "train/koleo_loss"):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    assert metrics["train/loss"] == pytest.approx(
        metrics["train/dino_loss"] + metrics["train/ibot_loss"] + 0.1 * metrics["train/koleo_loss"], rel=1e-4
    )

    checkpoint = summary["checkpoints"]["last"]
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert state["student.dino_head.prototypes"].shape[0] == 64  # the teacher's prototype count
    assert state["student.backbone.cls_token"].shape[-1] == 32
    source = torch.load(dinov2_checkpoint, weights_only=True)["state_dict"]
    for key, value in source.items():  # the frozen teacher, stored with the run, unchanged by 3 steps
        if key.startswith("teacher."):
            assert torch.equal(state[f"frozen_{key}"], value), key
    # eval.py / export read the EMA student (teacher.backbone.*), not the student
    backbone, _, _ = load_backbone(checkpoint)
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, state[f"teacher.backbone.{name}"]), name
    differs = (
        state["teacher.backbone.blocks.0.attn.qkv.weight"]
        - state["student.backbone.blocks.0.attn.qkv.weight"]
    )
    assert differs.abs().max() > 1e-6


def test_recipes_compose_with_their_values():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        demo = compose(
            config_name="config", overrides=["experiment=distill_vit_test7_fashion_mnist", "teacher.path=/t"]
        )
        paper = compose(
            config_name="config",
            overrides=["experiment=distill_vit_small14_from_large_imagenet", "teacher.path=/t"],
        )
    # the demo: a 48-d student on the DINOv2 demo teacher's 7-px grid, 2 x 200 steps, DINOv2's demo peak lr
    assert demo.backbone.embed_dim == 48 and demo.backbone.patch_size == 7 and demo.data.masking is not None
    assert demo.trainer.limit_train_batches == 200 and demo.method.ema_momentum == 0.99
    assert demo.method.optim.base_lr * (32 / 2048) ** 0.5 == pytest.approx(7.1e-4, rel=0.01)
    # the paper: ViT-S/14, no stochastic depth, lr 1e-3 at the global batch of 2048 (128 x 16 GPUs)
    assert paper.backbone.embed_dim == 384 and paper.backbone.patch_size == 14
    assert paper.backbone.drop_path_rate == 0.0 and paper.method.ema_momentum == 0.994
    assert paper.data.batch_size * 16 == paper.method.optim.lr_reference_batch == 2048
    assert paper.method.optim.base_lr == 1e-3 and paper.data.transform.num_local_crops == 8
