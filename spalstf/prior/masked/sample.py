"""Sampling the masked-gene network: any split of its genes into given and predicted ones.

A `MaskedModel` (fitted once by `spalstf.prior.masked.train.fit_masked`) answers, for a chunk
of ST cells, "given these known genes, what are those genes" for any split: some known genes
from the others (the self-check's inner folds), or the target genes from all known genes (the
imputation), with no refit. Values are in model space (per-gene z-scores with the reference's
statistics); the caller maps them back.

A cell's output depends only on the cell, the split, the seed and the cell's name: its
neighbours come from the exact, order-free `NeighbourIndex` over the given genes, its random
draws from its own generator (`spalstf.diffusion.sample.cell_generators`), and the network
acts on each cell alone. Which other cells share its chunk, and in what order, changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from spalstf.config import Config
from spalstf.diffusion import GaussianDiffusion
from spalstf.diffusion.sample import CPU_PASS_ROWS, cell_generators, draw_normals
from spalstf.network import NeighbourIndex
from spalstf.prior.masked.network import (
    GIVEN,
    PREDICT,
    ConditionalGaussian,
    MaskedDenoiser,
    context_sequence,
    unit_given,
)
from spalstf.runtime import to_device

logger = logging.getLogger(__name__)

#: The network's settings kept in a state (numbers only), in the order of `MaskedDenoiser`.
ARCHITECTURE = ("n_known", "n_target", "d_model", "depth", "n_heads", "mlp_ratio", "max_tokens",
                "use_xca", "use_context", "lstm_hidden", "lstm_layers", "use_source")
#: The noise schedules a state may name (stored by position: states hold numbers only).
SCHEDULES = ("cosine", "linear")
#: What the residual is taken around (`spalstf.prior.masked.train.MaskedOptions.prior`).
PRIORS = ("gaussian", "neighbours")


@dataclass
class MaskedModel:
    """A fitted masked-gene network, its atlas and the data range of each gene.

    Attributes
    ----------
    network
        The `MaskedDenoiser` (EMA weights), in eval mode.
    atlas
        (n_atlas, n_genes) reference cells in model space: each cell's neighbours and prior.
    low, high
        (n_genes,) range of the training values of each gene, which bounds the predicted x0
        (`Config.clip_denoised`).
    config
        The settings of sampling (n_samples, n_steps, sampler, eta, antithetic,
        clip_denoised, batch_size) and of the method (diffusion, num_train_timesteps,
        beta_schedule, vlb_weight: whether the variance was learned).
    n_neighbors
        Neighbours of each cell in its context (at most the atlas's size - 1).
    gaussian
        The reference's conditional Gaussian: the prior of any split.
    st_mean, st_sd
        (n_known,) the ST's own statistics (of the ST the model was fitted with; 0 and 1
        without one): neighbours are searched with the ST z-scored over itself, as the
        reference is over the reference.
    prior
        "gaussian" or "neighbours": what the residuals are taken around.
    align_st
        Whether the network reads (and predicts) the ST's genes on that scale too
        (`MaskedOptions.align_st`); otherwise on the model's.
    info
        What the fit recorded (seconds, updates, loss history, rows of each source).
    """

    network: MaskedDenoiser
    atlas: np.ndarray
    low: np.ndarray
    high: np.ndarray
    config: Config
    n_neighbors: int
    gaussian: ConditionalGaussian
    st_mean: np.ndarray
    st_sd: np.ndarray
    prior: str = "gaussian"
    align_st: bool = False
    info: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def n_known(self) -> int:
        return self.network.n_known

    @property
    def n_target(self) -> int:
        return self.network.n_target

    @property
    def n_genes(self) -> int:
        return self.network.n_genes

    def diffusion(self) -> GaussianDiffusion:
        return GaussianDiffusion(self.config.num_train_timesteps, self.config.beta_schedule,
                                 learn_sigma=self.config.vlb_weight > 0)

    # --- prediction -------------------------------------------------------------------------
    def predict(self, known: np.ndarray, given: Sequence[int] | np.ndarray,
                predict: Sequence[int] | np.ndarray, cells: Sequence[str], *, seed: int = 0,
                n_samples: int | None = None, n_steps: int | None = None,
                sampler: str | None = None, eta: float | None = None,
                batch_size: int | None = None, progress: bool = False, point: str = "samples",
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Sample the genes `predict` of each cell from its genes `given`.

        Parameters
        ----------
        known
            (cells, n_known) the cells' known genes in model space. Only the columns `given`
            are read: the others may hold anything (the genes to predict, hidden or not).
        given
            Indices of the known genes that condition (0 <= i < n_known), at least one.
        predict
            Indices over the gene list G (known genes, then targets: 0 <= i < n_genes) to
            predict, at least one, none of them given. Genes in neither are ignored (ABSENT).
        cells
            One name per cell: with `seed`, the key of the cell's random draws.
        seed
            Seed of the draws (the same seed and name, the same draws).
        n_samples, n_steps, sampler, eta
            Sampling settings; None takes the model's config. "ddim" with few steps (default
            5) or "ddpm" (ancestral, all training steps when `n_steps` is None).
        batch_size
            Cells per chunk (memory only: results do not depend on it).
        progress
            A progress bar over chunks.
        point
            The prediction: "samples", the mean of the final samples; "first", the mean of the
            x0 the network predicts at the first (noisiest) reverse step, an estimate of the
            conditional mean with no sampling noise but with the network's error amplified
            by 1 / sqrt(alpha_bar) there (measured on one fold: lower PCC than "samples" on
            osmFISH and visium_brain).

        Returns
        -------
        (mean, std), each (cells, len(predict)) float32 in model space: the prediction and the
        standard deviation of the samples (None without diffusion or with one sample).
        """
        cfg = self.config
        n_samples = cfg.n_samples if n_samples is None else n_samples
        sampler = cfg.sampler if sampler is None else sampler
        eta = cfg.eta if eta is None else eta
        if n_steps is None and sampler == "ddim":
            n_steps = cfg.n_steps
        batch_size = cfg.batch_size if batch_size is None else batch_size
        known = np.asarray(known)
        given, predict = self._check_request(known, given, predict, cells)
        for name, value in (("n_samples", n_samples), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer; received {value!r}")
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"`sampler` must be 'ddim' or 'ddpm'; received {sampler!r}")
        if point not in ("samples", "first"):
            raise ValueError(f"`point` must be 'samples' or 'first'; received {point!r}")
        diffusion = self.diffusion()
        if cfg.diffusion:
            diffusion.set_timesteps(n_steps, sampler)
        net, device = self.network.eval(), self.device
        atlas = torch.as_tensor(self.atlas, device=device)
        # Neighbours by cosine similarity on the given genes only, each data set z-scored over
        # itself; an exact search, the same for a cell whichever cells are queried with it.
        given_t = torch.as_tensor(given, device=device)
        atlas_given = torch.zeros(len(self.atlas), self.n_known, device=device)
        atlas_given[:, given_t] = 1.0
        index = NeighbourIndex(unit_given(atlas[:, :self.n_known], atlas_given)[:, given_t]
                               .cpu().numpy(), device=device)
        state = torch.zeros(self.n_genes, dtype=torch.long, device=device)
        state[given_t] = GIVEN
        state[torch.as_tensor(predict, device=device)] = PREDICT
        mask = (state[:self.n_known] == GIVEN).float()
        weights = self.gaussian.weights(mask[None]) if self.prior == "gaussian" else None
        bounds = (torch.as_tensor(self.low[predict], device=device),
                  torch.as_tensor(self.high[predict], device=device))
        with_std = cfg.diffusion and n_samples > 1
        mean = np.empty((known.shape[0], len(predict)), dtype=np.float32)
        std = np.empty_like(mean) if with_std else None
        chunks = range(0, known.shape[0], batch_size)
        for start in tqdm(chunks, desc="masked predict", unit="chunk", disable=not progress,
                          leave=False):
            rows = slice(start, min(start + batch_size, known.shape[0]))
            values = np.zeros((rows.stop - rows.start, self.n_genes), dtype=np.float32)
            aligned = values[:, :self.n_known].copy()
            aligned[:, given] = (known[rows][:, given] - self.st_mean[given]) / self.st_sd[given]
            # The network reads the ST's genes on the scale it was trained with.
            values[:, given] = aligned[:, given] if self.align_st else known[rows][:, given]
            values_t = to_device(values, device)
            query = unit_given(to_device(aligned, device),
                               mask.expand(len(values), -1))[:, given_t]
            idx, dist = index.query(query.cpu().numpy(), self.n_neighbors)
            with torch.no_grad():
                idx_t, dist_t = to_device(idx, device), to_device(dist, device)
                knn = atlas[idx_t].mean(dim=1)
                prior = knn if weights is None else \
                    self.gaussian.predict(values_t[:, :self.n_known], weights)
                samples, first = self._sample_chunk(
                    net, diffusion, values_t, state, predict, prior, knn, atlas, idx_t, dist_t,
                    bounds, list(cells[rows]), seed=seed, n_samples=n_samples, eta=eta)
            mean[rows] = (first if point == "first" else samples).mean(axis=0)
            if std is not None:
                std[rows] = samples.std(axis=0)
        if not self.align_st:
            return mean, std
        # Predicted known genes back from the ST's own scale to the model's.
        own = predict < self.n_known
        scale = np.where(own, self.st_sd[np.minimum(predict, self.n_known - 1)], 1.0)
        shift = np.where(own, self.st_mean[np.minimum(predict, self.n_known - 1)], 0.0)
        mean = (mean * scale + shift).astype(np.float32)
        if std is not None:
            std = (std * scale).astype(np.float32)
        return mean, std

    def _check_request(self, known: np.ndarray, given, predict, cells):
        """The validated (given, predict) index arrays; a clear error for any bad argument."""
        if known.ndim != 2 or known.shape[1] != self.n_known:
            raise ValueError(f"`known` must be a (cells, {self.n_known}) array of the model's "
                             f"known genes; received shape {known.shape}")
        if len(cells) != known.shape[0]:
            raise ValueError(f"`cells` must name each of the {known.shape[0]} cells of `known`; "
                             f"received {len(cells)} names")
        out = []
        for name, idx, bound in (("given", given, self.n_known),
                                 ("predict", predict, self.n_genes)):
            arr = np.asarray(idx)
            if arr.size == 0:
                what = "known gene to condition on" if name == "given" else "gene to predict"
                raise ValueError(f"`{name}` must hold at least one {what}; received an empty "
                                 "index array")
            if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"`{name}` must be a 1-D array of integer indices; received "
                                 f"{arr.dtype} of shape {arr.shape}")
            if arr.min() < 0 or arr.max() >= bound:
                raise ValueError(f"`{name}` indices must lie in [0, {bound}); received "
                                 f"{arr.min()} to {arr.max()}")
            if len(np.unique(arr)) != len(arr):
                raise ValueError(f"`{name}` must not repeat an index; received {arr.tolist()}")
            out.append(arr.astype(np.int64))
        both = np.intersect1d(*out)
        if len(both):
            raise ValueError(f"a gene cannot be both given and predicted: `given` and "
                             f"`predict` share {both.tolist()}")
        if not np.isfinite(known[:, out[0]]).all():
            raise ValueError("`known` holds non-finite values in the `given` columns")
        return out[0], out[1]

    def _sample_chunk(self, net, diffusion, values, state, predict, prior, knn, atlas, idx,
                      dist, bounds, cells, *, seed: int, n_samples: int,
                      eta: float) -> np.ndarray:
        """(n_samples, cells, n_predict) samples of the predicted genes of one chunk."""
        n_cells = values.shape[0]
        given = (state == GIVEN).to(values.dtype).expand(n_cells, -1)
        ctx = net.encode_context(context_sequence(values, given, atlas, idx, dist)
                                 if net.context is not None else None)
        source = torch.ones(n_cells, dtype=torch.long, device=values.device)
        cell_state = state.expand(n_cells, -1)
        if not self.config.diffusion:  # one pass: the residuals regressed directly
            t0 = torch.zeros(n_cells, dtype=torch.long, device=values.device)
            eps, _ = net(values, cell_state, prior, knn, t0, ctx, source)
            out = (prior[:, predict] + eps[:, predict]).cpu().numpy()[None]
            return out, out
        gens = cell_generators(seed, cells)
        # On CPU a few cells at a time keep the activations in cache (as
        # spalstf.diffusion.sample does).
        step = n_cells if values.device.type != "cpu" else max(1, CPU_PASS_ROWS // n_samples)
        parts, firsts = [], []
        for s in range(0, n_cells, step):
            part = slice(s, min(s + step, n_cells))
            sampled, first = self._denoise(
                net, diffusion, values[part], cell_state[part], prior[part], knn[part],
                None if ctx is None else ctx[part], source[part], predict, bounds,
                gens[part], n_samples=n_samples, eta=eta)
            parts.append(sampled)
            firsts.append(first)
        return np.concatenate(parts, axis=1), np.concatenate(firsts, axis=1)

    def _denoise(self, net, diffusion, values, state, prior, knn, ctx, source, predict,
                 bounds, gens, *, n_samples: int, eta: float) -> np.ndarray:
        """Reverse diffusion of some cells: (n_samples, cells, n_predict) on the model's scale."""
        n_cells, device = values.shape[0], values.device
        anti = self.config.antithetic

        def repeat(x):
            return None if x is None else x.repeat(n_samples, *([1] * (x.dim() - 1)))

        values, state, prior, knn, ctx, source = map(repeat, (values, state, prior, knn, ctx,
                                                              source))
        prior_p = prior[:, predict]
        clip = None
        if self.config.clip_denoised:  # the data range, around each cell's prior
            clip = (bounds[0] - prior_p, bounds[1] - prior_p)
        x = to_device(draw_normals(gens, n_samples, len(predict), antithetic=anti), device)
        first = None
        for t in diffusion.timesteps:
            tt = torch.full((x.shape[0],), int(t), dtype=torch.long, device=device)
            values[:, predict] = x
            eps, v = net(values, state, prior, knn, tt, ctx, source)
            if first is None:
                first = diffusion.predict_x0(x, eps[:, predict], tt)
                if clip is not None:
                    first = torch.maximum(torch.minimum(first, clip[1]), clip[0])
                first = (prior_p + first).reshape(n_samples, n_cells, -1).cpu().numpy()
            noise = None
            if diffusion.needs_noise(int(t), eta):
                noise = to_device(draw_normals(gens, n_samples, len(predict), antithetic=anti),
                                  device)
            x = diffusion.step(eps[:, predict], v[:, predict], int(t), x, noise=noise, eta=eta,
                               clip=clip)
        return (prior_p + x).reshape(n_samples, n_cells, len(predict)).cpu().numpy(), first

    # --- persistence ------------------------------------------------------------------------
    def state(self) -> dict[str, np.ndarray]:
        """Everything to rebuild the model, as numpy arrays only (so a file of them loads with
        ``torch.load(weights_only=True)`` once made tensors): the network's weights
        (``network.*``), its architecture (``arch.*``, numbers), the atlas and the gene ranges.
        The sampling settings are not in it: `from_state` takes them from a Config."""
        net = self.network
        arch = {"n_known": net.n_known, "n_target": net.n_target, "d_model": net.d_model,
                "depth": len(net.blocks), "n_heads": self._arch["n_heads"],
                "mlp_ratio": self._arch["mlp_ratio"], "max_tokens": self._arch["max_tokens"],
                "use_xca": self._arch["use_xca"], "use_context": net.context is not None,
                "lstm_hidden": self._arch["lstm_hidden"],
                "lstm_layers": self._arch["lstm_layers"],
                "use_source": net.source_embed is not None}
        out = {f"arch.{k}": np.asarray(arch[k]) for k in ARCHITECTURE}
        out.update({
            "arch.diffusion": np.asarray(self.config.diffusion),
            "arch.num_train_timesteps": np.asarray(self.config.num_train_timesteps),
            "arch.beta_schedule": np.asarray(SCHEDULES.index(self.config.beta_schedule)),
            "arch.learn_sigma": np.asarray(self.config.vlb_weight > 0),
            "arch.n_neighbors": np.asarray(self.n_neighbors),
            "arch.prior": np.asarray(PRIORS.index(self.prior)),
            "arch.align_st": np.asarray(self.align_st),
            "atlas": self.atlas, "low": self.low, "high": self.high,
            "st_mean": self.st_mean, "st_sd": self.st_sd})
        out.update({f"gaussian.{k}": v.detach().cpu().numpy()
                    for k, v in self.gaussian.state().items()})
        out.update({f"network.{k}": v.detach().cpu().numpy()
                    for k, v in net.state_dict().items()})
        return out

    @property
    def _arch(self) -> dict:
        return self.info["architecture"]

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray], config: Config | None = None, *,
                   device: torch.device | str = "cpu") -> MaskedModel:
        """The model saved as `state`; `config` gives the sampling settings (default: Config's
        defaults). The method's own settings (diffusion, schedule) come from the state."""
        config = Config() if config is None else config
        try:
            arch = {k: np.asarray(state[f"arch.{k}"]).item() for k in ARCHITECTURE}
            learn_sigma = bool(np.asarray(state["arch.learn_sigma"]).item())
            config = config.replace(
                diffusion=bool(np.asarray(state["arch.diffusion"]).item()),
                num_train_timesteps=int(np.asarray(state["arch.num_train_timesteps"]).item()),
                beta_schedule=SCHEDULES[int(np.asarray(state["arch.beta_schedule"]).item())],
                # only whether the variance was learned matters at sampling
                vlb_weight=(config.vlb_weight or 0.001) if learn_sigma else 0.0)
            network = build_masked_network(arch)
            network.load_state_dict({k[len("network."):]: torch.as_tensor(np.asarray(v))
                                     for k, v in state.items() if k.startswith("network.")})
            device = torch.device(device)
            gaussian = ConditionalGaussian(
                *(torch.as_tensor(np.asarray(state[f"gaussian.{k}"], np.float32), device=device)
                  for k in ("mean", "sd", "corr")),
                float(np.asarray(state["gaussian.penalty"]).item()))
            return cls(network.to(device).eval(), np.asarray(state["atlas"], np.float32),
                       np.asarray(state["low"], np.float32),
                       np.asarray(state["high"], np.float32), config,
                       int(np.asarray(state["arch.n_neighbors"]).item()), gaussian,
                       np.asarray(state["st_mean"], np.float32),
                       np.asarray(state["st_sd"], np.float32),
                       prior=PRIORS[int(np.asarray(state["arch.prior"]).item())],
                       align_st=bool(np.asarray(state["arch.align_st"]).item()),
                       info={"architecture": arch}, device=device)
        except (KeyError, RuntimeError, IndexError) as err:
            raise ValueError(f"`state` is not a complete masked-model state ({type(err).__name__}"
                             f": {str(err).strip().splitlines()[0][:200]})") from err


def build_masked_network(arch: Mapping, dropout: float = 0.0) -> MaskedDenoiser:
    """The (untrained) `MaskedDenoiser` of an architecture (the `ARCHITECTURE` numbers);
    `dropout` acts in training only."""
    return MaskedDenoiser(
        int(arch["n_known"]), int(arch["n_target"]), d_model=int(arch["d_model"]),
        depth=int(arch["depth"]), n_heads=int(arch["n_heads"]),
        mlp_ratio=float(arch["mlp_ratio"]), max_tokens=int(arch["max_tokens"]),
        use_xca=bool(arch["use_xca"]), use_context=bool(arch["use_context"]),
        lstm_hidden=int(arch["lstm_hidden"]), lstm_layers=int(arch["lstm_layers"]),
        use_source=bool(arch["use_source"]), dropout=dropout)
