"""The networks (torch modules only; they see tensors, never AnnData).

- `xca`: cross-covariance attention and the adaLN-Zero transformer block.
- `context`: the BiLSTM over a cell's neighbourhood sequence, and how that sequence is built.
- `denoiser`: gene tokens of a cell through the blocks -> predicted noise and variance.
- `conditioning`: the denoiser of a `Config`, and the context and prior it reads (shared by
  training and sampling).
"""

from spalstf.network.conditioning import build_network, context_of, needs_neighbours
from spalstf.network.context import ContextEncoder, NeighbourIndex, build_sequence, neighbour_mean
from spalstf.network.denoiser import Denoiser, token_layout
from spalstf.network.xca import XCABlock, XCAttention

__all__ = ["ContextEncoder", "Denoiser", "NeighbourIndex", "XCABlock", "XCAttention",
           "build_network", "build_sequence", "context_of", "needs_neighbours", "neighbour_mean",
           "token_layout"]
