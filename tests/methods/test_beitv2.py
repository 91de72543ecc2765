"""BEiT v2 stage 2: the CLS-token pretraining head, the shared classifier, and DINO -> VQ-KD -> BEiT v2."""

import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from toys import CONF_DIR, TINY, compose_train_cfg

from sslvit.backbones import MaskedViT
from sslvit.data.batch import MaskedImageBatch
from sslvit.eval.checkpoint_import import import_backbone_state
from sslvit.evaluate import load_backbone
from sslvit.methods import BEiTv2, OptimConfig
from sslvit.tokenizers import DVAE
from sslvit.train import train

TINY_RUN = [
    "backbone=vit_test",
    "backbone.patch_size=8",
    "data=fake",
    "trainer=cpu",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def _beitv2(layer: int, registers: int = 0) -> BEiTv2:
    torch.manual_seed(0)
    backbone = MaskedViT(
        img_size=16, patch_size=4, embed_dim=24, depth=3, num_heads=2, rel_pos_bias=True,
        layerscale_init=0.1, num_register_tokens=registers,
    )  # fmt: skip
    tokenizer = DVAE(vocab_size=8, downsample=4, hidden_dim=4, input_kernel=3)  # 16-px view -> 4x4 ids
    optim = OptimConfig(warmup_epochs=0, batch_size_per_device=2)
    return BEiTv2(backbone, optim, tokenizer, cls_pretrain_layer=layer, cls_head_layerscale_init=0.1)


def _batch() -> MaskedImageBatch:
    g = torch.Generator().manual_seed(1)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, [0, 1, 4, 5, 6, 10]] = True
    masks[1, [9, 10, 13, 14]] = True
    return MaskedImageBatch(
        images=torch.randn(2, 3, 16, 16, generator=g),
        labels=torch.zeros(2, dtype=torch.long),
        tokenizer_images=torch.rand(2, 3, 16, 16, generator=g),
        masks=masks,
    )


def _head_inputs(model: BEiTv2, batch: MaskedImageBatch) -> tuple[torch.Tensor, ...]:
    """The positional arguments the CLS head receives in one training step."""
    seen: list[tuple[torch.Tensor, ...]] = []
    handle = model.student["cls_head"].register_forward_pre_hook(lambda _m, args: seen.append(args))
    try:
        model.training_step(batch, 0)
    finally:
        handle.remove()
    assert len(seen) == 1
    return seen[0]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # a step outside a Trainer
@pytest.mark.parametrize("registers", [0, 1])
def test_cls_head_reads_the_final_cls_and_the_configured_layer(registers):
    batch = _batch()
    model = _beitv2(layer=2, registers=registers)
    model.eval()  # no dropout / drop path: the manual pass below must give the same numbers
    backbone = model.student["backbone"]
    cls, patches, bias = _head_inputs(model, batch)

    # block 2 (1-based) of the masked pass, before the final norm, patch tokens only
    x = backbone.prepare_tokens(batch.images, batch.masks)
    full_bias = backbone.attention_bias(16, 16)
    for block in backbone.blocks[:2]:
        x = block(x, attn_mask=full_bias)
    assert torch.allclose(patches, x[:, 1 + registers :], atol=1e-6)
    final = backbone.forward_features(batch.images, masks=batch.masks)["x_norm_clstoken"]
    assert torch.allclose(cls, final, atol=1e-6)
    # the head's [CLS, patches] bias is the backbone's bias without the register rows / columns
    keep = [0, *range(1 + registers, 17 + registers)]
    assert bias.shape == (1, 2, 17, 17) and torch.equal(bias, full_bias[:, :, keep][:, :, :, keep])

    # without masks the same tensor is what get_intermediate_layers reports for block index 1
    _, unmasked = model.backbone_with_layer(batch.images, torch.zeros_like(batch.masks))
    expected = backbone.get_intermediate_layers(batch.images, n=[1], norm=False)[0][0]
    assert torch.allclose(unmasked, expected, atol=1e-6)

    model.cls_pretrain_layer = 1  # another layer -> another head input
    _, other, _ = _head_inputs(model, batch)
    assert not torch.allclose(other, patches, atol=1e-3)


