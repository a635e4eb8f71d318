"""Every setting of the model, its training and its sampling, with the defaults in one place.

A `Config` is a plain dataclass: ``spalstf.impute(st, ref, config={"depth": 2})`` (a dict of
fields, or ``config=spalstf.Config(depth=2)``) overrides the defaults; keyword options
(``spalstf.fit(..., depth=2)``) still work. Each field belongs to one stage
(``Config.fields(stage)``):

- ``model``: the representation, the network and the prior; fixed at fit.
- ``train``: how the network is trained; fixed at fit.
- ``sample``: how the ST is read (spatial and expression context, the aligned-neighbour
  estimate) and the diffusion sampled; may differ at imputation (`Model.impute`).
- ``readout``: what the imputed values are (expression or at the cell's depth, the share of the
  diffusion's refinement); may differ at imputation.

Each stage's fields are one small dataclass (`ModelSettings`, `TrainSettings`,
`SampleSettings`, `ReadoutSettings`; ``config.settings("train")`` gives a Config's), and
`Config` inherits the four: its fields stay flat (``Config(depth=2)``, ``cfg.depth``,
`dataclasses.replace` and `asdict`, and the flat dict a saved model stores all work as before)
while each stage is declared, documented and usable on its own. Composing the four as
attributes (``cfg.model.depth``) would have made every reader of a setting across the package,
and every saved model's config, go through a translation layer for no gain in what a field
means.

The sample and readout fields marked ``prior`` (``Config.fields("sample", "readout",
prior=True)``) change the prior's own prediction: the self-check chooses them on the prior
alone, before any sampling. The four parts of the method (DESIGN.md "The method") can each be
switched off for ablations:

- ``diffusion``: the conditional DDPM. Off, the denoiser is trained to regress the target genes
  directly from the known genes (a single deterministic pass, no noise).
- ``use_xca``: the XCA-Transformer blocks. Off, the blocks keep their adaLN-Zero MLPs only.
- ``use_context``: the BiLSTM over the cell's neighbourhood. Off, only the timestep conditions.
- ``vlb_weight`` / ``kl_weight``: the hybrid-loss terms; 0 turns each off (with ``vlb_weight``
  0 the variance is fixed, not learned).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

#: The stages, in the order a run meets them.
MODEL, TRAIN, SAMPLE, READOUT = "model", "train", "sample", "readout"
STAGES = (MODEL, TRAIN, SAMPLE, READOUT)
#: The stages that may differ between fit and imputation (they act at sampling time only).
INFERENCE_STAGES = (SAMPLE, READOUT)
#: The base predictors a model may fit (`Config.predictors`), in the order of a model's columns:
#: the `name` of each class of `spalstf.prior.PREDICTORS`, in its order, and "network" (the
#: model's own diffusion network). Written here, not read from the classes, because this module
#: loads no torch (`spalstf --help` lists the names); tests/test_config.py checks that the two
#: agree, and the R tests and the benchmarks read the names from here.
PREDICTOR_NAMES = ("ridge", "ridge_aligned", "aligned", "knn", "spage", "transport", "likelihood",
                   "deconvolution", "network", "masked")
#: The networks, which are not default predictors: training the diffusion for the main fit
#: and the self-check's inner fits costs about a minute or more per fit on a CPU, beyond the
#: time target of a 5-fold cross-validation (10 x the SpaGE-style baseline + 60 s), and in the
#: stack they earned little weight where measured (benchmarks/results/stack_network*.md,
#: stack_masked.md); add "network" or "masked" to use them. Those of `spalstf.prior` declare it
#: (`BasePredictor.network`).
NETWORKS = ("network", "masked")
#: Base predictors that are not defaults either: the spot deconvolution
#: (`spalstf.prior.deconvolve`). Added to the defaults, the stack's 5-fold median PCC moved
#: by -0.006 to +0.009 over 12 sets (mean +0.002; 8 up, 2 level, 2 down: the starmap_cortex
#: spots), never down on a single-cell set, and leaving data sets out kept it for every set
#: (benchmarks/results/stack_deconvolution.md); but it costs about 1 s per 10^4 ST cells
#: per view on one core (benchmarks/results/deconvolution_time.md), about 5 minutes of the
#: 10 for 10^6 cells in three views, for a gain within the folds' spread. Add it for
#: spot data, and for the cell-type proportions it returns.
OPTIONAL = ("deconvolution",)
#: The default: every base predictor but the networks and `OPTIONAL`.
DEFAULT_PREDICTORS = tuple(p for p in PREDICTOR_NAMES if p not in NETWORKS + OPTIONAL)


def _setting(stage: str, default: Any, *, prior: bool = False) -> Any:
    """A field of `Config` in `stage`; `prior`: it changes the prior's own prediction."""
    return field(default=default, metadata={"stage": stage, "prior": prior})


