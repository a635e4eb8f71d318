"""The SpaLSTF denoiser: gene tokens of one cell through XCA-Transformer blocks.

Input: the known genes of a cell (clean, the condition), its target genes at diffusion step t
(noised), t itself and the BiLSTM context of the cell. Output: the predicted noise of each
target gene and its variance interpolation v (improved DDPM's learned variance).

Genes become tokens: one gene per token when the cell has at most `max_tokens` genes, otherwise
genes are grouped (known and target genes in separate groups) so that the cost stays bounded.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from spalstf.network.context import ContextEncoder
from spalstf.network.xca import XCABlock, modulate, zero_init


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (as in DDPM / DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def group_genes(values: torch.Tensor, n_tokens: int, per_token: int) -> torch.Tensor:
    """(batch, genes) or (batch, genes, features) -> (batch, n_tokens, per_token * features):
    consecutive genes in each token (as `token_layout` counts them), zero-padded at the end."""
    if values.dim() == 2:
        values = values[..., None]
    pad = n_tokens * per_token - values.shape[1]
    if pad:
        values = nn.functional.pad(values, (0, 0, 0, pad))
    return values.reshape(values.shape[0], n_tokens, -1)


def token_layout(n_known: int, n_target: int, max_tokens: int) -> tuple[int, int, int, int]:
    """(known tokens, genes per known token, target tokens, genes per target token)."""
    if n_known + n_target <= max_tokens:
        return n_known, 1, n_target, 1
    known_tokens = max(1, round(max_tokens * n_known / (n_known + n_target))) if n_known else 0
    known_tokens = min(known_tokens, max_tokens - 1)
    target_tokens = max_tokens - known_tokens
    per_known = math.ceil(n_known / known_tokens) if known_tokens else 1
    per_target = math.ceil(n_target / target_tokens)
    # Drop tokens that grouping left empty.
    known_tokens = math.ceil(n_known / per_known) if n_known else 0
    target_tokens = math.ceil(n_target / per_target)
    return known_tokens, per_known, target_tokens, per_target


class Denoiser(nn.Module):
    """XCA-Transformer noise predictor conditioned on the timestep and the BiLSTM context.

    Parameters
    ----------
    n_known, n_target
        Number of known (condition) and target (denoised) genes.
    d_model, depth, n_heads, mlp_ratio, max_tokens, use_xca, dropout
        Transformer settings (see `spalstf.Config`).
    use_context, lstm_hidden, lstm_layers
        The BiLSTM context encoder; its input has n_known + n_target + 2 features per element.
    """

    def __init__(self, n_known: int, n_target: int, *, d_model: int = 64, depth: int = 3,
                 n_heads: int = 4, mlp_ratio: float = 2.0, max_tokens: int = 64,
                 use_xca: bool = True, dropout: float = 0.0, use_context: bool = True,
                 lstm_hidden: int = 64, lstm_layers: int = 1) -> None:
        super().__init__()
        self.n_known, self.n_target = n_known, n_target
        self.d_model = d_model
        (self.known_tokens, self.per_known,
         self.target_tokens, self.per_target) = token_layout(n_known, n_target, max_tokens)
        n_tokens = self.known_tokens + self.target_tokens
        self.known_embed = nn.Linear(self.per_known, d_model) if self.known_tokens else None
        # Target tokens read their noisy values and a prior: the mean of the gene over the
        # cell's reference neighbours (zeros when no prior is given).
        self.target_embed = nn.Linear(2 * self.per_target, d_model)
        # Each token has a fixed set of genes, so a learned position is a gene-group identity.
        self.position = nn.Parameter(torch.randn(1, n_tokens, d_model) * 0.02)
        self.time_embed = nn.Sequential(nn.Linear(d_model, d_model), nn.SiLU(),
                                        nn.Linear(d_model, d_model))
        self.context = (ContextEncoder(n_known + n_target + 2, lstm_hidden, d_model, lstm_layers)
                        if use_context else None)
        self.blocks = nn.ModuleList(
            XCABlock(d_model, n_tokens, n_heads, mlp_ratio, use_xca=use_xca, dropout=dropout)
            for _ in range(depth)
        )
        # Weights of the linear (ridge) prior, set at fit; a buffer so it is saved and moved
        # with the network.
        self.register_buffer("prior_weights", torch.zeros(n_known, n_target))
        self.register_buffer("prior_bias", torch.zeros(n_target))
        self.final_norm = nn.LayerNorm(d_model, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(d_model, 2 * d_model))
        self.head = nn.Linear(d_model, 2 * self.per_target)  # noise and variance interpolation
        zero_init(self.final_ada[1], self.head)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As `nn.Module.load_state_dict`; a state without `prior_bias` (models saved before the
        ridge prior had an intercept) gets a zero bias, which is the prior it was saved with."""
        if "prior_bias" not in state_dict and "prior_weights" in state_dict:
            state_dict = dict(state_dict)
            state_dict["prior_bias"] = torch.zeros(state_dict["prior_weights"].shape[1])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def encode_context(self, sequence: torch.Tensor | None) -> torch.Tensor | None:
        """The context embedding (batch, d_model); computed once per cell, reused at every step."""
        if self.context is None or sequence is None:
            return None
        return self.context(sequence)

    def forward(self, known: torch.Tensor, noisy_target: torch.Tensor, t: torch.Tensor,
                context: torch.Tensor | None = None,
                prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict (noise, v) for the target genes, each (batch, n_target)."""
        if prior is None:
            prior = torch.zeros_like(noisy_target)
        target_in = torch.cat([group_genes(noisy_target, self.target_tokens, self.per_target),
                               group_genes(prior, self.target_tokens, self.per_target)], dim=-1)
        tokens = [self.target_embed(target_in)]
        if self.known_embed is not None:
            tokens.insert(0, self.known_embed(group_genes(known, self.known_tokens,
                                                          self.per_known)))
        x = torch.cat(tokens, dim=1) + self.position
        cond = self.time_embed(timestep_embedding(t, self.d_model))
        if context is not None:
            cond = cond + context
        for block in self.blocks:
            x = block(x, cond)
        shift, scale = self.final_ada(cond).chunk(2, dim=-1)
        out = self.head(modulate(self.final_norm(x), shift, scale))[:, self.known_tokens:]
        out = out.reshape(out.shape[0], self.target_tokens, 2, self.per_target)
        eps = out[:, :, 0].reshape(out.shape[0], -1)[:, : self.n_target]
        v = out[:, :, 1].reshape(out.shape[0], -1)[:, : self.n_target]
        return eps, v
