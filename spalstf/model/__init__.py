"""The networks (torch modules only; they see tensors, never AnnData).

- `xca`: cross-covariance attention and the adaLN-Zero transformer block.
- `context`: the BiLSTM over a cell's neighbourhood sequence, and how that sequence is built.
- `denoiser`: gene tokens of a cell through the blocks -> predicted noise and variance.
"""

from spalstf.model.context import ContextEncoder, NeighbourIndex, build_sequence, neighbour_mean
from spalstf.model.denoiser import Denoiser, token_layout
from spalstf.model.xca import XCABlock, XCAttention

__all__ = ["ContextEncoder", "Denoiser", "NeighbourIndex", "XCABlock", "XCAttention",
           "build_sequence", "neighbour_mean", "token_layout"]
