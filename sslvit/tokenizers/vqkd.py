"""VQ-KD: the visual tokenizer of BEiT v2, trained to reconstruct a frozen teacher's patch features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from timm.layers import LayerScale, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from sslvit.backbones.masked_vit import MaskedViT
from sslvit.tokenizers.norm_ema_quantizer import NormEMAQuantizer, Quantized


class VQKDOutput(NamedTuple):
    """Output of :meth:`VQKD.forward`.

    Attributes:
        reconstruction: ``(B, N, teacher_dim)`` predicted teacher patch features.
        ids: ``(B, h, w)`` int64 token ids.
        commit_loss: scalar commitment loss of the quantiser.
    """

    reconstruction: Tensor
    ids: Tensor
    commit_loss: Tensor


def masked_vit_kwargs(vit: MaskedViT) -> dict[str, Any]:
    """Constructor arguments that rebuild ``vit``'s architecture (its weights then load strictly).

    Training-only options (drop path, fused attention, compilation) take their defaults; the LayerScale
    value is a placeholder that the weights overwrite.
    """
    block: Any = vit.blocks[0]
    size = vit.patch_embed.img_size  # type: ignore[union-attr]
    return {
        "img_size": [int(size[0]), int(size[1])],
        "patch_size": vit.patch_size,
        "in_chans": int(vit.patch_embed.proj.in_channels),  # type: ignore[union-attr]
        "embed_dim": int(vit.embed_dim),
        "depth": len(vit.blocks),
        "num_heads": int(block.attn.num_heads),
        "mlp_ratio": block.mlp.fc1.out_features / vit.embed_dim,
        "qkv_bias": block.attn.qkv.bias is not None,
        "num_register_tokens": vit.num_register_tokens,
        "layerscale_init": 1.0 if isinstance(block.ls1, LayerScale) else None,
        **({"rel_pos_bias": True} if getattr(vit, "rel_pos_bias", None) is not None else {}),
    }


def _projection(in_dim: int, out_dim: int) -> nn.Sequential:
    """Linear-Tanh-Linear, the paper's map into (and out of) the code space."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.Tanh(), nn.Linear(in_dim, out_dim))


