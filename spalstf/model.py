"""`Model`: a trained SpaLSTF model; `fit_model` trains one, `load` reads one back.

Below the public functions (`spalstf.api` validates the user's input and calls these): a
reference already read (`spalstf.data.Expression`) goes to the training loop
(`spalstf.train`) and the base predictors of the prior (`spalstf.prior`); `Model.impute` hands
the ST to the sampler (`spalstf.infer`) and packs the result in the type the user gave;
`Model.save` / `load` keep a model in a folder. The self-check (`spalstf.selfcheck`) is handed
`fit_model` to fit its inner models, so it imports neither this module nor the API.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.stats import norm
from tqdm.auto import tqdm

from spalstf import distributed, runtime, selfcheck
from spalstf._atomic import replace_folder, sync_dir, sync_folder, user_mode
from spalstf._logging import phase_level, shows_progress
from spalstf._version import __version__
from spalstf.checkpoint import Checkpointer, data_fingerprint
from spalstf.columns import NETWORK, ColumnSource
from spalstf.config import INFERENCE_STAGES, Config
from spalstf.data import (
    CellRows,
    Expression,
    as_expression,
    cell_factors,
    check_values,
    match_genes,
)
from spalstf.diffusion import GaussianDiffusion
from spalstf.infer import impute_cells
from spalstf.network import build_network, needs_neighbours
from spalstf.preprocess import Standardizer, depth_blend, expected_at_depth
from spalstf.prior import (
    MODEL,
    PREDICTORS,
    AlignedNeighbours,
    AlignedRidge,
    BasePredictor,
    Blend,
    Reference,
    RidgePrior,
    Stack,
    build,
)
from spalstf.spatial import coordinates, resolve
from spalstf.train import TrainingData, train

logger = logging.getLogger(__name__)

#: Landmark cells (evenly spaced over the ST) whose predictions give each stack column's
#: statistics, and the memory they may take (their predictions are held at once).
STACK_LANDMARKS = 5000
STACK_STAT_BYTES = 256 * 2**20

#: Cells normalised and read at once when preparing data.
_BLOCK = 8192

#: Format 2 saves each base predictor's state (`spalstf.prior`) under "prior.<name>."; format 1
#: (spalstf 0.1) is read too, its predictors rebuilt from the network's ridge and the atlas.
#: Format 3 is format 2 with `CHECKSUMS`, required from it on; folders of formats 1 and 2 were
#: saved before checksums and load unverified (said in a log line).
_FORMAT_VERSION = 3
_FORMATS_READ = (1, 2, 3)
_FIRST_CHECKSUMMED = 3

#: The file of a model folder holding the sha256 of every other file, in ``sha256sum``'s format
#: (``sha256sum -c checksums.sha256`` checks a folder by hand). Written last: its presence marks
#: a complete folder.
CHECKSUMS = "checksums.sha256"
#: The files a model folder holds (besides CHECKSUMS).
_MODEL_FILES = ("model.json", "weights.pt")

#: Config fields that may differ between fit and impute: those of the sample and readout stages
#: (they act at sampling time only).
INFERENCE_OPTIONS = Config.fields(*INFERENCE_STAGES)

#: References whose standardised training genes take at most this many bytes are held in
#: memory; larger ones are read a mini-batch at a time from the input (sparse stays sparse).
DENSE_TRAINING_BYTES = 512 * 2**20


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> CUDA when available, else CPU; anything else must be a usable torch device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"`device` must be 'auto', 'cpu', 'cuda' or 'cuda:N'; "
                         f"received {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device` is {device!r} but no CUDA device is available; "
                         "use device='auto' or 'cpu'")
    return dev


def merge_options(config: Config | Mapping[str, Any] | None, **options: Any) -> Config:
    """`config` (a `Config`, a dict of its fields over the defaults, or None: the defaults)
    with every keyword option that is not None applied; validated, unknown names refused."""
    if config is None:
        base = Config()
    elif isinstance(config, Config):
        base = config
    elif isinstance(config, Mapping):
        unknown = sorted(str(k) for k in set(config) - set(Config.fields()))
        if unknown:
            raise TypeError(f"`config` has unknown field(s) {unknown}; the fields of "
                            f"spalstf.Config are {sorted(Config.fields())}")
        base = Config().replace(**config)
    else:
        raise TypeError(f"`config` must be a spalstf.Config or a dict of its fields; received "
                        f"{type(config).__name__}")
    return base.replace(**{k: v for k, v in options.items() if v is not None})


def given_in(config: Config | Mapping[str, Any] | None) -> set[str]:
    """The settings `config` sets: a dict's keys, a Config's fields that differ from the
    defaults (the self-check's "auto" selection leaves them as they are)."""
    if isinstance(config, Config):
        default = Config()
        return {k for k, v in config.to_dict().items() if v != getattr(default, k)}
    return set(config or ())


def check_flag(value: Any, arg: str) -> bool:
    """`value` as a bool; a TypeError naming `arg` unless it is True or False."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{arg}` must be True or False; received {value!r}")
    return bool(value)


def training_device(device: str) -> torch.device:
    """The device of this process; joins torchrun's process group when launched by it."""
    dev = distributed.setup(resolve_device(device))
    if dev.type == "cpu":
        runtime.use_all_cores()
    return dev


#: The largest seed: torch's generators take 64-bit seeds, and a fit also seeds one with
#: seed + a small offset; 2**63 - 1 (int64) keeps every such seed in range.
MAX_SEED = 2**63 - 1


def check_seed(seed: Any) -> int:
    """`seed` as an int; a ValueError unless it is an integer from 0 to `MAX_SEED`."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"`seed` must be an integer from 0 to 2**63 - 1; received {seed!r}")
    return int(seed)


class Model:
    """A fitted spalstf model: known genes in, target genes out.

    Its fitted base predictors (`Config.predictors`; the SpaLSTF diffusion network among them
    only where it includes "network") and, once `Model.self_check` has learnt it on an ST, the
    combination of their predictions. Created by `spalstf.fit` or `spalstf.load`; impute with
    `Model.impute`, save with `Model.save`.

    Attributes
    ----------
    known_genes
        Genes the model conditions on (names as in the reference).
    target_genes
        Genes the model predicts (names as in the reference).
    output_names
        Names of the target genes in results (as the user requested them).
    config
        The `Config` it was trained with.
    history
        One dict per epoch of the network's training (loss components, validation loss);
        empty without the network.
    """

    def __init__(self, network, config: Config, known_genes: list[str], target_genes: list[str],
                 known_scaler: Standardizer, target_scaler: Standardizer,
                 atlas: np.ndarray | None, *, mixtures: np.ndarray | None = None,
                 predictors: Mapping[str, BasePredictor] | None = None,
                 output_names: list[str] | None = None,
                 log_normalized: bool = False, history: list[dict] | None = None,
                 info: dict | None = None, device: torch.device | None = None,
                 stack: Stack | None = None) -> None:
        #: the SpaLSTF denoiser (None when `Config.predictors` leaves the network out)
        self.network = network
        self.config = config
        self.known_genes = list(known_genes)
        self.target_genes = list(target_genes)
        self.output_names = list(output_names or target_genes)
        self.known_scaler = known_scaler
        self.target_scaler = target_scaler
        #: the reference cells of the network's context (None when it reads none)
        self.atlas = atlas
        if predictors is None:  # as a model of format 1 keeps them
            predictors = _predictors_of(network, config, atlas, mixtures, len(self.known_genes))
        #: the fitted base predictors of the prior (`spalstf.prior`), by name
        self.predictors = dict(predictors)
        self.log_normalized = log_normalized
        self.history = history or []
        self.info = info or {}
        self.device = device or torch.device("cpu")
        self.diffusion = GaussianDiffusion(config.num_train_timesteps, config.beta_schedule,
                                           learn_sigma=config.vlb_weight > 0)
        #: the combination of the base predictions learnt on an ST by the self-check
        #: (`spalstf.prior.Stack`; `Model.self_check`), None before: the fixed blend is used
        self.stack: Stack | None = stack

    @property
    def mixtures(self) -> np.ndarray | None:
        """The pseudo-spots (known + target genes, model space) the aligned-neighbour estimate
        reads beside the atlas (`Config.prior_mixtures`); None for models without them."""
        aligned = self.predictors.get(AlignedNeighbours.name)
        return None if aligned is None else aligned.mixtures

    def __repr__(self) -> str:
        network = (f"network trained {len(self.history)} epochs" if self.network is not None
                   else "no network")
        combination = ("a stack of " + str(len(self.stack.weights)) + " columns"
                       if self.stack is not None else "the fixed blend")
        return (f"spalstf.Model({len(self.known_genes)} known genes -> "
                f"{len(self.target_genes)} target genes; {network}; {combination})")

    # --- imputation -------------------------------------------------------------------------
    @shows_progress
    def impute(self, st: Any, *, st_genes: Sequence[str] | None = None,
               st_layer: str | None = None, log_normalized: bool | None = None, seed: int = 0,
               device: str | None = None, spatial: Any = None, n_samples: int | None = None,
               batch_size: int | None = None, progress: bool = True,
               out: str | os.PathLike | None = None, overwrite: bool = False,
               shard: tuple[int, int] | None = None,
               config: Config | Mapping[str, Any] | None = None, **options: Any) -> Any:
        """Predict the target genes for every cell of `st`.

        Parameters
        ----------
        st
            Cells x genes: AnnData (X or `st_layer`; also opened backed,
            ``anndata.read_h5ad(path, backed="r")``, then read a chunk at a time), numpy array,
            scipy sparse matrix or DataFrame; raw counts unless `log_normalized`. It must
            contain every known gene of the model; its other genes are never read.
        st_genes
            Gene names of a bare matrix.
        log_normalized
            Whether `st` holds log-normalised values (default: as the reference at fit).
        seed
            Seeds each cell's random draws together with its name.
        device
            "auto", "cpu", "cuda": where to predict (default: where the model is).
        spatial
            Coordinates of the cells for the spatial context (`Config.spatial_weight`):
            None reads `st.obsm["spatial"]` when present, else obs columns "x"/"y" (or
            those of `spalstf.spatial.OBS_COORDINATES`, logged); a string another obsm key or
            obs columns ("x,y"); an array (cells x 2 or 3) gives them; False turns the spatial
            context off.
        n_samples
            The network's samples per cell (default: the model's, 4 unless set at fit): their
            mean is its prediction. Only for a model whose predictors include "network".
        batch_size
            Cells per chunk (memory), not a modelling choice: results do not depend on it.
            Default: the model's batch size on CPU, sized to the free memory on a GPU.
        progress
            Show a progress bar, and the phases' log lines when logging is not configured
            (False: warnings only).
        out
            Write the result to this .h5ad file a chunk at a time instead of returning it:
            memory does not grow with the number of cells (the file is written beside and
            renamed when complete). Returns the path.
        overwrite
            Replace an existing `out`.
        shard
            ``(i, n)``: impute only the i-th of n contiguous shares of the cells (0-based),
            for example one per process or job; `spalstf.io.merge_h5ad` (``spalstf merge``)
            joins the parts. Each cell's values are those of an unsharded run.
        config
            The other settings of this imputation: a dict of the fields of the sample and
            readout stages of `spalstf.Config` (`INFERENCE_OPTIONS`: ``{"n_steps": 10,
            "knn_weight": 0}``), over the model's own; or a `Config`, whose fields of the model
            and train stages must be the model's (they are fixed at fit; ``batch_size`` aside,
            which is the argument above). Default: the model's. ``n_steps`` and ``n_samples``
            act only with the network.
        **options
            Sample and readout fields as keywords (``knn_weight=0.5``), as earlier versions
            took them; a keyword given as None keeps the model's value. Prefer `config`.

        Returns
        -------
        For AnnData: a new AnnData, cells as in `st` (obs, obsm copied), genes = `output_names`,
        `X` float32 log1p-normalised imputations and `uns["spalstf"]` the provenance. With the
        combination learnt by `Model.self_check` (`Model.stack`): `layers["lower"]`,
        `layers["upper"]` the calibrated interval of each value (with counts input: the count
        model's, `spalstf.prior.intervals`; with log-normalised input: the normalised
        conformal one) and `layers["std"]` its half-width over the normal quantile. Without
        it (the fixed blend): no interval, and `layers["std"]` the standard deviation over the
        network's samples where there is a network (n_samples > 1). For a DataFrame: a
        DataFrame; for a numpy or scipy matrix: a numpy array (cells x target genes). With
        `out`: the path of the .h5ad written (the same AnnData, on disk).
        """
        if log_normalized is not None:
            log_normalized = check_flag(log_normalized, "log_normalized")
        progress = check_flag(progress, "progress")
        expr = as_expression(st, genes=st_genes, layer=st_layer, arg="st", genes_arg="st_genes")
        changes = self._inference_changes(config, {"n_samples": n_samples, **options})
        targets = list(self.output_names)
        measured = [g for g in targets if g in match_genes(targets, expr.genes)]
        if measured:  # as spalstf.impute says it: a user may expect their measured values back
            logger.info("%d of the model's target genes are measured by the ST (for example "
                        "%s); they are predicted as if hidden (their measured values are not "
                        "read)", len(measured), measured[:5])
        return self._impute_expression(expr, log_normalized=log_normalized, seed=seed,
                                       batch_size=batch_size, device=device,
                                       spatial=resolve(expr.source, spatial),
                                       progress=progress, out=out, overwrite=overwrite,
                                       shard=shard, **changes)

    def _inference_changes(self, config: Config | Mapping[str, Any] | None,
                           options: Mapping[str, Any]) -> dict[str, Any]:
        """The sample and readout settings `config` and the keyword `options` (those not None,
        which win) change; anything fixed at fit is refused, naming it."""
        if config is None:
            changes = {}
        elif isinstance(config, Config):
            fixed = [k for k in Config.fields() if k not in INFERENCE_OPTIONS
                     and k != "batch_size" and getattr(config, k) != getattr(self.config, k)]
            if fixed:
                raise ValueError(f"`config` differs from the model's in {fixed}, fixed at fit; "
                                 "pass a dict of the sampling and readout settings to change "
                                 "(for example {'n_steps': 10}) or model.config.replace(...)")
            changes = {k: getattr(config, k) for k in INFERENCE_OPTIONS}
        elif isinstance(config, Mapping):
            changes = dict(config)
        else:
            raise TypeError(f"`config` must be a spalstf.Config or a dict of its sampling and "
                            f"readout fields; received {type(config).__name__}")
        named = set(changes) | set(options)
        unknown = sorted(str(k) for k in named - set(Config.fields()))
        if unknown:
            raise TypeError(f"Model.impute() got unknown option(s) {unknown}; it accepts "
                            f"{sorted(INFERENCE_OPTIONS)}")
        fixed = sorted(named - set(INFERENCE_OPTIONS))
        if fixed:
            raise TypeError(f"Model.impute() got option(s) {fixed} that are fixed at fit; "
                            f"it accepts {sorted(INFERENCE_OPTIONS)}")
        changes.update({k: v for k, v in options.items() if v is not None})
        return changes

    def _impute_expression(self, expr: Expression, *, log_normalized, seed, batch_size, device,
                           progress, spatial=None, out=None, overwrite=False, shard=None,
                           self_check: dict | None = None, **changes) -> Any:
        """`impute` of a validated `expr`, with the sample and readout settings `changes`."""
        cfg = merge_options(self.config, batch_size=batch_size, **changes)
        seed = check_seed(seed)
        log_norm = self.log_normalized if log_normalized is None else bool(log_normalized)
        dev = self.device if device is None else resolve_device(device)
        if dev.type == "cpu":
            runtime.use_all_cores()
        elif batch_size is None:
            cfg = cfg.replace(batch_size=runtime.inference_chunk(
                dev, cfg.n_samples, 2 * cfg.max_tokens, cfg.d_model,
                len(self.known_genes) + len(self.target_genes), cfg.n_neighbors,
                0 if self.atlas is None else len(self.atlas)))
        first, last = _shard_rows(shard, expr.n_cells)
        if out is not None:
            out = Path(out)
            if out.suffix.lower() != ".h5ad":
                raise ValueError(f"`out` must be an .h5ad file; received {str(out)!r}")
            if out.exists() and not overwrite:
                raise FileExistsError(f"{str(out)!r} exists; pass overwrite=True to replace it")
        start = time.perf_counter()
        n_cells = last - first
        stacked = self._uses_stack(cfg)
        layers = self._layers(cfg, stacked)
        confidence = self._gene_confidence(self_check)
        writer = sink = None
        if out is not None:
            from spalstf.io import H5adWriter

            head = _pack(expr, None, {}, self.output_names, {}, rows=slice(first, last),
                         spatial=spatial)
            _add_confidence(head, confidence)
            writer = H5adWriter(out, head, layers=layers, overwrite=overwrite)

            def sink(rows, mean, extra):
                writer.write(rows, mean, extra)
        try:
            predict = self._predict_stack if stacked else self._predict
            mean, extra = predict(expr, cfg, log_normalized=log_norm, seed=seed, device=dev,
                                  spatial=spatial, progress=progress, rows=(first, last),
                                  sink=sink)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        seconds = time.perf_counter() - start
        logger.info("imputed %d genes in %d cells in %.1f s", len(self.target_genes),
                    n_cells, seconds)
        info = {
            "version": __version__,
            "params": _plain(cfg.to_dict()),
            "seed": seed,
            "known_genes": list(self.known_genes),
            "target_genes": list(self.target_genes),
            "log_normalized_input": log_norm,
            "device": str(dev),
            "combination": ({"kind": "stack", **self.stack.to_dict()} if stacked
                            else {"kind": "blend"}),
            "timings": {**self.info.get("timings", {}), "impute_seconds": seconds},
            "training": {k: v for k, v in self.info.items()
                         if k not in ("timings", "reference_pcc")},
        }
        if self_check is not None:
            info["self_check"] = self_check
        if confidence is not None:
            info["gene_confidence"] = confidence
        if shard is not None:
            info["shard"] = {"index": int(shard[0]), "count": int(shard[1]), "start": first,
                             "stop": last, "n_obs_total": expr.n_cells}
        if writer is not None:
            writer.write_uns({"spalstf": _plain(info)})
            return writer.close()
        if shard is not None:
            return _pack(expr, mean, extra, self.output_names, info, rows=slice(first, last),
                         spatial=spatial)
        result = _pack(expr, mean, extra, self.output_names, info, spatial=spatial)
        if expr.kind == "anndata":
            _add_confidence(result, confidence)
        return result

    def _gene_confidence(self, self_check: dict | None) -> dict | None:
        """Per-gene confidence: each target's predictability in the reference, mapped to an
        expected PCC on this ST by the self-check's calibration (None without them)."""
        if self_check is None or not self_check.get("calibration") \
                or "reference_pcc" not in self.info:
            return None
        return {"genes": list(self.output_names),
                "reference_pcc": list(self.info["reference_pcc"]),
                "expected_pcc": [float(v) for v in selfcheck.expected_pcc(
                    self_check["calibration"], self.info["reference_pcc"])]}

    def _uses_stack(self, cfg: Config) -> bool:
        """Whether an imputation with `cfg` combines by the learnt stack (else: the blend)."""
        return cfg.combine == "stack" and self.stack is not None

    def _layers(self, cfg: Config, stacked: bool) -> list[str]:
        """The layers an imputation with `cfg` writes beside X."""
        if stacked:
            return ["std", "lower", "upper"] if np.isfinite(self.stack.quantile) else []
        with_std = self.network is not None and cfg.diffusion and cfg.n_samples > 1
        return ["std"] if with_std else []

    def _st_known(self, expr: Expression) -> list[str]:
        """The ST's names of the model's known genes (a ValueError naming those it lacks)."""
        mapping = match_genes(self.known_genes, expr.genes)
        missing = [g for g in self.known_genes if g not in mapping]
        if missing:
            raise ValueError(
                f"`st` lacks {len(missing)} of the model's {len(self.known_genes)} known genes, "
                f"for example {missing[:5]} (`st` has for example {expr.genes[:5]}); impute "
                "data measured on the same genes or fit a new model on the genes this data has")
        return [mapping[g] for g in self.known_genes]

    def columns(self, expr: Expression, cfg: Config, columns: Sequence[str], *,
                log_normalized: bool, seed: int, device: torch.device, spatial: Any
                ) -> ColumnSource:
        """A `spalstf.columns.ColumnSource` of `columns` on the ST `expr` (prepared)."""
        st_known = self._st_known(expr)
        check_values(expr, log_normalized=log_normalized, arg="st")
        return ColumnSource(self, expr, st_known, cfg, columns, log_normalized=log_normalized,
                            spatial=spatial, seed=seed, device=device)

    def _predict_stack(self, expr: Expression, cfg: Config, *, log_normalized: bool, seed: int,
                       device: torch.device, spatial: Any, progress: bool,
                       rows: tuple[int, int] = None, sink=None):
        """(values, layers) of the cells [rows) by the learnt stack: its columns are
        predicted on evenly spaced landmark cells of the whole ST for their statistics, then
        chunk by chunk (see `spalstf.prior.stack`)."""
        stack = self.stack
        first, last = (0, expr.n_cells) if rows is None else rows
        source = self.columns(expr, cfg, stack.columns, log_normalized=log_normalized,
                              seed=seed, device=device, spatial=spatial)
        cap = max(1, STACK_STAT_BYTES // (4 * len(self.target_genes) * len(stack.columns)))
        landmarks = np.unique(np.linspace(0, expr.n_cells - 1,
                                          min(expr.n_cells, STACK_LANDMARKS, cap)).astype(int))
        everything = len(landmarks) == expr.n_cells
        at_landmarks = source.predict(landmarks, progress=progress)
        stats = stack.statistics(at_landmarks)
        z = float(norm.ppf((1 + stack.level) / 2))
        # the count model's interval reads each cell's total over the known genes (counts
        # input); log-normalised input keeps the normalised conformal interval
        st_known = (self._st_known(expr) if stack.counts is not None and not log_normalized
                    else None)
        values = extra = None
        if sink is None:
            values = np.empty((last - first, len(self.target_genes)), dtype=np.float32)
            extra = {name: np.empty_like(values) for name in self._layers(cfg, True)}
        step = max(cfg.batch_size, 1024)
        for start in tqdm(range(first, last, step), desc="spalstf impute", unit="chunk",
                          disable=not progress, leave=False):
            cells = np.arange(start, min(start + step, last))
            preds = ({n: v[cells] for n, v in at_landmarks.items()} if everything
                     else source.predict(cells))
            mean = stack.combine(preds, stats)
            layers = {}
            depth = (None if st_known is None else
                     expr.columns(st_known, cells).sum(axis=1, keepdims=True))
            bounds = stack.interval(mean, stack.spread(preds), depth)
            if bounds is not None:
                # the interval may be asymmetric (the count model's): std is its half-width
                layers = {"std": ((bounds[1] - bounds[0]) / (2 * z)).astype(np.float32),
                          "lower": bounds[0], "upper": bounds[1]}
            if sink is not None:
                sink(slice(start - first, cells[-1] + 1 - first), mean, layers)
                continue
            part = slice(start - first, cells[-1] + 1 - first)
            values[part] = mean
            for name, layer in layers.items():
                extra[name][part] = layer
        return values, extra

    def _predict(self, expr: Expression, cfg: Config, *, log_normalized: bool, seed: int,
                 device: torch.device, spatial: Any, progress: bool,
                 residual_weights: Sequence[float] | None = None,
                 rows: tuple[int, int] | np.ndarray | None = None, sink=None,
                 prior_only: bool = False):
        """(mean, layers) of the target genes on the output scale for the cells `rows` of
        `expr` by the fixed blend: all by default, (first, stop) for a shard, or a sorted array
        of cell indices (a subsample); see `infer.impute_cells`. `layers` holds "std" (the
        spread of the samples) when there is one."""
        if rows is None:
            rows = (0, expr.n_cells)
        cells = np.arange(*rows) if isinstance(rows, tuple) else np.asarray(rows)
        if self.network is None:
            prior_only = True  # a model without a network: the blend of its predictors
        st_known = self._st_known(expr)
        check_values(expr, log_normalized=log_normalized, arg="st")
        check_output(cfg, log_normalized)
        blend = Blend.from_config(self.predictors, cfg)
        if blend is None and self.network is None:
            raise ValueError("this model has neither a network nor a ridge prior to predict "
                             "with")
        view = "spatial" if cfg.spatial_weight > 0 and coordinates(
            expr.source, spatial, expr.n_cells, expr.named_cells) is not None else (
            "expression" if cfg.expression_weight > 0 else "raw")
        source = ColumnSource(self, expr, st_known, cfg, [], log_normalized=log_normalized,
                              spatial=spatial, seed=seed, device=device, views=[view])

        def read(scale: str, at: np.ndarray) -> np.ndarray:  # cells of `expr` on a scale
            return source.read(view, scale, at)

        prior = None
        if blend is not None:  # statistics over the whole data set, also for a shard or
            # subsample (the ST's z-scores, as SpaGE), read a chunk at a time
            blend.prepare(read, expr.n_cells, block=cfg.batch_size, device=device)
            prior = blend.reader(read, cells)

        def to_output(samples: np.ndarray, chunk: slice) -> np.ndarray:
            values = self.target_scaler.inverse(samples).astype(np.float32)
            share = _depth_share(cfg)
            if share > 0:  # the cells' own known-gene totals, in counts
                at_depth = expected_at_depth(values, source.depth(cells[chunk]),
                                             scale_factor=cfg.scale_factor)
                values = depth_blend(values, at_depth, share)
            return values

        def read_known(chunk: slice) -> np.ndarray:  # a chunk of `cells` -> rows of `expr`
            return read(MODEL, cells[chunk])

        if self.network is None:
            mean = [to_output(np.concatenate([prior(slice(s, s + cfg.batch_size))
                                              for s in range(0, len(cells), cfg.batch_size)]),
                              slice(None))]
            if sink is not None:
                sink(slice(0, len(cells)), mean[0], {})
                return None, {}
            return (np.stack(mean) if residual_weights is not None else mean[0]), {}
        self.network.to(device)
        ts = self.target_scaler
        clip = (ts.low, ts.high) if cfg.clip_denoised and ts.low is not None else None
        network_sink = None if sink is None else (
            lambda rows_, mean_, std_: sink(rows_, mean_, {} if std_ is None else {"std": std_}))
        mean, std = impute_cells(
            self.network, self.diffusion, cfg, len(cells), read_known,
            [expr.cells[i] for i in cells], to_output, atlas=self.atlas, clip=clip, seed=seed,
            device=device, progress=progress, sink=network_sink,
            residual_weights=residual_weights, prior_only=prior_only, prior=prior)
        return mean, ({} if std is None else {"std": std})

    # --- self-check -------------------------------------------------------------------------
    @shows_progress
    def self_check(self, st: Any, sc: Any, *, n_folds: int = 2, seed: int = 0,
                   st_genes: Sequence[str] | None = None, sc_genes: Sequence[str] | None = None,
                   st_layer: str | None = None, sc_layer: str | None = None,
                   spatial: Any = None, device: str | None = None, progress: bool = True,
                   adopt: bool = True) -> selfcheck.SelfCheckResult:
        """How accurate this model is likely to be on `st`, and the combination of its base
        predictions learnt there: hide groups of the model's known genes in turn, fit with the
        model's settings on the reference `sc`, predict them in `st` with every base
        prediction, and score them against their measured values (`spalstf.selfcheck`). The
        reference is needed because a model keeps no reference counts. Target genes are never
        read.

        With `adopt` (default), the model keeps the combination learnt (`Model.stack`, saved
        with it): its imputations of `st` and of data like it then use it, with intervals.

        Returns a `spalstf.selfcheck.SelfCheckResult` (`median_pcc`, `median_spcc`,
        `per_gene`, `scores`, `weights`, `stack`, `calibration`).
        """
        adopt = check_flag(adopt, "adopt")
        st_expr = as_expression(st, genes=st_genes, layer=st_layer, arg="st",
                                genes_arg="st_genes")
        sc_expr = as_expression(sc, genes=sc_genes, layer=sc_layer, arg="sc",
                                genes_arg="sc_genes")
        in_st, in_sc = match_genes(self.known_genes, st_expr.genes), \
            match_genes(self.known_genes, sc_expr.genes)
        missing = [g for g in self.known_genes if g not in in_st or g not in in_sc]
        if missing:
            raise ValueError(f"`st` and `sc` must hold the model's known genes; "
                             f"{len(missing)} are missing, for example {missing[:5]}")
        dev = self.device if device is None else resolve_device(device)
        check = selfcheck.maybe_run(
            st_expr, sc_expr, [(in_st[g], in_sc[g]) for g in self.known_genes], self.config,
            self_check=True, n_folds=n_folds, seed=check_seed(seed),
            log_normalized=self.log_normalized, device=dev,
            spatial=resolve(st_expr.source, spatial),
            progress=check_flag(progress, "progress"), fit=fit_model)
        if adopt:
            self.stack = check.stack
        return check

    # --- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the model to the directory `path` (atomically: a temporary folder, renamed).

        Parameters
        ----------
        path
            Folder to create.
        overwrite
            Replace an existing model folder (an empty folder too). Any other existing path (a
            file, a folder that is not provably a spalstf model: one holding other files, or a
            weights.pt without a model.json or checksums of spalstf's) is refused with a
            ValueError and left as it was, so that a wrong path never deletes other files. The
            replacement is atomic: at every instant `path` holds the whole old model or the
            whole new one (where the system cannot swap two folders in one step, a crash
            between two renames may leave the old one beside `path`; the next `save` or
            `spalstf.load` of `path` puts it back).

        The folder holds `model.json` (format, versions, config, genes, training history),
        `weights.pt` (network weights, normalisation statistics, the context atlas, the state of
        each base predictor of the prior) and `checksums.sha256` (the sha256 of both, checked
        by `spalstf.load`; ``sha256sum -c checksums.sha256`` checks them by hand).
        """
        given = Path(path)
        overwrite = check_flag(overwrite, "overwrite")
        path = _save_target(given)
        _recover(path)  # a replacement cut short by a crash: the model is put back first
        if path.exists() and not overwrite:
            raise FileExistsError(f"`path` {str(given)!r} exists; pass overwrite=True to replace "
                                  "it")
        if path.exists():
            _check_overwrite(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "spalstf-model", "format_version": _FORMAT_VERSION,
            "spalstf_version": __version__, "torch_version": torch.__version__,
            "config": _plain(self.config.to_dict(), none_ok=True),
            "known_genes": self.known_genes, "target_genes": self.target_genes,
            "output_names": self.output_names, "log_normalized": self.log_normalized,
            "history": self.history, "info": _plain(self.info, none_ok=True),
            "prior": list(self.predictors),
            "network": self.network is not None,
            "stack": None if self.stack is None else _plain(self.stack.to_dict(), none_ok=True),
        }
        tensors = {} if self.network is None else {
            f"network.{k}": v.detach().cpu() for k, v in self.network.state_dict().items()}
        for name, scaler in (("known", self.known_scaler), ("target", self.target_scaler)):
            tensors.update({f"{name}.{k}": torch.as_tensor(v) for k, v in scaler.state().items()})
        if self.atlas is not None:
            tensors["atlas"] = torch.as_tensor(self.atlas)
        for name, predictor in self.predictors.items():
            tensors.update({f"prior.{name}.{k}": torch.as_tensor(v)
                            for k, v in predictor.state().items()})
        tensors = _stored_once(tensors)
        # named after this process, so that a later save can tell the leftovers of a run that
        # died from those of one still running (`_leftovers`)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-{_owner_tag()}-", dir=path.parent))
        try:
            torch.save(tensors, tmp / "weights.pt")
            (tmp / "model.json").write_text(json.dumps(meta, indent=1))
            os.chmod(tmp, user_mode(directory=True))  # mkdtemp made it 0700
            seal(tmp)
            sync_folder(tmp)
            if path.exists():
                # at every instant `path` holds the whole old model or the whole new one
                replace_folder(tmp, path, path.with_name(f".{path.name}.old-{_owner_tag()}"))
            else:
                os.replace(tmp, path)
            sync_dir(path.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        _clean_leftovers(path)
        logger.info("saved model to %s", given)
        return given


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def seal(folder: str | os.PathLike) -> None:
    """Write `CHECKSUMS` (the sha256 of each model file) into the model folder `folder`."""
    folder = Path(folder)
    lines = [f"{_sha256(folder / name)}  {name}\n" for name in _MODEL_FILES]
    (folder / CHECKSUMS).write_text("".join(lines))


#: Files a folder may hold beside the model's and still be replaced by `save(overwrite=True)`:
#: macOS Finder's view settings, written into any folder it shows, never the user's data.
_IGNORABLE = frozenset({".DS_Store"})


def _sealed_by_us(path: Path) -> bool:
    """Whether `path`'s `CHECKSUMS` is one `seal` wrote: every line '<sha256>  <file>' for a
    file of the model, and, where any model file is present, at least one that matches its
    line (a user's own weights.pt beside a checksum file of ours does not)."""
    try:
        lines = (path / CHECKSUMS).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    listed = {}
    for line in lines:
        digest, _, name = line.partition("  ")
        if (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)
                or name not in _MODEL_FILES):
            return False
        listed[name] = digest
    if set(listed) != set(_MODEL_FILES):
        return False
    present = [name for name in _MODEL_FILES if (path / name).is_file()]
    return not present or any(_sha256(path / name) == listed[name] for name in present)


def _is_model_folder(path: Path) -> bool:
    """Whether `path` is provably a spalstf model folder (possibly damaged): what
    `save(overwrite=True)` may replace. A folder holding nothing but the model's files
    (`_MODEL_FILES`, `CHECKSUMS`) that proves it is ours by either a model.json of format
    "spalstf-model" or a `CHECKSUMS` that `seal` wrote and a model file still matches. File
    names alone prove nothing: a user's own weights.pt is not a damaged model."""
    if not path.is_dir() or path.is_symlink():
        return False
    names = {p.name for p in path.iterdir()} - _IGNORABLE
    if not names or not names <= {*_MODEL_FILES, CHECKSUMS}:
        return False
    try:
        meta = json.loads((path / "model.json").read_text())
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict) and meta.get("format") == "spalstf-model":
        return True
    return _sealed_by_us(path)


def _save_target(path: Path) -> Path:
    """The folder `save` writes for `path`: what a link there names (so that the link keeps
    leading to the model), else `path`."""
    return Path(os.path.realpath(path)) if path.is_symlink() and path.exists() else path


def check_replaceable(path: str | os.PathLike, arg: str = "`path`") -> None:
    """A ValueError, naming `arg`, unless `save(path, overwrite=True)` may replace what is at
    `path` (nothing, an empty folder or a spalstf model folder); the command line checks this
    before it trains, not after. Nothing is changed."""
    target = _save_target(Path(path))
    if target.exists():
        _check_overwrite(target, arg)


def _check_overwrite(path: Path, arg: str = "`path`") -> None:
    """Refuse to replace anything but an empty folder or a spalstf model folder
    (`_is_model_folder`), naming why; nothing is changed. `arg`: how the message names the
    path (the command line's flag)."""
    if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        return  # an empty folder: nothing in it to lose (a user may make one to save into)
    if not path.is_dir():
        raise ValueError(f"{arg} {str(path)!r} exists and is a file, not a model folder; "
                         "overwrite=True replaces only a spalstf model folder: remove the file "
                         "or choose another path")
    if not _is_model_folder(path):
        found = sorted(p.name for p in path.iterdir())
        extra = sorted(set(found) - {*_MODEL_FILES, CHECKSUMS} - _IGNORABLE)
        why = (f"it holds files a model does not: {extra[:5]}{' ...' if len(extra) > 5 else ''}"
               if extra else f"it holds {found}, but neither a model.json of format "
               f"'spalstf-model' nor a {CHECKSUMS} written by spalstf that its files match")
        raise ValueError(
            f"{arg} {str(path)!r} exists and is not a spalstf model folder ({why}; expected "
            f"only {', '.join(_MODEL_FILES)} and {CHECKSUMS}, proven a model by a model.json "
            "of format 'spalstf-model' or by the checksums spalstf wrote); overwrite=True "
            "replaces only a model folder, so as not to delete other files: it is left as it "
            "is; remove it yourself or choose another path")


# --- leftovers of a save cut short ------------------------------------------------------------
# `save` writes the new model to ".<name>.new-<host>-<pid>-<random>" beside `path`; where the
# system cannot swap two folders in one step it also moves the old model to
# ".<name>.old-<host>-<pid>" for an instant (`spalstf._atomic.replace_folder`). A crash (kill -9,
# power cut) can leave either behind; the process named in them tells a leftover of a dead run
# from the folder of a running one.

def _owner_tag() -> str:
    """'<host>-<pid>' of this process (the host's name reduced to letters, digits and dots)."""
    return f"{re.sub(r'[^A-Za-z0-9.]', '_', socket.gethostname()) or 'host'}-{os.getpid()}"


def _owner_gone(tag: str) -> bool:
    """Whether the process `tag` ('<host>-<pid>', or '<pid>' as spalstf 0.x wrote) has ended:
    only a process of this machine can be known to have; this process has not."""
    host, _, pid = tag.rpartition("-")
    if not pid.isdigit() or host not in ("", _owner_tag().rpartition("-")[0]):
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError, ValueError):
        return False  # alive but another user's, or not a process id this system knows
    return False


