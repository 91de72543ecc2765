"""An optimizer step whose gradients are not finite is skipped, decided on the device, and counted.

A finite loss can still give NaN / inf gradients (an overflow in the backward pass, a huge learning rate
that already blew up an activation's scale). Applied, they turn the weights, AdamW's moments and the EMA
teacher into NaN at once, and every later checkpoint with them. Here the step's gradient norms, which
clipping computes anyway, decide: a step with a non-finite norm leaves the weights, the moments, the
step count and the teacher exactly as they were. The decision stays a device tensor (the host never waits
for the step): the fused AdamW kernel reads it as ``found_inf`` (as under a ``GradScaler``), and the EMA
update multiplies its weight by it. The unfused AdamW has no such input, so :class:`SkippingAdamW`
reads the decision on the host, which costs nothing on a CPU and one wait per step on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.linalg import vector_norm

from sslvit.utils.grad_clip import GroupNorms, measure_and_clip, named_clipping_groups


class SkippingAdamW(torch.optim.AdamW):
    """AdamW that skips the step when its ``found_inf`` attribute (a 0-d device tensor) is nonzero.

    Fused, the kernel itself reads ``found_inf`` on the device and restores the step count. Unfused,
    ``found_inf`` is read on the host after the closure (the gradients) has run.
    """

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if self.defaults.get("fused"):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = self.__dict__.pop("found_inf", None)  # torch's unfused kernels refuse the attribute
        if found_inf is None or not bool(found_inf):
            super().step()
        return loss


class NonFiniteStepGuard:
    """Measures and clips the gradients in their clipping groups and skips a step whose norms are not
    finite (``clip_grad = 0`` still measures: the norms are what tells a bad step).

    Device tensors, updated every optimizer step without a host read: ``skipped`` (steps skipped so
    far), ``consecutive`` (skipped in a row, up to the last step) and ``applied`` (1.0 if the last step
    was applied, 0.0 if skipped). :meth:`nonfinite_groups` names the groups of the last step whose norm
    was not finite (a host read, for the message that stops a run).
    """

    def __init__(self) -> None:
        self._groups: tuple[int, dict[str, list[nn.Parameter]]] | None = None
        self._last: GroupNorms | None = None
        self.skipped: Tensor | None = None
        self.consecutive: Tensor | None = None
        self.applied: Tensor | None = None

    def __call__(
        self,
        optimizer: torch.optim.Optimizer,
        networks: Mapping[str, nn.Module],
        clip_grad: float,
        clip_mode: str,
        sharded: bool = False,
    ) -> Tensor | None:
        """Clip the gradients of ``networks`` and mark the step to skip on ``optimizer`` if need be.

        Returns:
            The norm of all gradients before clipping (a device tensor), or None without gradients.
        """
        if self._groups is None or self._groups[0] != id(optimizer):
            # Built once per optimizer (the parameters stay the same), in the optimizer's order.
            order = [p for group in optimizer.param_groups for p in group["params"]]
            self._groups = (id(optimizer), named_clipping_groups(dict(networks), clip_mode, order))
        measured = measure_and_clip(list(self._groups[1].values()), clip_grad, sharded=sharded)
        self._last = measured
        if measured is None:  # nothing to step: whatever a previous step marked no longer applies
            optimizer.__dict__.pop("found_inf", None)
            self.applied = None
            return None
        applied = torch.isfinite(measured.norms).all().float()
        optimizer.found_inf = 1.0 - applied  # type: ignore[attr-defined]
        skip = (1.0 - applied).long()
        if self.skipped is None or self.consecutive is None:
            self.skipped = torch.zeros((), dtype=torch.long, device=applied.device)
            self.consecutive = torch.zeros((), dtype=torch.long, device=applied.device)
        # New tensors, not in-place updates: a logged value may still be read later.
        self.skipped = self.skipped + skip
        self.consecutive = (self.consecutive + 1) * skip
        self.applied = applied
        return vector_norm(measured.norms)

    def nonfinite_groups(self) -> list[str]:
        """The clipping groups whose gradient norm was not finite at the last step (reads the host)."""
        if self._groups is None or self._last is None:
            return []
        names = list(self._groups[1])
        finite = torch.isfinite(self._last.norms).tolist()
        return [names[i] for i, ok in zip(self._last.indices, finite, strict=True) if not ok]
