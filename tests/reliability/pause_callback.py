"""A test-only callback (imported by the training subprocesses of test_exact_resume.py).

It holds a run at a known point so the test can kill it there: after the batch that reaches
``global_step == step`` it writes ``marker`` and waits until SIGTERM arrives (or ``timeout`` passes).
It touches no random generator and no training state, so the run it pauses trains exactly as without it.
"""

import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class PauseAtStep(Callback):
    def __init__(self, step: int, marker: str, timeout: float = 240.0) -> None:
        self.step, self.marker, self.timeout = step, Path(marker), timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        self.marker.write_text(str(trainer.global_step))
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)
