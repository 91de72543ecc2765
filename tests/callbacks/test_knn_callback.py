"""KNNEvaluation and extract_features inside a real Lightning Trainer, with stand-in module and data."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from sslvit.callbacks import KNNEvaluation, extract_features
from sslvit.callbacks import knn as knn_callback
from sslvit.eval.knn import knn_accuracy
from sslvit.eval.pixel_knn import pixel_knn_accuracy


class RecordingKNN(KNNEvaluation):
    """Records the epoch of every evaluation."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.evaluated_at: list[int] = []

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        self.evaluated_at.append(trainer.current_epoch)
        return super().evaluate(trainer, pl_module)


class StopAfterFirstEpoch(pl.Callback):
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.should_stop = True


def _trainer(tmp_path: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


def _csv_column(logger: CSVLogger, key: str) -> list[float]:
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def test_extract_features_orders_dedups_and_restores_modes(make_module: Any) -> None:
    module = make_module(dim=3)
    module.train()
    module.teacher = torch.nn.Linear(1, 1).eval()  # a submodule kept in eval mode must stay so
    images = torch.arange(15.0).reshape(5, 3, 1, 1)
    labels = torch.tensor([4, 3, 2, 1, 0])
    # Out of order, with index 0 repeated (what DistributedSampler padding produces).
    loader = [
        (images[[2, 0, 1]], labels[[2, 0, 1]], torch.tensor([2, 0, 1])),
        (images[[3, 4, 0]], labels[[3, 4, 0]], torch.tensor([3, 4, 0])),
    ]
    feats, labs = extract_features(module, loader)
    torch.testing.assert_close(feats, images.flatten(1))
    assert labs.dtype == torch.int64 and labs.tolist() == [4, 3, 2, 1, 0]
    assert module.forward_modes == [False, False]  # eval mode during the pass
    assert module.training and not module.teacher.training


def test_knn_metric_reaches_callback_metrics_and_logger(
    tmp_path: Path, make_module: Any, make_datamodule: Any
) -> None:
    dm = make_datamodule(n_train=64, n_val=32, val_flip=8)  # perfect neighbours, 8 of 32 labels wrong
    logger = CSVLogger(tmp_path)
    knn = RecordingKNN()
    trainer = _trainer(tmp_path, [knn], logger=logger)
    trainer.fit(make_module(), datamodule=dm)
    metrics = trainer.callback_metrics
    assert float(metrics["val/knn_top1"]) == pytest.approx(75.0)
    for k in (10, 20, 100, 200):  # 100 and 200 are clipped to the 64 training points
        assert float(metrics[f"val/knn_top1_k{k}"]) == pytest.approx(75.0)
    assert knn.evaluated_at == [0, 1]
    assert _csv_column(logger, "val/knn_top1") == pytest.approx([75.0, 75.0])
    # Cross-check against the pure function on the same features.
    (tr_x, tr_y), (va_x, va_y) = dm.train, dm.val
    offline = knn_accuracy(tr_x.flatten(1), tr_y, va_x.flatten(1), va_y, 4, ks=(20,))
    assert offline[20] == pytest.approx(float(metrics["val/knn_top1"]))


def test_knn_with_fast_dev_run(tmp_path: Path, make_module: Any, make_datamodule: Any) -> None:
    trainer = _trainer(tmp_path, [KNNEvaluation(every_n_epochs=5)], fast_dev_run=True)
    trainer.fit(make_module(), datamodule=make_datamodule(val_flip=4))
    assert float(trainer.callback_metrics["val/knn_top1"]) == pytest.approx(87.5)


def test_every_n_epochs_and_last_epoch(tmp_path: Path, make_module: Any, make_datamodule: Any) -> None:
    knn = RecordingKNN(every_n_epochs=2)
    _trainer(tmp_path, [knn], max_epochs=3).fit(make_module(), datamodule=make_datamodule())
    assert knn.evaluated_at == [1, 2]  # epoch 2 is not a multiple of 2 but is the last


def test_mid_epoch_max_steps_stop_is_evaluated(
    tmp_path: Path, make_module: Any, make_datamodule: Any
) -> None:
    knn = RecordingKNN(every_n_epochs=10)
    trainer = _trainer(tmp_path, [knn], max_epochs=10, max_steps=3)  # 4 batches per epoch
    trainer.fit(make_module(), datamodule=make_datamodule())
    assert knn.evaluated_at == [0]
    assert float(trainer.callback_metrics["val/knn_top1"]) == pytest.approx(100.0)


def test_unforeseen_stop_is_evaluated_in_on_train_end(
    tmp_path: Path, make_module: Any, make_datamodule: Any
) -> None:
    # The stopper runs after the k-NN hook, so the epoch-end check cannot know this epoch is the last.
    knn = RecordingKNN(every_n_epochs=5)
    logger = CSVLogger(tmp_path)
    trainer = _trainer(tmp_path, [knn, StopAfterFirstEpoch()], max_epochs=10, logger=logger)
    trainer.fit(make_module(), datamodule=make_datamodule(val_flip=8))
    assert trainer.current_epoch == 1 and knn.evaluated_at == [1]  # evaluated once, after the epoch
    assert float(trainer.callback_metrics["val/knn_top1"]) == pytest.approx(75.0)
    assert _csv_column(logger, "val/knn_top1") == pytest.approx([75.0])


def test_no_labels_skips_with_one_warning(tmp_path: Path, make_module: Any, make_datamodule: Any) -> None:
    knn = RecordingKNN()
    with pytest.warns(UserWarning, match="no labels") as record:
        _trainer(tmp_path, [knn]).fit(make_module(), datamodule=make_datamodule(has_labels=False))
    assert sum("no labels" in str(w.message) for w in record) == 1
    assert knn.evaluated_at == []


def test_missing_eval_dataloader_is_a_clear_error(
    tmp_path: Path, make_module: Any, make_datamodule: Any
) -> None:
    class NoEvalDataModule(pl.LightningDataModule):
        def train_dataloader(self) -> Any:
            return make_datamodule().train_dataloader()

    with pytest.raises(TypeError, match="eval_dataloader"):
        _trainer(tmp_path, [KNNEvaluation()]).fit(make_module(), datamodule=NoEvalDataModule())


class ScrambledAtInit(pl.LightningModule):
    """Features = the first two pixels before the first optimizer step (a poor k-NN), all of them
    afterwards; so the init and learned k-NN differ by a known amount."""

    def __init__(self, inner: pl.LightningModule) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.inner(images)
        return features[:, :2] if self.trainer.global_step == 0 else features

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return self.inner.training_step(batch, batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.inner.configure_optimizers()


def test_pixels_init_and_progress_are_logged_and_pixels_computed_once(
    tmp_path: Path, make_module: Any, make_datamodule: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> dict[str, dict[int, float]]:
        calls.append(1)
        return pixel_knn_accuracy(*args, **kwargs)

    monkeypatch.setattr(knn_callback, "pixel_knn_accuracy", counted)
    dm = make_datamodule(n_train=64, n_val=32, val_flip=8)
    logger = CSVLogger(tmp_path)
    knn = RecordingKNN()
    trainer = _trainer(tmp_path, [knn], logger=logger)  # 2 epochs of 4 steps: 2 evaluations
    trainer.fit(ScrambledAtInit(make_module()), datamodule=dm)
    assert knn.evaluated_at == [0, 1] and len(calls) == 1  # cached for the datamodule

    (tr_x, tr_y), (va_x, va_y) = dm.train, dm.val
    tr_x, va_x = tr_x.flatten(1), va_x.flatten(1)  # the toy's images have no normalisation to undo
    init = knn_accuracy(tr_x[:, :2], tr_y, va_x[:, :2], va_y, 4, ks=(20,))[20]
    mean = tr_x.mean(0)
    centred = knn_accuracy(tr_x - mean, tr_y, va_x - mean, va_y, 4, ks=(20,))[20]
    metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
    assert metrics["val/knn_top1"] == pytest.approx(75.0)
    assert metrics["val/knn_top1_pixels"] == pytest.approx(75.0)  # features are the pixels here
    assert metrics["val/knn_top1_pixels_centered"] == pytest.approx(centred)
    assert metrics["val/knn_top1_init"] == pytest.approx(init) and init < 60.0
    # One row at step 0 with the references, then one per evaluation; images = steps x batch 16.
    assert _csv_column(logger, "val/knn_top1_init") == pytest.approx([init] * 3)
    assert _csv_column(logger, "val/knn_top1_pixels") == pytest.approx([75.0] * 3)
    assert _csv_column(logger, "val/images_seen") == pytest.approx([0.0, 64.0, 128.0])
    wall = _csv_column(logger, "val/wall_s")
    assert 0.0 < wall[0] < wall[1] < wall[2]
    assert knn.state_dict()["init_top1"] == pytest.approx(init)


def test_references_can_be_turned_off(tmp_path: Path, make_module: Any, make_datamodule: Any) -> None:
    trainer = _trainer(tmp_path, [KNNEvaluation(init_eval=False, pixels=False)], max_epochs=1)
    trainer.fit(make_module(), datamodule=make_datamodule())
    metrics = trainer.callback_metrics
    assert "val/knn_top1" in metrics and "val/images_seen" in metrics
    assert not any(key.startswith(("val/knn_top1_init", "val/knn_top1_pixels")) for key in metrics)


def test_init_is_restored_not_remeasured(tmp_path: Path, make_module: Any, make_datamodule: Any) -> None:
    knn = KNNEvaluation()
    knn.load_state_dict({"init_top1": 12.5, "wall_s": 100.0})  # what a checkpoint of step > 0 holds
    trainer = _trainer(tmp_path, [knn], max_epochs=1)
    trainer.fit(make_module(), datamodule=make_datamodule())
    assert float(trainer.callback_metrics["val/knn_top1_init"]) == pytest.approx(12.5)
    assert float(trainer.callback_metrics["val/wall_s"]) > 100.0  # seconds continue from the checkpoint
