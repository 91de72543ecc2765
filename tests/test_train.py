"""The training task end to end: composition, fast_dev_run, summary.json, resume, init_from."""

import json
import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from toys import CONF_DIR, TINY, compose_train_cfg

from sslvit.train import knn_line, train
from sslvit.utils.config_errors import ConfigError

METHODS = sorted(p.stem for p in (Path(CONF_DIR) / "method").glob("*.yaml"))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_option_composes_for_eight_gpus(method):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"method={method}", "trainer.devices=8"])
    assert cfg.trainer.devices == 8
    assert cfg.method._target_.startswith("sslvit.methods.")
    if cfg.backbone is not None:  # method=dvae trains a tokenizer, no ViT
        assert cfg.backbone.patch_size == cfg.data.patch_size


def test_unknown_key_is_a_hydra_error():
    with (
        initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"),
        pytest.raises(ConfigCompositionException, match="no_such_key"),
    ):
        compose(config_name="config", overrides=["method.no_such_key=1"])


def test_fast_dev_run_writes_summary(tmp_path, caplog):
    cfg = compose_train_cfg(tmp_path, [*TINY, "trainer.fast_dev_run=true"])
    with caplog.at_level(logging.INFO, logger="sslvit.train"):
        summary = train(cfg)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == summary
    metrics = summary["metrics"]
    keys = ("train/loss", "train/dino_loss", "val/knn_top1", "val/linear_top1", "val/knn_top1_init")
    for key in (*keys, "val/knn_top1_pixels", "val/knn_top1_pixels_centered"):
        assert key in metrics and metrics[key] == metrics[key]  # present and not NaN
    assert 0.0 <= metrics["val/knn_top1"] <= 100.0
    assert caplog.records[-1].getMessage() == knn_line(metrics)
    assert f"(init {metrics['val/knn_top1_init']:.2f}, raw pixels" in caplog.records[-1].getMessage()
    assert summary["output_dir"] == str(tmp_path)
    assert summary["wall_time_s"] > 0


def test_resume_continues_and_init_from_copies_teacher(tmp_path):
    run = ["trainer.limit_train_batches=2", "callbacks=checkpoint"]
    first = train(compose_train_cfg(tmp_path, [*TINY, *run, "trainer.max_epochs=1"]))
    last = Path(first["checkpoints"]["last"])
    assert last.is_file()
    assert torch.load(last, weights_only=True)["global_step"] == 2

    resumed = train(compose_train_cfg(tmp_path, [*TINY, *run, "trainer.max_epochs=2", "ckpt_path=last"]))
    assert torch.load(resumed["checkpoints"]["last"], weights_only=True)["global_step"] == 4

    ckpt = torch.load(last, weights_only=True)
    teacher = {
        k.removeprefix("teacher.backbone."): v
        for k, v in ckpt["state_dict"].items()
        if "teacher.backbone." in k
    }
    other = tmp_path / "init"
    cfg = compose_train_cfg(other, [*TINY, "trainer.max_steps=0", "callbacks=none", f"init_from={last}"])
    from hydra.utils import instantiate

    from sslvit.train import init_backbones

    model = instantiate(cfg.method, backbone=instantiate(cfg.backbone))
    init_backbones(model, str(last))
    for network in (model.student, model.teacher):
        for name, value in network["backbone"].state_dict().items():
            assert torch.equal(value, teacher[name]), name


def test_knn_line_puts_the_learned_k_nn_beside_its_references():
    metrics = {"val/knn_top1": 72.4, "val/knn_top1_init": 65.9, "val/knn_top1_pixels": 80.8}
    assert knn_line(metrics) == "k-NN top-1: 72.40 (init 65.90, raw pixels 80.80)"
    assert (
        knn_line({"val/knn_top1": 72.4, "val/knn_top1_pixels": 80.8})
        == "k-NN top-1: 72.40 (raw pixels 80.80)"
    )
    assert knn_line({"val/knn_top1": 72.4}) == "k-NN top-1: 72.40"
    assert knn_line({"train/loss": 1.0}) is None


def test_resume_keeps_the_init_k_nn_and_turning_it_off_drops_it(tmp_path):
    run = ["trainer.limit_train_batches=2", "callbacks=knn", "callbacks.knn.pixels_centered=false"]
    first = train(compose_train_cfg(tmp_path, [*TINY, *run, "trainer.max_epochs=1"]))
    init = first["metrics"]["val/knn_top1_init"]
    saved = torch.load(first["checkpoints"]["last"], weights_only=True)["callbacks"]["KNNEvaluation"]
    assert saved["init_top1"] == pytest.approx(init) and saved["wall_s"] > 0
    # Resumed at step 2: the init value is the stored one (the weights are no longer the initial ones).
    resumed = train(compose_train_cfg(tmp_path, [*TINY, *run, "trainer.max_epochs=2", "ckpt_path=last"]))
    assert resumed["metrics"]["val/knn_top1_init"] == pytest.approx(init)
    assert resumed["metrics"]["val/wall_s"] > first["metrics"]["val/wall_s"]
    assert resumed["metrics"]["val/images_seen"] == 4 * 8  # 4 optimizer steps x data=fake's batch of 8
    on_disk = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    assert on_disk["val/knn_top1_init"] == pytest.approx(init) and "val/knn_top1_pixels" in on_disk

    off = train(
        compose_train_cfg(
            tmp_path / "off", [*TINY, *run, "trainer.max_epochs=1", "callbacks.knn.init_eval=false"]
        )
    )
    assert "val/knn_top1_init" not in off["metrics"] and "val/knn_top1" in off["metrics"]
    assert "val/knn_top1_init" not in json.loads((tmp_path / "off" / "summary.json").read_text())["metrics"]


