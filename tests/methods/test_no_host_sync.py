"""The training step calls no op that makes the host wait for the device.

On a GPU, ``.item()`` / ``bool(tensor)``, boolean-mask indexing, ``nonzero``, ``unique`` and their kin
must copy a value back before Python can go on, which stalls the queue of kernels every step. Their
aten ops are the same on the CPU, so a dispatch mode can catch them here: it watches the step (the
batch-start hook, forward, backward, schedules, last-layer freeze, clipping, EMA update) but not the
optimizer's own ``step()``, whose CPU step counters are host tensors on a GPU too.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks.build import RunSpec, build_method, compose_cfg, synthetic_batch
from benchmarks.sync_audit import SyncWatch, audit, audit_step
from benchmarks.timing import attach_trainer, forward_backward, set_global_step
from sslvit.backbones import MaskedViT
from sslvit.data.batch import MaskedImageBatch
from sslvit.losses import SinkhornKnopp
from sslvit.methods import BEiT, BEiTv2, OptimConfig
from sslvit.tokenizers import DVAE


def watched_step(method: Any, trainer: Any, batch: Any, step: int) -> list[str]:
    """One optimizer step in Lightning's order; returns the syncing ops seen outside ``optimizer.step``."""
    optimizer = method.configure_optimizers()
    set_global_step(trainer, step)
    watch = SyncWatch("cpu")
    with watch:
        method.on_train_batch_start(batch, 0)  # e.g. the Gram teacher's refresh
        values = method.apply_schedules(optimizer, step)
        method.optimizer_zero_grad(0, step, optimizer)
        forward_backward(method, trainer, batch, step)
        method.on_before_optimizer_step(optimizer)
        method.configure_gradient_clipping(optimizer)
    optimizer.step()
    with watch:
        method.after_optimizer_step(values)
    return watch.seen


@pytest.mark.parametrize(
    ("method", "switches"),
    [
        ("dino", []),
        ("ibot", []),
        ("dinov2", []),
        # Gram anchoring at a step that refreshes the Gram teacher, which sees 2x crops.
        ("dinov2", ["method.gram.enabled=true", "method.gram.refresh_every=1"]),
        # Packed crops and stochastic depth on the kept samples draw their subsets on the device too.
        ("dinov2", ["backbone.pack_crops=true", "backbone.drop_path_rate=0.3"]),
        (
            "dino",
            ["backbone.pack_crops=true", "backbone.drop_path_rate=0.3", "backbone.drop_path_subset=false"],
        ),
    ],
)
def test_multicrop_steps_do_not_sync(method: str, switches: list[str]) -> None:
    spec = RunSpec(
        method=method, arch="vit_test", patch=8, global_size=32, local_size=16, num_local=2, batch=4,
        precision="32", fused_adamw=False,
        overrides=["method.out_dim=64", "method.hidden_dim=32", "method.bottleneck_dim=16", *switches],
    )  # fmt: skip
    device = torch.device("cpu")
    cfg = compose_cfg(spec, device)
    model = build_method(cfg, device)
    batch = synthetic_batch(cfg, device)
    trainer = attach_trainer(model, cfg, total_steps=4)
    assert (batch.masks is not None) == (method != "dino")
    assert watched_step(model, trainer, batch, 1) == []


def _mim_batch() -> MaskedImageBatch:
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(2, 16, generator=g) < 0.4
    return MaskedImageBatch(
        images=torch.randn(2, 3, 16, 16, generator=g),
        labels=torch.zeros(2, dtype=torch.long),
        tokenizer_images=torch.rand(2, 3, 16, 16, generator=g),
        masks=masks,
    )


def _mim_model(name: str) -> tuple[Any, Any]:
    torch.manual_seed(0)
    backbone = MaskedViT(img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=2, rel_pos_bias=True)
    tokenizer = DVAE(vocab_size=8, downsample=4, hidden_dim=4, input_kernel=3)  # 16-px view -> 4x4 ids
    optim = OptimConfig(warmup_epochs=0, batch_size_per_device=2)
    model = BEiT(backbone, optim, tokenizer) if name == "beit" else BEiTv2(backbone, optim, tokenizer)
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "precision": "32-true"}})
    return model, attach_trainer(model, cfg, total_steps=4)


@pytest.mark.parametrize("name", ["beit", "beitv2"])
def test_masked_image_modelling_steps_do_not_sync(name: str) -> None:
    model, trainer = _mim_model(name)
    assert watched_step(model, trainer, _mim_batch(), 1) == []


@pytest.mark.parametrize("name", ["beit", "beitv2"])
def test_masked_image_modelling_steps_do_not_sync_on_fake_cuda(name: str) -> None:
    model, trainer = _mim_model(name)
    assert audit_step(model, _mim_batch(), trainer) == []


def test_the_watch_sees_what_it_should() -> None:
    x, masks = torch.randn(2, 3), torch.tensor([[True, False, True], [False, False, True]])
    with SyncWatch("cpu") as watch:
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        x[masks], x.sum().item(), torch.unique(masks)
    assert [s.split(" at ")[0] for s in watch.seen] == [
        "aten::index (bool mask)",
        "aten::_local_scalar_dense",
        "aten::_unique2",
    ]
    assert all(s.endswith(f"tests/methods/test_no_host_sync.py:{line}") for s in watch.seen)


# On fake CUDA tensors the host-device copies show too: torch.tensor(x, device=...), .to(device) of a host
# tensor, .cpu(). Forward, losses, centre and EMA updates are watched; backward is not (see sync_audit).
TINY_SPEC = RunSpec(
    arch="vit_test", patch=8, global_size=32, local_size=16, num_local=2, batch=4,
    overrides=["method.out_dim=64", "method.patch_out_dim=64", "method.hidden_dim=32",
               "method.bottleneck_dim=16"],
)  # fmt: skip


@pytest.mark.parametrize(
    ("method", "switches"),
    [
        ("dino", []),
        ("ibot", []),
        ("dinov2", []),
        (
            "dinov2",
            ["backbone.pack_crops=true", "backbone.drop_path_rate=0.3", "backbone.num_register_tokens=2"],
        ),
        ("dinov2", ["method.gram.enabled=true", "method.gram.refresh_every=1"]),
        (
            "dino",
            ["backbone.pack_crops=true", "backbone.drop_path_rate=0.3", "backbone.drop_path_subset=false"],
        ),
    ],
)
def test_multicrop_steps_do_not_sync_on_fake_cuda(method: str, switches: list[str]) -> None:
    spec = dataclasses.replace(TINY_SPEC, method=method, overrides=[*TINY_SPEC.overrides, *switches])
    if method == "dino":
        spec.overrides.remove("method.patch_out_dim=64")
    assert audit(spec) == []


def test_fake_cuda_audit_names_a_host_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The Sinkhorn-Knopp sample count as it once was: a tensor made from a host number on the device.
    def count_from_host(self: Any, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        total = torch.tensor(float(teacher_logits.shape[0]), device=teacher_logits.device)
        return torch.softmax(teacher_logits.float() / temperature, dim=-1) * total / total

    monkeypatch.setattr(SinkhornKnopp, "probs", count_from_host)
    seen = audit(dataclasses.replace(TINY_SPEC, method="dinov2"), steps=1)
    assert seen and all(
        s.startswith("blocking copy cpu -> cuda at tests/methods/test_no_host_sync.py") for s in seen
    )
