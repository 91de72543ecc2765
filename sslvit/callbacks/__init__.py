"""Evaluation and monitoring callbacks (they read features through ``pl_module.forward``).

Each is named by the noun for what it is or does, without a ``Callback`` suffix: evaluations end in
``Evaluation`` or name their protocol (``KNNEvaluation``, ``LinearProbe``), watchers in ``Monitor``.
"""

from sslvit.callbacks.checkpoint import AtomicModelCheckpoint
from sslvit.callbacks.features import extract_features
from sslvit.callbacks.finite_loss import FiniteLossGuard, NonFiniteGradientError, NonFiniteLossError
from sslvit.callbacks.health import HealthMonitor
from sslvit.callbacks.knn import KNNEvaluation
from sslvit.callbacks.linear_probe import LinearProbe
from sslvit.callbacks.periodic import PeriodicEvaluation
from sslvit.callbacks.preemption import SigtermCheckpoint
from sslvit.callbacks.progress import StepProgressBar
from sslvit.callbacks.run_config import RunConfigRecorder
from sslvit.callbacks.step_seed import StepSeeder
from sslvit.callbacks.tokenizer_monitor import TokenizerMonitor
from sslvit.callbacks.visualization import Visualizer

__all__ = [
    "AtomicModelCheckpoint",
    "FiniteLossGuard",
    "HealthMonitor",
    "KNNEvaluation",
    "LinearProbe",
    "NonFiniteGradientError",
    "NonFiniteLossError",
    "PeriodicEvaluation",
    "RunConfigRecorder",
    "SigtermCheckpoint",
    "StepProgressBar",
    "StepSeeder",
    "TokenizerMonitor",
    "Visualizer",
    "extract_features",
]