def _leftovers(path: Path) -> list[tuple[str, Path]]:
    """("old" or "new", folder) of each leftover of a save of `path` by a process that has
    ended."""
    try:
        entries = list(path.parent.iterdir())
    except OSError:  # no such folder, or one that cannot be listed: nothing to recover
        return []
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(old|new)-(.+)")
    out = []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or not entry.is_dir() or entry.is_symlink():
            continue
        kind, tag = match.groups()
        if kind == "new":
            tag = tag.rpartition("-")[0]  # less mkdtemp's random part (it has no '-')
        if _owner_gone(tag):
            out.append((kind, entry))
    return out


def _recover(path: Path) -> bool:
    """Put back the old model of a replacement that a crash cut between its two renames (no
    folder at `path`, the old one beside it): whatever was at `path`, restored as it was.
    True when it did, with a warning naming both."""
    if os.path.lexists(path):
        return False
    old = [folder for kind, folder in _leftovers(path) if kind == "old"]
    if not old:
        return False
    latest = max(old, key=lambda folder: folder.stat().st_mtime)
    try:
        os.rename(latest, path)
    except OSError:
        return False  # another process restored or wrote it first
    logger.warning("%s was missing: a save that replaced it was cut short (the process ended "
                   "between its two renames); the previous model, kept as %s, is restored",
                   path, latest.name)
    return True


