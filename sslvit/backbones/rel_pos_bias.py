"""Relative position bias added to the attention logits, one table shared by every block (BEiT)."""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn


def relative_position_index(grid: tuple[int, int], table_grid: tuple[int, int], num_prefix: int) -> Tensor:
    """``(T, T)`` int64 table-row index for every (query, key) token pair, ``T = num_prefix + h * w``.

    Patch ``i`` at ``(y_i, x_i)`` attending to patch ``j`` uses the row of the offset
    ``(y_i - y_j, x_i - x_j)``: ``(y_i - y_j + H - 1) * (2W - 1) + (x_i - x_j + W - 1)``, where
    ``(H, W) = table_grid`` is the largest grid the table covers. The last three rows serve the prefix
    tokens (CLS, registers): prefix -> patch, patch -> prefix and prefix -> prefix.

    Args:
        grid: ``(h, w)`` patch grid of the input, at most ``table_grid`` along each side.
        table_grid: ``(H, W)`` the table was sized for.
        num_prefix: CLS and register tokens in front of the patches.
    """
    (h, w), (big_h, big_w) = grid, table_grid
    if h > big_h or w > big_w:
        raise ValueError(f"patch grid {h}x{w} is larger than the relative position table's {big_h}x{big_w}")
    num_offsets = (2 * big_h - 1) * (2 * big_w - 1)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)  # (N,) row-major, like the patch tokens
    dy = ys[:, None] - ys[None, :] + big_h - 1  # (N, N) query minus key
    dx = xs[:, None] - xs[None, :] + big_w - 1
    tokens = num_prefix + h * w
    index = torch.empty(tokens, tokens, dtype=torch.int64)
    index[num_prefix:, num_prefix:] = dy * (2 * big_w - 1) + dx
    index[:num_prefix, num_prefix:] = num_offsets  # prefix query -> patch key
    index[num_prefix:, :num_prefix] = num_offsets + 1  # patch query -> prefix key
    index[:num_prefix, :num_prefix] = num_offsets + 2
    return index


class RelativePositionBias(nn.Module):
    """Learned bias ``B[heads, query, key]`` from the relative offset of the two tokens.

    Bao et al., 2022 (BEiT, arXiv:2106.08254), section 2.2 / appendix: a ``(2H-1)(2W-1) + 3``-row table
    of per-head biases, indexed by the 2-D offset of the query and key patches (plus three rows for
    the CLS token), added to the attention logits; in pretraining one table is shared by all layers.
    The output is an additive attention mask, so timm's attention blocks apply it unchanged (through
    ``attn_mask`` in scaled-dot-product attention).

    Args:
        grid: ``(H, W)``, the largest patch grid the table covers (the native input's).
        num_heads: attention heads.
        num_prefix_tokens: CLS and register tokens; they share the three prefix rows.
    """

    index: Tensor  # (T, T) row of the table for each token pair at the native grid

    def __init__(self, grid: tuple[int, int], num_heads: int, num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_prefix_tokens = int(num_prefix_tokens)
        rows = (2 * self.grid[0] - 1) * (2 * self.grid[1] - 1) + 3
        self.table = nn.Parameter(torch.zeros(rows, num_heads))
        trunc_normal_(self.table, std=0.02)
        self.register_buffer(
            "index", relative_position_index(self.grid, self.grid, self.num_prefix_tokens), persistent=False
        )
        self._other_grids: dict[tuple[tuple[int, ...], torch.device], Tensor] = {}

    def forward(self, grid: tuple[int, int]) -> Tensor:
        """``(1, heads, T, T)`` bias for an input whose patch grid is ``grid``."""
        if tuple(grid) == self.grid:
            index = self.index
        else:  # a smaller input (e.g. an evaluation at another size): offsets still fit the table
            # Built on the host once per (grid, device): copying it to a GPU on every call would wait.
            key = (tuple(grid), self.table.device)
            if key not in self._other_grids:
                self._other_grids[key] = relative_position_index(grid, self.grid, self.num_prefix_tokens).to(
                    self.table.device
                )
            index = self._other_grids[key]
        tokens = index.shape[0]
        bias = self.table[index.reshape(-1)].view(tokens, tokens, -1)  # (T, T, heads)
        return bias.permute(2, 0, 1).unsqueeze(0).contiguous()
