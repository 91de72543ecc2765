"""``float32_matmul_precision``: applied by the training task, validated, and a no-op on the CPU at high."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from toys import TINY, compose_train_cfg

from sslvit.train import train
from sslvit.utils.matmul_precision import set_float32_matmul_precision


@pytest.fixture(autouse=True)
def restore_precision() -> Iterator[None]:
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("precision", ["highest", "high", "medium"])
def test_each_precision_is_applied(precision: str) -> None:
    set_float32_matmul_precision(precision)
    assert torch.get_float32_matmul_precision() == precision
    assert torch.backends.cuda.matmul.allow_tf32 == (precision != "highest")


def test_none_leaves_torch_setting() -> None:
    torch.set_float32_matmul_precision("medium")
    set_float32_matmul_precision(None)
    assert torch.get_float32_matmul_precision() == "medium"


def test_unknown_precision_names_the_key() -> None:
    with pytest.raises(
        ValueError, match="float32_matmul_precision must be one of highest, high, medium, got 'tf32'"
    ):
        set_float32_matmul_precision("tf32")


def test_high_leaves_cpu_products_bitwise_equal() -> None:
    # The default must not move this machine's CPU figures: TF32 is a CUDA tensor-core mode.
    a, b = torch.randn(256, 384, generator=torch.Generator().manual_seed(0)).split([128, 128])
    set_float32_matmul_precision("highest")
    full = a @ b.T
    set_float32_matmul_precision("high")
    assert torch.equal(a @ b.T, full)


def test_train_applies_the_config_value(tmp_path: Path) -> None:
    torch.set_float32_matmul_precision("highest")
    cfg = compose_train_cfg(tmp_path, [*TINY, "trainer.fast_dev_run=true", "float32_matmul_precision=medium"])
    train(cfg)
    assert torch.get_float32_matmul_precision() == "medium"
