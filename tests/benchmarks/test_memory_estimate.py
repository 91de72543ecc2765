"""benchmarks.memory counts the bytes a step keeps alive, on fake tensors (no data, any machine)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks import memory
from benchmarks.build import RunSpec

MIB = 2**20
TINY = RunSpec(method="dinov2", arch="vit_test", patch=8, global_size=32, local_size=16, num_local=2, batch=4,
               overrides=["method.out_dim=64", "method.patch_out_dim=64", "method.hidden_dim=32",
                          "method.bottleneck_dim=16"])  # fmt: skip


def test_live_bytes_follow_allocations_frees_and_views() -> None:
    live = memory.LiveTensorBytes()
    with FakeTensorMode(), live:
        a = torch.empty(1024, 1024)  # 4 MiB
        b = torch.empty(1024, 1024)
        view = a[:10]  # a view: no new storage
        del a
        assert live.now == 8 * MIB  # `view` keeps a's storage alive
        del view
        assert live.now == 4 * MIB
        c = torch.empty(512, 1024, dtype=torch.bfloat16)  # 1 MiB
        assert live.now == 5 * MIB
        del b, c
    assert live.peak == 8 * MIB and live.now == 0
    assert live.by_op_at_peak[("empty", "float32")] == 8 * MIB


def test_estimate_of_a_tiny_step_grows_with_the_batch(tmp_path: Path) -> None:
    small = memory.estimate(TINY)
    large = memory.estimate(dataclasses.replace(TINY, batch=16))
    assert 0 < small["state_gib"] < small["peak_gib_estimated"]
    # parameters and AdamW moments do not depend on the batch; activations do, about linearly
    activations = [r["peak_gib_estimated"] - r["state_gib"] for r in (small, large)]
    assert 2.5 < activations[1] / activations[0] < 4.5
    assert sum(t["gib"] for t in small["at_peak_gib"]) <= small["peak_gib_estimated"] + 1e-9


def test_cli_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    argv = ["--arch", "vit_test", "--patch", "8", "--global-size", "32", "--local-size", "16",
            "--num-local", "2", "--batch", "4", "--override", "method.out_dim=64",
            "--override", "method.patch_out_dim=64", "--json", str(out)]  # fmt: skip
    rows = memory.main(argv)
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(rows))
    assert rows[0]["method"] == "dinov2" and rows[0]["peak_gib_estimated"] > 0
