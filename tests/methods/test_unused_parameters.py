"""Every trainable parameter gets a gradient in a training step, except those a method declares unused.

DDP reduces the gradients of every parameter it is handed and waits for all of them: one that never gets
a gradient fails the second step. Methods list theirs in ``unused_parameters``, which DDP then skips.
"""

from typing import Any

import lightning as L
import pytest
import torch
from method_toys import METHODS, FixedGumbelNoise, build, global_batch


class GradientsAfterBackward(L.Callback):
    def on_after_backward(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.without = {n for n, p in module.named_parameters() if p.requires_grad and p.grad is None}


@pytest.mark.parametrize("method", METHODS)
def test_only_declared_parameters_lack_a_gradient(method: str, tmp_path) -> None:
    model: Any = build(method, 4)
    record = GradientsAfterBackward()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, callbacks=[record],
    )  # fmt: skip
    with FixedGumbelNoise(torch.zeros(1, 4, 8, 4, 4)):
        trainer.fit(model, torch.utils.data.DataLoader([global_batch(method, 4, seed=0)], batch_size=None))
    assert record.without == set(getattr(model, "unused_parameters", ()))
    # hidden from DDP, kept in the state dict for evaluation, checkpoints and init_from
    unused = list(getattr(model, "unused_parameters", ()))
    hidden = getattr(model, "_ddp_params_and_buffers_to_ignore", [])
    assert hidden[: len(unused)] == unused
    # anything else hidden is a frozen network's (the distillation teacher): nothing DDP would reduce
    params, state = dict(model.named_parameters()), model.state_dict()
    assert all(
        name in state and not (name in params and params[name].requires_grad)
        for name in hidden[len(unused) :]
    )
    assert all(name in state for name in record.without)


def test_a_misspelt_unused_parameter_is_one_clear_error() -> None:
    model = build("dino", 4)
    model.unused_parameters = ("student.backbone.mask_tokn",)
    with pytest.raises(
        ValueError, match=r"DINO.unused_parameters names no parameter: \['student.backbone.mask_tokn'\]"
    ):
        model.setup("fit")
