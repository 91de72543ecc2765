"""``compile_blocks``: the transformer blocks of every MaskedViT run through one compiled function.

Compiling a free function that takes the block as an argument, rather than ``block.compile()``, keeps
the state dict and ``copy.deepcopy`` intact (a deep-copied teacher would otherwise call the student's
compiled forward), and all blocks of one shape share a graph: dynamo lifts their parameters to graph
inputs. ``dynamic=False``: a step has few distinct shapes (global and local crops), each gets static
kernels.

A block's stochastic-depth rate is a constant of its graph, and it has to be: the number of samples a
block keeps (``SubsetDropPathBlock``) is a shape. With the recipes' linearly increasing rates every
block of a training pass is its own graph, and dynamo's default of 8 graphs per function would send all
blocks after the eighth back to eager code, with only a warning. :func:`allow_graphs_per_rate` raises
that limit to what the model needs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import cast

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from sslvit.backbones.packed import PackLayout, packed_block

BlockCall = Callable[[nn.Module, Tensor, Tensor | None], Tensor]
PackedBlockCall = Callable[[Block, Tensor, PackLayout], Tensor]

# Graphs allowed per distinct drop rate: dynamo's own default per function, which already covers the
# shapes, grad modes and autocast settings of a step (global / local crops, student / teacher).
GRAPHS_PER_RATE = 8


def _call_block(block: nn.Module, x: Tensor, bias: Tensor | None) -> Tensor:
    return block(x, attn_mask=bias)


@functools.cache
def compiled_block_call() -> BlockCall:
    """``block(x, attn_mask=bias)``, compiled once for every block of every MaskedViT."""
    return cast(BlockCall, torch.compile(_call_block, dynamic=False))


@functools.cache
def compiled_packed_block() -> PackedBlockCall:
    """``packed_block`` compiled once for every MaskedViT (the layout's integers are specialised: one graph
    per crop setting)."""
    return cast(PackedBlockCall, torch.compile(packed_block, dynamic=False))


def allow_graphs_per_rate(blocks: Iterable[nn.Module]) -> None:
    """Let dynamo keep :data:`GRAPHS_PER_RATE` graphs of a compiled block function for each distinct
    stochastic-depth rate among ``blocks``. Only ever raises dynamo's process-wide limits."""
    rates = {float(getattr(cast(Block, block).drop_path1, "drop_prob", 0.0)) for block in blocks}
    needed = GRAPHS_PER_RATE * len(rates)
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, needed)
    # The process-wide cap on graphs per function (256 by default) must not be the lower one.
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, needed)