def _clean_leftovers(path: Path) -> None:
    """Remove the leftovers of ended saves of `path` now that a model is there: old models it
    replaced (the user asked for that with overwrite=True) and new ones never put in place."""
    if not path.is_dir():
        return
    for _, folder in _leftovers(path):
        shutil.rmtree(folder, ignore_errors=True)


def _verify_checksums(path: Path) -> bool:
    """Check every file listed in `CHECKSUMS` (a ValueError naming the file that differs);
    False when the folder has no `CHECKSUMS`."""
    sums_file = path / CHECKSUMS
    if not sums_file.is_file():
        return False
    listed: dict[str, str] = {}
    try:
        text = sums_file.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"`path` {str(path)!r}: {CHECKSUMS} cannot be read ({err}); the "
                         "folder may be damaged") from err
    for number, line in enumerate(text.splitlines(), 1):
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"`path` {str(path)!r}: line {number} of {CHECKSUMS} is not "
                             f"'<sha256>  <file>'; received {line[:80]!r}; the file is damaged")
        listed[name] = digest
    unlisted = [name for name in _MODEL_FILES if name not in listed]
    if unlisted:
        raise ValueError(f"`path` {str(path)!r}: {CHECKSUMS} lists no checksum for "
                         f"{unlisted}; the file is damaged or was edited")
    for name, digest in listed.items():
        if Path(name).name != name:
            raise ValueError(f"`path` {str(path)!r}: {CHECKSUMS} names {name!r}, which is not "
                             "a file of the folder")
        if not (path / name).is_file():
            raise ValueError(f"`path` {str(path)!r}: {name} is missing (listed in {CHECKSUMS})")
        if _sha256(path / name) != digest:
            raise ValueError(
                f"`path` {str(path)!r}: {name} does not match its checksum in {CHECKSUMS}: the "
                "file was edited, truncated or corrupted after the model was saved (a copy cut "
                "short, a disk error); it is refused rather than loaded with changed values: "
                "restore the folder from a good copy or fit the model again")
    return True


