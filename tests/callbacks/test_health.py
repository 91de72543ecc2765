"""Health monitors: entropy / KL / RankMe values, the NaN guard, collapse warnings, metrics in a real fit."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from toys import loader, multicrop_batches, tiny_dino

from sslvit.callbacks import FiniteLossGuard, HealthMonitor
from sslvit.callbacks.health_metrics import effective_rank, entropy, kl_to_uniform


def test_entropy_and_kl_of_uniform_and_one_hot():
    k = 8
    uniform = torch.full((3, k), 1.0 / k)
    same_one_hot = torch.zeros(3, k)
    same_one_hot[:, 2] = 1.0
    assert float(entropy(uniform)[0]) == pytest.approx(math.log(k))
    assert float(entropy(same_one_hot)[0]) == 0.0
    assert float(kl_to_uniform(uniform[0])) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_to_uniform(same_one_hot[0])) == pytest.approx(math.log(k))

    # DINO's two collapse measures (arXiv:2104.14294, fig. 7), as HealthMonitor logs them: the mean row
    # entropy and the KL of the mean row to uniform.
    cases = [
        (uniform, math.log(k), 0.0),  # collapse by flatness
        (same_one_hot, 0.0, math.log(k)),  # collapse by dominance
        (torch.eye(k), 0.0, 0.0),  # healthy: sharp targets spread over the prototypes
    ]
    for probs, teacher_entropy, teacher_kl_uniform in cases:
        assert float(entropy(probs).mean()) == pytest.approx(teacher_entropy, abs=1e-6)
        assert float(kl_to_uniform(probs.mean(dim=0))) == pytest.approx(teacher_kl_uniform, abs=1e-6)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_rankme_of_rank_k_matrix_is_k(k):
    g = torch.Generator().manual_seed(k)
    u, _ = torch.linalg.qr(torch.randn(200, k, generator=g))  # orthonormal columns
    v, _ = torch.linalg.qr(torch.randn(32, k, generator=g))
    features = 5.0 * u @ v.T  # (200, 32), rank k, k equal singular values
    assert effective_rank(features) == pytest.approx(k, rel=1e-4)


def test_rankme_of_collapsed_and_of_spread_features():
    g = torch.Generator().manual_seed(0)
    collapsed = torch.randn(1, 16, generator=g).expand(100, 16) + 1e-6 * torch.randn(100, 16, generator=g)
    assert effective_rank(collapsed) == pytest.approx(1.0, abs=0.01)
    spread = torch.randn(4000, 16, generator=g)
    assert 15.5 < effective_rank(spread) <= 16.0


class _TwoTermModule(L.LightningModule):
    """Logs train/a_loss and train/b_loss; b turns NaN at batch ``bad_batch``."""

    def __init__(self, bad_batch: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))
        self.bad_batch = bad_batch

    def training_step(self, batch, batch_idx):
        a = (self.w**2).sum()
        b = self.w.sum() * (float("nan") if batch_idx == self.bad_batch else 1.0)
        self.log_dict({"train/a_loss": a, "train/b_loss": b, "train/loss": a + b})
        return {"loss": a + b}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path: Path, callbacks, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=CSVLogger(tmp_path, name="csv"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        **kwargs,
    )


@pytest.mark.parametrize("with_guard", [False, True])
def test_nan_guard_names_the_step_and_the_term_before_the_weights_change(tmp_path, with_guard):
    model = _TwoTermModule(bad_batch=2)
    data = torch.utils.data.DataLoader(torch.zeros(5, 1), batch_size=1)
    monitor = HealthMonitor()
    callbacks = [monitor, FiniteLossGuard()] if with_guard else [monitor]
    trainer = _trainer(tmp_path, callbacks, max_epochs=1, log_every_n_steps=1)
    with pytest.raises(FloatingPointError) as err:
        trainer.fit(model, train_dataloaders=data)
    message = str(err.value)
    assert "global step 2 (epoch 0, batch 2)" in message
    assert "train/b_loss = nan" in message and "train/a_loss" not in message
    assert bool(model.w.isfinite().all())  # raised before backward: no NaN reached the weights
    assert (monitor._guard is None) == with_guard  # never two guards (two host syncs) per step


class _CollapsedModule(L.LightningModule):
    """Uniform teacher targets and identical features: both collapse warnings must fire."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def training_step(self, batch, batch_idx):
        return {
            "loss": self.w**2,
            "features": torch.ones(8, 16),
            "teacher_probs": torch.full((16, 32), 1 / 32),
        }

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_collapse_is_warned_once_per_epoch(tmp_path, caplog):
    data = torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=1)
    trainer = _trainer(tmp_path, [HealthMonitor(every_n_steps=1)], max_epochs=1, log_every_n_steps=1)
    with caplog.at_level(logging.WARNING, logger="sslvit.callbacks.health"):
        trainer.fit(_CollapsedModule(), train_dataloaders=data)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("nearly uniform" in m for m in messages) == 1
    assert sum("effective rank 1.00 < 2.0" in m for m in messages) == 1
    assert not any("one prototype" in m for m in messages)
    assert float(trainer.callback_metrics["health/prototype_usage"]) == pytest.approx(1 / 32)


def test_dino_fit_logs_health_metrics(tmp_path):
    model = tiny_dino()
    trainer = _trainer(tmp_path, [HealthMonitor(every_n_steps=2)], max_epochs=1, log_every_n_steps=1)
    trainer.fit(model, train_dataloaders=loader(multicrop_batches(5)))
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("health/teacher_entropy")]
    assert [int(r["step"]) for r in rows] == [2, 4, 5]  # two full windows, then the epoch's remainder
    log_k = math.log(64)
    for row in rows:
        assert 0.0 <= float(row["health/teacher_entropy"]) <= log_k + 1e-5
        assert 0.0 <= float(row["health/teacher_kl_uniform"]) <= log_k + 1e-5
        # 2 global views x 4 images per step: at most 16 of the 64 prototypes win in a 2-step window
        assert 0.0 < float(row["health/prototype_usage"]) <= 16 / 64
        assert 1.0 <= float(row["health/effective_rank"]) <= 8.0  # 2 x 4 features per window, D = 32
    assert float(rows[-1]["health/center_norm"]) == pytest.approx(
        float(model.centering.center.norm()), rel=1e-5
    )
    assert float(rows[-1]["health/center_norm"]) > 0.0


def test_center_keys_of_each_method():
    from sslvit.callbacks.health import _center_key

    assert _center_key("centering") == "health/center_norm"  # DINO
    assert _center_key("cls_centering") == "health/cls_center_norm"  # iBOT
    assert _center_key("patch_centering") == "health/patch_center_norm"
    assert _center_key("cls_targets") == "health/cls_center_norm"  # DINOv2 with teacher_targets=centering
