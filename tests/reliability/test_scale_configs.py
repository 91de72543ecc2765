"""Strategies compose and instantiate on the CPU: DDP for devices > 1, FSDP, SLURM; accumulation."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from timm.models.vision_transformer import Block
from toys import CONF_DIR, loader, multicrop_batches, tiny_dino

from sslvit.config import register_resolvers
from sslvit.heads import DINOHead
from sslvit.utils.checkpoint_io import AtomicCheckpointIO
from sslvit.utils.fsdp import mixed_precision, module_classes, unwrapped_name


def compose_trainer(*overrides: str):
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides)).trainer


def test_default_trainer_runs_ddp_on_eight_devices():
    """`trainer.devices=8` with the default trainer: Lightning's auto strategy is DDP, 8 processes."""
    cfg = compose_trainer("trainer.devices=8", "trainer.accelerator=cpu")
    trainer: L.Trainer = instantiate(cfg, logger=False, enable_checkpointing=False)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == 8 and trainer.world_size == 8
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_fsdp_config_builds_the_strategy():
    cfg = compose_trainer("trainer=fsdp")
    assert (cfg.accelerator, cfg.precision, cfg.devices) == ("gpu", "bf16-mixed", -1)
    strategy = instantiate(cfg.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy._state_dict_type == "sharded"
    assert strategy.kwargs["use_orig_params"] is True  # param groups by name keep working
    policy = strategy.kwargs["auto_wrap_policy"]
    assert policy._module_classes == {Block, DINOHead}  # one FSDP unit per transformer block and head
    precision = strategy.mixed_precision_config
    assert (precision.param_dtype, precision.reduce_dtype, precision.buffer_dtype) == (
        torch.bfloat16,
        torch.float32,
        torch.float32,
    )


def test_module_classes_resolves_and_rejects():
    assert module_classes(["timm.models.vision_transformer.Block"]) == {Block}
    with pytest.raises(ValueError, match=r"no_such\.Block.*cannot be imported"):
        module_classes(["no_such.Block"])
    with pytest.raises(ValueError, match=r"not a torch\.nn\.Module subclass"):
        module_classes(["torch.zeros"])
    with pytest.raises(ValueError, match="unknown torch dtype 'bf16'"):
        mixed_precision(param_dtype="bf16")
    assert unwrapped_name("backbone.blocks.0._fsdp_wrapped_module.attn.qkv.weight") == (
        "backbone.blocks.0.attn.qkv.weight"
    )


def test_slurm_config_takes_nodes_from_slurm_and_requeues(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "4")
    cfg = compose_trainer("trainer=slurm")
    assert cfg.num_nodes == 4 and cfg.strategy._target_.endswith("DDPStrategy")
    plugins = [instantiate(p) for p in cfg.plugins]
    assert isinstance(plugins[0], AtomicCheckpointIO)
    assert isinstance(plugins[1], SLURMEnvironment) and plugins[1].auto_requeue
    monkeypatch.delenv("SLURM_JOB_NUM_NODES")
    assert compose_trainer("trainer=slurm").num_nodes == 1


@pytest.mark.parametrize("accumulate", [1, 2])
def test_lr_scales_with_the_accumulated_global_batch(accumulate):
    """Linear rule: peak lr = base_lr * (batch per device x devices x accumulation) / 256."""
    model = tiny_dino(base_lr=0.0256)  # batch 4 per device -> 4e-4 per accumulated micro-batch
    seen: list[float] = []

    class RecordLR(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["lr_scale"])

    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        accumulate_grad_batches=accumulate,
        callbacks=[RecordLR()],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=loader(multicrop_batches(3 * accumulate)))
    assert model.global_batch_size == 4 * accumulate
    assert len(seen) == 3  # one value per optimizer step, not per micro-batch
    # no warm-up: step 0 runs at the peak of the cosine
    assert seen[0] == pytest.approx(0.0256 * 4 * accumulate / 256)
