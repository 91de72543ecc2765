"""The one pretraining base of every LightningModule: schedules, parameter groups, clipping, logging."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeVar

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from sslvit.methods.optim_config import OptimConfig, apply_lr_wd
from sslvit.methods.step_guard import NonFiniteStepGuard
from sslvit.methods.sync_free_logging import SyncFreeLogging
from sslvit.utils.distributed import mean_over_processes
from sslvit.utils.epoch_length import optimizer_steps_per_epoch
from sslvit.utils.fsdp import unwrapped_name
from sslvit.utils.param_groups import param_groups
from sslvit.utils.schedules import cosine_schedule, linspace_at

NetworkT = TypeVar("NetworkT", bound=nn.Module)


class PretrainingModule(SyncFreeLogging):
    """What every pretraining method needs, so that the leaves read like their papers.

    * lr and weight decay (and whatever :meth:`method_schedules` adds) are pure functions of
      ``trainer.global_step`` (exact resume), written into the optimizer before each optimizer step.
    * Parameter groups over :meth:`trained_parameters`: no weight decay on 1-d parameters (and what
      :meth:`no_weight_decay` adds), layer-wise lr decay through :meth:`layer_id`, patch-embed lr
      multiplier, lr scaled with the global batch.
    * Gradient clipping in ``optim.clip_grad_mode`` over :meth:`clipping_networks`, with the
      :class:`NonFiniteStepGuard` skipping a step whose gradients are not finite.
    * Frozen networks (:meth:`keep_frozen`) take no gradient and stay in eval mode.
    * Logging helpers (:meth:`log_losses`, :meth:`log_skipped`) and the schedules as ``sched/<name>``.

    A leaf implements :meth:`trained_parameters`, :meth:`clipping_networks`, ``forward`` (what evaluation
    reads) and ``training_step``.

    Args:
        optim: optimiser and schedule settings.
    """

    #: Trainable parameters this method never uses in a training step (full names, e.g. DINO's
    #: ``student.backbone.mask_token``: it sees no masked crops). They stay in the state dict, for
    #: evaluation, ``init_from`` and checkpoints, but DDP does not reduce them: a parameter DDP waits for
    #: in vain fails the second step (or forces ``find_unused_parameters``, a graph walk every step).
    unused_parameters: tuple[str, ...] = ()

    def __init__(self, optim: OptimConfig) -> None:
        super().__init__()
        self.optim = optim
        # Clips the gradients and skips, on the device, a step whose gradients are not finite.
        self.step_guard = NonFiniteStepGuard()
        # A tuple, not a ModuleList: the frozen networks stay registered under their own names.
        self._frozen: tuple[nn.Module, ...] = ()

    # ------------------------------------------------------------------------------ the networks
    def trained_parameters(self) -> Iterable[tuple[str, nn.Parameter]]:
        """The (name, parameter) pairs the optimizer trains; names as :meth:`no_weight_decay` reads them."""
        raise NotImplementedError

    def clipping_networks(self) -> dict[str, nn.Module]:
        """The trained networks by state-dict name: the groups of ``clip_grad_mode="per_network"``."""
        raise NotImplementedError

    def keep_frozen(self, network: NetworkT) -> NetworkT:
        """Make ``network`` a fixed part of the method (a tokenizer, a feature teacher): no gradients,
        eval mode now and after every ``train()``. Returns it."""
        network.requires_grad_(False)
        network.eval()
        self._frozen = (*self._frozen, network)
        return network

    def train(self, mode: bool = True) -> PretrainingModule:
        super().train(mode)
        for network in self._frozen:
            network.eval()  # no dropout / drop path in a fixed network, ever
        return self

    # --------------------------------------------------------------------------------- schedules
    @property
    def total_steps(self) -> int:
        return max(1, int(self.trainer.estimated_stepping_batches))

    @property
    def steps_per_epoch(self) -> float:
        return optimizer_steps_per_epoch(self.trainer, self.total_steps)

    def epochs_to_steps(self, epochs: float) -> int:
        return round(epochs * self.steps_per_epoch)

    def schedule_epoch(self, step: int) -> int:
        """The schedule epoch (0-based) that optimizer step ``step`` falls in."""
        # The margin keeps a step on an epoch boundary from rounding just below it when an epoch is a
        # fraction of steps (a run cut short by max_steps).
        return math.floor(step / self.steps_per_epoch + 1e-9)

    def warmup_per_step(self, step: int, start: float, end: float, epochs: float) -> float:
        """``linspace(start, end, W)[step]`` over the ``W`` steps of ``epochs``, then ``end`` (DINOv2's
        teacher temperature: a new value every step)."""
        return linspace_at(step, self.epochs_to_steps(epochs), start, end)

    def warmup_per_epoch(
        self, step: int, start: float, end: float, epochs: int, first_epoch: int = 0
    ) -> float:
        """``linspace(start, end, epochs)[e - first_epoch]`` in schedule epoch ``e`` of ``step``: ``start``
        before ``first_epoch``, ``end`` from ``first_epoch + epochs - 1`` on (DINO's and iBOT's teacher
        temperatures: one value per epoch)."""
        return linspace_at(self.schedule_epoch(step) - first_epoch, epochs, start, end)

    @property
    def global_batch_size(self) -> int:
        trainer = self.trainer
        return self.optim.batch_size_per_device * trainer.world_size * trainer.accumulate_grad_batches

    def method_schedules(self, step: int) -> dict[str, float]:
        """The method's own per-step schedules at optimizer step ``step`` (e.g. the EMA momentum)."""
        return {}

    def schedule_values(self, step: int) -> dict[str, float]:
        """lr, weight decay and :meth:`method_schedules` at optimizer step ``step`` (0-based)."""
        o, total = self.optim, self.total_steps
        return {
            "lr": cosine_schedule(
                step,
                total,
                o.scaled_lr(self.global_batch_size),
                o.min_lr,
                self.epochs_to_steps(o.warmup_epochs),
            ),
            "wd": cosine_schedule(step, total, o.weight_decay, o.weight_decay_end),
            **self.method_schedules(step),
        }

    # ------------------------------------------------------------------------ data parallelism
    def hide_unused_parameters_from_ddp(self) -> None:
        """Tell DDP (read when it wraps this module) to skip :attr:`unused_parameters`."""
        names = dict(self.named_parameters())
        missing = [name for name in self.unused_parameters if name not in names]
        if missing:
            raise ValueError(f"{type(self).__name__}.unused_parameters names no parameter: {missing}")
        self._ddp_params_and_buffers_to_ignore = list(self.unused_parameters)

    # --------------------------------------------------------------------------------- optimizer
    def setup(self, stage: str) -> None:
        # Lightning calls setup before the strategy wraps the module in DDP.
        self.hide_unused_parameters_from_ddp()
        # FSDP turns every parameter into a 1-d shard (and renames it) before configure_optimizers
        # runs; remember the true dimensions now so weight decay still skips only biases and norms.
        self._param_ndim = {unwrapped_name(n): p.ndim for n, p in self.trained_parameters()}

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """Biases and norms: every parameter of at most one dimension (its true one under FSDP)."""
        return getattr(self, "_param_ndim", {}).get(unwrapped_name(name), param.ndim) <= 1

    def layer_id(self, name: str) -> int:
        """Depth of a parameter for layer-wise lr decay (only methods with a ViT backbone have one)."""
        raise ValueError(f"{type(self).__name__} has no layers for optim.layer_decay != 1")

    def num_layers(self) -> int:
        return 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = param_groups(
            self.trained_parameters(),
            no_weight_decay=self.no_weight_decay,
            layer_id=self.layer_id,
            num_layers=self.num_layers(),
            layer_decay=self.optim.layer_decay,
            patch_embed_lr_mult=self.optim.patch_embed_lr_mult,
        )
        return self.optim.adamw(groups)

    def last_layer_parameters(self) -> list[nn.Parameter]:
        """Parameters frozen for the first ``freeze_last_layer_epochs``; leaves list their prototypes."""
        return []

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Freezing the prototypes for the first epoch(s) helps DINO avoid early collapse (paper, appendix).
        if self.trainer.global_step < self.epochs_to_steps(self.optim.freeze_last_layer_epochs):
            for p in self.last_layer_parameters():
                p.grad = None

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | int | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Measured even with clip_grad = 0: a non-finite norm has the step skipped (on the device).
        sharded = isinstance(self.trainer.strategy, FSDPStrategy)
        norm = self.step_guard(
            optimizer,
            self.clipping_networks(),
            self.optim.clip_grad,
            self.optim.clip_grad_mode,
            sharded=sharded,
        )
        if norm is not None:  # the norm of all gradients before clipping, whatever the groups (a tensor)
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
            assert self.step_guard.skipped is not None
            self.log("train/skipped_steps", self.step_guard.skipped.float(), on_step=True, on_epoch=False)

    def apply_schedules(self, optimizer: torch.optim.Optimizer, step: int) -> dict[str, float]:
        """Write the lr / weight decay of optimizer step ``step`` into every group; return all values."""
        values = self.schedule_values(step)
        apply_lr_wd(optimizer, values["lr"], values["wd"])
        return values

    def on_optimizer_step_done(self, values: dict[str, float]) -> None:
        """What a method updates once per optimizer step, after it (e.g. an EMA teacher)."""

    def after_optimizer_step(self, values: dict[str, float]) -> None:
        """The method's per-step update and schedule logging, once per optimizer step (``values`` from
        :meth:`apply_schedules`)."""
        self.on_optimizer_step_done(values)
        self.log_dict({f"sched/{k}": v for k, v in values.items()}, on_step=True, on_epoch=False)

    # The per-step pieces above are separate methods so that benchmarks/step.py can drive the very same
    # step without Lightning's loop.
    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        values = self.apply_schedules(optimizer, self.trainer.global_step)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Once per optimizer step, whatever accumulate_grad_batches is.
        self.after_optimizer_step(values)

    # ------------------------------------------------------------------------------------ logging
    def log_losses(
        self,
        total: torch.Tensor,
        terms: dict[str, torch.Tensor],
        batch_size: int,
        metrics: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Log ``train/loss``, ``train/<term>_loss`` for each named term and any other per-step ``metrics``.

        Every value is its mean over processes (the global batch's figure when each process holds an
        equal share), all of them reduced by one collective on the device: no host sync in the step.
        """
        names = ["train/loss", *(f"train/{name}_loss" for name in terms), *(metrics or {})]
        values = mean_over_processes([total, *terms.values(), *(metrics or {}).values()])
        self.log(names[0], values[0], on_step=True, prog_bar=True, batch_size=batch_size)
        self.log_dict(
            dict(zip(names[1:], values[1:], strict=True)), on_step=True, on_epoch=False, batch_size=batch_size
        )

    def log_skipped(self, num_skipped: int) -> None:
        """Count unreadable images the loader met, replaced or dropped (summed over the epoch)."""
        self.log(
            "data/skipped_images",
            float(num_skipped),
            on_step=False,
            on_epoch=True,
            reduce_fx="sum",
            sync_dist=True,
        )