def test_init_from_rejects_another_architecture(tmp_path):
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"pos_embed": torch.zeros(1, 5, 7)}, wrong)
    cfg = compose_train_cfg(tmp_path, [*TINY, f"init_from={wrong}", "trainer.fast_dev_run=true"])
    with pytest.raises(ValueError, match="does not fit this backbone"):
        train(cfg)


def test_ckpt_path_last_without_checkpoint_names_the_file(tmp_path):
    cfg = compose_train_cfg(tmp_path, [*TINY, "ckpt_path=last", "trainer.fast_dev_run=true"])
    with pytest.raises(ConfigError, match=r"last\.ckpt"):  # one line on the command line
        train(cfg)


EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*_imagenet.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_paper_recipes_compose_with_full_epochs(experiment):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}", "data.root=/data"])
    assert cfg.trainer.limit_train_batches is None  # full epochs, not the default job's short ones
    assert cfg.trainer.max_epochs >= 100
    assert cfg.method.optim.warmup_epochs == 10
    if "out_dim" in cfg.method:  # prototype heads (DINO, iBOT, DINOv2); BEiT has a token classifier
        assert cfg.method.optim.freeze_last_layer_epochs == 1
        assert cfg.method.out_dim in (8192, 65536)
    assert cfg.data.transform.global_crop_size == 224
    assert cfg.data.transform.global_crop_size % cfg.backbone.patch_size == 0
    if "num_local_crops" in cfg.data.transform and cfg.method._target_ != "sslvit.methods.BEiT":
        assert cfg.data.transform.num_local_crops >= 8  # multi-crop, not the demo's 2 globals
    assert not cfg.method.get("use_bn_in_head", False)  # the demo's DINO head, not the paper's
    # DINOv2's official config drops at the same rate in every block; the others increase it linearly.
    assert cfg.backbone.drop_path_uniform == experiment.startswith("dinov2")


@pytest.mark.parametrize("method", ["ibot", "dinov2"])
def test_small_cpu_recipes_compose(method):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={method}_vit_tiny7_fashion_mnist"])
    assert cfg.method._target_.lower().endswith(method)
    assert cfg.backbone.embed_dim == 192 and cfg.backbone.patch_size == 7
    assert cfg.trainer.limit_train_batches == 200 and cfg.data.masking is not None


def test_default_job_is_dino_with_its_fashion_mnist_values():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config")
        other = compose(config_name="config", overrides=["method=dinov2"])
    assert cfg.method._target_ == "sslvit.methods.DINO"
    # conf/small_data/fashion_mnist/dino.yaml: 2 x 200 steps of batch 64, 4 blocks, global crops only, head BN
    assert cfg.trainer.max_epochs * cfg.trainer.limit_train_batches == 400 and cfg.data.batch_size == 64
    assert cfg.backbone.depth == 4 and cfg.data.transform.num_local_crops == 0 and cfg.method.use_bn_in_head
    # the DINO-only values do not leak into another method's
    assert other.backbone.depth == 12 and other.data.batch_size == 32 and other.trainer.max_epochs == 2
    assert other.data.transform.num_local_crops == 4


def test_photometric_ops_on_the_device_train_end_to_end(tmp_path):
    overrides = [*TINY, "trainer.fast_dev_run=true", "data.transform.device_stage=photometric"]
    summary = train(compose_train_cfg(tmp_path, overrides))
    loss = summary["metrics"]["train/dino_loss"]
    assert loss == loss and loss > 0  # finite: the uint8 crops were finished (normalised) on the device


def test_crops_cut_on_the_device_train_end_to_end(tmp_path):
    overrides = [*TINY, "trainer.fast_dev_run=true", "method=dinov2", "data.transform.device_stage=crops"]
    summary = train(compose_train_cfg(tmp_path, overrides))
    loss = summary["metrics"]["train/dino_loss"]
    assert loss == loss and loss > 0  # finite: crops cut, jittered and normalised on the device
    assert summary["metrics"]["train/ibot_loss"] == summary["metrics"]["train/ibot_loss"]  # masks arrived
