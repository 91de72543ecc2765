"""benchmarks.report turns the benchmark JSON into the docs' benchmark tables, judged against the targets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks import report


def step_row(label: str, method: str, arch: str, img_s: float, mfu800: float, mem: float) -> dict:
    return {"label": label, "method": method, "arch": arch, "img_per_s": img_s, "ms_per_step": 128e3 / img_s,
            "mfu": mfu800 * 1.05, "mfu_protocol_800": mfu800, "peak_mem_gib": mem}  # fmt: skip


def test_target_verdict_checks_throughput_mfu_and_memory() -> None:
    fast = step_row("dinov2 ViT-B/14 optimised", "dinov2", "vit_base", 620.0, 0.46, 50.0)
    assert report.target_verdict(fast) == "met ≥ 607 img/s, MFU@800 ≥ 45%, ≤ 54.9 GiB"
    heavy = {**fast, "peak_mem_gib": 60.0, "img_per_s": 500.0}
    assert report.target_verdict(heavy) == "met MFU@800 ≥ 45%; missed ≥ 607 img/s, ≤ 54.9 GiB"
    dino = step_row("dino ViT-S/14 optimised", "dino", "vit_small", 1700.0, 0.3, 30.0)
    # DINO's memory is not capped by the official DINOv2 code's figure; its throughput target applies
    assert report.target_verdict(dino) == "missed ≥ 1,800 img/s"
    assert report.target_verdict(step_row("x", "ibot", "vit_small", 1.0, 0.1, 1.0)) == ""


def write_folder(folder: Path) -> None:
    rows = [
        step_row("dinov2 ViT-B/14 optimised", "dinov2", "vit_base", 620.0, 0.46, 50.0),
        step_row("dinov2 ViT-S/14 baseline", "dinov2", "vit_small", 900.0, 0.19, 20.0),
        step_row("dinov2 ViT-S/14 optimised, packed crops", "dinov2", "vit_small", 1500.0, 0.31, 19.0),
        step_row("dinov2 ViT-S/14 + fused AdamW", "dinov2", "vit_small", 950.0, 0.2, 20.0),
        {"label": "ibot ViT-B/14 baseline", "error": "skipped: --budget-s reached"},
    ]
    versions = {"python": "3.12.3", "torch": "2.14", "timm": "1.0.31", "lightning": "2.6.6", "triton": None,
                "cudnn": "91900", "cuda": "13.0"}  # fmt: skip
    step = {"device": "NVIDIA H200", "torch": "2.14", "versions": versions, "peak_tflops_measured": 790.0,
            "rows": rows}  # fmt: skip
    (folder / "step.json").write_text(json.dumps(step))
    loader = {"folder": "8 synthetic 500x375 JPEGs", "images_in_folder": 8, "batch": 4, "method": "dinov2",
              "crops": "2x224 + 8x98", "device_ops": None,
              "rows": [{"workers": 4, "img_per_s": 88.0}, {"workers": 8, "img_per_s": 170.0}],
              "transfer": {"mb_per_batch": 68.2, "copy_ms": 3.14, "mb_per_batch_float32_crops": 272.4,
                           "copy_ms_float32_crops": 11.92}}  # fmt: skip
    (folder / "data.json").write_text(json.dumps(loader))
    crops = {**loader, "rows": [{"workers": 8, "img_per_s": 1300.0}], "transfer": None,
             "device_ops": {"device": "cuda", "ms_per_batch": 9.5, "img_per_s": 13474.0}}  # fmt: skip
    (folder / "data_crops.json").write_text(json.dumps(crops))


def test_blocks_split_table_rows_from_switch_rows(tmp_path: Path) -> None:
    write_folder(tmp_path)
    blocks = report.blocks(tmp_path)
    assert set(blocks) == {"step", "switches", "loader"}
    step_lines = blocks["step"].splitlines()
    assert step_lines[0].startswith(
        "NVIDIA H200, torch 2.14, timm 1.0.31, lightning 2.6.6, cudnn 91900, cuda 13.0, measured matmul peak "
        "790 TFLOP/s"
    )
    assert step_lines[0].endswith(
        "on an H100; an H200 has the H100's bf16 peak but 1.4x its memory bandwidth (4.8 vs 3.35 TB/s), "
        "which favours memory-bound work"
    )
    assert (
        "| dinov2 ViT-B/14 optimised | 620 | 206.5 | 48.3% | 46.0% | 50.0 | 367 (54.9), official"
        in blocks["step"]
    )
    assert "| dinov2 ViT-S/14 optimised, packed crops | 1,500 |" in blocks["step"]
    assert "| ibot ViT-B/14 baseline | skipped: --budget-s reached |" in blocks["step"]
    assert (
        "fused AdamW" not in blocks["step"]
        and "| dinov2 ViT-S/14 + fused AdamW | 950 |" in blocks["switches"]
    )
    loader = blocks["loader"].splitlines()
    assert loader[0] == (
        "| loader | 4 workers img/s | 8 workers img/s | MB/batch, copy ms | device stage ms/batch (img/s) |"
    )
    assert loader[2] == (
        "| the recipe in the workers, uint8 crops normalised on the device (default) | 88 | 170 "
        "| 68, 3.14 (float32 crops: 272, 11.92) | — |"
    )
    assert loader[3] == "| `data.transform.device_stage=crops` | — | 1,300 | — | 9.5 (13,474), cuda |"


def test_readme_blocks_are_rewritten_in_place(tmp_path: Path) -> None:
    write_folder(tmp_path)
    readme = tmp_path / "README.md"
    marked = "".join(
        f"<!-- bench:{n} -->\nold {n}\n<!-- /bench:{n} -->\n" for n in ("step", "switches", "loader")
    )
    readme.write_text("intro\n" + marked + "outro\n")
    report.main([str(tmp_path), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("intro\n<!-- bench:step -->\nNVIDIA H200") and text.endswith(
        "<!-- /bench:loader -->\noutro\n"
    )
    assert "old" not in text and text.count("<!-- bench:") == 3
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no block <!-- bench:step -->"):
        report.main([str(tmp_path), "--readme", str(readme)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"holds none of step\.json"):
        report.main([str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="no such folder"):
        report.main([str(tmp_path / "missing")])
