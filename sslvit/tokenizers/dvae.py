"""Discrete VAE visual tokenizer trained with the Gumbel-softmax relaxation (BEiT's stage 1)."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslvit.tokenizers.base import token_grid
from sslvit.tokenizers.dalle import Conv, DALLEStyleEncoder, ResidualBlock


class DVAEOutput(NamedTuple):
    """One relaxed pass of :class:`DVAE`.

    Attributes:
        logits: ``(B, K, h, w)`` encoder logits.
        codes: ``(B, K, h, w)`` Gumbel-softmax samples (soft one-hots; hard one-hots with a
            straight-through gradient when ``hard=True``).
        reconstruction: ``(B, C, H, W)`` decoded pixels in [0, 1].
    """

    logits: Tensor
    codes: Tensor
    reconstruction: Tensor


class DVAEDecoder(nn.Module):
    """``(B, K, h, w)`` code weights -> ``(B, C, H, W)`` pixels in [0, 1]; the encoder's mirror image.

    The 1x1 input convolution of a one-hot code map is a lookup in a learned codebook; groups of residual
    blocks narrow from ``hidden_dim * 2**(G-1)`` to ``hidden_dim`` with a nearest-neighbour 2x upsampling
    between groups, and a ReLU + 1x1 convolution + sigmoid gives the pixels.
    """

    def __init__(
        self, vocab_size: int, out_channels: int, hidden_dim: int, blocks_per_group: int, num_groups: int
    ) -> None:
        super().__init__()
        post_gain = 1.0 / (num_groups * blocks_per_group) ** 2
        widths = [hidden_dim * 2**g for g in reversed(range(num_groups))]
        blocks: OrderedDict[str, nn.Module] = OrderedDict(input=Conv(vocab_size, widths[0], 1))
        width_in = widths[0]
        for g, width in enumerate(widths, 1):
            group: OrderedDict[str, nn.Module] = OrderedDict()
            for k in range(1, blocks_per_group + 1):
                group[f"block_{k}"] = ResidualBlock(width_in, width, post_gain)
                width_in = width
            if g < num_groups:
                group["upsample"] = nn.Upsample(scale_factor=2, mode="nearest")
            blocks[f"group_{g}"] = nn.Sequential(group)
        blocks["output"] = nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=Conv(widths[-1], out_channels, 1)))
        self.blocks = nn.Sequential(blocks)

    def forward(self, codes: Tensor) -> Tensor:
        return torch.sigmoid(self.blocks(codes))


class DVAE(nn.Module):
    """Discrete variational autoencoder: image -> grid of visual tokens -> image.

    The tokenizer of BEiT (Bao et al., 2022, arXiv:2106.08254), trained as in DALL-E (Ramesh et al.,
    2021, arXiv:2102.12092): the encoder gives logits over a vocabulary at each of ``h x w`` positions;
    during training a Gumbel-softmax sample (Jang et al., 2017; Maddison et al., 2017) at temperature
    tau replaces the discrete token so the reconstruction loss reaches the encoder, and tau is annealed
    towards 1/16 so the relaxation approaches a one-hot; a KL term pulls the posterior towards the
    uniform prior. As a tokenizer, ``encode`` returns the argmax token of every position.

    The encoder has the DALL-E parameter layout (:class:`~sslvit.tokenizers.dalle.DALLEStyleEncoder`)
    with ``log2(downsample) + 1`` groups; the decoder mirrors it. Pixels in [0, 1] are mapped to [-1, 1]
    for the encoder; the decoder outputs [0, 1].

    Args:
        vocab_size: number of visual tokens K (8192 in BEiT / DALL-E).
        downsample: pixels per token along each side; a power of two (8 in DALL-E: 112 px -> 14 x 14).
        hidden_dim: width of the first encoder group (the last decoder group).
        blocks_per_group: residual blocks per group.
        in_channels: image channels.
        input_kernel: side of the encoder's input convolution.
    """

    def __init__(
        self,
        vocab_size: int = 8192,
        downsample: int = 8,
        hidden_dim: int = 64,
        blocks_per_group: int = 1,
        in_channels: int = 3,
        input_kernel: int = 7,
    ) -> None:
        super().__init__()
        if downsample < 1 or downsample & (downsample - 1):
            raise ValueError(f"DVAE downsample must be a power of two, got {downsample}")
        if vocab_size < 2:
            raise ValueError(f"DVAE vocab_size must be >= 2, got {vocab_size}")
        num_groups = int(math.log2(downsample)) + 1
        self.config = {
            "vocab_size": vocab_size,
            "downsample": downsample,
            "hidden_dim": hidden_dim,
            "blocks_per_group": blocks_per_group,
            "in_channels": in_channels,
            "input_kernel": input_kernel,
        }
        self.encoder = DALLEStyleEncoder(
            in_channels, hidden_dim, blocks_per_group, num_groups, vocab_size, input_kernel
        )
        self.decoder = DVAEDecoder(vocab_size, in_channels, hidden_dim, blocks_per_group, num_groups)
        self.vocab_size = vocab_size
        self.downsample = downsample

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        return token_grid(self.downsample, height, width)

    def logits(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` pixels in [0, 1] -> ``(B, K, h, w)`` encoder logits."""
        self.grid_size(images.shape[-2], images.shape[-1])
        return self.encoder(2.0 * images - 1.0)

    def forward(self, images: Tensor, temperature: float = 1.0, hard: bool = False) -> DVAEOutput:
        """Relaxed pass for training: Gumbel-softmax codes at ``temperature``, then the decoder.

        Args:
            images: ``(B, C, H, W)`` pixels in [0, 1].
            temperature: Gumbel-softmax temperature tau (> 0).
            hard: one-hot codes in the forward pass with the soft sample's gradient (straight-through).
        """
        logits = self.logits(images)
        codes = F.gumbel_softmax(logits, tau=temperature, hard=hard, dim=1)
        return DVAEOutput(logits, codes, self.decoder(codes))

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        return self.logits(images).argmax(dim=1)

    def decode(self, token_ids: Tensor) -> Tensor:
        """``(B, h, w)`` token ids -> ``(B, C, h * downsample, w * downsample)`` pixels in [0, 1]."""
        codes = F.one_hot(token_ids, self.vocab_size).permute(0, 3, 1, 2)  # (B, K, h, w)
        return self.decoder(codes.to(next(self.decoder.parameters()).dtype))

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> Tensor:
        """``decode(encode(images))``: what the discrete tokens keep of an image."""
        return self.decode(self.encode(images))


def kl_to_uniform(logits: Tensor, dim: int = 1) -> Tensor:
    """Mean over positions of KL(q || uniform) = log K - H(q), with q = softmax(logits) along ``dim``."""
    log_q = F.log_softmax(logits.float(), dim=dim)
    negative_entropy = (log_q.exp() * log_q).sum(dim=dim)
    return negative_entropy.mean() + math.log(logits.shape[dim])
