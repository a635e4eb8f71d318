"""The network of a `Config`, and what conditions it besides the cell's own genes.

Shared by training (`spalstf.train.denoiser`) and sampling (`spalstf.diffusion.sample`), which
import it from here so that sampling never imports training.
"""

from __future__ import annotations

import torch

from spalstf.config import Config
from spalstf.network.context import build_sequence, neighbour_mean
from spalstf.network.denoiser import Denoiser


def build_network(n_known: int, n_target: int, config: Config) -> Denoiser:
    """The denoiser of `config` for n_known -> n_target genes (untrained)."""
    return Denoiser(
        n_known, n_target, d_model=config.d_model, depth=config.depth, n_heads=config.n_heads,
        mlp_ratio=config.mlp_ratio, max_tokens=config.max_tokens, use_xca=config.use_xca,
        dropout=config.dropout, use_context=config.use_context, lstm_hidden=config.lstm_hidden,
        lstm_layers=config.lstm_layers,
    )


def context_of(network: Denoiser, config: Config, known: torch.Tensor,
               atlas: torch.Tensor | None, neighbours: torch.Tensor | None,
               distances: torch.Tensor | None):
    """(BiLSTM context embedding, prior mean of the targets) of a batch; either may be None."""
    n_known = network.n_known
    ctx = prior = None
    if network.context is not None and atlas is not None:
        ctx = network.encode_context(build_sequence(known, atlas, neighbours, distances, n_known))
    if config.prior == "ridge":
        prior = known @ network.prior_weights + network.prior_bias
    elif config.prior == "neighbours":
        prior = neighbour_mean(atlas, neighbours, n_known)
    return ctx, prior


def needs_neighbours(config: Config) -> bool:
    """Whether the network reads each cell's reference neighbours (context or prior)."""
    return config.use_context or config.prior == "neighbours"
