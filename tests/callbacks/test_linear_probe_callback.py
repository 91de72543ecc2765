"""LinearProbe: learns online, leaves the method untouched, and survives a checkpoint resume."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `benchmarks`

from benchmarks.fake import fake_copy, make_module_fake
from benchmarks.sync_audit import SyncWatch
from sslvit.callbacks import KNNEvaluation, LinearProbe


def _trainer(tmp_path: Path, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(
        accelerator="cpu",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return pl.Trainer(callbacks=callbacks, **{**defaults, **kwargs})


@pytest.mark.parametrize("mode", ["detached", "attached", "no_features"])
def test_probe_learns_separable_problem_without_touching_the_method(
    tmp_path: Path, make_module: Any, make_datamodule: Any, mode: str
) -> None:
    # "attached": a method that forgot detach(); "no_features": the probe computes features itself.
    module = make_module(detach_features=mode != "attached", features_in_outputs=mode != "no_features")
    probe = LinearProbe()
    trainer = _trainer(tmp_path, [probe])
    trainer.fit(module, datamodule=make_datamodule(n_train=256, n_val=64, batch_size=32))

    assert float(trainer.callback_metrics["val/linear_top1"]) >= 95.0
    assert float(trainer.callback_metrics["train/linear_probe_top1"]) >= 90.0
    assert float(trainer.callback_metrics["train/linear_probe_loss"]) < 1.3  # chance: log(4) = 1.39
    # The method is untouched: its only parameter keeps value 1 and its own gradient (exactly -2), and
    # its optimizer holds only its own parameter.
    assert float(module.gain.detach()) == 1.0
    assert module.grads_seen == [-2.0] * 24  # 3 epochs x 8 batches, read after the callbacks ran
    assert [p for g in trainer.optimizers[0].param_groups for p in g["params"]] == [module.gain]
    assert int(probe.optimizer.state[probe.probe.weight]["step"]) == 24
    assert module.training  # modes restored after the eval passes


def test_probe_skips_unlabelled_rows(make_module: Any, make_batch: Any) -> None:
    probe = LinearProbe(lr=0.1)
    probe._enabled = True
    probe._build(embed_dim=2, num_classes=2, device=torch.device("cpu"))
    reference = LinearProbe(lr=0.1)
    reference._build(embed_dim=2, num_classes=2, device=torch.device("cpu"))
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    labels = torch.tensor([0, 1, -1])
    batch = make_batch(features[:, :, None, None], labels)
    with pytest.warns(UserWarning, match="not registered"):  # pl_module.log without a Trainer
        probe.on_train_batch_end(None, make_module(dim=2), {"features": features}, batch, 0)  # type: ignore[arg-type]
    # Same step on the two labelled rows only.
    loss = torch.nn.functional.cross_entropy(reference.probe(features[:2]), labels[:2])
    loss.backward()
    reference.optimizer.step()
    torch.testing.assert_close(probe.probe.weight, reference.probe.weight)
    torch.testing.assert_close(probe.probe.bias, reference.probe.bias)


def test_a_batch_without_labels_leaves_the_probe_unchanged(make_module: Any, make_batch: Any) -> None:
    probe = LinearProbe(lr=0.1)
    probe._enabled = True
    probe._build(embed_dim=2, num_classes=2, device=torch.device("cpu"))
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labelled = make_batch(features[:, :, None, None], torch.tensor([0, 1]))
    unlabelled = make_batch(features[:, :, None, None], torch.tensor([-1, -1]))
    with pytest.warns(UserWarning, match="not registered"):  # pl_module.log without a Trainer
        probe.on_train_batch_end(None, make_module(dim=2), {"features": features}, labelled, 0)  # type: ignore[arg-type]
    weight, moment = (
        probe.probe.weight.detach().clone(),
        probe.optimizer.state[probe.probe.weight]["exp_avg"].clone(),
    )
    with pytest.warns(UserWarning, match="not registered"):
        probe.on_train_batch_end(None, make_module(dim=2), {"features": features}, unlabelled, 1)  # type: ignore[arg-type]
    # Skipped on the device: no update, no moment update, the step count stays at 1.
    assert torch.equal(probe.probe.weight, weight)
    assert torch.equal(probe.optimizer.state[probe.probe.weight]["exp_avg"], moment)
    assert int(probe.optimizer.state[probe.probe.weight]["step"]) == 1


def test_state_dict_round_trip_and_shape_check() -> None:
    probe = LinearProbe()
    probe._build(embed_dim=3, num_classes=2, device=torch.device("cpu"))
    with torch.no_grad():
        probe.probe.weight.fill_(0.5)
    probe.probe(torch.ones(4, 3)).sum().backward()
    probe.optimizer.step()
    state = probe.state_dict()

    restored = LinearProbe()
    restored.load_state_dict(state)  # before the probe exists: kept until on_fit_start builds it
    restored._build(embed_dim=3, num_classes=2, device=torch.device("cpu"))
    restored._load(restored._pending_state or {})
    torch.testing.assert_close(restored.probe.weight, probe.probe.weight)
    assert restored.optimizer.state_dict()["state"][0]["step"] == 1

    wrong = LinearProbe()
    wrong._build(embed_dim=4, num_classes=2, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="shape"):
        wrong.load_state_dict(state)


def test_resume_from_checkpoint_restores_probe(
    tmp_path: Path, make_module: Any, make_datamodule: Any
) -> None:
    first = LinearProbe()
    trainer = _trainer(tmp_path, [first], max_epochs=1)
    trainer.fit(make_module(), datamodule=make_datamodule())  # 4 batches
    ckpt = tmp_path / "probe.ckpt"
    trainer.save_checkpoint(ckpt)
    weight_after_first = first.probe.weight.detach().clone()

    resumed = LinearProbe()
    trainer = _trainer(tmp_path, [resumed], max_epochs=2)
    trainer.fit(make_module(), datamodule=make_datamodule(), ckpt_path=ckpt)
    assert int(resumed.optimizer.state[resumed.probe.weight]["step"]) == 8  # 4 restored + 4 new
    assert not torch.equal(resumed.probe.weight, weight_after_first)  # kept training after the restore

    finished = LinearProbe()  # resuming an already finished run: restored state, no training
    trainer = _trainer(tmp_path, [finished], max_epochs=1)
    trainer.fit(make_module(), datamodule=make_datamodule(), ckpt_path=ckpt)
    torch.testing.assert_close(finished.probe.weight, weight_after_first)


def test_probe_and_knn_share_val_features(tmp_path: Path, make_module: Any, make_datamodule: Any) -> None:
    module = make_module()
    callbacks = [KNNEvaluation(ks=(20,), init_eval=False), LinearProbe()]
    _trainer(tmp_path, callbacks, max_epochs=1).fit(module, datamodule=make_datamodule(n_train=64, n_val=32))
    # One eval pass over train (4 batches) and one over val (2 batches), not two over val.
    eval_passes = module.forward_modes.count(False)
    assert eval_passes == 4 + 2


def test_no_labels_disables_probe(tmp_path: Path, make_module: Any, make_datamodule: Any) -> None:
    probe = LinearProbe()
    trainer = _trainer(tmp_path, [probe], max_epochs=1)
    with pytest.warns(UserWarning, match="no labels"):
        trainer.fit(make_module(), datamodule=make_datamodule(has_labels=False))
    assert probe.probe is None and probe.state_dict() == {}
    assert "val/linear_top1" not in trainer.callback_metrics


def test_a_probe_step_makes_no_host_wait_on_fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every training step trains the probe: on fake CUDA tensors no op may read back from the device.
    (Autograd cannot run backward on fake CUDA tensors: it leaves zero gradients here.)"""
    cuda, mode = torch.device("cuda", 0), FakeTensorMode(allow_non_fake_inputs=True)
    probe = LinearProbe()
    probe._enabled = True
    probe._build(embed_dim=2, num_classes=2, device=torch.device("cpu"))
    make_module_fake(probe.probe, mode, cuda)  # then the same optimizer over the fake parameters
    with mode:
        probe.optimizer = torch.optim.AdamW(probe.probe.parameters(), lr=probe.lr, fused=True)

    def zero_grads(loss: torch.Tensor) -> None:
        for param in probe.probe.parameters():
            param.grad = torch.zeros_like(param)

    monkeypatch.setattr(torch.Tensor, "backward", zero_grads)
    features = fake_copy(mode, torch.randn(4, 2), cuda)
    batch = SimpleNamespace(labels=fake_copy(mode, torch.tensor([0, 1, -1, 1]), cuda))
    logged: list[str] = []
    module = SimpleNamespace(log=lambda name, *args, **kwargs: logged.append(name))
    with mode, SyncWatch("cuda") as watch:
        for step in range(2):
            probe.on_train_batch_end(None, module, {"features": features}, batch, step)  # type: ignore[arg-type]
    assert watch.seen == []
    assert logged == ["train/linear_probe_loss", "train/linear_probe_top1"] * 2