def test_bad_layer_is_one_clear_error():
    with pytest.raises(ValueError, match=r"cls_pretrain_layer must be in 1\.\.3"):
        _beitv2(layer=4)
    backbone = MaskedViT(img_size=16, patch_size=4, embed_dim=24, depth=12, num_heads=2)
    tokenizer = DVAE(vocab_size=8, downsample=4, hidden_dim=4, input_kernel=3)
    default = BEiTv2(backbone, OptimConfig(warmup_epochs=0, batch_size_per_device=2), tokenizer)
    assert default.cls_pretrain_layer == 9  # the paper's 9 of 12


def test_one_classifier_serves_both_losses():
    model = _beitv2(layer=2)
    classifier = model.student["head"]
    # no second vocabulary-sized classifier anywhere; the optimiser sees the shared one once
    vocab_layers = [
        m for m in model.student.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 8
    ]
    assert vocab_layers == [classifier]
    optimized = [p for g in model.configure_optimizers().param_groups for p in g["params"]]
    assert sum(p is classifier.weight for p in optimized) == 1

    g = torch.Generator().manual_seed(2)
    tokens, head_tokens = torch.randn(2, 16, 24, generator=g), torch.randn(2, 16, 24, generator=g)
    targets = torch.randint(0, 8, (2, 16), generator=g)
    indices = _batch().mask_indices  # the loader's (M,) masked positions
    grads = []
    for pick in (0, 1):  # L_MIM alone, then L_MIM_C alone
        model.zero_grad()
        model.mim_losses(tokens, head_tokens, targets, indices)[pick].backward()
        grads.append(classifier.weight.grad.clone())
    assert all(grad.abs().sum() > 0 for grad in grads) and not torch.allclose(grads[0], grads[1])
    model.zero_grad()
    mim, mim_cls, _ = model.mim_losses(tokens, head_tokens, targets, indices)
    (mim + mim_cls).backward()
    assert torch.allclose(classifier.weight.grad, grads[0] + grads[1], atol=1e-6)

    # a classifier that always says id 3 with logit 2: both losses read it (hand-computed CE)
    with torch.no_grad():
        classifier.weight.zero_()
        classifier.bias.zero_()
        classifier.bias[3] = 2.0
    mim, mim_cls, _ = model.mim_losses(tokens, head_tokens, torch.full_like(targets, 3), indices)
    expected = math.log(1 + 7 * math.exp(-2.0))  # -log(e^2 / (e^2 + 7))
    assert mim.item() == pytest.approx(expected, rel=1e-5) and mim_cls.item() == pytest.approx(
        expected, rel=1e-5
    )


def test_unmasked_positions_change_neither_loss():
    model = _beitv2(layer=2)
    g = torch.Generator().manual_seed(3)
    tokens, head_tokens = torch.randn(2, 16, 24, generator=g), torch.randn(2, 16, 24, generator=g)
    targets = torch.randint(0, 8, (2, 16), generator=g)
    masks = _batch().masks
    indices = _batch().mask_indices  # the loader's (M,) masked positions
    before = model.mim_losses(tokens, head_tokens, targets, indices)[:2]

    keep = ~masks
    tokens2, head2, targets2 = tokens.clone(), head_tokens.clone(), targets.clone()
    tokens2[keep] = torch.randn(int(keep.sum()), 24, generator=g) * 5
    head2[keep] = torch.randn(int(keep.sum()), 24, generator=g) * 5
    targets2[keep] = (targets[keep] + 1) % 8
    after = model.mim_losses(tokens2, head2, targets2, indices)[:2]
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])

    targets2[0, 0] = (targets[0, 0] + 1) % 8  # a masked position: both losses move
    moved = model.mim_losses(tokens2, head2, targets2, indices)[:2]
    assert moved[0] != before[0] and moved[1] != before[1]


