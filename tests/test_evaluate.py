"""eval.py's task: k-NN from a checkpoint reproduces the training-time figure."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf
from toys import TINY, compose_train_cfg

from sslvit.evaluate import evaluate
from sslvit.train import train


def test_offline_knn_matches_training_time_knn(tmp_path):
    overrides = [*TINY, "callbacks=knn", "trainer.max_epochs=1", "trainer.limit_train_batches=2"]
    summary = train(compose_train_cfg(tmp_path / "run", overrides))
    cfg = OmegaConf.create(
        {
            "eval": "knn",
            "checkpoint": summary["checkpoints"]["last"],
            "device": "cpu",
            "ks": [10, 20],
            "temperature": 0.07,
            "data": {},
        }
    )
    result = evaluate(cfg)
    assert result["metrics"]["knn_top1_k20"] == pytest.approx(summary["metrics"]["val/knn_top1"], abs=1e-6)
    assert (Path(result["output_dir"]) / "eval_summary.json").is_file()


def test_unknown_eval_is_a_clear_error(tmp_path):
    cfg = OmegaConf.create({"eval": "nope", "checkpoint": str(tmp_path / "x.ckpt"), "device": "cpu"})
    with pytest.raises(ValueError, match="unknown eval='nope'"):
        evaluate(cfg)
