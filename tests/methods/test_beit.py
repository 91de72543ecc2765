"""BEiT's two stages through the training task: dVAE tokenizer -> checkpoint -> masked image modelling."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from toys import CONF_DIR, compose_train_cfg

from sslvit.methods import BEiT, OptimConfig
from sslvit.tokenizers import DVAE, load_tokenizer
from sslvit.train import train

TINY_RUN = [
    "data=fake",
    "trainer=cpu",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.fast_dev_run=true",
]
TINY_DVAE = [
    "method=dvae",
    "callbacks=checkpoint",  # + the tokenizer monitor that method=dvae adds
    "method.tokenizer.vocab_size=32",
    "method.tokenizer.downsample=4",
    "method.tokenizer.hidden_dim=4",
    "method.tokenizer.blocks_per_group=1",
    "method.tokenizer.input_kernel=3",
]


def test_stage_one_checkpoint_feeds_stage_two(tmp_path):
    stage1 = train(compose_train_cfg(tmp_path / "dvae", [*TINY_RUN, *TINY_DVAE]))
    metrics = stage1["metrics"]
    for key in (
        "train/recon_loss",
        "train/kl_loss",
        "val/recon_mse",
        "val/codebook_usage",
        "val/codebook_perplexity",
    ):
        assert metrics[key] == metrics[key], key  # present and not NaN
    assert 0 < metrics["val/codebook_usage"] <= 100 and 1 <= metrics["val/codebook_perplexity"] <= 32
    assert list((tmp_path / "dvae" / "reconstructions").glob("step*.png"))
    checkpoint = stage1["checkpoints"]["last"]
    from_ckpt, from_file = load_tokenizer(checkpoint), load_tokenizer(tmp_path / "dvae" / "tokenizer.pt")
    assert isinstance(from_ckpt, DVAE) and from_ckpt.downsample == 4
    for (name, a), b in zip(from_ckpt.state_dict().items(), from_file.state_dict().values()):
        assert torch.equal(a, b), name

    # fake data: 32 px, patch 8 -> a 4x4 grid; the 4x tokenizer reads a 16-px view of the same crop
    stage2_overrides = [
        *TINY_RUN,
        "backbone=vit_test",
        "backbone.patch_size=8",
        "method=beit",
        "callbacks=knn",
        f"tokenizer.path={checkpoint}",
        "tokenizer.downsample=4",
    ]
    cfg = compose_train_cfg(tmp_path / "beit", stage2_overrides)
    assert cfg.backbone.rel_pos_bias and cfg.backbone.layerscale_init == 0.1
    stage2 = train(cfg)
    metrics = stage2["metrics"]
    assert 0 < metrics["train/mim_loss"] < 1e3 and "val/knn_top1" in metrics
    assert "sched/momentum" not in metrics  # a frozen tokenizer, no EMA teacher: no momentum schedule
    state = torch.load(stage2["checkpoints"]["last"], weights_only=True)["state_dict"]
    for name, value in from_ckpt.state_dict().items():  # the tokenizer did not move
        assert torch.equal(state[f"tokenizer.{name}"], value), name


def _beit(tokenizer_downsample: int) -> BEiT:
    from sslvit.backbones import MaskedViT

    backbone = MaskedViT(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2, rel_pos_bias=True)
    tokenizer = DVAE(vocab_size=8, downsample=tokenizer_downsample, hidden_dim=4, input_kernel=3)
    return BEiT(backbone, OptimConfig(warmup_epochs=0, batch_size_per_device=2), tokenizer)


def test_tokenizer_grid_must_match_the_patch_grid():
    model = _beit(tokenizer_downsample=2)
    targets = model.target_ids(torch.rand(2, 3, 8, 8), (4, 4))  # 8 px / 2 = 4x4 tokens
    assert targets.shape == (2, 16) and targets.max() < 8
    with pytest.raises(ValueError, match=r"tokenizer\.downsample=2"):
        model.target_ids(torch.rand(2, 3, 16, 16), (4, 4))  # a view sized for another tokenizer
    model.train()
    assert not model.tokenizer.training and not any(p.requires_grad for p in model.tokenizer.parameters())
    optimized = {id(p) for g in model.configure_optimizers().param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in model.tokenizer.parameters()}
    assert model(torch.rand(3, 3, 16, 16)).shape == (3, 24)  # evaluation features: mean patch token


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_demo_values_stay_with_their_methods():
    beit = _compose(["method=beit"])  # BEiT's Fashion-MNIST values: one 400-step epoch, no prototypes
    assert beit.trainer.limit_train_batches == 400 and "out_dim" not in beit.method
    assert _compose(["method=dvae"]).backbone is None
    assert _compose([]).method.out_dim == 1024  # DINO still gets its own Fashion-MNIST values


def test_fashion_mnist_recipes_share_one_token_grid():
    dvae = _compose(["experiment=dvae_fashion_mnist"])
    beit = _compose(["experiment=beit_vit_tiny4_fashion_mnist", "tokenizer.path=/x"])
    grid = beit.data.transform.global_crop_size // beit.backbone.patch_size
    assert grid == 7 and beit.tokenizer.downsample == dvae.method.tokenizer.downsample
    assert dvae.data.transform.global_crop_size // dvae.method.tokenizer.downsample == grid
    assert dvae.trainer.limit_train_batches and beit.trainer.limit_train_batches  # short CPU runs
    paper = _compose(["experiment=beit_vit_base16_imagenet", "data.root=/data", "tokenizer.path=/x"])
    paper_grid = paper.data.transform.global_crop_size // paper.backbone.patch_size
    assert paper_grid * paper.tokenizer.downsample == 112
    assert paper.backbone.embed_dim == 768 and paper.backbone.rel_pos_bias
