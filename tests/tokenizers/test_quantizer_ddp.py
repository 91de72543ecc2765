"""Both codebook updates under 2 CPU processes (gloo) equal one process on the concatenated batch."""

from pathlib import Path

import pytest
import torch
from two_processes import load_worker as load_two_process_worker
from two_processes import run_on_two_processes

WORKER = Path(__file__).with_name("quantizer_ddp_worker.py")


def load_worker():
    return load_two_process_worker(WORKER)


@pytest.mark.ddp
def test_two_processes_update_the_codebook_like_one(tmp_path):
    out = tmp_path / "results.pt"
    run_on_two_processes(WORKER, out)
    results = torch.load(out)
    assert results["world"] == 2

    worker = load_worker()
    for rule in worker.RULES:
        single = worker.make_quantizer(rule)
        last_ids = None
        for batch in worker.global_batches():
            last_ids = single(batch).ids
        expected = worker.state(single)
        rank0, rank1 = results[rule]["states"]
        assert torch.equal(rank0, rank1), rule  # every process holds the same codebook
        assert torch.allclose(rank0, expected, atol=1e-5), rule
        assert torch.equal(results[rule]["last_ids"], last_ids), rule

        # and a process that only saw its own half would have another codebook
        half = worker.make_quantizer(rule)
        for batch in worker.global_batches():
            half(batch[:12])
        assert not torch.allclose(worker.state(half), expected, atol=1e-3), rule
