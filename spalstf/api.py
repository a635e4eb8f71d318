"""The public API: `impute`, `fit`, `Model` and `load`.

This layer faces the user's objects (AnnData, arrays, DataFrames) and does no maths: it
validates and aligns genes (`spalstf.data`), normalises (`spalstf.preprocess`), hands tensors
to the training loop (`spalstf.train`) and the sampler (`spalstf.infer`), and packs results in
the type the user gave. Inputs are never modified.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from spalstf import distributed, runtime, selfcheck
from spalstf._version import __version__
from spalstf.checkpoint import Checkpointer, data_fingerprint
from spalstf.config import Config
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
from spalstf.preprocess import Standardizer, depth_blend, expected_at_depth, log_normalize
from spalstf.spatial import (
    coordinates,
    expression_smoothed_reader,
    neighbours,
    smoothed_reader,
)
from spalstf.train import (
    ESTIMATE_MIXTURES_PER_SIZE,
    TrainingData,
    build_network,
    needs_neighbours,
    pseudo_spots,
    train,
)

logger = logging.getLogger(__name__)

#: Default cap on the number of genes imputed when `genes=None` (the most variable reference
#: genes that the ST lacks are kept).
MAX_DEFAULT_GENES = 1000
#: Cells normalised and read at once when preparing data.
_BLOCK = 8192
_FORMAT_VERSION = 1
#: The self-check runs by default ("auto") when the ST has at least this many known genes.
SELF_CHECK_MIN_GENES = 8
#: Config fields that may differ between fit and impute (they act at sampling time only).
INFERENCE_OPTIONS = ("spatial_weight", "spatial_neighbors", "expression_weight",
                     "expression_neighbors", "residual_weight", "knn_weight", "knn_neighbors",
                     "antithetic", "clip_denoised", "output", "depth_weight")
#: ST cells (evenly spaced) whose known genes give the z-scores of the aligned-neighbour estimate.
KNN_STAT_CELLS = 50000
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


def _options(config: Config | None, **options: Any) -> Config:
    """The config with every option that is not None applied (and validated)."""
    base = config if config is not None else Config()
    if not isinstance(base, Config):
        raise TypeError(f"`config` must be a spalstf.Config; received {type(base).__name__}")
    return base.replace(**{k: v for k, v in options.items() if v is not None})


class Model:
    """A trained SpaLSTF model: known genes in, target genes out.

    Created by `spalstf.fit` or `spalstf.load`; impute with `Model.impute`, save with
    `Model.save`.

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
        One dict per training epoch (loss components, validation loss).
    """

    def __init__(self, network, config: Config, known_genes: list[str], target_genes: list[str],
                 known_scaler: Standardizer, target_scaler: Standardizer,
                 atlas: np.ndarray | None, *, mixtures: np.ndarray | None = None,
                 output_names: list[str] | None = None,
                 log_normalized: bool = False, history: list[dict] | None = None,
                 info: dict | None = None, device: torch.device | None = None) -> None:
        self.network = network
        self.config = config
        self.known_genes = list(known_genes)
        self.target_genes = list(target_genes)
        self.output_names = list(output_names or target_genes)
        self.known_scaler = known_scaler
        self.target_scaler = target_scaler
        self.atlas = atlas
        #: pseudo-spots (known + target genes, model space) the aligned-neighbour estimate
        #: reads beside the atlas (`Config.prior_mixtures`); None for models without them
        self.mixtures = mixtures
        self.log_normalized = log_normalized
        self.history = history or []
        self.info = info or {}
        self.device = device or torch.device("cpu")
        self.diffusion = GaussianDiffusion(config.num_train_timesteps, config.beta_schedule,
                                           learn_sigma=config.vlb_weight > 0)

    def __repr__(self) -> str:
        return (f"spalstf.Model({len(self.known_genes)} known genes -> "
                f"{len(self.target_genes)} target genes, trained {len(self.history)} epochs)")

    # --- imputation -------------------------------------------------------------------------
    def impute(self, st: Any, *, st_genes: Sequence[str] | None = None,
               st_layer: str | None = None, log_normalized: bool | None = None,
               n_steps: int | None = None, n_samples: int | None = None,
               sampler: str | None = None, eta: float | None = None, seed: int = 0,
               batch_size: int | None = None, device: str | None = None,
               spatial: Any = None, progress: bool = True, out: str | os.PathLike | None = None,
               overwrite: bool = False, shard: tuple[int, int] | None = None,
               **options: Any) -> Any:
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
        n_steps, n_samples, sampler, eta
            Sampling options (default: the model's config; unless set at fit, 5 DDIM steps
            and 4 samples).
        seed
            Seeds each cell's random draws together with its name.
        batch_size
            Cells per chunk (memory), not a modelling choice: results do not depend on it.
            Default: the model's batch size on CPU, sized to the free memory on a GPU.
        device
            "auto", "cpu", "cuda": where to sample (default: where the model is).
        spatial
            Coordinates of the cells for the spatial context (`Config.spatial_weight`):
            None reads `st.obsm["spatial"]` when present, a string another obsm key, an array
            (cells x 2 or 3) gives them, False turns the spatial context off.
        progress
            Show a progress bar.
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
        **options
            Inference settings of `spalstf.Config` (`spatial_weight`, `spatial_neighbors`,
            `expression_weight`, `expression_neighbors`, `residual_weight`, `knn_weight`,
            `knn_neighbors`, `antithetic`, `clip_denoised`, `output`, `depth_weight`).

        Returns
        -------
        For AnnData: a new AnnData, cells as in `st` (obs, obsm copied), genes = `output_names`,
        `X` float32 log1p-normalised imputations, `layers["std"]` the standard deviation over
        samples (when n_samples > 1) and `uns["spalstf"]` the provenance. For a DataFrame: a
        DataFrame; for a numpy or scipy matrix: a numpy array (cells x target genes). With
        `out`: the path of the .h5ad written (the same AnnData, on disk).
        """
        if log_normalized is not None:
            log_normalized = _check_flag(log_normalized, "log_normalized")
        progress = _check_flag(progress, "progress")
        expr = as_expression(st, genes=st_genes, layer=st_layer, arg="st", genes_arg="st_genes")
        bad = sorted(set(options) - set(INFERENCE_OPTIONS))
        if bad:
            raise TypeError(f"Model.impute() got option(s) {bad} that are fixed at fit; "
                            f"it accepts {sorted(INFERENCE_OPTIONS)}")
        return self._impute_expression(expr, log_normalized=log_normalized, n_steps=n_steps,
                                       n_samples=n_samples, sampler=sampler, eta=eta, seed=seed,
                                       batch_size=batch_size, device=device, spatial=spatial,
                                       progress=progress, out=out, overwrite=overwrite,
                                       shard=shard, **options)

    def _impute_expression(self, expr: Expression, *, log_normalized, n_steps, n_samples,
                           sampler, eta, seed, batch_size, device, progress, spatial=None,
                           out=None, overwrite=False, shard=None,
                           self_check: dict | None = None, **options) -> Any:
        cfg = _options(self.config, n_steps=n_steps, n_samples=n_samples, sampler=sampler,
                       eta=eta, batch_size=batch_size, **options)
        seed = _check_seed(seed)
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
        with_std = cfg.diffusion and cfg.n_samples > 1
        writer = sink = None
        if out is not None:
            from spalstf.io import H5adWriter

            head = _pack(expr, None, None, self.output_names, {}, rows=slice(first, last))
            writer = H5adWriter(out, head, layers=["std"] if with_std else [],
                                overwrite=overwrite)

            def sink(rows, mean, std):
                writer.write(rows, mean, {} if std is None else {"std": std})
        try:
            mean, std = self._predict(expr, cfg, log_normalized=log_norm, seed=seed, device=dev,
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
            "timings": {**self.info.get("timings", {}), "impute_seconds": seconds},
            "training": {k: v for k, v in self.info.items()
                         if k not in ("timings", "reference_pcc")},
        }
        if self_check is not None:
            info["self_check"] = self_check
            if self_check.get("calibration") and "reference_pcc" in self.info:
                # Per-gene confidence: each target's predictability in the reference, mapped
                # to an expected PCC on this ST by the self-check's calibration.
                info["gene_confidence"] = {
                    "genes": list(self.output_names),
                    "reference_pcc": list(self.info["reference_pcc"]),
                    "expected_pcc": [float(v) for v in selfcheck.expected_pcc(
                        self_check["calibration"], self.info["reference_pcc"])]}
        if shard is not None:
            info["shard"] = {"index": int(shard[0]), "count": int(shard[1]), "start": first,
                             "stop": last, "n_obs_total": expr.n_cells}
        if writer is not None:
            writer.write_uns({"spalstf": _plain(info)})
            return writer.close()
        if shard is not None:
            return _pack(expr, mean, std, self.output_names, info, rows=slice(first, last))
        result = _pack(expr, mean, std, self.output_names, info)
        if "gene_confidence" in info and expr.kind == "anndata":
            for column in ("expected_pcc", "reference_pcc"):
                result.var[column] = np.asarray(info["gene_confidence"][column], np.float32)
        return result

    def _predict(self, expr: Expression, cfg: Config, *, log_normalized: bool, seed: int,
                 device: torch.device, spatial: Any, progress: bool,
                 residual_weights: Sequence[float] | None = None,
                 rows: tuple[int, int] | np.ndarray | None = None, sink=None,
                 prior_only: bool = False):
        """(mean, std) of the target genes on the output scale for the cells `rows` of
        `expr`: all by default, (first, stop) for a shard, or a sorted array of cell indices
        (a subsample); see `infer.impute_cells`."""
        if rows is None:
            rows = (0, expr.n_cells)
        cells = np.arange(*rows) if isinstance(rows, tuple) else np.asarray(rows)
        self.network.to(device)
        mapping = match_genes(self.known_genes, expr.genes)
        missing = [g for g in self.known_genes if g not in mapping]
        if missing:
            raise ValueError(
                f"`st` lacks {len(missing)} of the model's {len(self.known_genes)} known genes, "
                f"for example {missing[:5]} (`st` has for example {expr.genes[:5]}); impute "
                "data measured on the same genes or fit a new model on the genes this data has")
        st_known = [mapping[g] for g in self.known_genes]
        check_values(expr, log_normalized=log_normalized, arg="st")
        _check_output(cfg, log_normalized)

        def normalised(rows) -> np.ndarray:
            return log_normalize(expr.columns(st_known, _contiguous(rows)),
                                 scale_factor=cfg.scale_factor, log_normalized=log_normalized)[0]

        scaler = self.known_scaler
        if cfg.align == "per_dataset":  # statistics of the whole data set, also for a shard
            scaler = Standardizer.fit_blocks(lambda: (
                (None, normalised(slice(s, s + _BLOCK))) for s in range(0, expr.n_cells, _BLOCK)))

        read_log = normalised
        xy = coordinates(expr.source, spatial, expr.n_cells) if cfg.spatial_weight else None
        if xy is not None:
            read_log = smoothed_reader(normalised, neighbours(xy, cfg.spatial_neighbors),
                                       cfg.spatial_weight)
        # neighbours in known-gene space, found on the cells' own values, among all ST cells
        # (not only `cells`), so a shard or subsample reads what the whole run reads
        read_log = expression_smoothed_reader(normalised, read_log, expr.n_cells,
                                              cfg.expression_neighbors, cfg.expression_weight,
                                              device)
        # read_known and read_knn ask for each chunk in turn: smooth it (a neighbour search
        # and reads of its neighbours' rows) once
        read_log = _remembering_last(read_log)

        read_knn = None
        if cfg.knn_weight > 0 and cfg.prior == "ridge":
            if self.atlas is None:
                logger.warning("this model keeps no reference atlas: `knn_weight` is ignored")
            else:  # z-scored over the whole data set (as SpaGE), also for a shard or subsample;
                # statistics from at most KNN_STAT_CELLS evenly spaced cells bound the cost,
                # read a chunk at a time so that memory stays bounded by the chunk
                spaced = np.unique(np.linspace(0, expr.n_cells - 1,
                                               min(expr.n_cells, KNN_STAT_CELLS)).astype(int))
                step = cfg.batch_size
                st_scaler = Standardizer.fit_blocks(lambda: (
                    (None, read_log(spaced[s:s + step])) for s in range(0, len(spaced), step)))

                def read_knn(chunk: slice) -> np.ndarray:
                    return st_scaler.transform(read_log(cells[chunk]))

        def to_output(samples: np.ndarray, chunk: slice) -> np.ndarray:
            values = self.target_scaler.inverse(samples).astype(np.float32)
            share = _depth_share(cfg)
            if share > 0:  # the cells' own known-gene totals, in counts
                depth = expr.columns(st_known, _contiguous(cells[chunk])).sum(axis=1)
                at_depth = expected_at_depth(values, np.asarray(depth).ravel(),
                                             scale_factor=cfg.scale_factor)
                values = depth_blend(values, at_depth, share)
            return values

        def read_known(chunk: slice) -> np.ndarray:  # a chunk of `cells` -> rows of `expr`
            return scaler.transform(read_log(cells[chunk]))

        ts = self.target_scaler
        clip = (ts.low, ts.high) if cfg.clip_denoised and ts.low is not None else None
        return impute_cells(
            self.network, self.diffusion, cfg, len(cells), read_known,
            [expr.cells[i] for i in cells], to_output, atlas=self.atlas, mixtures=self.mixtures,
            clip=clip, seed=seed,
            device=device, progress=progress, sink=sink, residual_weights=residual_weights,
            prior_only=prior_only, read_knn=read_knn)

    # --- self-check -------------------------------------------------------------------------
    def self_check(self, st: Any, sc: Any, *, n_folds: int = 2,
                   select: Mapping[str, Sequence] | None = None, seed: int = 0,
                   st_genes: Sequence[str] | None = None, sc_genes: Sequence[str] | None = None,
                   st_layer: str | None = None, sc_layer: str | None = None,
                   spatial: Any = None, device: str | None = None,
                   progress: bool = True) -> selfcheck.SelfCheckResult:
        """How accurate this model's settings are likely to be on `st`: hide groups of the
        model's known genes in turn, fit with the model's settings on the reference `sc`,
        impute them in `st`, and score them against their measured values
        (`spalstf.selfcheck`). The model itself is not changed; the reference is needed
        because a model keeps no reference counts. Target genes are never read.

        Returns a `spalstf.selfcheck.SelfCheckResult` (`median_pcc`, `median_spcc`,
        `per_gene`, `scores`, `selected` when `select` is given, `calibration`).
        """
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
        check = _run_self_check(
            st_expr, sc_expr, [(in_st[g], in_sc[g]) for g in self.known_genes], self.config,
            self_check=True, select=select, n_folds=n_folds, seed=_check_seed(seed),
            log_normalized=self.log_normalized, device=dev, spatial=spatial,
            progress=_check_flag(progress, "progress"))
        return check

    # --- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the model to the directory `path` (atomically: a temporary folder, renamed).

        Parameters
        ----------
        path
            Folder to create.
        overwrite
            Replace an existing folder.

        The folder holds `model.json` (format, versions, config, genes, training history) and
        `weights.pt` (network weights, normalisation statistics, the context atlas).
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"`path` {str(path)!r} exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "spalstf-model", "format_version": _FORMAT_VERSION,
            "spalstf_version": __version__, "torch_version": torch.__version__,
            "config": _plain(self.config.to_dict(), none_ok=True),
            "known_genes": self.known_genes, "target_genes": self.target_genes,
            "output_names": self.output_names, "log_normalized": self.log_normalized,
            "history": self.history, "info": _plain(self.info, none_ok=True),
        }
        tensors = {f"network.{k}": v.detach().cpu() for k, v in self.network.state_dict().items()}
        for name, scaler in (("known", self.known_scaler), ("target", self.target_scaler)):
            tensors.update({f"{name}.{k}": torch.as_tensor(v) for k, v in scaler.state().items()})
        if self.atlas is not None:
            tensors["atlas"] = torch.as_tensor(self.atlas)
        if self.mixtures is not None:
            tensors["mixtures"] = torch.as_tensor(self.mixtures)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            torch.save(tensors, tmp / "weights.pt")
            (tmp / "model.json").write_text(json.dumps(meta, indent=1))
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        logger.info("saved model to %s", path)
        return path


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
    The `spalstf.Model`. Raises ValueError when the folder is not a spalstf model, is truncated
    or corrupted, or was written by an incompatible format version.
    """
    path = Path(path)
    meta_file, weights_file = path / "model.json", path / "weights.pt"
    if not meta_file.is_file() or not weights_file.is_file():
        raise ValueError(f"`path` {str(path)!r} is not a spalstf model folder (expected "
                         "model.json and weights.pt inside)")
    try:
        meta = json.loads(meta_file.read_text())
        tensors = torch.load(weights_file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decoding failure means a damaged file
        raise ValueError(f"the model in {str(path)!r} cannot be read ({type(err).__name__}: "
                         f"{err}); the file may be truncated or corrupted") from err
    if not isinstance(meta, dict) or meta.get("format") != "spalstf-model":
        raise ValueError(f"`path` {str(path)!r}: model.json is not a spalstf model description")
    if meta.get("format_version") != _FORMAT_VERSION:
        raise ValueError(f"`path` {str(path)!r} holds model format "
                         f"{meta.get('format_version')!r} (written by spalstf "
                         f"{meta.get('spalstf_version')}); this spalstf ({__version__}) reads "
                         f"format {_FORMAT_VERSION}; refit the model or use a matching spalstf")
    dev = resolve_device(device)
    try:
        config = Config.from_dict(meta["config"])
        network = build_network(len(meta["known_genes"]), len(meta["target_genes"]), config)
        prefix = "network."
        network.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()
                                 if k.startswith(prefix)})
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        # A valid file whose parts do not fit together: edited, mixed from two models, or
        # written by an incompatible development version.
        raise ValueError(f"the model in {str(path)!r} is inconsistent ({type(err).__name__}: "
                         f"{str(err).strip().splitlines()[0][:200]}); it may be corrupted or "
                         "come from an incompatible spalstf version") from err
    network.to(dev).eval()
    atlas = tensors["atlas"].numpy() if "atlas" in tensors else None
    mixtures = tensors["mixtures"].numpy() if "mixtures" in tensors else None
    scalers = [Standardizer.from_state({k[len(name) + 1:]: v.numpy() for k, v in tensors.items()
                                        if k.startswith(name + ".")})
               for name in ("known", "target")]
    return Model(network, config, meta["known_genes"], meta["target_genes"], *scalers, atlas,
                 mixtures=mixtures, output_names=meta["output_names"],
                 log_normalized=meta["log_normalized"],
                 history=meta["history"], info=meta.get("info", {}), device=dev)


# --- fitting ---------------------------------------------------------------------------------
def fit(sc: Any, known_genes: Sequence[str], target_genes: Sequence[str], *,
        sc_genes: Sequence[str] | None = None, sc_layer: str | None = None,
        log_normalized: bool = False, seed: int = 0, device: str = "auto",
        epochs: int | None = None, max_steps: int | None = None,
        max_time: float | None = None, batch_size: int | None = None,
        n_steps: int | None = None, n_samples: int | None = None, progress: bool = True,
        checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 5,
        resume: str | os.PathLike | None = None, config: Config | None = None,
        **options: Any) -> Model:
    """Train SpaLSTF on a scRNA-seq reference.

    Parameters
    ----------
    sc
        Reference cells x genes (AnnData, numpy, scipy sparse or DataFrame), raw counts unless
        `log_normalized`.
    known_genes
        Genes the ST data will provide (the condition). Each must be in `sc`.
    target_genes
        Genes to predict. Genes missing from `sc` are dropped with a warning; known genes listed
        here too become targets.
    sc_genes, sc_layer
        Gene names of a bare matrix; AnnData layer to read instead of X.
    log_normalized
        The reference (and later the ST) already hold log-normalised values.
    seed
        Seed of initialisation, batching and noise: the same seed gives the same model on CPU.
    device
        "auto" (CUDA when present, else CPU), "cpu" or "cuda". Launched by ``torchrun``, each
        process trains on a share of every mini-batch (DistributedDataParallel, see
        `spalstf.distributed`) and takes the GPU of its LOCAL_RANK.
    epochs, max_steps, max_time, batch_size
        Training length (default 60 epochs, at most 300 updates, early stopping after 10
        epochs without improvement on 10% held-out reference cells; `max_time` seconds, none
        by default, also caps it, at the cost of reproducibility: where it stops training the
        model depends on the machine's speed) and mini-batch size (256).
        Large references (sparse, or AnnData opened backed) are read a mini-batch at a time,
        never densified whole; ``max_cells=N`` trains on a seeded random subsample.
    n_steps, n_samples
        Default sampling options stored in the model (5 DDIM steps, 4 samples).
    spatial
        Coordinates of the ST cells for the spatial context: None reads
        `st.obsm["spatial"]` when present, a string another obsm key, an array gives them,
        False turns the spatial context off.
    progress
        Show progress bars.
    checkpoint, checkpoint_every
        A file to write the whole training state to every `checkpoint_every` epochs and when
        training ends (atomically: an interrupted write leaves the previous checkpoint). An
        existing file is refused unless it is also `resume`.
    resume
        A checkpoint to continue from. With the same data, genes, seed and options (only
        `epochs`, `max_steps`, `max_time`, `patience` and sampling options may change) the
        result is the model an uninterrupted fit would have given; otherwise a ValueError
        names what differs. `max_steps` counts the updates made before the checkpoint.
        `max_time` counts the seconds spent before the checkpoint.
    config, **options
        A `spalstf.Config` and/or any of its fields as keywords (e.g. ``depth=2``).

    Returns
    -------
    A trained `spalstf.Model`. Ctrl-C (KeyboardInterrupt) during training returns the model
    with the best weights so far (it re-raises when no epoch had ended). A non-finite loss
    raises FloatingPointError naming the epoch and step.
    """
    cfg = _options(config, epochs=epochs, max_steps=max_steps, max_time=max_time,
                   batch_size=batch_size, n_steps=n_steps, n_samples=n_samples, **options)
    seed, dev = _check_seed(seed), _training_device(device)
    log_normalized = _check_flag(log_normalized, "log_normalized")
    progress = _check_flag(progress, "progress")
    saving = Checkpointer.check_options(checkpoint, checkpoint_every, resume)
    expr = as_expression(sc, genes=sc_genes, layer=sc_layer, arg="sc", genes_arg="sc_genes")
    known_ref, target_ref, out_names = _resolve_fit_genes(expr, known_genes, target_genes)
    return _fit_expression(expr, known_ref, target_ref, out_names, cfg,
                           log_normalized=log_normalized, seed=seed, device=dev,
                           progress=progress, saving=saving)


def _check_flag(value: Any, arg: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{arg}` must be True or False; received {value!r}")
    return bool(value)


def _training_device(device: str) -> torch.device:
    """The device of this process; joins torchrun's process group when launched by it."""
    dev = distributed.setup(resolve_device(device))
    if dev.type == "cpu":
        runtime.use_all_cores()
    return dev


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer; received {seed!r}")
    return int(seed)


def _gene_list(genes: Any, arg: str) -> list[str]:
    if isinstance(genes, str):
        genes = [genes]
    if genes is None or not isinstance(genes, Sequence | np.ndarray | pd.Index | pd.Series):
        raise TypeError(f"`{arg}` must be a list of gene names; received {type(genes).__name__}")
    if len(genes) == 0:
        raise ValueError(f"`{arg}` is empty; expected at least one gene name")
    out = [str(g) for g in genes]
    dups = sorted({g for g in out if out.count(g) > 1})
    if dups:
        raise ValueError(f"`{arg}` lists genes more than once, for example {dups[:5]}")
    return out


def _resolve_fit_genes(expr: Expression, known_genes, target_genes,
                       target_arg: str = "target_genes"):
    known = _gene_list(known_genes, "known_genes")
    targets = _gene_list(target_genes, target_arg)
    kmap = match_genes(known, expr.genes)
    missing = [g for g in known if g not in kmap]
    if missing:
        raise ValueError(f"{len(missing)} of `known_genes` are not in `sc`, for example "
                         f"{missing[:10]}")
    target_map = match_genes(targets, expr.genes)
    dropped = [g for g in targets if g not in target_map]
    if dropped:
        logger.warning("%d requested genes are not in the reference and are dropped, for "
                       "example %s", len(dropped), dropped[:10])
    kept = [g for g in targets if g in target_map]
    if not kept:
        raise ValueError(f"none of `{target_arg}` is in `sc` (for example {targets[:5]}; "
                         f"`sc` has for example {expr.genes[:5]})")
    target_ref = [target_map[g] for g in kept]
    known_ref = [kmap[g] for g in known if kmap[g] not in set(target_ref)]
    if not known_ref:
        raise ValueError("no known genes are left once the target genes are removed; the model "
                         "needs at least one gene measured in both data sets")
    return known_ref, target_ref, kept


def _depth_share(cfg: Config) -> float:
    """The share of the value at the cell's depth in the output (`Config.depth_weight`)."""
    return 1.0 if cfg.output == "at_depth" else float(cfg.depth_weight)


def _check_output(cfg: Config, log_normalized: bool) -> None:
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


def _fit_expression(expr: Expression, known: list[str], targets: list[str], out_names: list[str],
                    cfg: Config, *, log_normalized: bool, seed: int, device: torch.device,
                    progress: bool, saving: tuple = (None, 1, None)) -> Model:
    check_values(expr, log_normalized=log_normalized, arg="sc")
    start = time.perf_counter()
    rows = None
    if cfg.max_cells is not None and expr.n_cells > cfg.max_cells:
        rows = np.sort(np.random.default_rng([seed, 1]).choice(expr.n_cells, cfg.max_cells,
                                                                 replace=False))
        logger.info("training on a random subsample of %d of the %d reference cells "
                    "(`max_cells`)", cfg.max_cells, expr.n_cells)
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
        logger.info("reading mini-batches from the reference as training goes (%.1f GiB "
                    "dense)", 4 * n * (len(known) + len(targets)) / 2**30)
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
    mixtures = None
    if cfg.prior == "ridge" and cfg.prior_mixtures:
        # pseudo-spots for the aligned-neighbour estimate, beside the atlas (not in the
        # context's: the BiLSTM reads reference cells)
        mixtures = np.concatenate([np.concatenate(block, axis=1).astype(np.float32)
                                   for block in pseudo_spots(data, np.arange(n), seed=seed + 1,
                                                             per_size=ESTIMATE_MIXTURES_PER_SIZE)])
    logger.info("fitting on %d reference cells: %d known genes -> %d target genes", n,
                len(known), len(targets))
    checkpointer = Checkpointer.create(*saving, meta={
        "seed": seed, "config": _plain(cfg.to_dict(), none_ok=True), "known_genes": known,
        "target_genes": targets, "data": data_fingerprint(known_z, target_z)})
    result = train(data, cfg, seed=seed, device=device, progress=progress,
                   checkpointer=checkpointer)
    info = {"timings": {"fit_seconds": time.perf_counter() - start},
            "epochs_trained": len(result.history), "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason, "n_reference_cells": expr.n_cells,
            "n_training_cells": n, "seed": seed, "prior_alpha": result.prior_alpha,
            # how well the known genes predict each target in the reference (held-out cells):
            # the feature `spalstf.selfcheck` calibrates into an expected accuracy on the ST
            "reference_pcc": [float(v) for v in selfcheck.reference_predictability(
                known_z, target_z, alpha=cfg.prior_alpha, seed=seed)]}
    if checkpointer is not None and checkpointer.resume_state is not None:
        info["resumed_after_epoch"] = int(checkpointer.resume_state["epoch"])
    # With the ridge prior the atlas is kept even at knn_weight 0: the aligned-neighbour
    # estimate reads it, and its weight is a sampling-time option (chosen by the self-check or
    # set at `Model.impute`).
    keep_atlas = needs_neighbours(cfg) or cfg.prior == "ridge"
    return Model(result.network, cfg, known, targets, known_scaler, target_scaler,
                 atlas if keep_atlas else None, mixtures=mixtures, output_names=out_names,
                 log_normalized=log_normalized, history=result.history, info=info,
                 device=device)


# --- one call --------------------------------------------------------------------------------
def impute(st: Any, sc: Any, genes: Sequence[str] | None = None, *,
           st_genes: Sequence[str] | None = None, sc_genes: Sequence[str] | None = None,
           st_layer: str | None = None, sc_layer: str | None = None,
           log_normalized: bool = False, max_genes: int = MAX_DEFAULT_GENES, seed: int = 0,
           device: str = "auto", epochs: int | None = None, max_steps: int | None = None,
           max_time: float | None = None, batch_size: int | None = None,
           n_steps: int | None = None, n_samples: int | None = None, spatial: Any = None,
           progress: bool = True,
           checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 5,
           resume: str | os.PathLike | None = None, self_check: bool | str = "auto",
           select: Mapping[str, Sequence] | str | None = "auto", self_check_folds: int = 2,
           config: Config | None = None, out: str | os.PathLike | None = None,
           overwrite: bool = False, **options: Any) -> Any:
    """Fit SpaLSTF on the reference `sc` and impute `genes` in the spatial data `st`.

    Parameters
    ----------
    st
        Spatial cells or spots x genes: AnnData (X or `st_layer`), numpy array, scipy sparse
        matrix (CSR/CSC) or DataFrame. Raw counts unless `log_normalized`.
    sc
        Reference cells x genes, same types and scale as `st`.
    genes
        Genes to impute (reference names, matched exactly, then ignoring case). Genes missing
        from the reference are dropped with a warning. A requested gene that `st` measures is
        predicted from the other genes, as if hidden (its measured values are not used): this is
        how leave-genes-out evaluation works. Default (None): the reference genes that `st`
        lacks, the `max_genes` most variable of them (log-normalised, in the reference) when
        there are more, so that the default fits in memory on large references.
    st_genes, sc_genes
        Gene names of bare matrices (numpy / scipy); AnnData and DataFrames carry their own.
    st_layer, sc_layer
        AnnData layers to read instead of X.
    log_normalized
        Both inputs already hold log-normalised values (then they are used as given).
    max_genes
        Cap for the default gene list (genes=None).
    seed
        Seeds training and each cell's sampling: the same seed gives the same output on CPU.
    device
        "auto" (CUDA when present, else CPU), "cpu" or "cuda".
    epochs, max_steps, max_time, batch_size
        Training length (60 epochs, at most 300 updates, early stopping; an optional
        `max_time` in seconds, which makes the result depend on the machine's speed where it
        stops training) and mini-batch size (256).
    n_steps, n_samples
        Reverse-diffusion steps (5, DDIM) and samples per cell (4): the mean is the imputation,
        the standard deviation its uncertainty.
    spatial
        Coordinates of the ST cells for the spatial context: None reads
        `st.obsm["spatial"]` when present, a string another obsm key, an array gives them,
        False turns the spatial context off.
    progress
        Show progress bars.
    checkpoint, checkpoint_every, resume
        Training checkpoints, as in `spalstf.fit`.
    self_check
        Estimate the accuracy on this data (`spalstf.selfcheck`): hide groups of the ST's
        known genes in turn (`self_check_folds` groups), impute them from the others with the
        same settings, and score them against their measured values. Recorded in
        `uns["spalstf"]["self_check"]` and the log. "auto" (default): run when the ST has at
        least `SELF_CHECK_MIN_GENES` known genes. Its fits share one main fit's time budget.
    select
        Candidate settings the self-check chooses among, {option: [values]}, from
        `spalstf.selfcheck.SELECTABLE` (sampling-time options, tried on the same inner fits).
        "auto" (default): `spalstf.selfcheck.DEFAULT_SELECT` (the spatial context's weight,
        where `st` has coordinates, the aligned-neighbour estimate's weight in the prior, the
        output, "expression" or "at_depth", for counts input (`Config.output`), and the weight
        of the diffusion's refinement), less any of them you set yourself (as a keyword, or in
        `config` where it differs from the default); None: use the settings as given.
    self_check_folds
        Number of inner groups of known genes hidden in turn.
    config, **options
        A `spalstf.Config` and/or any of its fields as keywords.
    out, overwrite
        Write the result to this .h5ad a chunk of cells at a time (memory does not grow with
        the number of ST cells) and return its path; replace an existing file.

    Returns
    -------
    AnnData `st`: a new AnnData with `st`'s obs_names (same order) and obs/obsm copied,
    var_names = the imputed genes in the requested order, `X` float32 log1p-normalised
    imputations (log1p(count / total of the known genes * 1e4); with `output="at_depth"`
    its expected value at each cell's depth, see `Config.output`), `layers["std"]` the standard
    deviation over samples (n_samples > 1), `uns["spalstf"]` the version, parameters, seed, known
    genes, targets and timings. With a self-check: `uns["spalstf"]["self_check"]` (median and
    per-gene PCC/SPCC of the hidden known genes, the settings chosen, every candidate's score,
    the calibration) and, per imputed gene, `var["expected_pcc"]`: the gene's predictability
    in the reference (`var["reference_pcc"]`) mapped to an expected PCC on this ST by the
    line fitted over the self-check's genes (trust it as far as `calibration["r"]` says).
    numpy / scipy `st`: a numpy array (cells x genes). DataFrame `st`: a DataFrame (index of
    `st`, imputed genes as columns).
    """
    cfg = _options(config, epochs=epochs, max_steps=max_steps, max_time=max_time,
                   batch_size=batch_size, n_steps=n_steps, n_samples=n_samples, **options)
    if isinstance(max_genes, bool) or not isinstance(max_genes, (int, np.integer)) \
            or max_genes < 1:
        raise ValueError(f"`max_genes` must be a positive integer; received {max_genes!r}")
    dev, seed = _training_device(device), _check_seed(seed)
    log_normalized = _check_flag(log_normalized, "log_normalized")
    progress = _check_flag(progress, "progress")
    saving = Checkpointer.check_options(checkpoint, checkpoint_every, resume)
    st_expr = as_expression(st, genes=st_genes, layer=st_layer, arg="st", genes_arg="st_genes")
    sc_expr = as_expression(sc, genes=sc_genes, layer=sc_layer, arg="sc", genes_arg="sc_genes")
    shared = match_genes(st_expr.genes, sc_expr.genes)  # st name -> reference name
    if not shared:
        raise ValueError(
            "`st` and `sc` share no genes (compared exactly and ignoring case): `st` has for "
            f"example {st_expr.genes[:5]}, `sc` has for example {sc_expr.genes[:5]}")
    shared_ref = set(shared.values())
    if genes is None:
        lacking = [g for g in sc_expr.genes if g not in shared_ref]
        if not lacking:
            raise ValueError("`st` measures every gene of `sc`, so there is nothing to impute "
                             "by default; pass `genes=` to choose genes to predict")
        if len(lacking) > max_genes:
            lacking = _most_variable(sc_expr, sorted(shared_ref, key=sc_expr.genes.index),
                                     lacking, max_genes, cfg, log_normalized)
            logger.warning("`st` lacks %d reference genes; imputing the %d most variable "
                           "(`max_genes`); pass `genes=` to choose others",
                           len(sc_expr.genes) - len(shared_ref), max_genes)
        genes = lacking
    requested = _gene_list(genes, "genes")
    measured = [g for g in requested if g in match_genes(requested, st_expr.genes)]
    if measured:
        logger.info("%d requested genes are measured in `st` (for example %s): they are "
                    "predicted from the other genes, their measured values unused",
                    len(measured), measured[:5])
    known_candidates = [shared[g] for g in st_expr.genes if g in shared]
    known_ref, target_ref, out_names = _resolve_fit_genes(sc_expr, known_candidates, requested,
                                                          target_arg="genes")
    # The ST values are checked before training, not after minutes of it.
    check_values(st_expr, log_normalized=log_normalized, arg="st")
    _check_output(cfg, log_normalized)
    st_name = {ref: st_g for st_g, ref in shared.items()}
    # Settings the user gave are kept: "auto" selection chooses only among the others.
    given = {k for k, v in options.items() if v is not None}
    if config is not None:
        given |= {k for k, v in config.to_dict().items() if v != getattr(Config(), k)}
    check = _run_self_check(st_expr, sc_expr, [(st_name[g], g) for g in known_ref], cfg,
                            self_check=self_check, select=select, n_folds=self_check_folds,
                            seed=seed, log_normalized=log_normalized, device=dev,
                            spatial=spatial, progress=progress, given=given)
    if check is not None and check.selected:
        cfg = cfg.replace(**check.selected)
    model = _fit_expression(sc_expr, known_ref, target_ref, out_names, cfg,
                            log_normalized=log_normalized, seed=seed, device=dev,
                            progress=progress, saving=saving)
    return model._impute_expression(st_expr, log_normalized=log_normalized, n_steps=None,
                                    n_samples=None, sampler=None, eta=None, seed=seed,
                                    batch_size=None, device=None, spatial=spatial,
                                    progress=progress, out=out, overwrite=overwrite,
                                    self_check=None if check is None else check.to_dict())


def _run_self_check(st_expr: Expression, sc_expr: Expression, known_pairs, cfg: Config, *,
                    self_check, select, n_folds, seed, log_normalized, device, spatial,
                    progress, given: frozenset[str] | set[str] = frozenset(),
                    ) -> selfcheck.SelfCheckResult | None:
    """Validate the self-check options and run it when asked (or when "auto" says so).
    `given`: options the user set, which "auto" selection leaves as they are."""
    if self_check not in (True, False, "auto"):
        raise ValueError(f"`self_check` must be True, False or 'auto'; received {self_check!r}")
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"`self_check_folds` must be an integer >= 2; received {n_folds!r}")
    if select == "auto":
        has_xy = coordinates(st_expr.source, spatial, st_expr.n_cells) is not None
        # the depth needs counts; an output you gave is kept whole, not blended
        select = {k: v for k, v in selfcheck.DEFAULT_SELECT.items()
                  if (has_xy or k != "spatial_weight") and k not in given
                  and not (k in ("output", "depth_weight")
                           and (log_normalized or "output" in given))}
    elif isinstance(select, str):
        raise ValueError(f"`select` must be 'auto', None or a dict; received {select!r}")
    select = selfcheck.check_select(select, selfcheck.SELECTABLE)
    if log_normalized and "at_depth" in select.get("output", ()):
        raise ValueError("`select['output']` offers 'at_depth', which needs the ST's counts "
                         "(each cell's depth); received log-normalised input")
    if log_normalized and any(w > 0 for w in select.get("depth_weight", ())):
        raise ValueError("`select['depth_weight']` offers weights above 0, which need the ST's "
                         "counts (each cell's depth); received log-normalised input")
    for candidate in selfcheck.candidates(select):
        cfg.replace(**candidate)  # every candidate value is valid, before any fit
    n_known = len(known_pairs)
    if self_check == "auto":
        self_check = n_known >= SELF_CHECK_MIN_GENES
        if not self_check:
            logger.info("self-check skipped: the ST has %d known genes (fewer than %d)",
                        n_known, SELF_CHECK_MIN_GENES)
    if not self_check:
        return None
    if n_known < max(n_folds, 2):
        raise ValueError(f"the self-check hides groups of the ST's known genes, so it needs at "
                         f"least `self_check_folds` ({n_folds}) of them; there are {n_known}. "
                         "Pass self_check=False")
    return selfcheck.run(st_expr, sc_expr, known_pairs, cfg, select=select, n_folds=n_folds,
                         seed=seed, log_normalized=log_normalized, device=device,
                         spatial=spatial, progress=progress)


