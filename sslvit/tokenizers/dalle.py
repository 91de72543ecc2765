"""Convolutional encoder in the DALL-E dVAE parameter layout, and a tokenizer built on a DALL-E file.

Ramesh et al., 2021, "Zero-Shot Text-to-Image Generation" (arXiv:2102.12092), appendix A: the dVAE
encoder is a 7x7 input convolution, four groups of residual blocks whose width doubles from group to
group (``n_hid``, 2, 4, 8 x ``n_hid``) with a 2x max-pool after each of the first three, and a ReLU + 1x1
convolution to the 8192 logits. Each residual block adds a bottleneck path (ReLU + 3x3, 3x3, 3x3, 1x1
convolutions at a quarter of the output width) scaled by ``1 / n_layers**2`` to an identity path (a 1x1
convolution when the width changes). Parameters are named as in the released checkpoints
(``blocks.input.w``, ``blocks.group_1.block_1.res_path.conv_1.w``, ``blocks.output.conv.b``, ...), with
convolution weights stored ``(out, in, kh, kw)``, so a state dict in that layout loads unchanged.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslvit.tokenizers.base import token_grid

# DALL-E models pixels with a logit-Laplace likelihood on [eps, 1 - eps]; its encoder sees that range.
DALLE_PIXEL_EPS = 0.1
_GROUP = re.compile(r"blocks\.group_(\d+)\.block_(\d+)\.")


class Conv(nn.Module):
    """Zero-padded ("same") convolution with parameters ``w`` ``(out, in, k, k)`` and ``b`` ``(out,)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd for same padding, got {kernel_size}")
        fan_in = in_channels * kernel_size**2
        self.w = nn.Parameter(
            torch.randn(out_channels, in_channels, kernel_size, kernel_size) / math.sqrt(fan_in)
        )
        self.b = nn.Parameter(torch.zeros(out_channels))
        self.padding = (kernel_size - 1) // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.w, self.b, padding=self.padding)


class ResidualBlock(nn.Module):
    """``id_path(x) + post_gain * res_path(x)``; the residual path is a ReLU-conv bottleneck (n_out / 4)."""

    def __init__(self, in_channels: int, out_channels: int, post_gain: float, kernels=(3, 3, 3, 1)) -> None:
        super().__init__()
        hidden = max(1, out_channels // 4)
        self.id_path: nn.Module = (
            Conv(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        )
        widths = [in_channels, hidden, hidden, hidden, out_channels]
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, kernel in enumerate(kernels, 1):
            layers[f"relu_{i}"] = nn.ReLU()
            layers[f"conv_{i}"] = Conv(widths[i - 1], widths[i], kernel)
        self.res_path = nn.Sequential(layers)
        self.post_gain = post_gain

    def forward(self, x: Tensor) -> Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DALLEStyleEncoder(nn.Module):
    """Image -> ``(B, vocab_size, H / 2**(G-1), W / 2**(G-1))`` logits, in the DALL-E parameter layout.

    Args:
        in_channels: image channels.
        hidden_dim: width of the first group (``n_hid``; 256 in DALL-E).
        blocks_per_group: residual blocks per group (2 in DALL-E).
        num_groups: groups G; G - 1 max-pools, so the downsampling factor is ``2**(G-1)`` (4 -> 8).
        vocab_size: output logits per position (8192).
        input_kernel: side of the input convolution (7).
    """

    def __init__(
        self,
        in_channels: int = 3,
        hidden_dim: int = 256,
        blocks_per_group: int = 2,
        num_groups: int = 4,
        vocab_size: int = 8192,
        input_kernel: int = 7,
    ) -> None:
        super().__init__()
        if min(in_channels, hidden_dim, blocks_per_group, num_groups, vocab_size) < 1:
            raise ValueError("DALLEStyleEncoder sizes must all be >= 1")
        post_gain = 1.0 / (num_groups * blocks_per_group) ** 2
        widths = [hidden_dim * 2**g for g in range(num_groups)]
        blocks: OrderedDict[str, nn.Module] = OrderedDict(input=Conv(in_channels, hidden_dim, input_kernel))
        width_in = hidden_dim
        for g, width in enumerate(widths, 1):
            group: OrderedDict[str, nn.Module] = OrderedDict()
            for k in range(1, blocks_per_group + 1):
                group[f"block_{k}"] = ResidualBlock(width_in, width, post_gain)
                width_in = width
            if g < num_groups:
                group["pool"] = nn.MaxPool2d(2)
            blocks[f"group_{g}"] = nn.Sequential(group)
        blocks["output"] = nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=Conv(widths[-1], vocab_size, 1)))
        self.blocks = nn.Sequential(blocks)
        self.vocab_size = vocab_size
        self.downsample = 2 ** (num_groups - 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)

    @staticmethod
    def config_from_state_dict(state: dict[str, Tensor]) -> dict[str, int]:
        """The constructor arguments that produce exactly the parameters of ``state`` (DALL-E keys)."""
        try:
            input_w, output_w = state["blocks.input.w"], state["blocks.output.conv.w"]
        except KeyError as err:
            raise ValueError(f"not a DALL-E encoder state dict: no {err.args[0]!r}") from err
        blocks = {(int(m.group(1)), int(m.group(2))) for key in state if (m := _GROUP.match(key))}
        if not blocks:
            raise ValueError("not a DALL-E encoder state dict: no blocks.group_<g>.block_<k> parameters")
        return {
            "in_channels": int(input_w.shape[1]),
            "hidden_dim": int(input_w.shape[0]),
            "blocks_per_group": max(k for _, k in blocks),
            "num_groups": max(g for g, _ in blocks),
            "vocab_size": int(output_w.shape[0]),
            "input_kernel": int(input_w.shape[-1]),
        }


class DALLETokenizer(nn.Module):
    """A frozen DALL-E-format dVAE encoder as a :class:`~sslvit.tokenizers.base.VisualTokenizer`.

    BEiT (Bao et al., 2022, arXiv:2106.08254) tokenizes with the publicly released DALL-E encoder (8192
    codes, 8x downsampling: a 112-px view gives the 14x14 grid of a ViT/16 at 224 px). Pixels in [0, 1]
    are mapped to DALL-E's ``[eps, 1 - eps]`` range before encoding; the token is the argmax logit.

    Args:
        **config: :class:`DALLEStyleEncoder` arguments (see :meth:`from_state_dict`).
    """

    def __init__(self, **config: int) -> None:
        super().__init__()
        self.encoder = DALLEStyleEncoder(**config)
        self.config = dict(config)
        self.vocab_size = self.encoder.vocab_size
        self.downsample = self.encoder.downsample

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> DALLETokenizer:
        """Build from an encoder state dict in DALL-E layout (keys may carry a prefix, e.g. ``encoder.``)."""
        anchors = [k for k in state if k.endswith("blocks.input.w")]
        if len(anchors) != 1:
            raise ValueError(
                f"expected one '<prefix>blocks.input.w' key in a DALL-E file, found {len(anchors)}"
            )
        prefix = anchors[0].removesuffix("blocks.input.w")
        own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix + "blocks.")}
        tokenizer = cls(**DALLEStyleEncoder.config_from_state_dict(own))
        tokenizer.encoder.load_state_dict(own, strict=True)
        return tokenizer

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return token_grid(self.downsample, height, width)

    def logits(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` pixels in [0, 1] -> ``(B, vocab_size, h, w)`` logits."""
        self.grid_size(images.shape[-2], images.shape[-1])
        return self.encoder((1 - 2 * DALLE_PIXEL_EPS) * images + DALLE_PIXEL_EPS)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        return self.logits(images).argmax(dim=1)
