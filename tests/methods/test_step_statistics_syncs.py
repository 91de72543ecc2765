"""What runs beside every training step (health statistics, codebook counts and EMA) never makes a
GPU host wait: watched on fake CUDA tensors (``benchmarks.sync_audit.SyncWatch``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._subclasses.fake_tensor import DynamicOutputShapeException, FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks.fake import fake_copy, make_module_fake
from benchmarks.sync_audit import SyncWatch
from sslvit.callbacks import HealthMonitor
from sslvit.tokenizers.norm_ema_quantizer import NormEMAQuantizer
from sslvit.utils.id_counts import id_counts

CUDA = torch.device("cuda")


@pytest.mark.parametrize("shape", [(50,), (4, 7, 3)])
def test_id_counts_equal_bincount(shape: tuple[int, ...]) -> None:
    ids = torch.randint(0, 9, shape, generator=torch.Generator().manual_seed(0))
    counts = id_counts(ids, 12)
    assert counts.dtype == torch.int64 and torch.equal(counts, torch.bincount(ids.flatten(), minlength=12))


def test_id_counts_do_not_read_back_where_bincount_does() -> None:
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    ids = fake_copy(mode, torch.zeros(100, dtype=torch.long), CUDA)
    with mode, SyncWatch("cuda") as watch:
        id_counts(ids, 64)
    assert watch.seen == []
    with mode, SyncWatch("cuda") as watch, pytest.raises(DynamicOutputShapeException):
        torch.bincount(ids, minlength=64)  # its size depends on the data: fake tensors cannot even say it
    assert [s.split(" at ")[0] for s in watch.seen] == ["aten::bincount"]


def test_health_monitor_per_step_work_makes_no_host_wait() -> None:
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    probs = fake_copy(mode, torch.softmax(torch.randn(16, 64), dim=-1), CUDA)
    features = fake_copy(mode, torch.randn(8, 32), CUDA)
    monitor = HealthMonitor(every_n_steps=50)
    with mode, SyncWatch("cuda") as watch:
        for step in range(3):  # the window fills; reading it out every 50 steps may sync, steps must not
            monitor.on_train_batch_end(None, None, {"teacher_probs": probs, "features": features}, None, step)  # type: ignore[arg-type]
    assert watch.seen == [] and monitor._window.steps == 3


def test_codebook_training_step_makes_no_host_wait_once_initialised() -> None:
    quantizer = NormEMAQuantizer(num_codes=16, code_dim=4, kmeans_init=True).train()
    quantizer(torch.randn(64, 4))  # k-means on the first batch (on the CPU; a one-off read is fine)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    make_module_fake(quantizer, mode, CUDA)
    z: Any = fake_copy(mode, torch.randn(2, 10, 4), CUDA)
    with mode, SyncWatch("cuda") as watch:
        for _ in range(2):
            quantizer(z)
    assert watch.seen == []


def test_a_loaded_codebook_reads_its_initialised_flag_again() -> None:
    trained = NormEMAQuantizer(num_codes=4, code_dim=2, kmeans_init=True).train()
    trained(torch.randn(8, 2))
    fresh = NormEMAQuantizer(num_codes=4, code_dim=2, kmeans_init=True).train()
    fresh.is_initialised()  # reads False
    fresh.load_state_dict(trained.state_dict())
    assert fresh.is_initialised()
