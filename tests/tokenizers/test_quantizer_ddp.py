"""The codebook update under 2 CPU processes (gloo) equals one process on the concatenated batch."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("quantizer_ddp_worker.py")


def load_worker():
    spec = importlib.util.spec_from_file_location("quantizer_ddp_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    return worker


@pytest.mark.ddp
def test_two_processes_update_the_codebook_like_one(tmp_path):
    out = tmp_path / "results.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0"]
    cmd += ["--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", str(WORKER), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = torch.load(out)
    assert results["world"] == 2

    worker = load_worker()
    single = worker.make_quantizer()
    last_ids = None
    for batch in worker.global_batches():
        last_ids = single(batch).ids
    expected = worker.state(single)
    rank0, rank1 = results["states"]
    assert torch.equal(rank0, rank1)  # every process holds the same codebook
    assert torch.allclose(rank0, expected, atol=1e-5)
    assert torch.equal(results["last_ids"], last_ids)

    # and a process that only saw its own half would have another codebook
    half = worker.make_quantizer()
    for batch in worker.global_batches():
        half(batch[:12])
    assert not torch.allclose(worker.state(half), expected, atol=1e-3)