class CodeDecoder(nn.Module):
    """A shallow ViT over the grid of quantised codes: linear embedding, learned position embedding
    (resampled for other grids), pre-norm timm ``Block``s, final LayerNorm. Output ``(B, N, dim)``."""

    def __init__(self, code_dim: int, dim: int, depth: int, num_heads: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.embed = nn.Linear(code_dim, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid[0] * self.grid[1], dim))
        self.blocks = nn.Sequential(
            *[Block(dim, num_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, codes: Tensor, grid: tuple[int, int]) -> Tensor:
        pos = self.pos_embed
        if tuple(grid) != self.grid:
            pos = resample_abs_pos_embed(pos, list(grid), list(self.grid), num_prefix_tokens=0)
        return self.norm(self.blocks(self.embed(codes) + pos))


class VQKD(nn.Module):
    """Vector-quantised knowledge distillation tokenizer (Peng et al., 2022, "BEiT v2: Masked Image
    Modeling with Vector-Quantized Visual Tokenizers", arXiv:2208.06366, section 2.2).

    ViT encoder -> Linear-Tanh-Linear to ``code_dim`` -> l2-normalise -> nearest entry of an l2-normalised
    EMA codebook (:class:`NormEMAQuantizer`) -> shallow ViT decoder -> Linear-Tanh-Linear to the teacher's
    feature size. Trained with 1 - cos(reconstruction, teacher patch feature) plus the commitment loss;
    the paper's finding is that low-dimensional codes and a shallow decoder keep most of the codebook in
    use. After training only :meth:`encode` is needed: BEiT v2 predicts its ids at masked patches.

    Tokenizer interface (:class:`~sslvit.tokenizers.base.VisualTokenizer`): ``encode(pixels)`` takes
    ``(B, C, H, W)`` pixels in [0, 1], applies this tokenizer's own mean / std normalisation and returns
    ``(B, H / patch, W / patch)`` int64 ids; ``vocab_size``, ``downsample`` (= patch size), ``grid_size``.
    BEiT v2 feeds it the student's crop at the student's resolution, so the two grids match.
    :meth:`forward` (training) takes images already normalised by the data pipeline.

    ``config`` holds the constructor arguments (the encoder as :func:`masked_vit_kwargs`), so
    ``sslvit.tokenizers.io.save_tokenizer`` / ``load_tokenizer`` can write and rebuild it.

    Args:
        backbone: the encoder, a ``MaskedViT`` or its constructor arguments (its final patch tokens are
            quantised).
        teacher_dim: the teacher's patch-feature size (the reconstruction target).
        num_codes / code_dim: codebook size and entry dimension (8192 x 32).
        decay: codebook EMA decay (0.99).
        kmeans_init / kmeans_iters: k-means initialisation of the codebook on the first training batch.
        dead_code_steps: re-seed entries unused for this many training steps (0 = off, as in the paper).
        codebook_update: ``"batch_mean"`` (BEiT v2's rule) or ``"running_mean"``; see
            :class:`NormEMAQuantizer`.
        decoder_depth: decoder blocks (3 in the paper's main tokenizer, 1 in its ablation).
        decoder_dim / decoder_heads: decoder width and heads (default: the encoder's).
        pixel_mean / pixel_std: the normalisation the encoder was trained with (the data config's);
            :meth:`encode` applies it to [0, 1] pixels.
    """

    def __init__(
        self,
        backbone: MaskedViT | Mapping[str, Any],
        teacher_dim: int,
        num_codes: int = 8192,
        code_dim: int = 32,
        decay: float = 0.99,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_steps: int = 0,
        codebook_update: str = "batch_mean",
        decoder_depth: int = 3,
        decoder_dim: int | None = None,
        decoder_heads: int | None = None,
        pixel_mean: Sequence[float] = (0.485, 0.456, 0.406),
        pixel_std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        if isinstance(backbone, Mapping):
            backbone = MaskedViT(**backbone)
        self.config: dict[str, Any] = {
            "backbone": masked_vit_kwargs(backbone),
            "teacher_dim": int(teacher_dim),
            "num_codes": int(num_codes),
            "code_dim": int(code_dim),
            "decay": float(decay),
            "kmeans_init": bool(kmeans_init),
            "kmeans_iters": int(kmeans_iters),
            "dead_code_steps": int(dead_code_steps),
            "codebook_update": str(codebook_update),
            "decoder_depth": int(decoder_depth),
            "decoder_dim": decoder_dim,
            "decoder_heads": decoder_heads,
            "pixel_mean": [float(m) for m in pixel_mean],
            "pixel_std": [float(s) for s in pixel_std],
        }
        # Plain tuples, not buffers: the training method shares this module's children, not its own
        # tensors, and the values come back from the run config anyway.
        self.pixel_mean = tuple(float(m) for m in pixel_mean)
        self.pixel_std = tuple(float(s) for s in pixel_std)
        width = int(backbone.embed_dim)
        decoder_dim = decoder_dim or width
        first_block: Any = backbone.blocks[0]
        decoder_heads = decoder_heads or int(first_block.attn.num_heads)
        grid = tuple(int(g) for g in backbone.patch_embed.grid_size)  # type: ignore[union-attr]
        self.backbone = backbone
        self.encode_proj = _projection(width, code_dim)
        self.quantizer = NormEMAQuantizer(
            num_codes, code_dim, decay, kmeans_init=kmeans_init, kmeans_iters=kmeans_iters,
            dead_code_steps=dead_code_steps, codebook_update=codebook_update,
        )  # fmt: skip
        self.decoder = CodeDecoder(code_dim, decoder_dim, decoder_depth, decoder_heads, (grid[0], grid[1]))
        self.decode_proj = _projection(decoder_dim, int(teacher_dim))
        for proj in (self.encode_proj, self.decode_proj):
            for layer in proj:
                if isinstance(layer, nn.Linear):
                    trunc_normal_(layer.weight, std=0.02)
                    nn.init.zeros_(layer.bias)

    # --------------------------------------------------------------------------- tokenizer API
    @property
    def vocab_size(self) -> int:
        return self.quantizer.num_codes

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    @property
    def downsample(self) -> int:
        """Pixels per token along each side (the encoder's patch size)."""
        return self.backbone.patch_size

    @property
    def img_size(self) -> tuple[int, int]:
        """Native input size of the encoder (other multiples of the patch size also work)."""
        size = self.backbone.patch_embed.img_size  # type: ignore[union-attr]
        return int(size[0]), int(size[1])

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return self.backbone.grid_size(height, width)

    def normalize_pixels(self, pixels: Tensor) -> Tensor:
        """[0, 1] pixels -> the encoder's input normalisation."""
        mean = torch.tensor(self.pixel_mean, device=pixels.device, dtype=pixels.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.pixel_std, device=pixels.device, dtype=pixels.dtype).view(1, -1, 1, 1)
        return (pixels - mean) / std

    @torch.no_grad()
    def encode(self, pixels: Tensor) -> Tensor:
        """``pixels (B,C,H,W)`` in [0, 1] -> token ids ``(B, H/p, W/p)`` int64. Never updates the codebook."""
        return self.encode_normalized(self.normalize_pixels(pixels))

    @torch.no_grad()
    def encode_normalized(self, images: Tensor) -> Tensor:
        """As :meth:`encode` for images already in the encoder's normalisation."""
        h, w = self.grid_size(images.shape[-2], images.shape[-1])
        z = self.project(images)  # (B, N, d)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = F.normalize(z.float(), dim=-1)
            ids = self.quantizer.nearest(z.reshape(-1, z.shape[-1]))
        return ids.view(images.shape[0], h, w)

    # ------------------------------------------------------------------------------- training
    def project(self, images: Tensor) -> Tensor:
        """Encoder patch tokens projected to the code space (not yet normalised), ``(B, N, code_dim)``."""
        tokens = self.backbone.forward_features(images)["x_norm_patchtokens"]
        assert tokens is not None
        return self.encode_proj(tokens)

    def quantize(self, images: Tensor) -> Quantized:
        """Quantise the images' patch codes; in training mode this also updates the codebook."""
        return self.quantizer(self.project(images))

    def decode(self, codes: Tensor, grid: tuple[int, int]) -> Tensor:
        """``codes (B, N, code_dim)`` on a ``grid`` -> predicted teacher features ``(B, N, teacher_dim)``."""
        return self.decode_proj(self.decoder(codes, grid))

    def forward(self, images: Tensor) -> VQKDOutput:
        grid = self.grid_size(images.shape[-2], images.shape[-1])
        quantized = self.quantize(images)
        reconstruction = self.decode(quantized.codes, grid)
        ids = quantized.ids.view(images.shape[0], *grid)
        return VQKDOutput(reconstruction, ids, quantized.commit_loss)


def cosine_reconstruction_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Mean over patches of ``1 - cos(reconstruction, target)``; both ``(B, N, D)``."""
    return (1.0 - F.cosine_similarity(reconstruction.float(), target.float(), dim=-1)).mean()
