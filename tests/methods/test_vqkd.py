"""method=vqkd end to end (teacher from a DINO checkpoint) and the feature-teacher loading errors."""

from pathlib import Path

import pytest
import timm
import torch
from hydra.utils import instantiate
from toys import TINY, compose_train_cfg, tiny_backbone

from sslvit.backbones.feature_teacher import FeatureTeacher
from sslvit.tokenizers.io import load_tokenizer
from sslvit.tokenizers.vqkd import VQKD
from sslvit.train import train
from sslvit.utils.feature_teacher_loader import load_feature_teacher

TINY_VQKD = [
    "backbone=vit_test",
    "data=fake",
    "trainer=cpu",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "method=vqkd",
    "callbacks=checkpoint",  # + the codebook monitor that method=vqkd adds
    "method.num_codes=32",
    "method.code_dim=8",
    "method.decoder_depth=1",
    "backbone.patch_size=8",
]


@pytest.fixture(scope="module")
def dino_checkpoint(tmp_path_factory) -> Path:
    """A DINO run on fake data (ViT-test, 4x4 grid) trained for 2 steps: the teacher to distil."""
    out = tmp_path_factory.mktemp("dino")
    run = ["trainer.limit_train_batches=2", "trainer.max_epochs=1", "callbacks=checkpoint"]
    return Path(train(compose_train_cfg(out, [*TINY, *run]))["checkpoints"]["last"])


def test_vqkd_trains_from_a_dino_teacher_and_writes_a_tokenizer(tmp_path, dino_checkpoint):
    one_step = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    cfg = compose_train_cfg(tmp_path, [*TINY_VQKD, f"teacher.path={dino_checkpoint}", *one_step])
    summary = train(cfg)
    metrics = summary["metrics"]
    for key in ("train/loss", "train/rec_loss", "train/commit_loss", "health/codebook_usage"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN
    assert 0.0 <= metrics["train/rec_loss"] <= 2.0
    # fast_dev_run: one batch of 8 images x 16 patches, k-means on those 128 vectors, 32 codes
    assert 0.0 < metrics["health/codebook_usage"] <= 1.0
    assert 0.0 < metrics["val/codebook_usage"] <= 100.0
    assert 1.0 <= metrics["val/codebook_perplexity"] <= 32.0
    assert 0.0 <= metrics["val/rec_loss"] <= 2.0

    tokenizer = load_tokenizer(tmp_path / "tokenizer.pt")
    assert isinstance(tokenizer, VQKD) and tokenizer.vocab_size == 32
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert tokenizer.encode(images).shape == (2, 4, 4)
    # The stage-1 checkpoint serves as tokenizer.path too (its weights sit under `student.`, next to
    # the frozen feature teacher's): the same tokenizer as tokenizer.pt.
    from_checkpoint = load_tokenizer(summary["checkpoints"]["last"])
    assert isinstance(from_checkpoint, VQKD) and set(from_checkpoint.state_dict()) == set(
        tokenizer.state_dict()
    )
    assert torch.equal(from_checkpoint.encode(images), tokenizer.encode(images))
    assert torch.allclose(from_checkpoint.quantizer.codebook, tokenizer.quantizer.codebook)


def test_teacher_is_the_checkpoint_teacher_and_stays_frozen(dino_checkpoint, tmp_path):
    cfg = compose_train_cfg(tmp_path, [*TINY_VQKD, f"teacher.path={dino_checkpoint}"])
    model = instantiate(cfg.method, backbone=instantiate(cfg.backbone))
    ckpt = torch.load(dino_checkpoint, weights_only=True)["state_dict"]
    teacher = model.feature_teacher.model
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, ckpt[f"teacher.backbone.{name}"]), name
    assert all(not p.requires_grad for p in teacher.parameters())
    model.train()
    assert not teacher.training
    # the optimizer holds the tokenizer's parameters only (not the teacher's, not the EMA codebook)
    optimizer = model.configure_optimizers()
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.tokenizer.parameters()}


def test_fashion_mnist_gives_vqkd_its_small_data_values(tmp_path, dino_checkpoint):
    demo = [*TINY_VQKD[:7], "data=fashion_mnist", f"teacher.path={dino_checkpoint}"]
    cfg = compose_train_cfg(tmp_path, demo)
    model = instantiate(cfg.method, backbone=instantiate(cfg.backbone))  # no DINO-family key leaks in
    assert model.tokenizer.vocab_size == 512 and cfg.data.batch_size == 64
    # ...and only there: other data get the paper's 8192 codes
    other = compose_train_cfg(tmp_path, [*TINY_VQKD[:7], f"teacher.path={dino_checkpoint}"])
    assert other.method.num_codes == 8192


def test_teacher_loading_errors(tmp_path):
    with pytest.raises(ValueError, match="VQ-KD needs a teacher"):
        load_feature_teacher()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_feature_teacher(path=str(tmp_path / "missing.ckpt"))
    plain = tmp_path / "plain.pt"
    torch.save(tiny_backbone().state_dict(), plain)
    with pytest.raises(ValueError, match=r"not a checkpoint of sslvit.s train\.py"):
        load_feature_teacher(path=str(plain))
    with pytest.raises(ValueError, match=r"needs teacher\.weights"):
        load_feature_teacher(arch="vit_tiny_patch16_224")
    with pytest.raises(ValueError, match=r"teacher\.arch=no_such_model"):
        load_feature_teacher(arch="no_such_model", weights=str(plain))
    with pytest.raises(ValueError, match="does not fit"):  # a MaskedViT file for another architecture
        load_feature_teacher(arch="vit_tiny_patch16_224", weights=str(plain))


def test_timm_teacher_from_a_local_file(tmp_path):
    source = timm.create_model("vit_tiny_patch16_224", num_classes=10, dynamic_img_size=True).eval()
    weights = tmp_path / "vit_tiny.pth"
    torch.save(source.state_dict(), weights)  # with its classifier head: dropped on loading
    teacher = load_feature_teacher(arch="vit_tiny_patch16_224", weights=str(weights))
    assert isinstance(teacher, FeatureTeacher) and teacher.embed_dim == 192 and teacher.patch_size == 16
    images = torch.randn(1, 3, 64, 64)
    expected = source.forward_features(images)[:, 1:]  # the CLS token dropped
    assert torch.allclose(teacher.patch_features(images, (4, 4)), expected, atol=1e-5)
    # the tokenizer's grid decides: 28-px images are resized to 16 px per patch for this teacher
    resized = torch.nn.functional.interpolate(torch.rand(1, 3, 28, 28), size=(64, 64), mode="bicubic")
    assert teacher.patch_features(resized, (4, 4)).shape == (1, 16, 192)