def _most_variable(expr: Expression, known: list[str], candidates: list[str], n: int,
                   cfg: Config, log_normalized: bool) -> list[str]:
    """The n candidates with the largest log-normalised variance (on up to 5000 cells)."""
    rows = np.sort(np.random.default_rng(0).choice(expr.n_cells, min(5000, expr.n_cells),
                                                   replace=False))
    variances = np.zeros(len(candidates))
    for s in range(0, len(candidates), 2000):
        part = candidates[s:s + 2000]
        _, values = log_normalize(expr.columns(known, rows), expr.columns(part, rows),
                                  scale_factor=cfg.scale_factor, log_normalized=log_normalized)
        variances[s:s + len(part)] = values.var(axis=0)
    keep = np.sort(np.argsort(-variances, kind="stable")[:n])
    return [candidates[i] for i in keep]


# --- results ---------------------------------------------------------------------------------
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


def _pack(expr: Expression, mean: np.ndarray | None, std: np.ndarray | None, names: list[str],
          info: dict, rows: slice | None = None) -> Any:
    """The result in the input's type; `rows` (a shard) keeps those cells' annotations.

    With `mean` None (results written to a file a chunk at a time), an AnnData without X
    carrying the annotations, whatever the input type.
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
    var = pd.DataFrame(index=pd.Index(names, dtype=str))
    if mean is None or expr.kind == "anndata":
        out = anndata.AnnData(X=mean, obs=obs, var=var, obsm=obsm)
        if std is not None:
            out.layers["std"] = std
        if info:
            out.uns["spalstf"] = _plain(info)
        return out
    if expr.kind == "dataframe":
        return pd.DataFrame(mean, index=expr.source.index[rows].copy(), columns=list(names))
    return mean
