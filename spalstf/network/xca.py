"""Cross-covariance attention (XCiT, El-Nouby et al. 2021) and the DiT-style block around it.

The tokens are the genes (or groups of genes) of ONE cell: every operation here acts on each
cell of a batch separately, so a cell's output never depends on the other cells of its batch
(the authors' code attends across the cells of a mini-batch; DESIGN.md forbids that).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class XCAttention(nn.Module):
    """Attention between feature channels: a (channels x channels) map per head.

    Queries and keys are L2-normalised along the token axis, their product is scaled by a learned
    per-head temperature and soft-maxed over channels; the map then mixes the value channels of
    every token. Cost is linear in the number of tokens.
    """

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.temperature = nn.Parameter(torch.ones(n_heads, 1, 1))

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The (batch, heads, d, d) softmax map, exposed for tests and inspection."""
        q, k, _ = self._qkv(x)
        return self._map(q, k)

    def _qkv(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.n_heads, c // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 4, 1)  # each (batch, heads, d, tokens)
        return q, k, v

    def _map(self, q, k):
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        return ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._qkv(x)
        out = self._map(q, k) @ v  # (batch, heads, d, tokens)
        return self.proj(out.permute(0, 3, 1, 2).reshape(b, n, c))


def zero_init(*layers: nn.Linear | None) -> None:
    """adaLN-Zero: the linear layers (None: absent) start at zero weights and bias, so that a
    block starts as the identity and a network by predicting zeros."""
    for layer in layers:
        if layer is not None:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TokenMixing(nn.Module):
    """A learned linear map across the gene tokens of one cell (MLP-Mixer style).

    XCA mixes channels; genes exchange information only through its global map. XCiT adds a
    local patch interaction for that; genes have no spatial layout, so a dense token mix takes
    its place.
    """

    def __init__(self, n_tokens: int) -> None:
        super().__init__()
        self.mix = nn.Linear(n_tokens, n_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x.transpose(1, 2)).transpose(1, 2)


class XCABlock(nn.Module):
    """XCA, token mixing and an MLP, each gated and modulated by adaLN-Zero from `cond`."""

    def __init__(self, dim: int, n_tokens: int, n_heads: int, mlp_ratio: float = 2.0,
                 use_xca: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.use_xca = use_xca
        self.norm_attn = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = XCAttention(dim, n_heads) if use_xca else None
        self.norm_mix = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.token_mix = TokenMixing(n_tokens)
        self.norm_mlp = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))
        # adaLN-Zero: the modulation starts at zero so every block starts as the identity.
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))
        zero_init(self.ada[1])

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        (sh_a, sc_a, g_a, sh_t, sc_t, g_t, sh_m, sc_m, g_m) = self.ada(cond).chunk(9, dim=-1)
        if self.attn is not None:
            x = x + g_a.unsqueeze(1) * self.attn(modulate(self.norm_attn(x), sh_a, sc_a))
        x = x + g_t.unsqueeze(1) * self.token_mix(modulate(self.norm_mix(x), sh_t, sc_t))
        x = x + g_m.unsqueeze(1) * self.mlp(modulate(self.norm_mlp(x), sh_m, sc_m))
        return x
