"""Online linear probe: a classifier trained on detached features alongside pretraining."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from sslvit.callbacks.features import eval_mode
from sslvit.callbacks.periodic import PeriodicEvaluation, datamodule_of
from sslvit.utils.distributed import all_reduce_sum


class LinearProbe(PeriodicEvaluation):
    """Linear classifier on frozen (detached) evaluation features, trained online during pretraining.

    A cheap running proxy for the linear-probe protocol of DINO (Caron et al., 2021, arXiv:2104.14294)
    and of the online probes of SimCLR-style pipelines; the offline probe remains the reported number.
    Each training batch updates ``nn.Linear(embed_dim, num_classes)`` on ``outputs["features"]`` (the
    teacher CLS of global crop 0 returned by ``training_step``), or on ``pl_module(global_crops[0])``
    under ``no_grad`` when the step returns none. Rows labelled -1 are skipped. Logs
    ``train/linear_probe_loss`` and ``train/linear_probe_top1`` per step and ``val/linear_top1`` (percent
    on the val split) at the same points as :class:`KNNEvaluation`.

    The probe has its own AdamW optimizer, outside Lightning: the method's optimizer, gradients and
    schedules are never touched. AdamW rather than SGD because its step size does not depend on the
    scale of the features, which differs across methods and drifts during pretraining, so one lr works
    everywhere. Under DDP the gradients are averaged over the global batch, and the init is seeded, so
    every rank holds the same probe. Weights and optimizer state are saved in the callback state (resume).

    Args:
        every_n_epochs: val evaluation period in epochs (0: only at the end of fit).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        init_std: std of the normal init of the weights (bias starts at 0), as in DINO's linear eval.
    """

    def __init__(
        self, every_n_epochs: int = 1, lr: float = 1e-3, weight_decay: float = 0.0, init_std: float = 0.01
    ) -> None:
        super().__init__(every_n_epochs)
        if lr <= 0 or weight_decay < 0:
            raise ValueError(
                f"lr must be > 0 and weight_decay >= 0; got lr={lr}, weight_decay={weight_decay}"
            )
        self.lr, self.weight_decay, self.init_std = float(lr), float(weight_decay), float(init_std)
        self.probe: nn.Linear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None
        self._warned_no_labels = False

    # -- construction and state ---------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._enabled:
            return
        # Rebuild on the module's device; carry over restored (pending) or current state.
        state = self._pending_state if self._pending_state is not None else self.state_dict()
        embed_dim = getattr(pl_module, "embed_dim", None)
        if embed_dim is None:
            raise AttributeError(f"LinearProbe needs {type(pl_module).__name__}.embed_dim (feature size)")
        self._build(int(embed_dim), int(datamodule_of(trainer).num_classes), pl_module.device)
        if state:
            self._load(state)
        self._pending_state = None

    def _build(self, embed_dim: int, num_classes: int, device: torch.device) -> None:
        if embed_dim < 1 or num_classes < 1:
            raise ValueError(
                f"linear probe needs embed_dim, num_classes >= 1; got {embed_dim}, {num_classes}"
            )
        probe = nn.Linear(embed_dim, num_classes)
        generator = torch.Generator().manual_seed(0)  # same init on every rank without a broadcast
        with torch.no_grad():
            probe.weight.normal_(0.0, self.init_std, generator=generator)
            probe.bias.zero_()
        self.probe = probe.to(device)
        # fused: it honours ``found_inf`` (a step to skip, decided on the device), on GPUs and CPUs.
        self.optimizer = torch.optim.AdamW(
            self.probe.parameters(), lr=self.lr, weight_decay=self.weight_decay, fused=True
        )

    def state_dict(self) -> dict[str, Any]:
        if self.probe is None or self.optimizer is None:
            return dict(self._pending_state or {})
        return {"probe": self.probe.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self.probe is None:  # Lightning restores callbacks before on_fit_start builds the probe
            self._pending_state = dict(state_dict)
        else:
            self._load(state_dict)

    def _load(self, state: dict[str, Any]) -> None:
        assert self.probe is not None and self.optimizer is not None
        saved = tuple(state["probe"]["weight"].shape)
        if saved != tuple(self.probe.weight.shape):
            raise ValueError(
                f"saved linear probe has shape {saved}, expected {tuple(self.probe.weight.shape)}"
            )
        self.probe.load_state_dict(state["probe"])
        self.optimizer.load_state_dict(state["optimizer"])  # casts its state to the probe's device

    # -- online training ----------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.probe is None or self.optimizer is None:
            return
        labels = getattr(batch, "labels", None)
        if labels is None:
            if not self._warned_no_labels:
                rank_zero_warn("LinearProbe: training batches carry no labels; the probe is not trained.")
                self._warned_no_labels = True
            return
        features = outputs.get("features") if isinstance(outputs, Mapping) else None
        if features is None:
            with torch.no_grad(), eval_mode(pl_module):
                features = pl_module(batch.global_crops[0])
        features = features.detach().float()  # detached: no gradient can reach the method
        labels = labels.to(features.device)  # already there when Lightning moved the batch
        if labels.shape != (features.shape[0],):
            raise ValueError(f"labels {tuple(labels.shape)} do not match features {tuple(features.shape)}")
        # Every training step, so nothing here may make a GPU host wait: unlabelled rows (-1) are ignored
        # by the loss instead of filtered out (a filter sizes its output from the device), and a global
        # batch without labels skips the update on the device (fused AdamW's found_inf), not in Python.
        keep = labels >= 0
        with torch.enable_grad(), torch.autocast(features.device.type, enabled=False):
            logits = self.probe(features)
            loss_sum = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
        correct = ((logits.detach().argmax(dim=1) == labels) & keep).sum()
        # [loss sum, correct, count] over the global batch: one collective, same numbers on every rank.
        stats = all_reduce_sum(torch.stack([loss_sum.detach(), correct.float(), keep.sum().float()]))
        count = stats[2].clamp_min(1.0)
        self.optimizer.zero_grad(set_to_none=True)
        (loss_sum / count).backward()  # local share of the global-batch mean loss
        self._sum_grads_over_ranks()
        self.optimizer.found_inf = (stats[2] == 0).float()  # type: ignore[attr-defined]  # 1: skip the step
        self.optimizer.step()
        rows = features.shape[0]
        pl_module.log("train/linear_probe_loss", stats[0] / count, on_step=True, batch_size=rows)
        pl_module.log("train/linear_probe_top1", 100.0 * stats[1] / count, on_step=True, batch_size=rows)

    def _sum_grads_over_ranks(self) -> None:
        assert self.probe is not None
        grads = [p.grad for p in self.probe.parameters() if p.grad is not None]
        flat = all_reduce_sum(torch.cat([g.reshape(-1) for g in grads]))  # no-op without a process group
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        assert self.probe is not None
        features, labels = self.features(trainer, pl_module, "val")
        keep = labels >= 0
        features, labels = features[keep], labels[keep]
        with torch.no_grad():
            correct = sum(
                int((self.probe(f).argmax(dim=1) == y).sum())
                for f, y in zip(features.split(8192), labels.split(8192))
            )
        return {"val/linear_top1": 100.0 * correct / max(labels.shape[0], 1)}
