"""Run a worker script on 2 CPU processes (gloo) in a subprocess, and import a worker's helpers.

Never `strategy=ddp` inside the pytest process: it would re-execute pytest.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType


def run_on_two_processes(worker: Path, out: Path, timeout: int = 300) -> None:
    """``torch.distributed.run`` of ``worker out`` on 2 processes; fails with the end of its stderr."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=0"]
    cmd += ["--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", str(worker), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def load_worker(worker: Path) -> ModuleType:
    """The worker script as a module, for the single-process reference built from its helpers."""
    spec = importlib.util.spec_from_file_location(worker.stem, worker)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