def load(path: str | os.PathLike, *, device: str = "auto") -> Model:
    """Load a model saved with `Model.save`.

    Parameters
    ----------
    path
        The model folder.
    device
        "auto" (CUDA when present, else CPU), "cpu" or "cuda".

    Returns
    -------
    The `spalstf.Model`. Raises ValueError, naming the file (and the field) at fault, when the
    folder is not a spalstf model, is truncated or corrupted, lacks a file or a field, holds a
    field of the wrong type or an array of the wrong shape or with NaN, or was written by an
    incompatible format version. Every file is checked against the checksums saved with it
    (`checksums.sha256`), so a changed byte is refused, never loaded as changed values. Folders
    saved before checksums (model formats 1 and 2) load unverified, as a log line says. Where
    `path` is missing because a save replacing it was cut short by a crash, the previous model
    left beside it is put back (with a warning) and loaded.
    """
    if isinstance(path, bool) or not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a folder path (str or os.PathLike); received "
                        f"{type(path).__name__}")
    path = Path(path)
    where = f"`path` {str(path)!r}"
    _recover(path)  # a replacement cut short by a crash: the model is put back first
    if not path.is_dir():
        raise ValueError(f"{where} is not a spalstf model folder (no such folder); expected a "
                         "folder written by Model.save")
    missing = [name for name in _MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise ValueError(f"{where} is not a spalstf model folder: {' and '.join(missing)} "
                         f"missing (expected {' and '.join(_MODEL_FILES)} inside)")
    verified = _verify_checksums(path)
    try:
        meta = json.loads((path / "model.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: model.json cannot be read ({type(err).__name__}: {err}); "
                         "the file may be truncated or corrupted") from err
    if not isinstance(meta, dict) or meta.get("format") != "spalstf-model":
        raise ValueError(f"{where}: model.json is not a spalstf model description")
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in _FORMATS_READ:
        raise ValueError(f"{where} holds model format {version!r} (model.json field "
                         f"'format_version'; written by spalstf "
                         f"{meta.get('spalstf_version')}); this spalstf "
                         f"({__version__}) reads format "
                         f"{', '.join(str(v) for v in _FORMATS_READ[:-1])} and "
                         f"{_FORMATS_READ[-1]}; refit the model or use a matching spalstf")
    if not verified:
        if version >= _FIRST_CHECKSUMMED:
            raise ValueError(f"{where}: {CHECKSUMS} is missing (model format {version} keeps "
                             "the checksums of its files there); the folder is incomplete: "
                             "restore it from a good copy or fit the model again")
        logger.info("%s: model format %d was saved before model folders kept checksums: its "
                    "files are loaded unverified; save it again to add them", path, version)
    _check_fields(meta, version, where)
    try:
        tensors = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decoding failure means a damaged file
        raise ValueError(f"{where}: weights.pt cannot be read ({type(err).__name__}: "
                         f"{str(err).strip()[:200]}); the file may be truncated or corrupted"
                         ) from err
    known, target = meta["known_genes"], meta["target_genes"]
    _check_tensors(tensors, len(known), len(target), where)
    if version >= 2:
        _check_prior_states(tensors, meta["prior"], len(known), len(target), where)
    dev = resolve_device(device)
    part = "config"
    try:
        config = Config.from_dict(meta["config"])
        part = "weights.pt: network (as model.json field 'config' builds it)"
        network = None
        if meta.get("network", True):
            network = build_network(len(known), len(target), config)
            prefix = "network."
            network.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                                     if k.startswith(prefix)})
        part = "stack"
        stack = None if meta.get("stack") is None else Stack.from_dict(meta["stack"])
        if stack is not None and version >= 2:
            # a column of a predictor the model does not keep would fail only at imputation
            kept = {*meta["prior"], *([NETWORK] if meta.get("network", True) else [])}
            strays = [c for c in stack.columns if c.split("|")[0] not in kept]
            if strays:
                raise ValueError(f"columns {strays} read predictors the model does not keep "
                                 f"(it keeps {sorted(kept)})")
        predictors = None  # format 1: rebuilt from the network's ridge and the atlas
        if version >= 2:
            unknown = [name for name in meta["prior"] if name not in PREDICTORS]
            if unknown:
                raise ValueError(f"it holds base predictors {unknown} that this spalstf does "
                                 f"not know (it knows {sorted(PREDICTORS)})")
            predictors = {}
            for name in meta["prior"]:
                part = f"weights.pt: prior.{name}"
                predictors[name] = PREDICTORS[name].from_state(
                    {k[len(name) + 7:]: v.numpy() for k, v in tensors.items()
                     if k.startswith(f"prior.{name}.")}, config)
        part = "weights.pt"
        if network is not None:
            network.to(dev).eval()
        atlas = tensors["atlas"].numpy() if "atlas" in tensors else None
        mixtures = tensors["mixtures"].numpy() if "mixtures" in tensors else None
        scalers = [Standardizer.from_state({k[len(name) + 1:]: v.numpy()
                                            for k, v in tensors.items()
                                            if k.startswith(name + ".")})
                   for name in ("known", "target")]
        return Model(network, config, known, target, *scalers, atlas, mixtures=mixtures,
                     predictors=predictors, output_names=meta["output_names"],
                     log_normalized=meta["log_normalized"], history=meta["history"],
                     info=meta.get("info") or {}, device=dev, stack=stack)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
        # Files whose parts do not fit together: edited, mixed from two models, or written by
        # an incompatible development version.
        field = part if part.startswith("weights.pt") else f"model.json field {part!r}"
        detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise ValueError(f"{where} is inconsistent in {field} ({type(err).__name__}: "
                         f"{detail[:300]}); it may be corrupted or come from an incompatible "
                         "spalstf version") from err


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


