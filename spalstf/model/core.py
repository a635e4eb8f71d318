"""`Model`: a trained SpaLSTF model; `fit_model` trains one, `load` reads one back, and
`fit_and_impute` runs what `spalstf.impute` does once its inputs are validated.

Below the public functions (`spalstf.api` validates the user's input and calls these): a
reference already read (`spalstf.data.Expression`) goes to the fitting
(`spalstf.model.fitting`: the training loop and the base predictors of the prior);
`Model.impute` predicts the ST (`spalstf.model.predict`: the learnt stack or the fixed blend)
and packs the result in the type the user gave; `Model.save` / `load` keep a model in a folder
(`spalstf.model.saved`, `spalstf.model.folder`). The self-check (`spalstf.combine.selfcheck`)
is handed `fit_model` to fit its inner models, so it imports neither this module nor the API.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spalstf import runtime
from spalstf._logging import shows_progress
from spalstf._validate import (
    INFERENCE_OPTIONS,
    check_flag,
    check_seed,
    merge_options,
    resolve_device,
    shard_rows,
)
from spalstf._version import __version__
from spalstf.combine import selfcheck
from spalstf.combine.columns import ColumnSource
from spalstf.combine.expected import (
    centred,
    expected_pcc,
    gene_features,
    predict_gene_model,
)
from spalstf.combine.stack import Stack
from spalstf.config import Config
from spalstf.data import Expression, as_expression, check_values, match_genes
from spalstf.diffusion import GaussianDiffusion
from spalstf.model import saved
from spalstf.model.fitting import fit_parts
from spalstf.model.predict import (
    add_confidence,
    add_proportions,
    depth_share,
    known_depth,
    layer_names,
    pack,
    predict_blend,
    predict_stack,
    st_known_genes,
    stack_landmarks,
)
from spalstf.model.saved import plain
from spalstf.preprocess import Standardizer, counts_at_depth, expected_count_at_depth
from spalstf.prior import AlignedNeighbours, BasePredictor
from spalstf.spatial import resolve

logger = logging.getLogger(__name__)


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
            predictors = saved.predictors_of_network(network, config, atlas, mixtures,
                                                     len(self.known_genes))
        #: the fitted base predictors of the prior (`spalstf.prior`), by name
        self.predictors = dict(predictors)
        self.log_normalized = log_normalized
        self.history = history or []
        self.info = info or {}
        self.device = device or torch.device("cpu")
        self.diffusion = GaussianDiffusion(config.num_train_timesteps, config.beta_schedule,
                                           learn_sigma=config.vlb_weight > 0)
        #: the combination of the base predictions learnt on an ST by the self-check
        #: (`spalstf.combine.stack.Stack`; `Model.self_check`), None before: the fixed blend is used
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
        model's, `spalstf.combine.intervals`; with log-normalised input: the normalised
        conformal one) and `layers["std"]` its half-width over the normal quantile. Without
        it (the fixed blend): no interval, and `layers["std"]` the standard deviation over the
        network's samples where there is a network (n_samples > 1). With raw-counts input,
        `obs["spalstf_depth"]` each cell's total over the known genes and `layers["counts"]`
        the imputations as expected counts at that depth (the scale on which Li et al. 2022
        score): with the learnt combination (or ``output="at_depth"``) X predicts the value the
        ST measures, zeros included, so the count is the Poisson mean whose expected
        measurement X is (`spalstf.preprocess.expected_count_at_depth`; above
        ``expm1(X) x depth / scale_factor`` where the depth leaves few counts); with the fixed
        blend of the expression, ``expm1(X) x depth / scale_factor``. With the "deconvolution" predictor:
        `obsm["spalstf_proportions"]`, cells x units (the reference's cell types, or
        clusters), each unit's share of the cell's known-gene counts (rows sum to 1; see
        `spalstf.prior.deconvolve`). For a DataFrame: a DataFrame; for a numpy or scipy matrix: a numpy array (cells x target genes). With
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
        first, last = shard_rows(shard, expr.n_cells)
        if out is not None:
            out = Path(out)
            if out.suffix.lower() != ".h5ad":
                raise ValueError(f"`out` must be an .h5ad file; received {str(out)!r}")
            if out.exists() and not overwrite:
                raise FileExistsError(f"{str(out)!r} exists; pass overwrite=True to replace it")
        start = time.perf_counter()
        n_cells = last - first
        stacked = self._uses_stack(cfg)
        layers = layer_names(self, cfg, stacked)
        landmarks = None
        if stacked and self_check is not None:
            # the stack's statistics on landmark cells, read once: they combine the columns
            # and give each gene's evidence for its expected accuracy
            landmarks = stack_landmarks(self, expr, cfg, log_normalized=log_norm, seed=seed,
                                        device=dev, spatial=spatial, progress=progress)
        confidence = self._gene_confidence(
            self_check, None if landmarks is None else landmarks.statistics)
        # counts input: each cell's known-gene depth, to put the values back on the count
        # scale (layers["counts"], obs["spalstf_depth"]) as the ST measures them
        depth = None if log_norm else known_depth(self, expr, first, last)
        if depth is not None:
            layers = [*layers, "counts"]

        # X is on the scale the ST measures (zeros included) where the learnt combination made
        # it (it is fitted to the measured values) or the readout is "at_depth": its count is
        # the Poisson mean whose expected measurement X is. The expression's is expm1(X) x depth.
        to_counts = (expected_count_at_depth if stacked or depth_share(cfg) == 1
                     else counts_at_depth)

        def counts_layer(values, cell_depth):
            return to_counts(values, cell_depth, scale_factor=cfg.scale_factor).astype(np.float32)
        writer = sink = None
        if out is not None:
            from spalstf.io import H5adWriter

            head = pack(expr, None, {}, self.output_names, {}, rows=slice(first, last),
                        spatial=spatial)
            add_confidence(head, confidence)
            if depth is not None:
                head.obs["spalstf_depth"] = depth
            add_proportions(self, head, expr, cfg, log_normalized=log_norm, seed=seed,
                            device=dev, spatial=spatial, rows=(first, last))
            writer = H5adWriter(out, head, layers=layers, overwrite=overwrite)

            def sink(rows, mean, extra):
                if depth is not None:
                    extra = {**extra, "counts": counts_layer(mean, depth[rows])}
                writer.write(rows, mean, extra)
        try:
            predict = predict_stack if stacked else predict_blend
            mean, extra = predict(self, expr, cfg, log_normalized=log_norm, seed=seed, device=dev,
                                  spatial=spatial, progress=progress, rows=(first, last),
                                  sink=sink,
                                  **({"landmarks": landmarks, "depth": depth} if stacked else {}))
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        seconds = time.perf_counter() - start
        logger.info("imputed %d genes in %d cells in %.1f s", len(self.target_genes),
                    n_cells, seconds)
        info = {
            "version": __version__,
            "params": plain(cfg.to_dict()),
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
            writer.write_uns({"spalstf": plain(info)})
            return writer.close()
        if depth is not None and expr.kind == "anndata":
            extra = {**extra, "counts": counts_layer(mean, depth)}
        proportions = dict(log_normalized=log_norm, seed=seed, device=dev, spatial=spatial,
                           rows=(first, last))
        if shard is not None:
            result = pack(expr, mean, extra, self.output_names, info,
                          rows=slice(first, last), spatial=spatial)
        else:
            result = pack(expr, mean, extra, self.output_names, info, spatial=spatial)
            if expr.kind == "anndata":
                add_confidence(result, confidence)
        if depth is not None and expr.kind == "anndata":
            result.obs["spalstf_depth"] = depth
        add_proportions(self, result, expr, cfg, **proportions)
        return result

    def _gene_confidence(self, self_check: dict | None, statistics: Any = None
                         ) -> dict | None:
        """Per-gene confidence (None without a self-check's calibration): each target's
        expected PCC on this ST, by the self-check's per-gene model from the gene's evidence
        (`spalstf.combine.expected.gene_features`: the predictability in the reference, and
        from the stack's `statistics` on this ST the agreement of its columns and the spread
        of the prediction), or where the model or the statistics are missing by the line from
        the predictability alone; its median set to the run's expected median PCC
        (`centred`), and ``expected_pcc_sd``, how far one gene's PCC strays from its value
        (the model's cross-fitted error and the run estimate's standard error together)."""
        if self_check is None or not self_check.get("calibration") \
                or "reference_pcc" not in self.info:
            return None
        reference = np.asarray(self.info["reference_pcc"], np.float64)
        expected = self_check.get("expected")
        expected = expected if isinstance(expected, Mapping) else {}
        gene_model = expected.get("gene_model")
        if isinstance(gene_model, Mapping) and statistics is not None and self.stack is not None:
            values = predict_gene_model(gene_model, gene_features(statistics,
                                                                  self.stack.weights, reference))
            stray = float(gene_model.get("residual_sd", np.nan))
        else:
            values = expected_pcc(self_check["calibration"], reference)
            stray = float(expected.get("gene_sd", np.nan))
        values = centred(values, float(self_check.get("expected_median_pcc", np.nan)))
        sd = float(np.hypot(stray, float(self_check.get("expected_median_pcc_se", 0.0))))
        return {"genes": list(self.output_names), "reference_pcc": [float(v) for v in reference],
                "expected_pcc": [float(v) for v in values],
                "expected_pcc_sd": [sd] * len(values)}

    def _uses_stack(self, cfg: Config) -> bool:
        """Whether an imputation with `cfg` combines by the learnt stack (else: the blend)."""
        return cfg.combine == "stack" and self.stack is not None

    def columns(self, expr: Expression, cfg: Config, columns: Sequence[str], *,
                log_normalized: bool, seed: int, device: torch.device, spatial: Any,
                n_predicted: int | None = None) -> ColumnSource:
        """A `spalstf.combine.columns.ColumnSource` of `columns` on the ST `expr` (prepared;
        `n_predicted`: how many cells it will predict, None for all)."""
        st_known = st_known_genes(self, expr)
        check_values(expr, log_normalized=log_normalized, arg="st")
        return ColumnSource(self, expr, st_known, cfg, columns, log_normalized=log_normalized,
                            spatial=spatial, seed=seed, device=device, n_predicted=n_predicted)

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
        prediction, and score them against their measured values (`spalstf.combine.selfcheck`). The
        reference is needed because a model keeps no reference counts. Target genes are never
        read.

        With `adopt` (default), the model keeps the combination learnt (`Model.stack`, saved
        with it): its imputations of `st` and of data like it then use it, with intervals.

        Returns a `spalstf.combine.selfcheck.SelfCheckResult` (`median_pcc`, `median_spcc`,
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
        return saved.write(self, path, overwrite=overwrite)


def fit_model(expr: Expression, known: list[str], targets: list[str], out_names: list[str],
              cfg: Config, *, log_normalized: bool, seed: int, device: torch.device,
              progress: bool, saving: tuple = (None, 1, None)) -> Model:
    """Train a model on the reference `expr` (validated; genes under their reference names):
    `known` -> `targets`, reported as `out_names`, with `cfg`. `saving`: the checkpoint
    options (path, every, resume) as `spalstf.train.checkpoint.Checkpointer.check_options` gives
    them. The training (`spalstf.train`) fits the ridge prior; the other base predictors of
    the prior (`spalstf.prior`) are fitted beside it (`spalstf.model.fitting`)."""
    return Model(**fit_parts(expr, known, targets, cfg=cfg, log_normalized=log_normalized,
                             seed=seed, device=device, progress=progress, saving=saving),
                 output_names=out_names)


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
    return Model(**saved.read(path, device=device))


def fit_and_impute(st: Expression, sc: Expression, cfg: Config, *,
                   known_pairs: Sequence[tuple[str, str]], targets: list[str],
                   output_names: list[str], self_check: bool | str, n_folds: int, seed: int,
                   log_normalized: bool, device: torch.device, spatial: Any, progress: bool,
                   saving: tuple = (None, 1, None), out: str | os.PathLike | None = None,
                   overwrite: bool = False) -> Any:
    """`spalstf.impute` once its inputs are validated (`spalstf.api`): the self-check learns
    the combination on the ST `st` (when `cfg.combine` is "stack" and `self_check` asks for
    it, `spalstf.combine.selfcheck.maybe_run`), the model is fitted on the reference `sc`
    (`fit_model`), keeps that combination, and imputes `st`.

    `known_pairs`: (ST name, reference name) of each known gene; `targets` the target genes
    under their reference names, reported as `output_names`; the other options as
    `fit_model`'s and `Model.impute`'s.
    """
    check = None
    if cfg.combine == "stack":
        check = selfcheck.maybe_run(st, sc, list(known_pairs), cfg, self_check=self_check,
                                    n_folds=n_folds, seed=seed, log_normalized=log_normalized,
                                    device=device, spatial=spatial, progress=progress,
                                    fit=fit_model)
    model = fit_model(sc, [ref for _, ref in known_pairs], targets, output_names, cfg,
                      log_normalized=log_normalized, seed=seed, device=device,
                      progress=progress, saving=saving)
    if check is not None:
        model.stack = check.stack
    return model._impute_expression(st, log_normalized=log_normalized, seed=seed,
                                    batch_size=None, device=None, spatial=spatial,
                                    progress=progress, out=out, overwrite=overwrite,
                                    self_check=None if check is None else check.to_dict())