@dataclass
class ModelSettings:
    """The model stage: the representation, the network and the prior, fixed at fit."""

    #: Target sum of the per-cell normalisation (over the known genes), before log1p.
    scale_factor: float = _setting(MODEL, 1e4)
    #: How the known genes of the ST are put on the reference's scale before entering the model:
    #: "reference" standardises both with the reference's per-gene mean and std;
    #: "per_dataset" standardises each data set with its own statistics.
    align: str = _setting(MODEL, "reference")
    #: Width of a token embedding.
    d_model: int = _setting(MODEL, 64)
    #: Number of transformer blocks.
    depth: int = _setting(MODEL, 3)
    #: Attention heads of each XCA layer (must divide d_model).
    n_heads: int = _setting(MODEL, 4)
    #: Hidden width of the block MLPs relative to d_model.
    mlp_ratio: float = _setting(MODEL, 2.0)
    #: Genes are grouped into at most this many tokens per cell (one gene per token when the
    #: cell has fewer genes); XCA cost is linear in the number of tokens.
    max_tokens: int = _setting(MODEL, 64)
    #: Cross-covariance attention in each block (False: the blocks keep their MLPs only).
    use_xca: bool = _setting(MODEL, True)
    #: Condition on the BiLSTM context embedding (False: on the timestep only).
    use_context: bool = _setting(MODEL, True)
    #: Length of the context sequence: the cell, then its n_neighbors nearest reference cells
    #: in known-gene space, ordered by distance.
    n_neighbors: int = _setting(MODEL, 16)
    #: Hidden size of each direction of the BiLSTM.
    lstm_hidden: int = _setting(MODEL, 64)
    #: Stacked BiLSTM layers.
    lstm_layers: int = _setting(MODEL, 1)
    #: The prior mean the diffusion refines (CARD-style, Han et al. 2022): what is diffused is the
    #: residual of the target genes around it, and each target token also reads it.
    #: "ridge": a ridge regression from known to target genes fitted on the reference;
    #: "neighbours": the mean over the cell's reference neighbours; "none": no prior.
    prior: str = _setting(MODEL, "ridge")
    #: L2 penalty of the ridge prior (on standardised genes). None: chosen on the reference by
    #: generalised cross-validation, at least the number of rows it is fitted on, cells and
    #: pseudo-spots (`spalstf.prior.choose_alpha`).
    prior_alpha: float | None = _setting(MODEL, None)
    #: Fit the ridge prior on pseudo-spots too (random mixtures of 2 to 20 reference cells,
    #: their counts summed: `spalstf.prior.pseudo_spots`) as well as on the cells, and let the
    #: aligned-neighbour estimate read pseudo-spots beside the atlas cells: a map that has seen
    #: mixtures transfers better to spots, and to single cells of another platform
    #: (the fixed blend's priors benchmark, `git show
    #: 91fdd2f:benchmarks/results/priors.md`). False: the reference cells alone.
    prior_mixtures: bool = _setting(MODEL, True)
    #: The base predictions a model fits, each a column of the stacked combination
    #: (`spalstf.combine.stack`, `combine="stack"`): "ridge" (the ridge prior), "ridge_aligned"
    #: (the same map read from the ST z-scored over itself), "aligned" (the aligned-neighbour
    #: estimate), "knn" (plain neighbours in log-normalised known-gene space), "spage" (the
    #: SpaGE-style projection), "transport" (the Tangram-style optimal-transport mapping),
    #: "likelihood" (reference clusters weighed by the likelihood of the cell's counts),
    #: "deconvolution" (each spot a mixture of the reference's cell types or clusters, its
    #: proportions returned in the imputation's ``obsm["spalstf_proportions"]``; not a
    #: default), "network" (the SpaLSTF diffusion) and "masked" (the same trained on the ST's
    #: known genes too, `spalstf.prior.masked`); the two networks are not defaults. Leave
    #: some out for ablations. Without "network" no network is trained, and the fixed blend
    #: (`combine="blend"`, or a run without a self-check) is the ridge and neighbour prior alone.
    predictors: tuple = _setting(MODEL, DEFAULT_PREDICTORS)
    #: Reference cells kept in the model as the context's atlas (a seeded random subset of the
    #: reference when it is larger); bounds the model file and the neighbour search.
    atlas_size: int = _setting(MODEL, 20000)
    #: The conditional DDPM (False: the denoiser regresses the target genes in one pass).
    diffusion: bool = _setting(MODEL, True)
    #: Diffusion steps of the forward process at training.
    num_train_timesteps: int = _setting(MODEL, 1000)
    #: Noise schedule: "cosine" (improved DDPM) or "linear".
    beta_schedule: str = _setting(MODEL, "cosine")