#: The fields of model.json: (what they must be, a test of it); "prior" from format 2 on.
_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "config": ("a JSON object of settings", lambda v: isinstance(v, dict)),
    "known_genes": ("a non-empty list of gene names", lambda v: _is_str_list(v) and v),
    "target_genes": ("a non-empty list of gene names", lambda v: _is_str_list(v) and v),
    "output_names": ("a list of gene names", _is_str_list),
    "log_normalized": ("true or false", lambda v: isinstance(v, bool)),
    "history": ("a list of per-epoch records",
                lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v)),
    # a model always keeps the ridge (`fit_model`): an empty list is a damaged file
    "prior": ("a non-empty list of base predictor names", lambda v: _is_str_list(v) and v),
}
#: Fields that may be absent (older formats), with what they must be when present.
_OPTIONAL_FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "info": ("a JSON object", lambda v: isinstance(v, dict)),
    "network": ("true or false", lambda v: isinstance(v, bool)),
    "stack": ("a JSON object or null", lambda v: v is None or isinstance(v, dict)),
}


def _check_fields(meta: dict, version: int, where: str) -> None:
    """A ValueError naming model.json's first missing or ill-typed field."""
    for name, (expected, valid) in _FIELDS.items():
        if name == "prior" and version < 2:
            continue
        if name not in meta:
            raise ValueError(f"{where}: model.json lacks the field {name!r} ({expected}); the "
                             "file is damaged or was edited")
        if not valid(meta[name]):
            raise ValueError(f"{where}: model.json field {name!r} must be {expected}; received "
                             f"{type(meta[name]).__name__} {str(meta[name])[:60]!r}")
    for name, (expected, valid) in _OPTIONAL_FIELDS.items():
        if name in meta and not valid(meta[name]):
            raise ValueError(f"{where}: model.json field {name!r} must be {expected}; received "
                             f"{type(meta[name]).__name__} {str(meta[name])[:60]!r}")
    if len(meta["output_names"]) != len(meta["target_genes"]):
        raise ValueError(f"{where}: model.json field 'output_names' must name each of the "
                         f"{len(meta['target_genes'])} target genes; received "
                         f"{len(meta['output_names'])} names")


