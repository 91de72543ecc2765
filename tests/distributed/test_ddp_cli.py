"""Several training steps on 2 CPU processes through the real train.py (a subprocess, as a user runs it)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from method_toys import tiny_tokenizer

from sslvit.tokenizers import save_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.ddp
def test_default_trainer_on_two_devices_trains_beit_from_a_stage_one_file(tmp_path: Path) -> None:
    """`trainer.devices=2` on the default trainer (Lightning's own DDP choice) for 3 optimizer steps.

    BEiT reads its tokenizer from a stage-1 file (tokenizer.pt of a `method=dvae` run; here a tiny dVAE
    saved the same way), whose 4x downsampling turns the 16-px tokenizer view into the 4x4 patch grid of
    vit_test on 32-px fake images.
    """
    torch.manual_seed(0)
    tokenizer = save_tokenizer(tiny_tokenizer(), tmp_path / "stage1" / "tokenizer.pt")
    run = tmp_path / "beit"
    args = [
        "method=beit", "backbone=vit_test", "backbone.patch_size=8", "data=fake", "trainer.devices=2",
        "trainer.accelerator=cpu", "trainer.max_steps=3", "trainer.enable_progress_bar=false",
        "callbacks=checkpoint",
        f"tokenizer.path={tokenizer}", "tokenizer.downsample=4", f"hydra.run.dir={run}",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, "train.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert math.isfinite(summary["metrics"]["train/mim_loss"])
    checkpoint = torch.load(summary["checkpoints"]["last"], map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3
    assert (run / "train_ddp_process_1.log").exists()  # Lightning launched a second process
