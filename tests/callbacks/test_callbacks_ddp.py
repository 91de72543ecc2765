"""Callbacks under DDP (2 CPU processes, gloo, subprocess) give the single-process answer."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from two_processes import load_worker as load_two_process_worker
from two_processes import run_on_two_processes

from sslvit.callbacks import LinearProbe

WORKER = Path(__file__).with_name("ddp_callbacks_worker.py")


def _worker_module() -> ModuleType:
    return load_two_process_worker(WORKER)


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp_callbacks")
    run_on_two_processes(WORKER, out)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.ddp
def test_features_are_gathered_deduplicated_and_ordered(ddp_results: list[dict]) -> None:
    images, labels = _worker_module().eval_set()
    for result in ddp_results:  # every rank holds the 7 samples, padding removed, in dataset order
        assert result["world"] == 2
        torch.testing.assert_close(result["features"], images.flatten(1))
        assert torch.equal(result["labels"], labels)


@pytest.mark.ddp
def test_probe_step_matches_global_batch_step(ddp_results: list[dict]) -> None:
    worker = _worker_module()
    feats, targets = worker.probe_batch()
    keep = targets >= 0
    reference = LinearProbe(lr=0.1)
    reference._build(worker.DIM, worker.CLASSES, torch.device("cpu"))
    F.cross_entropy(reference.probe(feats[keep]), targets[keep]).backward()  # mean over the 7 labelled rows
    reference.optimizer.step()
    for result in ddp_results:  # identical copies, equal to one process stepping on the global batch
        torch.testing.assert_close(result["probe"]["weight"], reference.probe.weight.detach())
        torch.testing.assert_close(result["probe"]["bias"], reference.probe.bias.detach())


@pytest.mark.ddp
def test_pixel_knn_of_shards_equals_one_process(ddp_results: list[dict]) -> None:
    worker = _worker_module()
    bank, queries = worker.pixel_sets()
    expected = worker.pixel_floor(
        DataLoader(TensorDataset(*bank, torch.arange(7)), batch_size=3),
        DataLoader(TensorDataset(*queries, torch.arange(41)), batch_size=8),
    )
    assert set(expected) == {"pixels", "pixels_centered"}
    for result in ddp_results:  # padding dropped, shards merged, the bank mean counted once per sample
        for name, accuracy in expected.items():
            assert result["pixels"][name] == pytest.approx(accuracy), name
