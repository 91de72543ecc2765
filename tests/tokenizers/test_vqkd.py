"""VQKD tokenizer: straight-through training signal, the tokenizer interface, file round trip."""

import torch

from sslvit.backbones import MaskedViT
from sslvit.tokenizers.base import VisualTokenizer
from sslvit.tokenizers.io import load_tokenizer, save_tokenizer
from sslvit.tokenizers.vqkd import VQKD, cosine_reconstruction_loss

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def tiny_vqkd(**kwargs) -> VQKD:
    torch.manual_seed(0)
    encoder = MaskedViT(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2)
    args = {"num_codes": 16, "code_dim": 8, "decoder_depth": 1, "pixel_mean": MEAN, "pixel_std": STD}
    return VQKD(encoder, teacher_dim=24, **{**args, **kwargs})


def test_reconstruction_gradient_reaches_the_encoder_through_the_quantiser():
    tokenizer = tiny_vqkd().train()
    images = torch.randn(2, 3, 16, 16)
    out = tokenizer(images)
    assert out.reconstruction.shape == (2, 16, 24)
    assert out.ids.shape == (2, 4, 4) and out.ids.dtype == torch.int64
    # the reconstruction term alone (no commitment): only the straight-through path links it to the encoder
    cosine_reconstruction_loss(out.reconstruction, torch.randn(2, 16, 24)).backward()
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight"):
        grad = tokenizer.backbone.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert tokenizer.encode_proj[0].weight.grad.abs().sum() > 0
    assert all(not b.requires_grad for b in tokenizer.quantizer.buffers())  # the codebook is EMA-only


def test_cosine_reconstruction_loss_values():
    target = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert cosine_reconstruction_loss(target * 3.0, target).item() < 1e-6
    assert cosine_reconstruction_loss(-target, target).item() == 2.0
    assert abs(cosine_reconstruction_loss(target.flip(-1), target).item() - 1.0) < 1e-6


def test_encode_follows_the_tokenizer_interface_and_never_updates_the_codebook():
    tokenizer = tiny_vqkd().train()
    tokenizer(torch.randn(8, 3, 16, 16))  # k-means init + one EMA step
    assert isinstance(tokenizer, VisualTokenizer)
    assert tokenizer.vocab_size == 16 and tokenizer.downsample == 4
    assert tokenizer.grid_size(16, 32) == (4, 8)
    codebook = tokenizer.quantizer.codebook.clone()
    pixels = torch.rand(3, 3, 16, 32)  # [0, 1] pixels, a non-native size
    ids = tokenizer.encode(pixels)
    assert ids.shape == (3, 4, 8) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < 16
    assert torch.equal(tokenizer.quantizer.codebook, codebook)  # train mode, still no update
    # encode applies the tokenizer's own normalisation: the same ids as forward on normalised images
    normalised = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.equal(tokenizer.eval()(normalised).ids, ids)


def test_tokenizer_file_round_trip(tmp_path):
    tokenizer = tiny_vqkd(decoder_depth=2).train()
    tokenizer(torch.randn(8, 3, 16, 16))
    path = save_tokenizer(tokenizer, tmp_path / "tokenizer.pt")
    loaded = load_tokenizer(path)
    assert isinstance(loaded, VQKD) and not loaded.training
    pixels = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded.encode(pixels), tokenizer.encode(pixels))
    assert bool(loaded.quantizer.initialised)  # a rebuilt tokenizer does not re-run k-means