@dataclass
class TrainSettings:
    """The train stage: how the network is trained, fixed at fit."""

    #: Maximum passes over the reference (early stopping, max_steps and max_time may stop
    #: sooner).
    epochs: int = _setting(TRAIN, 60)
    #: Maximum optimiser updates (None: no limit). A budget of work, not of seconds: it bounds
    #: the training's cost on large references (an update reads one mini-batch, and genes are
    #: grouped into at most `max_tokens` tokens) while the same seed still gives the same model
    #: on a fast or a slow machine. Like every field of this section, it acts only when
    #: `predictors` includes a network ("network", "masked"); the default fits none.
    max_steps: int | None = _setting(TRAIN, 300)
    #: Wall-clock budget for training in seconds (None: no budget). When it stops training
    #: the model depends on the machine's speed and load: the same seed no longer reproduces.
    max_time: float | None = _setting(TRAIN, None)
    #: Cells per mini-batch at training (and per chunk at imputation).
    batch_size: int = _setting(TRAIN, 256)
    #: Learning rate of AdamW (reached after a linear warm-up of at most 100 steps).
    learning_rate: float = _setting(TRAIN, 2e-3)
    #: AdamW weight decay.
    weight_decay: float = _setting(TRAIN, 1e-4)
    #: Fraction of reference cells held out for early stopping.
    validation_fraction: float = _setting(TRAIN, 0.1)
    #: Stop after this many epochs without improvement of the validation loss (None: never).
    patience: int | None = _setting(TRAIN, 10)
    #: Exponential moving average of the weights used for sampling (0 disables).
    ema_decay: float = _setting(TRAIN, 0.995)
    #: Train on a seeded random subsample of at most this many reference cells (None: all).
    max_cells: int | None = _setting(TRAIN, None)
    #: Dropout rate inside the block MLPs.
    dropout: float = _setting(TRAIN, 0.0)
    #: Weight of the variational-lower-bound term (learned variance, improved-DDPM hybrid loss;
    #: 0: the variance is fixed, not learned).
    vlb_weight: float = _setting(TRAIN, 0.001)
    #: Weight of the KL regulariser between predicted- and true-noise distributions.
    kl_weight: float = _setting(TRAIN, 0.01)
    #: bfloat16 autocast of the denoiser on CUDA devices that support it (training and
    #: sampling); the CPU always computes in float32.
    mixed_precision: bool = _setting(TRAIN, True)


