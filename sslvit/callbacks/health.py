"""Training health monitors: collapse statistics logged as ``health/<name>`` and a NaN / inf guard.

What the monitor reads from ``training_step``'s output dict (every key optional except ``loss``):

* ``loss``: the total loss (NaN / inf guard, see :class:`HealthMonitor`).
* ``features``: ``(B, D)`` detached teacher CLS features -> effective rank (RankMe).
* ``teacher_probs``: ``(n, K)`` the teacher's target distributions as the loss sees them (after
  centering or Sinkhorn-Knopp and the teacher temperature) -> entropy, KL to uniform, prototype usage.

Centering modules of the method (``sslvit.losses.Centering`` children, e.g. DINO's ``centering``,
iBOT's ``cls_centering`` / ``patch_centering``) add the norm of their center.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch

from sslvit.callbacks.finite_loss import FiniteLossGuard
from sslvit.callbacks.health_metrics import effective_rank, entropy, kl_to_uniform
from sslvit.losses import Centering
from sslvit.utils.id_counts import id_counts

log = logging.getLogger(__name__)


def _center_key(name: str) -> str:
    """Metric key of a center: ``centering`` -> ``health/center_norm``, ``cls_centering`` and
    ``cls_targets`` -> ``health/cls_center_norm``."""
    base = name.removesuffix("centering").removesuffix("targets").rstrip("_")
    return f"health/{base}_center_norm" if base else "health/center_norm"


class _Window:
    """Running sums of one monitoring window, kept on the device (no host sync until it is read)."""

    def __init__(self) -> None:
        self.steps = 0
        self.rows = 0
        self.entropy_sum: torch.Tensor | None = None
        self.probs_sum: torch.Tensor | None = None
        self.argmax_counts: torch.Tensor | None = None
        self.features: list[torch.Tensor] = []
        self.num_features = 0

    def add_probs(self, probs: torch.Tensor) -> None:
        probs = probs.detach().float()
        entropy_sum = entropy(probs).sum()
        probs_sum = probs.sum(dim=0)
        counts = id_counts(probs.argmax(dim=-1), probs.shape[-1])
        if self.probs_sum is None or self.probs_sum.shape != probs_sum.shape:
            self.entropy_sum, self.probs_sum, self.argmax_counts = entropy_sum, probs_sum, counts
        else:
            assert self.entropy_sum is not None and self.argmax_counts is not None
            self.entropy_sum = self.entropy_sum + entropy_sum
            self.probs_sum = self.probs_sum + probs_sum
            self.argmax_counts = self.argmax_counts + counts
        self.rows += probs.shape[0]

    def add_features(self, features: torch.Tensor, limit: int) -> None:
        room = limit - self.num_features
        if room > 0:
            kept = features.detach()[:room].float()
            self.features.append(kept)
            self.num_features += kept.shape[0]


class HealthMonitor(pl.Callback):
    """Logs collapse statistics every ``every_n_steps`` training batches and stops on non-finite losses.

    Logged (to the loggers directly, and to ``trainer.callback_metrics``), from this process's batches:

    * ``health/teacher_entropy`` (nats): mean entropy of a teacher target; near ``log K`` = targets are
      uniform (collapse by flatness).
    * ``health/teacher_kl_uniform`` (nats): KL between the window's average target and the uniform
      distribution; near ``log K`` = one prototype wins for every input (collapse by dominance).
    * ``health/prototype_usage``: fraction of the K prototypes that are the argmax of at least one
      teacher target in the window (at most ``rows / K``: small for K = 65536 and short windows).
    * ``health/effective_rank``: RankMe of up to ``rank_samples`` teacher CLS features of the window;
      1 = all features on a line.
    * ``health/center_norm`` (and ``health/<name>_center_norm``): L2 norm of each center.

    A warning goes to the log when the entropy is within ``collapse_tolerance * log K`` of ``log K``,
    when the KL is within that of ``log K``, or when the effective rank falls below
    ``min_effective_rank``; each at most once per epoch.

    The NaN / inf guard is :class:`~sslvit.callbacks.finite_loss.FiniteLossGuard` (checked before the
    backward pass, so the weights are still finite; raises ``NonFiniteLossError``, a
    ``FloatingPointError``, naming the global step, the batch and the non-finite ``train/<term>_loss``
    values; agreed across DDP ranks). The monitor runs one itself only when the trainer has none
    already (every callbacks config with checkpoints includes one), so the check is never paid twice.

    Args:
        every_n_steps: window length in training batches.
        rank_samples: feature rows per window used for the effective rank (RankMe needs n >= D to
            reach D).
        nan_guard: run the NaN / inf guard when the trainer has none (one host sync per step).
        collapse_tolerance: relative closeness to ``log K`` that triggers the entropy warnings.
        min_effective_rank: effective rank below which a warning is logged.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        rank_samples: int = 1024,
        nan_guard: bool = True,
        collapse_tolerance: float = 0.05,
        min_effective_rank: float = 2.0,
    ) -> None:
        if every_n_steps < 1 or rank_samples < 1:
            raise ValueError(
                f"every_n_steps and rank_samples must be >= 1, got {every_n_steps}, {rank_samples}"
            )
        if not 0.0 <= collapse_tolerance < 1.0:
            raise ValueError(f"collapse_tolerance must be in [0, 1), got {collapse_tolerance}")
        self.every_n_steps = every_n_steps
        self.rank_samples = rank_samples
        self.nan_guard = nan_guard
        self.collapse_tolerance = collapse_tolerance
        self.min_effective_rank = min_effective_rank
        self._window = _Window()
        self._guard: FiniteLossGuard | None = None
        self._batch_idx = 0
        self._warned: set[str] = set()

    # ------------------------------------------------------------------------------------- guard
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        callbacks = getattr(trainer, "callbacks", [])  # set at runtime; not in the Trainer's type stubs
        has_guard = any(isinstance(cb, FiniteLossGuard) and cb.enabled for cb in callbacks)
        self._guard = FiniteLossGuard() if self.nan_guard and not has_guard else None

    def _where(self, trainer: pl.Trainer) -> str:
        return f"global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._warned.clear()

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx
        if self._guard is not None:
            self._guard.on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        if self._guard is not None:
            self._guard.on_before_backward(trainer, pl_module, loss)

    # -------------------------------------------------------------------------------- statistics
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(outputs, dict):
            return
        probs, features = outputs.get("teacher_probs"), outputs.get("features")
        if isinstance(probs, torch.Tensor) and probs.ndim == 2:
            self._window.add_probs(probs)
        if isinstance(features, torch.Tensor) and features.ndim == 2:
            self._window.add_features(features, self.rank_samples)
        self._window.steps += 1
        if self._window.steps >= self.every_n_steps:
            self._flush(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._window.steps:
            self._flush(trainer, pl_module)

    def compute(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """The ``health/*`` metrics of the current window (and the centers' norms)."""
        w, metrics = self._window, {}
        if w.probs_sum is not None and w.rows:
            assert w.entropy_sum is not None and w.argmax_counts is not None
            metrics["health/teacher_entropy"] = float(w.entropy_sum) / w.rows
            metrics["health/teacher_kl_uniform"] = float(kl_to_uniform(w.probs_sum / w.rows))
            metrics["health/prototype_usage"] = float((w.argmax_counts > 0).float().mean())
        if w.features:
            metrics["health/effective_rank"] = effective_rank(torch.cat(w.features))
        for name, module in pl_module.named_children():
            if isinstance(module, Centering):
                metrics[_center_key(name)] = float(module.center.float().norm())
        return metrics

    def _flush(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        num_prototypes = None if self._window.probs_sum is None else self._window.probs_sum.shape[0]
        metrics = self.compute(pl_module)
        self._window = _Window()
        if not metrics:
            return
        for key, value in metrics.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        for logger in trainer.loggers:  # Lightning's loggers write on rank 0 only
            logger.log_metrics(metrics, step=trainer.global_step)
        if trainer.is_global_zero:
            self._warn(trainer, metrics, num_prototypes)

    def _warn(self, trainer: pl.Trainer, metrics: dict[str, float], num_prototypes: int | None) -> None:
        warnings = {}
        if num_prototypes is not None and num_prototypes > 1:
            log_k, tol = math.log(num_prototypes), self.collapse_tolerance
            entropy_value, kl_value = metrics["health/teacher_entropy"], metrics["health/teacher_kl_uniform"]
            if entropy_value >= (1 - tol) * log_k:
                warnings["uniform"] = (
                    f"teacher targets are nearly uniform (entropy {entropy_value:.3f} of max log K = "
                    f"{log_k:.3f}): collapse by flatness, sharpen (lower teacher_temp)"
                )
            if kl_value >= (1 - tol) * log_k:
                warnings["dominant"] = (
                    f"one prototype takes nearly every teacher target (KL to uniform {kl_value:.3f} of max "
                    f"{log_k:.3f}): collapse by dominance, check centering"
                )
        rank = metrics.get("health/effective_rank")
        if rank is not None and rank < self.min_effective_rank:
            warnings["rank"] = (
                f"feature effective rank {rank:.2f} < {self.min_effective_rank}: features collapsed"
            )
        for key, message in warnings.items():
            if key not in self._warned:
                self._warned.add(key)
                log.warning("health at %s: %s", self._where(trainer), message)
