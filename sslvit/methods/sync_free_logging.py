"""``self.log`` of Python numbers without a host-to-GPU copy per number per step."""

from __future__ import annotations

import numbers
from typing import Any

import lightning as L
import torch


class SyncFreeLogging(L.LightningModule):
    """A LightningModule whose ``log`` (and so ``log_dict``) puts a Python number on the device with a fill.

    Lightning turns a logged number into ``torch.tensor(value, device=self.device)``: a blocking copy from
    the host, which makes the host wait for the GPU to finish its queue, for every number logged in every
    step (our methods log their lr / weight-decay / momentum / temperature schedules each step). A
    ``torch.full`` on the device is a kernel like any other. On the CPU nothing changes.
    """

    def log(self, name: str, value: Any, *args: Any, **kwargs: Any) -> None:
        super().log(name, self.number_on_device(value), *args, **kwargs)

    def number_on_device(self, value: Any) -> Any:
        """A 0-d float32 tensor filled on the module's device for a Python number; anything else as given."""
        if isinstance(value, numbers.Real) and self.device.type != "cpu":
            return torch.full((), float(value), dtype=torch.get_default_dtype(), device=self.device)
        return value