@dataclass
class SampleSettings:
    """The sample stage: how the ST is read and the diffusion sampled; may differ at
    imputation."""

    #: Spatial context of the ST (spalstf.spatial): the known genes entering the model are
    #: (1 - spatial_weight) x the cell's own + spatial_weight x the mean of its
    #: `spatial_neighbors` nearest cells in space. Used only when the ST has coordinates.
    spatial_weight: float = _setting(SAMPLE, 0.5, prior=True)
    spatial_neighbors: int = _setting(SAMPLE, 8, prior=True)
    #: Expression context of the ST (spalstf.spatial.expression_smoothed_reader): the known genes
    #: are then (1 - expression_weight) x the cell's own + expression_weight x the mean of its
    #: `expression_neighbors` nearest ST cells in known-gene space (principal components of the
    #: z-scored genes). It averages out measurement noise: on the priors, with the self-check's
    #: rule, the median PCC of osmFISH / visium_brain / visium_lymph / simulated is 0.292 /
    #: 0.567 / 0.132 / 0.273 with it and 0.266 / 0.532 / 0.122 / 0.281 without (the fixed
    #: blend's priors benchmark, `git show 91fdd2f:benchmarks/results/priors.md`). The stack
    #: reads the ST both with and without it (its "expression" and "raw" views). 0: off.
    expression_weight: float = _setting(SAMPLE, 0.5, prior=True)
    expression_neighbors: int = _setting(SAMPLE, 15, prior=True)
    #: The fixed blend (`combine="blend"`) mixes the ridge prior with an aligned-neighbour
    #: estimate: (1 - knn_weight) x ridge + knn_weight x the mean target genes of the cell's
    #: `knn_neighbors` nearest atlas cells or pseudo-spots by cosine similarity, the ST's known
    #: genes z-scored over the ST itself and the reference profiles over themselves (as SpaGE
    #: aligns the two data sets). The stack learns its weights instead and ignores knn_weight;
    #: `knn_neighbors` serves both. Used with the ridge prior only.
    knn_weight: float = _setting(SAMPLE, 0.5, prior=True)
    knn_neighbors: int = _setting(SAMPLE, 50, prior=True)
    #: "ddim" (few respaced steps, deterministic given the initial noise) or "ddpm" (ancestral).
    sampler: str = _setting(SAMPLE, "ddim")
    #: Reverse steps; ignored by "ddpm" when None (then all num_train_timesteps steps run).
    n_steps: int = _setting(SAMPLE, 5)
    #: Samples per cell: their mean is the imputation, their std the uncertainty.
    n_samples: int = _setting(SAMPLE, 4)
    #: DDIM eta (0: deterministic DDIM, 1: DDPM-like noise).
    eta: float = _setting(SAMPLE, 0.0)
    #: Pair the samples of a cell with negated noise (variance reduction of their mean).
    antithetic: bool = _setting(SAMPLE, True)
    #: Bound each step's predicted x0 to the range of the reference (clip_denoised).
    clip_denoised: bool = _setting(SAMPLE, True)


