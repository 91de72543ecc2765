"""Evaluation and monitoring callbacks (they read features through ``pl_module.forward``)."""

from sslvit.callbacks.features import extract_features
from sslvit.callbacks.knn import KNNCallback
from sslvit.callbacks.linear_probe import OnlineLinearProbe
from sslvit.callbacks.periodic import PeriodicEvalCallback
from sslvit.callbacks.run_config import RunConfigInCheckpoint

__all__ = [
    "KNNCallback",
    "OnlineLinearProbe",
    "PeriodicEvalCallback",
    "RunConfigInCheckpoint",
    "extract_features",
]
