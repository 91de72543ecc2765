"""Every method trained by 2 processes on halves of a batch equals one process on the whole batch.

2 CPU processes (gloo) run the real LightningModules through ``Trainer.fit`` with a DDP strategy in a
subprocess (never ``strategy=ddp`` inside pytest: it would re-execute pytest); the one-process reference
runs here. Batches are fixed tensors split contiguously, drop path is 0, and the dVAE's Gumbel noise is a
fixed tensor whose rows follow the images. Where the official recipe is per-process by design (DINOv2's
KoLeo), the reference computes it per half (see the worker's ``PerShardKoLeo``).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from two_processes import load_worker as load_two_process_worker
from two_processes import run_on_two_processes

WORKER = Path(__file__).with_name("methods_ddp_worker.py")
TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def _worker() -> ModuleType:
    return load_two_process_worker(WORKER)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("methods_ddp")


@pytest.fixture(scope="module")
def ddp(out_dir: Path) -> dict[str, Any]:
    run_on_two_processes(WORKER, out_dir, timeout=400)
    return torch.load(out_dir / "ddp.pt", weights_only=False)


def rounding_only(name: str, value: torch.Tensor, batch_norm_head: bool) -> torch.Tensor:
    """Elements whose gradient is zero in exact arithmetic, so only rounding noise that depends on the split.

    An attention layer's key bias (softmax ignores a shift shared by all keys), and biases whose shift
    batch norm removes. Adam divides such noise by ~its own
    size and steps by up to lr in an arbitrary direction; the values never affect any output.
    """
    mask = torch.zeros_like(value, dtype=torch.bool)
    if name.endswith("attn.qkv.bias"):
        third = value.shape[0] // 3
        mask[third : 2 * third] = True  # q, k, v biases: the middle third
    # With batch norm in DINO's head (Linear, BN, GELU, ...) a shift shared by all images is removed: the
    # biases of the linear layers before BN, and of the backbone's final norm (the CLS token's only use).
    if batch_norm_head and re.search(r"(head\.mlp\.[03]|backbone\.norm)\.bias$", name):
        mask[:] = True
    return mask


@pytest.mark.ddp
@pytest.mark.parametrize(
    "run",
    ["dino", "ibot", "dinov2", "beit", "beitv2", "dvae", "vqkd", "distill", "dino_bn", "dinov2_gram"],
)
def test_two_processes_on_halves_equal_one_process_on_the_batch(ddp: dict, out_dir: Path, run: str) -> None:
    assert ddp["world"] == 2
    worker = _worker()
    single, shared = worker.train(run, out_dir / "single"), ddp[run]
    method, kwargs = worker.RUNS[run]
    initial = worker.toys.build(method, 8, **kwargs).state_dict()
    moved = 0.0
    # weights, EMA teacher, centers, codebook (and every other buffer)
    for name, value in single["state"].items():
        if value.is_floating_point():
            keep = ~rounding_only(name, value, batch_norm_head=bool(kwargs.get("use_bn_in_head")))
            torch.testing.assert_close(shared["state"][name][keep], value[keep], **TOLERANCE, msg=name)
            moved = max(moved, (value - initial[name]).abs().max().item())
        else:
            assert torch.equal(shared["state"][name], value), name
    assert moved > 1e-4  # the steps trained something: the comparison bites
    assert single["moments"].keys() == shared["moments"].keys() and single["moments"]
    for index, moments in single["moments"].items():
        for key, value in moments.items():
            torch.testing.assert_close(shared["moments"][index][key], value, **TOLERANCE)
    # the logged training metrics are those of the global batch, step by step
    assert len(single["logged"]) == len(shared["logged"]) == worker.STEPS
    for step, (one, two) in enumerate(zip(single["logged"], shared["logged"], strict=True)):
        assert one.keys() == two.keys() and "train/loss" in one
        for key, value in one.items():
            # the gradient norm, ~1e3 after the teacher's sharpening, carries the rounding of 3 steps
            rel = 1e-4 if key == "train/grad_norm" else 1e-5
            assert two[key] == pytest.approx(value, rel=rel, abs=1e-5), (step, key)


@pytest.mark.ddp
def test_global_batch_norm_over_uneven_shards_equals_batch_norm_on_the_whole_batch(ddp: dict) -> None:
    """3 + 5 rows on two processes: forward and gradients of batch norm on all 8 rows in one process."""
    worker = _worker()
    x = worker.norm_input().requires_grad_(True)
    reference = torch.nn.BatchNorm1d(6, track_running_stats=False)
    reference.load_state_dict(worker.norm_module().state_dict())
    out = reference(x)
    (out * worker.norm_target()).sum().backward()
    shared = ddp["batch_norm"]
    torch.testing.assert_close(shared["out"], out.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared["input_grad"], x.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared["weight_grad"], reference.weight.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared["bias_grad"], reference.bias.grad, atol=1e-5, rtol=1e-5)
    # per-process statistics would give another answer: the check bites
    per_process = reference(worker.norm_input()[:3]).detach()
    assert (per_process - shared["out"][:3]).abs().max() > 0.1