@dataclass
class ReadoutSettings:
    """The readout stage: what the imputed values are; may differ at imputation."""

    #: Between the two outputs (`output`, below): with output "expression", the imputation is
    #: (1 - depth_weight) x the expression + depth_weight x the value at the cell's depth (1 is
    #: "at_depth"). Needs
    #: counts when above 0. The fixed blend's only; the stack weighs the two readouts itself.
    depth_weight: float = _setting(READOUT, 0.0, prior=True)
    #: What the imputed values are. "expression": log1p(count / known-gene total x
    #: scale_factor) as the reference measures its cells, free of the ST's depth.
    #: "at_depth": the value the ST itself would measure at each cell's depth, on average,
    #: zeros included (`spalstf.preprocess.expected_at_depth`): far below the expression where
    #: a spot holds only a few counts of a gene, as its measured genes are. Needs counts (not
    #: log-normalised input). On sparse spots (Visium lymph node) it is the closer prediction
    #: of what was measured (`git show 91fdd2f:benchmarks/results/priors.md`). Keep
    #: "expression" to compare cells
    #: free of their depth.
    #: "auto": the stack weighs both readouts (counts input; log-normalised input: the
    #: expression), and the fixed blend reads the expression (with `depth_weight`).
    output: str = _setting(READOUT, "auto", prior=True)
    #: How the base predictions become the imputation. "stack": the weights learnt by the
    #: self-check on the ST's own known genes (`spalstf.combine.stack`), with a calibrated
    #: interval; without a self-check (or for a model that holds no learnt weights) the fixed
    #: blend is used. "blend": the fixed blend, (1 - knn_weight) x ridge + knn_weight x
    #: aligned neighbours, refined by the diffusion (`residual_weight`).
    combine: str = _setting(READOUT, "stack")
    #: Nominal coverage of the interval of each value (`layers["lower"]`, `layers["upper"]`),
    #: calibrated on the self-check's hidden genes.
    interval_level: float = _setting(READOUT, 0.9)
    #: The imputation is prior + residual_weight x (mean sampled residual): 1 keeps the
    #: diffusion's refinement whole, 0 returns the prior alone.
    residual_weight: float = _setting(READOUT, 1.0)


#: The settings class of each stage.
STAGE_SETTINGS = {MODEL: ModelSettings, TRAIN: TrainSettings, SAMPLE: SampleSettings,
                  READOUT: ReadoutSettings}


