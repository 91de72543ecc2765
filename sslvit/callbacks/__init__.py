"""Evaluation and monitoring callbacks (they read features through ``pl_module.forward``)."""

from sslvit.callbacks.checkpoint import AtomicModelCheckpoint
from sslvit.callbacks.features import extract_features
from sslvit.callbacks.finite_loss import FiniteLossGuard, NonFiniteGradientError, NonFiniteLossError
from sslvit.callbacks.health import HealthMonitor
from sslvit.callbacks.knn import KNNCallback
from sslvit.callbacks.linear_probe import OnlineLinearProbe
from sslvit.callbacks.periodic import PeriodicEvalCallback
from sslvit.callbacks.preemption import CheckpointOnSigterm
from sslvit.callbacks.progress import StepProgressBar
from sslvit.callbacks.run_config import RunConfigInCheckpoint
from sslvit.callbacks.step_seed import SeedEveryStep
from sslvit.callbacks.tokenizer_monitor import TokenizerMonitor
from sslvit.callbacks.visualization import VisualizationCallback

__all__ = [
    "AtomicModelCheckpoint",
    "CheckpointOnSigterm",
    "FiniteLossGuard",
    "HealthMonitor",
    "KNNCallback",
    "NonFiniteGradientError",
    "NonFiniteLossError",
    "OnlineLinearProbe",
    "PeriodicEvalCallback",
    "RunConfigInCheckpoint",
    "SeedEveryStep",
    "StepProgressBar",
    "TokenizerMonitor",
    "VisualizationCallback",
    "extract_features",
]