def _check_tensors(tensors: Any, n_known: int, n_target: int, where: str) -> None:
    """A ValueError naming weights.pt's first entry that is not a finite tensor, or whose shape
    does not fit the genes of model.json (the scalers and the atlas; the network's shapes are
    checked as it loads)."""
    if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise ValueError(f"{where}: weights.pt is not a spalstf weights file (expected a dict "
                         "of named tensors)")
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"{where}: weights.pt entry {key!r} holds NaN or infinite "
                             "values; the file is damaged")
    expected = {f"{name}.{stat}": (n,) for name, n in (("known", n_known), ("target", n_target))
                for stat in ("mean", "std")}
    if "atlas" in tensors:
        expected["atlas"] = (tensors["atlas"].shape[0], n_known + n_target)
    for key, shape in expected.items():
        if key not in tensors:
            raise ValueError(f"{where}: weights.pt lacks the entry {key!r}; the file is damaged "
                             "or comes from another model")
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{where}: weights.pt entry {key!r} has shape "
                             f"{tuple(tensors[key].shape)}; model.json's genes need {shape}")


def _check_prior_states(tensors: dict[str, torch.Tensor], names: list[str], n_known: int,
                        n_target: int, where: str) -> None:
    """A ValueError naming weights.pt's first entry of a base predictor's state that is
    missing or whose shape does not fit the genes of model.json (each predictor's
    `check_state`): a hand-edited or mixed file would otherwise load and broadcast silently.
    Predictors this spalstf does not know are reported as `load` builds them."""
    for name in names:
        if name not in PREDICTORS:
            continue
        prefix = f"prior.{name}."
        state = {k[len(prefix):]: v.numpy() for k, v in tensors.items() if k.startswith(prefix)}
        try:
            PREDICTORS[name].check_state(state, n_known, n_target, prefix=prefix)
        except ValueError as err:
            raise ValueError(f"{where}: weights.pt {err}") from None