@pytest.fixture(scope="module")
def vqkd_tokenizer(tmp_path_factory) -> Path:
    """DINO (2 steps) -> VQ-KD (fast_dev_run) on fake data: a 4x4-grid tokenizer.pt with 32 codes."""
    dino_dir, vqkd_dir = tmp_path_factory.mktemp("dino"), tmp_path_factory.mktemp("vqkd")
    dino_run = ["trainer.limit_train_batches=2", "trainer.max_epochs=1", "callbacks=checkpoint"]
    dino = train(compose_train_cfg(dino_dir, [*TINY, *dino_run]))["checkpoints"]["last"]
    vqkd_run = [
        *TINY_RUN,
        "method=vqkd",
        "callbacks=checkpoint",
        "method.num_codes=32",
        "method.code_dim=8",
        "method.decoder_depth=1",
        f"teacher.path={dino}",
        "trainer.fast_dev_run=true",
    ]
    train(compose_train_cfg(vqkd_dir, vqkd_run))
    return vqkd_dir / "tokenizer.pt"


def test_dino_vqkd_beitv2_pipeline_and_backbone_only_outputs(tmp_path, vqkd_tokenizer):
    # fake data: 32 px, patch 8 -> a 4x4 grid; the VQ-KD encoder (patch 8) reads the same 32-px view
    overrides = [
        *TINY_RUN,
        "method=beitv2",
        "callbacks=checkpoint",
        f"tokenizer.path={vqkd_tokenizer}",
        "method.cls_pretrain_layer=1",
        "trainer.fast_dev_run=true",
    ]
    cfg = compose_train_cfg(tmp_path, overrides)
    assert cfg.backbone.rel_pos_bias and cfg.backbone.layerscale_init == 0.1 and cfg.tokenizer.downsample == 8
    train(cfg)
    metrics = json.loads((tmp_path / "summary.json").read_text())["metrics"]
    for key in ("train/mim_loss", "train/mim_cls_loss"):
        assert 0 < metrics[key] < 1e3, key  # 32 codes: ln 32 = 3.5 at chance
    assert metrics["train/loss"] == pytest.approx(
        metrics["train/mim_loss"] + metrics["train/mim_cls_loss"], rel=1e-4
    )

    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert any(k.startswith("student.cls_head.blocks.1.") for k in state)  # the head was trained ...
    imported = import_backbone_state(torch.load(checkpoint, weights_only=True))
    backbone, _, _ = load_backbone(str(checkpoint))  # ... but evaluation reads the student backbone only
    assert imported.prefix.endswith("student.backbone.")
    assert set(backbone.state_dict()) == {
        k.removeprefix("student.backbone.") for k in state if k.startswith("student.backbone.")
    }
    for name, value in backbone.state_dict().items():
        assert torch.equal(value, state[f"student.backbone.{name}"]), name


def _compose(overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_recipes_match_their_tokenizers_grids():
    vqkd = _compose(["experiment=vqkd_vit_tiny7_fashion_mnist", "teacher.path=/x"])
    small = _compose(["experiment=beitv2_vit_tiny7_fashion_mnist", "tokenizer.path=/x"])
    grid = small.data.transform.global_crop_size // small.backbone.patch_size
    vqkd_grid = vqkd.data.transform.global_crop_size // vqkd.backbone.patch_size
    assert grid == vqkd_grid == 4 and small.tokenizer.downsample == vqkd.backbone.patch_size
    assert small.backbone.depth == 12 and small.method.cls_pretrain_layer == 9
    paper = _compose(["experiment=beitv2_vit_base16_imagenet", "data.root=/data", "tokenizer.path=/x"])
    paper_grid = paper.data.transform.global_crop_size // paper.backbone.patch_size
    assert paper_grid * paper.tokenizer.downsample == 224
    assert paper.method.cls_pretrain_layer == 9 and paper.backbone.depth == 12
    assert paper.method.cls_head_layerscale_init == 0.1 and paper.backbone.drop_path_rate == 0.1
