"""Every run states its effective schedule when training starts."""

import logging

from toys import TINY, compose_train_cfg

from sslvit.train import train


def test_run_logs_its_effective_schedule(tmp_path, caplog):
    overrides = [
        *TINY,
        "callbacks=none",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "data.batch_size=4",
        "method.optim.base_lr=1e-3",
        "method.optim.lr_reference_batch=256",
    ]
    with caplog.at_level(logging.INFO, logger="sslvit.callbacks.schedule_report"):
        train(compose_train_cfg(tmp_path, overrides))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("schedule:")]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "6 optimizer steps = 2 epochs x 3 steps" in line
    assert "global batch 4 (4 x 1 device(s) x 1 accumulated)" in line
    assert "peak lr 1.56e-05" in line  # 1e-3 * 4 / 256, DINO's linear rule
    assert "head 64 prototypes" in line