def _depth_share(cfg: Config) -> float:
    """The share of the value at the cell's depth in the output (`Config.depth_weight`)."""
    return 1.0 if cfg.output == "at_depth" else float(cfg.depth_weight)


def check_output(cfg: Config, log_normalized: bool) -> None:
    if cfg.output == "at_depth" and log_normalized:
        raise ValueError("`output='at_depth'` needs the ST's counts (each cell's depth); "
                         "received log-normalised input (log_normalized=True): use "
                         "output='expression'")
    if cfg.depth_weight > 0 and log_normalized:
        raise ValueError(f"`depth_weight` above 0 needs the ST's counts (each cell's depth); "
                         f"received {cfg.depth_weight!r} with log-normalised input "
                         "(log_normalized=True): use depth_weight=0")


def _remembering_last(read: Callable[[np.ndarray], np.ndarray]
                      ) -> Callable[[np.ndarray], np.ndarray]:
    """`read(rows)` that returns its last result again when asked for the same rows twice in a
    row, instead of computing it anew. Callers must not modify what it returns."""
    last: list = [None, None]

    def read_once(rows: np.ndarray) -> np.ndarray:
        if last[0] is None or not np.array_equal(last[0], rows):
            last[:] = [np.array(rows), read(rows)]
        return last[1]

    return read_once


def _contiguous(rows: Any) -> Any:
    """Sorted cell indices without gaps as a slice (a fast block read); others as given."""
    if isinstance(rows, np.ndarray) and len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def fit_model(expr: Expression, known: list[str], targets: list[str], out_names: list[str],
              cfg: Config, *, log_normalized: bool, seed: int, device: torch.device,
              progress: bool, saving: tuple = (None, 1, None)) -> Model:
    """Train a model on the reference `expr` (validated; genes under their reference names):
    `known` -> `targets`, reported as `out_names`, with `cfg`. `saving`: the checkpoint
    options (path, every, resume) as `spalstf.checkpoint.Checkpointer.check_options` gives
    them. The training (`spalstf.train`) fits the ridge prior; the other base predictors of
    the prior (`spalstf.prior`) are fitted here."""
    check_values(expr, log_normalized=log_normalized, arg="sc")
    start = time.perf_counter()
    rows = None
    if cfg.max_cells is not None and expr.n_cells > cfg.max_cells:
        rows = np.sort(np.random.default_rng([seed, 1]).choice(expr.n_cells, cfg.max_cells,
                                                                 replace=False))
        logger.log(phase_level(), "training on a random subsample of %d of the %d reference "
                   "cells (`max_cells`)", cfg.max_cells, expr.n_cells)
    factor = cell_factors(expr, known, scale_factor=cfg.scale_factor,
                          log_normalized=log_normalized, rows=rows, block=_BLOCK)
    known_rows = CellRows(expr, known, factor, rows=rows)
    target_rows = CellRows(expr, targets, factor, rows=rows)
    n = known_rows.shape[0]
    if 4 * n * (len(known) + len(targets)) <= DENSE_TRAINING_BYTES:
        known_log, target_log = known_rows.to_array(_BLOCK), target_rows.to_array(_BLOCK)
        known_scaler, target_scaler = Standardizer.fit(known_log), Standardizer.fit(target_log)
        known_z = known_scaler.transform(known_log)
        target_z = target_scaler.transform(target_log)
        del known_log, target_log
    else:  # large: mini-batches are read from the (sparse or backed) input as training goes
        known_scaler = Standardizer.fit_blocks(lambda: known_rows.blocks(_BLOCK))
        target_scaler = Standardizer.fit_blocks(lambda: target_rows.blocks(_BLOCK))
        known_z = known_rows.standardized(known_scaler)
        target_z = target_rows.standardized(target_scaler)
        logger.log(phase_level(), "reading mini-batches from the reference as training goes "
                   "(%.1f GiB dense)", 4 * n * (len(known) + len(targets)) / 2**30)
    rng = np.random.default_rng(seed)
    atlas_rows = np.arange(n) if n <= cfg.atlas_size else np.sort(
        rng.choice(n, cfg.atlas_size, replace=False))
    self_index = np.full(n, -1, dtype=np.int64)
    self_index[atlas_rows] = np.arange(len(atlas_rows))
    atlas = np.concatenate([known_z[atlas_rows], target_z[atlas_rows]], axis=1)
    # the known-gene count totals (scale_factor / factor) weigh cells in the prior's pseudo-spots
    depth = None if factor is None else np.divide(
        cfg.scale_factor, factor, out=np.zeros_like(factor), where=factor > 0)
    data = TrainingData(known_z, target_z, atlas, self_index=self_index,
                        scalers=(known_scaler, target_scaler), depth=depth)
    reference = Reference(known_z, target_z, scalers=data.scalers, depth=depth, atlas=atlas)
    logger.log(phase_level(), "fitting on %d reference cells: %d known genes -> %d target "
               "genes", n, len(known), len(targets))
    history: list[dict] = []
    info = {"n_reference_cells": expr.n_cells, "n_training_cells": n, "seed": seed}
    network = ridge = None
    if NETWORK in cfg.predictors:
        checkpointer = Checkpointer.create(*saving, meta={
            "seed": seed, "config": _plain(cfg.to_dict(), none_ok=True), "known_genes": known,
            "target_genes": targets, "data": data_fingerprint(known_z, target_z)})
        result = train(data, cfg, seed=seed, device=device, progress=progress,
                       checkpointer=checkpointer)
        network, ridge, history = result.network, result.ridge, result.history
        info.update({"epochs_trained": len(result.history), "best_epoch": result.best_epoch,
                     "stop_reason": result.stop_reason, "prior_alpha": result.prior_alpha})
        if checkpointer is not None and checkpointer.resume_state is not None:
            info["resumed_after_epoch"] = int(checkpointer.resume_state["epoch"])
    elif saving[0] is not None or saving[2] is not None:
        raise ValueError("`checkpoint` and `resume` checkpoint the network's training, and "
                         "`predictors` leaves the network out")
    if ridge is None:  # no network, or a network without the ridge prior: fitted here
        ridge = RidgePrior.from_config(cfg)
        ridge.fit(reference, seed=seed)
        info["prior_alpha"] = ridge.alpha_
    # the ridge first: the fixed blend's first part, as the network reads it
    predictors: dict[str, BasePredictor] = {ridge.name: ridge}
    for name in cfg.predictors:
        if name in (NETWORK, RidgePrior.name):
            continue
        if name == AlignedRidge.name:
            predictors[name] = AlignedRidge.of(ridge)
            continue
        predictor = build(name, cfg)
        predictor.fit(reference, seed=seed)
        predictors[name] = predictor
    if AlignedNeighbours.name not in predictors and cfg.combine == "blend" \
            and cfg.knn_weight > 0:  # the fixed blend reads it
        predictors[AlignedNeighbours.name] = build(AlignedNeighbours.name, cfg)
        predictors[AlignedNeighbours.name].fit(reference, seed=seed)
    info["timings"] = {"fit_seconds": time.perf_counter() - start}
    # how well the known genes predict each target in the reference (held-out cells): the
    # feature `spalstf.selfcheck` calibrates into an expected accuracy on the ST
    info["reference_pcc"] = [float(v) for v in selfcheck.reference_predictability(
        known_z, target_z, alpha=cfg.prior_alpha, seed=seed)]
    return Model(network, cfg, known, targets, known_scaler, target_scaler,
                 atlas if network is not None and needs_neighbours(cfg) else None,
                 predictors=predictors, output_names=out_names,
                 log_normalized=log_normalized, history=history, info=info, device=device)


