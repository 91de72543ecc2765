"""The data-pipeline benchmark runs on a few synthetic JPEGs (a smoke test: no timing is asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks import data as data_bench

SMALL = ["--synthetic", "8", "--workers", "0", "--batches", "1", "--batch", "4", "--patch", "8",
         "--global-size", "32", "--local-size", "16", "--num-local", "2"]  # fmt: skip


# Crop bytes of one batch of 4: 2 x 3 x 32^2 + 2 x 3 x 16^2 per image.
CROP_BYTES = 4 * (2 * 3 * 32 * 32 + 2 * 3 * 16 * 16)


@pytest.mark.parametrize("stage", [None, "photometric", "crops", "none"])
def test_data_benchmark_reports_rows_transfer_and_the_device_stage(tmp_path, stage):
    out = tmp_path / "data.json"
    argv = [*SMALL, "--json", str(out)] + (["--device-stage", stage] if stage else [])
    report = data_bench.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    (row,) = report["rows"]
    assert row["workers"] == 0 and row["images"] == 4 and row["img_per_s"] > 0
    assert row["cpu_ms_per_img"] > 0  # loaded in this process: its CPU time counts
    assert report["device_stage"] == (stage or "normalize")
    transfer = report["transfer"]
    assert transfer["copy_ms"] is None  # no GPU here: bytes only
    if stage == "none":  # normalised float32 crops: 4 bytes a value
        assert report["device_ops"] is None
        assert 4 * CROP_BYTES < transfer["mb_per_batch"] * 1e6 < 4 * CROP_BYTES + 1000
        assert "mb_per_batch_float32_crops" not in transfer
    else:  # uint8 crops (or whole uint8 images), converted on the device
        assert report["device_ops"]["ms_per_batch"] > 0 and report["device_ops"]["device"] == "cpu"
    if stage in (None, "photometric"):
        assert CROP_BYTES < transfer["mb_per_batch"] * 1e6 < CROP_BYTES + 1000  # + labels, masks
        assert transfer["mb_per_batch_float32_crops"] * 1e6 == pytest.approx(
            transfer["mb_per_batch"] * 1e6 + 3 * CROP_BYTES
        )


def test_device_check_script_writes_every_json(tmp_path):
    """benchmarks/device_check.sh is what a GPU session runs in one go: keep it working (tiny settings)."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # python3 = this venv
        "STEP_ARGS": "--method dino --arch vit_test --patch 8 --global-size 32 --local-size 16 --num-local 2 "
        "--batch 4 --warmup 0 --steps 1 --precision 32 --device cpu",
        "DATA_ARGS": "--batch 4 --patch 8 --global-size 32 --local-size 16 --num-local 2",
        "PATCH_LOSS_ARGS": "--rows 16 --prototypes 64 --repeats 1 --device cpu",
        "N_JPEGS": "8",
        "WORKERS": "0",
    }
    subprocess.run(["bash", "benchmarks/device_check.sh", str(tmp_path)], cwd=root, env=env, check=True,
                   capture_output=True)  # fmt: skip
    assert "16 x 64 bf16 logits: SinkhornKnopp(3)" in (tmp_path / "patch_loss.txt").read_text()
    names = ["step.json", "data.json", "data_photometric.json", "data_crops.json"]
    reports = {name: json.loads((tmp_path / name).read_text()) for name in names}
    assert reports["step.json"]["rows"][0]["img_per_s"] > 0
    assert reports["data_crops.json"]["device_stage"] == "crops" and reports["data_crops.json"]["device_ops"]
    # ... and ends with the benchmark tables made from them
    assert "<!-- bench:step -->" in (tmp_path / "report.md").read_text()
    assert "<!-- bench:loader -->" in (tmp_path / "report.md").read_text()


def test_synthetic_size_is_used_and_checked(tmp_path):
    from PIL import Image

    report = data_bench.main([*SMALL, "--synthetic-size", "96x64", "--folder", str(tmp_path)])
    assert report["images_in_folder"] == 8

    assert {Image.open(p).size for p in tmp_path.glob("*.jpg")} == {(96, 64)}
    with pytest.raises(SystemExit, match="WxH"):
        data_bench.main([*SMALL, "--synthetic-size", "96by64"])
