"""iBOT and DINOv2 end to end through the training task (fast_dev_run on fake data)."""

import pytest
from toys import compose_train_cfg

from sslvit.train import train

TINY_MASKED = [
    "backbone=vit_test",
    "backbone.patch_size=8",
    "data=fake",
    "trainer=cpu",
    "logger=csv",
    "callbacks=knn",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.fast_dev_run=true",
    "method.out_dim=64",
    "method.hidden_dim=32",
    "method.bottleneck_dim=16",
]


@pytest.mark.parametrize(
    ("method", "terms"),
    [
        ("ibot", ["dino", "ibot"]),
        ("dinov2", ["dino", "ibot", "koleo"]),
        ("dinov2_centering", ["dino", "ibot"]),
        ("dinov2_gram", ["dino", "ibot", "koleo", "gram"]),
    ],
)
def test_fast_dev_run_logs_every_loss_term(tmp_path, method, terms):
    overrides = [*TINY_MASKED, f"method={method.split('_')[0]}"]
    if method.endswith("centering"):
        overrides.append("method.teacher_targets=centering")
    if method.endswith("gram"):
        overrides += ["method.gram.enabled=true", "method.gram.start_step=0"]
    summary = train(compose_train_cfg(tmp_path, overrides))
    metrics = summary["metrics"]
    for term in terms:
        value = metrics[f"train/{term}_loss"]
        assert value == value and abs(value) < 1e6  # finite
    assert "val/knn_top1" in metrics


def test_a_batch_without_masked_crops_trains(tmp_path):
    # iBOT masks each crop with probability 0.5, so a small batch is sometimes left without masks: the
    # patch head then sees 0 tokens and the patch loss is 0, not an error or NaN.
    overrides = [*TINY_MASKED, "method=ibot", "data.masking.mask_probability=0.0"]
    metrics = train(compose_train_cfg(tmp_path, overrides))["metrics"]
    assert metrics["train/ibot_loss"] == 0.0
    assert metrics["train/dino_loss"] == metrics["train/dino_loss"] and metrics["train/loss"] < 1e6


@pytest.fixture(scope="module")
def stage_one_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The last checkpoint of a one-step DINOv2 run on 32-px crops (a 4x4 patch grid)."""
    out = tmp_path_factory.mktemp("stage_one")
    low = train(compose_train_cfg(out, [*TINY_MASKED, "method=dinov2", "callbacks=checkpoint"]))
    return str(low["checkpoints"]["last"])


def test_highres_stage_loads_a_low_resolution_checkpoint(tmp_path, stage_one_checkpoint):
    checkpoint = stage_one_checkpoint
    high_overrides = [
        *TINY_MASKED,
        "method=dinov2",
        "stage=highres",
        "data.transform.global_crop_size=64",  # 32 px -> 64 px: an 8x8 patch grid instead of 4x4
        f"init_from={checkpoint}",
    ]
    cfg = compose_train_cfg(tmp_path, high_overrides)
    assert cfg.backbone.img_size == 64
    summary = train(cfg)
    assert "train/koleo_loss" in summary["metrics"]

    import torch
    from hydra.utils import instantiate

    from sslvit.train import init_backbones

    model = instantiate(cfg.method, backbone=instantiate(cfg.backbone))
    init_backbones(model, checkpoint)
    assert model.teacher["backbone"].pos_embed.shape[1] == 1 + 8 * 8
    low_pos = torch.load(checkpoint, weights_only=True)["state_dict"]["teacher.backbone.pos_embed"]
    assert low_pos.shape[1] == 1 + 4 * 4
    # the class-token slot is carried over unchanged
    assert torch.equal(model.teacher["backbone"].pos_embed[:, 0], low_pos[:, 0])


def test_gram_stage_refines_a_checkpoint_with_the_papers_gram_values(tmp_path, stage_one_checkpoint):
    overrides = [*TINY_MASKED, "method=dinov2", "stage=gram", f"init_from={stage_one_checkpoint}"]
    cfg = compose_train_cfg(tmp_path, overrides)
    gram = cfg.method.gram
    assert gram.enabled and gram.start_step == 0
    assert (gram.weight, gram.refresh_every, gram.teacher_resolution_scale) == (2.0, 10000, 2.0)
    assert cfg.method.optim.freeze_last_layer_epochs == 0
    metrics = train(cfg)["metrics"]
    assert 0.0 < metrics["train/gram_loss"] < 4.0  # a mean of squared cosine differences: at most 4