def _plain(value: Any, none_ok: bool = False) -> Any:
    """A copy that .h5ad (no None) or JSON can store: tuples -> lists, None -> 'none'."""
    if isinstance(value, dict):
        return {str(k): _plain(v, none_ok) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, none_ok) for v in value]
    if value is None:
        return None if none_ok else "none"
    if isinstance(value, np.generic):
        return value.item()
    return value


def _shard_rows(shard: Any, n: int) -> tuple[int, int]:
    """The cells [first, last) of shard (i, n_shards): contiguous, sizes within one."""
    if shard is None:
        return 0, n
    if (not isinstance(shard, Sequence) or len(shard) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                       for v in shard) or not 0 <= shard[0] < shard[1]):
        raise ValueError(f"`shard` must be (i, n) with 0 <= i < n; received {shard!r}")
    i, count = int(shard[0]), int(shard[1])
    return n * i // count, n * (i + 1) // count


def _pack(expr: Expression, mean: np.ndarray | None, layers: Mapping[str, np.ndarray] | None,
          names: list[str], info: dict, rows: slice | None = None, *,
          spatial: Any = False) -> Any:
    """The result in the input's type; `rows` (a shard) keeps those cells' annotations.

    With `mean` None (results written to a file a chunk at a time), an AnnData without X
    carrying the annotations, whatever the input type. An AnnData result holds the
    coordinates `spatial` gives (as `Model.impute` reads them; False: none) in
    ``obsm["spatial"]`` when the input has none there.
    """
    import anndata

    rows = slice(None) if rows is None else rows
    if expr.kind == "anndata":
        src = expr.source
        obs = src.obs.iloc[rows].copy()
        obsm = {k: (v.iloc[rows].copy() if isinstance(v, pd.DataFrame) else v[rows].copy())
                for k, v in src.obsm.items()}
    else:
        obs = pd.DataFrame(index=pd.Index(expr.cells[rows], dtype=str))
        if expr.kind == "dataframe":
            obs.index = expr.source.index[rows].astype(str)
        obsm = {}
    if "spatial" not in obsm:
        # the coordinates the imputation read (obs columns, another obsm key, an array) where
        # scanpy, squidpy and `spalstf.pl` look for them: without them the result cannot be
        # drawn in space. An input's own obsm["spatial"] is kept as it is (copied above).
        xy = coordinates(expr.source, spatial, expr.n_cells, expr.named_cells)
        if xy is not None:
            obsm["spatial"] = xy[rows]
    var = pd.DataFrame(index=pd.Index(names, dtype=str))
    if mean is None or expr.kind == "anndata":
        out = anndata.AnnData(X=mean, obs=obs, var=var, obsm=obsm)
        for name, layer in (layers or {}).items():
            out.layers[name] = layer
        if info:
            out.uns["spalstf"] = _plain(info)
        # X is log1p-normalised (natural log): scanpy's marker, so that `sc.pp.log1p` on the
        # result warns instead of taking the log twice.
        out.uns["log1p"] = {"base": None}
        if expr.kind == "anndata" and "spatial" in expr.source.uns:
            # the tissue images and scale factors: `sc.pl.spatial` draws the result on them
            out.uns["spatial"] = copy.deepcopy(dict(expr.source.uns["spatial"]))
        return out
    if expr.kind == "dataframe":
        return pd.DataFrame(mean, index=expr.source.index[rows].copy(), columns=list(names))
    return mean


def _add_confidence(result: Any, confidence: dict | None) -> None:
    """var["expected_pcc"] and var["reference_pcc"] of an AnnData result (see
    `Model._gene_confidence`), in memory or the annotations of a streamed file alike."""
    if confidence is not None:
        for column in ("expected_pcc", "reference_pcc"):
            result.var[column] = np.asarray(confidence[column], np.float32)


def _predictors_of(network, config: Config, atlas: np.ndarray | None,
                   mixtures: np.ndarray | None, n_known: int) -> dict[str, BasePredictor]:
    """The base predictors of a model that keeps them in its network and atlas (format 1):
    the ridge the network was trained with, the aligned-neighbour estimate over the atlas."""
    if config.prior != "ridge":
        return {}
    out: dict[str, BasePredictor] = {RidgePrior.name: RidgePrior.from_state(
        {"weights": network.prior_weights.detach().cpu().numpy(),
         "bias": network.prior_bias.detach().cpu().numpy()}, config)}
    if atlas is not None:
        out[AlignedNeighbours.name] = AlignedNeighbours.from_config(
            config, atlas=atlas, mixtures=mixtures, n_known=n_known)
    return out


def _stored_once(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tensors, those with equal values made one object, so that `torch.save` writes
    them once (it keeps shared storage shared): a predictor's state may repeat the atlas or the
    network's ridge without growing the file."""
    seen: dict[tuple, list[torch.Tensor]] = {}
    out = {}
    for key, value in tensors.items():
        same = seen.setdefault((value.dtype, tuple(value.shape)), [])
        match = next((t for t in same if torch.equal(t, value)), None)
        if match is None:
            same.append(value)
        out[key] = value if match is None else match
    return out