@dataclass
class Config(ReadoutSettings, SampleSettings, TrainSettings, ModelSettings):
    """Settings of a SpaLSTF model. All fields have documented defaults.

    Every field of the four stages (`ModelSettings`, `TrainSettings`, `SampleSettings`,
    `ReadoutSettings`), flat, in that order.
    """

    def __post_init__(self) -> None:
        if isinstance(self.predictors, list):  # JSON and R give lists; a Config holds tuples
            self.predictors = tuple(self.predictors)

    @classmethod
    def fields(cls, *stages: str, prior: bool | None = None) -> tuple[str, ...]:
        """The names of the fields of `stages` (all when none is given), in their order here.

        `prior`: True keeps those that change the prior's own prediction, False the others.
        """
        unknown = sorted(set(stages) - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; the stages are {list(STAGES)}")
        return tuple(f.name for f in dataclasses.fields(cls)
                     if (not stages or f.metadata["stage"] in stages)
                     and (prior is None or f.metadata["prior"] == prior))

    def settings(self, stage: str) -> Any:
        """The fields of `stage` alone, as its settings class (`STAGE_SETTINGS`)."""
        return STAGE_SETTINGS[stage](**{name: getattr(self, name) for name in self.fields(stage)})

    @classmethod
    def stage(cls, name: str) -> str:
        """The stage of the field `name`."""
        for f in dataclasses.fields(cls):
            if f.name == name:
                return f.metadata["stage"]
        raise ValueError(f"`{name}` is not a field of Config; the fields are "
                         f"{sorted(cls.fields())}")

    def replace(self, **changes: Any) -> Config:
        """Return a copy with `changes` applied, refusing unknown names."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(
                f"unknown option(s) {unknown}; valid options are {sorted(names)}"
            )
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        """Raise ValueError naming the option when a value is out of range."""

        def positive(name: str, integer: bool = True) -> None:
            value = getattr(self, name)
            kind = int if integer else (int, float)
            # `not value > 0` (rather than `value <= 0`) also refuses NaN; inf is no size.
            if isinstance(value, bool) or not isinstance(value, kind) or not 0 < value < math.inf:
                expected = "a positive integer" if integer else "a positive number"
                raise ValueError(f"`{name}` must be {expected}; received {value!r}")

        for name in ("d_model", "depth", "n_heads", "max_tokens", "n_neighbors", "lstm_hidden",
                     "lstm_layers", "atlas_size", "spatial_neighbors", "knn_neighbors",
                     "expression_neighbors",
                     "num_train_timesteps",
                     "epochs", "batch_size", "n_steps", "n_samples"):
            positive(name)
        for name in ("scale_factor", "learning_rate", "mlp_ratio"):
            positive(name, integer=False)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"`d_model` ({self.d_model}) must be divisible by `n_heads` ({self.n_heads})"
            )
        if self.max_cells is not None:
            positive("max_cells")
        if self.max_steps is not None:
            positive("max_steps")
        if self.max_time is not None and (isinstance(self.max_time, bool) or not isinstance(
                self.max_time, (int, float)) or not self.max_time > 0):
            raise ValueError(f"`max_time` must be positive seconds or None; received {self.max_time!r}")
        if self.n_steps > self.num_train_timesteps:
            raise ValueError(
                f"`n_steps` must be at most num_train_timesteps ({self.num_train_timesteps}); "
                f"received {self.n_steps}"
            )
        choices = {"align": ("reference", "per_dataset"), "sampler": ("ddim", "ddpm"),
                   "prior": ("ridge", "neighbours", "none"),
                   "beta_schedule": ("cosine", "linear"),
                   "output": ("auto", "expression", "at_depth"), "combine": ("stack", "blend")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}; received {getattr(self, name)!r}")
        if not 0 <= self.spatial_weight < 1:
            raise ValueError(f"`spatial_weight` must be in [0, 1); received {self.spatial_weight!r}")
        if not 0 <= self.expression_weight < 1:
            raise ValueError(f"`expression_weight` must be in [0, 1); received "
                             f"{self.expression_weight!r}")
        if not 0 <= self.depth_weight <= 1:
            raise ValueError(f"`depth_weight` must be in [0, 1]; received {self.depth_weight!r}")
        if not 0 <= self.knn_weight <= 1:
            raise ValueError(f"`knn_weight` must be in [0, 1]; received {self.knn_weight!r}")
        if not 0 <= self.residual_weight <= 1:
            raise ValueError(f"`residual_weight` must be in [0, 1]; received {self.residual_weight!r}")
        for name in ("prior_alpha", "vlb_weight", "kl_weight", "weight_decay", "eta", "dropout"):
            value = getattr(self, name)
            if name == "prior_alpha" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value < math.inf:
                raise ValueError(f"`{name}` must be a finite number >= 0; received {value!r}")
        if self.dropout >= 1:
            raise ValueError(f"`dropout` must be in [0, 1); received {self.dropout!r}")
        if self.patience is not None and (isinstance(self.patience, bool) or not isinstance(
                self.patience, int) or self.patience < 1):
            raise ValueError(f"`patience` must be a positive integer (epochs) or None; "
                             f"received {self.patience!r}")
        for name in ("use_xca", "use_context", "diffusion", "antithetic", "clip_denoised",
                     "prior_mixtures"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be True or False; received "
                                f"{getattr(self, name)!r}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(
                f"`validation_fraction` must be in [0, 1); received {self.validation_fraction!r}"
            )
        if (isinstance(self.predictors, str) or not isinstance(self.predictors, (tuple, list))
                or not self.predictors or len(set(self.predictors)) != len(self.predictors)
                or not set(self.predictors) <= set(PREDICTOR_NAMES)):
            raise ValueError(f"`predictors` must be a non-empty list of distinct names among "
                             f"{list(PREDICTOR_NAMES)}; received {self.predictors!r}")
        if not (isinstance(self.interval_level, (int, float)) and not isinstance(
                self.interval_level, bool) and 0 < self.interval_level < 1):
            raise ValueError(f"`interval_level` must be in (0, 1); received "
                             f"{self.interval_level!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in [0, 1); received {self.ema_decay!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """Build from a saved dict; names this version does not know are ignored with care."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})
