"""benchmarks.step runs the real step (outside Lightning and through Trainer.fit) and reports sane fields.

Timings are never asserted: only that the report has every field, with positive values.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import pytest
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks import step, timing

TINY = [
    "--arch", "vit_test", "--patch", "8", "--global-size", "32", "--local-size", "16", "--num-local", "2",
    "--batch", "4", "--warmup", "1", "--steps", "2", "--precision", "32", "--device", "cpu",
    "--override", "method.out_dim=64", "--override", "method.hidden_dim=32",
    "--override", "method.bottleneck_dim=16",
]  # fmt: skip
POSITIVE = ["ms_per_step", "img_per_s", "gflop_per_img", "achieved_tflops", "peak_tflops_measured", "mfu"]


@pytest.fixture
def one_thread():
    # The test machine's cores are shared; one thread keeps a tiny model's step from stalling.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("mode", ["step", "fit", "fit-callbacks"])
def test_step_benchmark_writes_complete_json(mode: str, tmp_path: Path, one_thread: None) -> None:
    out = tmp_path / "bench.json"
    report = step.main([*TINY, "--method", "dinov2", "--mode", mode, "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    versions = saved["versions"]
    assert versions["torch"] == torch.__version__ and versions["timm"] == timm.__version__
    assert versions["cuda"] == torch.version.cuda  # None on a CPU-only build
    (row,) = saved["rows"]
    assert row["mode"] == mode and row["method"] == "dinov2" and row["batch"] == 4
    assert row["steps_timed"] == 2  # warm-up steps are excluded from the median
    for key in POSITIVE:
        assert row[key] > 0, key
    assert row["img_per_s"] == pytest.approx(4 / (row["ms_per_step"] / 1e3))
    assert row["peak_mem_gib"] is None and row["peak_rss_gib"] > 0  # CPU: RSS only
    assert row["mfu_protocol_800"] is None  # the 800 TFLOP/s reference is a GPU figure
    assert row["loss_last"] is not None and torch.isfinite(torch.tensor(row["loss_last"]))
    assert row["flops_source"].startswith("counted")


def test_suite_lists_the_readme_table() -> None:
    specs = step.suite_specs("table", step.RunSpec())
    assert len(specs) == 12
    assert {(s.method, s.arch) for s in specs} == {
        (m, a) for m in ("dino", "ibot", "dinov2") for a in ("vit_small", "vit_base")
    }
    # every (method, arch) once eager with torch's AdamW, once compiled with the fused one
    assert sorted((s.fused_adamw, s.compile) for s in specs) == [(False, False)] * 6 + [(True, True)] * 6
    assert all(s.precision == "bf16-mixed" and s.sdpa and s.batch == 128 for s in specs)
    # a run cut short by --budget-s still has the rows with a target, optimised before baseline
    assert [s.label for s in specs[:3]] == [
        "dinov2 ViT-B/14 optimised", "dinov2 ViT-S/14 optimised", "dino ViT-S/14 optimised"
    ]  # fmt: skip


def test_suite_all_times_the_target_rows_packed_before_the_rest() -> None:
    specs = step.suite_specs("all", step.RunSpec())
    packed = specs[6:9]
    assert [(s.method, s.arch) for s in packed] == [(s.method, s.arch) for s in specs[:3]]
    assert all(s.pack_crops and s.compile and s.fused_adamw for s in packed)
    assert not any(s.pack_crops for s in specs[:6])
    assert len({s.label for s in specs}) == len(specs)  # no row timed twice


def test_fit_callbacks_mode_runs_the_per_step_callbacks(
    tmp_path: Path, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    class Recorder(L.Callback):
        def on_train_batch_end(self, *args: object) -> None:
            seen.append("batch")

    made = timing.per_step_callbacks()
    assert {type(c).__name__ for c in made} == {"FiniteLossGuard", "HealthMonitor", "StepSeeder"}
    monkeypatch.setattr(timing, "per_step_callbacks", lambda: [*made, Recorder()])
    step.main([*TINY, "--method", "dino", "--mode", "fit-callbacks", "--json", str(tmp_path / "b.json")])
    assert len(seen) == 3  # one per step: warm-up 1 + 2 timed
