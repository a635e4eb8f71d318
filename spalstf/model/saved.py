"""The saved format of a model: what `Model.save` writes into a model folder and `spalstf.load`
reads back, with the checks that refuse a damaged or foreign folder.

model.json holds the format, the versions, the config, the genes, the training history and
the learnt combination; weights.pt the network's weights, the normalisation statistics, the
context atlas and the state of each base predictor (`spalstf.prior`) under "prior.<name>.".
The folder itself (its checksums, its atomic replacement) is `spalstf.model.folder`'s.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spalstf._validate import check_flag, resolve_device
from spalstf._version import __version__
from spalstf.combine.columns import NETWORK
from spalstf.combine.stack import Stack
from spalstf.config import Config
from spalstf.model.folder import (
    CHECKSUMS,
    MODEL_FILES,
    check_overwrite,
    recover,
    replacing,
    save_target,
    verify_checksums,
)
from spalstf.network import build_network
from spalstf.preprocess import Standardizer
from spalstf.prior import PREDICTORS, AlignedNeighbours, BasePredictor, RidgePrior

logger = logging.getLogger(__name__)

#: Format 2 saves each base predictor's state (`spalstf.prior`) under "prior.<name>."; format 1
#: (spalstf 0.1) is read too, its predictors rebuilt from the network's ridge and the atlas.
#: Format 3 is format 2 with `CHECKSUMS`, required from it on; folders of formats 1 and 2 were
#: saved before checksums and load unverified (said in a log line).
FORMAT_VERSION = 3
FORMATS_READ = (1, 2, 3)
FIRST_CHECKSUMMED = 3


def write(model: Any, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """`Model.save`: write `model` (a `spalstf.Model`) to the folder `path`, atomically; see
    its docstring for what may be replaced."""
    given = Path(path)
    overwrite = check_flag(overwrite, "overwrite")
    path = save_target(given)
    recover(path)  # a replacement cut short by a crash: the model is put back first
    if path.exists() and not overwrite:
        raise FileExistsError(f"`path` {str(given)!r} exists; pass overwrite=True to replace "
                              "it")
    if path.exists():
        check_overwrite(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": "spalstf-model", "format_version": FORMAT_VERSION,
        "spalstf_version": __version__, "torch_version": torch.__version__,
        "config": plain(model.config.to_dict(), none_ok=True),
        "known_genes": model.known_genes, "target_genes": model.target_genes,
        "output_names": model.output_names, "log_normalized": model.log_normalized,
        "history": model.history, "info": plain(model.info, none_ok=True),
        "prior": list(model.predictors),
        "network": model.network is not None,
        "stack": None if model.stack is None else plain(model.stack.to_dict(), none_ok=True),
    }
    tensors = {} if model.network is None else {
        f"network.{k}": v.detach().cpu() for k, v in model.network.state_dict().items()}
    for name, scaler in (("known", model.known_scaler), ("target", model.target_scaler)):
        tensors.update({f"{name}.{k}": torch.as_tensor(v) for k, v in scaler.state().items()})
    if model.atlas is not None:
        tensors["atlas"] = torch.as_tensor(model.atlas)
    for name, predictor in model.predictors.items():
        tensors.update({f"prior.{name}.{k}": torch.as_tensor(v)
                        for k, v in predictor.state().items()})
    tensors = _stored_once(tensors)
    with replacing(path) as folder:
        torch.save(tensors, folder / "weights.pt")
        (folder / "model.json").write_text(json.dumps(meta, indent=1))
    logger.info("saved model to %s", given)
    return given


def read(path: str | os.PathLike, *, device: str = "auto") -> dict[str, Any]:
    """`spalstf.load`: the parts of the model saved in the folder `path`, checked (see its
    docstring), as keyword arguments of `spalstf.model.core.Model`."""
    if isinstance(path, bool) or not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a folder path (str or os.PathLike); received "
                        f"{type(path).__name__}")
    path = Path(path)
    where = f"`path` {str(path)!r}"
    recover(path)  # a replacement cut short by a crash: the model is put back first
    if not path.is_dir():
        raise ValueError(f"{where} is not a spalstf model folder (no such folder); expected a "
                         "folder written by Model.save")
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise ValueError(f"{where} is not a spalstf model folder: {' and '.join(missing)} "
                         f"missing (expected {' and '.join(MODEL_FILES)} inside)")
    verified = verify_checksums(path)
    try:
        meta = json.loads((path / "model.json").read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{where}: model.json cannot be read ({type(err).__name__}: {err}); "
                         "the file may be truncated or corrupted") from err
    if not isinstance(meta, dict) or meta.get("format") != "spalstf-model":
        raise ValueError(f"{where}: model.json is not a spalstf model description")
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in FORMATS_READ:
        raise ValueError(f"{where} holds model format {version!r} (model.json field "
                         f"'format_version'; written by spalstf "
                         f"{meta.get('spalstf_version')}); this spalstf "
                         f"({__version__}) reads format "
                         f"{', '.join(str(v) for v in FORMATS_READ[:-1])} and "
                         f"{FORMATS_READ[-1]}; refit the model or use a matching spalstf")
    if not verified:
        if version >= FIRST_CHECKSUMMED:
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
        if predictors is None:  # format 1
            predictors = predictors_of_network(network, config, atlas, mixtures, len(known))
        return dict(network=network, config=config, known_genes=known, target_genes=target,
                    known_scaler=scalers[0], target_scaler=scalers[1], atlas=atlas,
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


def plain(value: Any, none_ok: bool = False) -> Any:
    """A copy that .h5ad (no None) or JSON can store: tuples -> lists, None -> 'none'."""
    if isinstance(value, dict):
        return {str(k): plain(v, none_ok) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, none_ok) for v in value]
    if value is None:
        return None if none_ok else "none"
    if isinstance(value, np.generic):
        return value.item()
    return value


def predictors_of_network(network, config: Config, atlas: np.ndarray | None,
                          mixtures: np.ndarray | None, n_known: int
                          ) -> dict[str, BasePredictor]:
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
