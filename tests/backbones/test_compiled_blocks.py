"""``compile_blocks`` with the recipes' linearly increasing drop rates: every block stays compiled."""

from __future__ import annotations

import functools

import pytest
import torch
from torch._dynamo.utils import counters

from sslvit.backbones import compiled_blocks
from sslvit.backbones.masked_vit import MaskedViT


@pytest.fixture
def eager_dynamo(monkeypatch: pytest.MonkeyPatch):
    """Dynamo's tracing, guards and graph counts with its ``eager`` backend (no code generation: seconds
    on the CPU), from dynamo's default limits and empty caches."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    compiled_blocks.compiled_block_call.cache_clear()
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=256):
        yield
    compiled_blocks.compiled_block_call.cache_clear()
    torch._dynamo.reset()


def test_every_block_stays_compiled_with_linear_drop_rates(eager_dynamo: None) -> None:
    torch.manual_seed(0)
    # 9 blocks, rates 0 ... 0.1: nine graphs per crop size in training, against dynamo's default of 8.
    vit = MaskedViT(
        img_size=32, patch_size=8, embed_dim=32, depth=9, num_heads=2, drop_path_rate=0.1, compile_blocks=True
    )
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # a block back in eager code raises
        vit.train()
        for size in (32, 16):  # global and local crops
            vit.forward_features(torch.randn(4, 3, size, size))["x_norm_clstoken"].sum().backward()  # type: ignore[union-attr]
        graphs = counters["stats"]["unique_graphs"]
        vit.eval()  # the teacher: stochastic depth is off, so all nine blocks share one graph
        with torch.no_grad():
            vit.forward_features(torch.randn(4, 3, 32, 32))
    assert counters["stats"]["unique_graphs"] - graphs == 1
