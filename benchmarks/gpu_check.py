"""GPU check of the SpaLSTF network: bf16 autocast and NCCL against the CPU, in one script.

The network's GPU path (bfloat16 autocast of the denoiser, `spalstf.runtime`; NCCL and
DistributedDataParallel under torchrun, `spalstf.train.distributed`) is not exercised by the test
suite, which runs on CPU. This script runs it, next to the CPU, and fails (exit status 1,
the failed rows named) when the GPU's results are not the CPU's within the tolerances below.

Sections (each row of the table is one criterion; `--out` gets gpu_check.md and .json):

1. Simulated data (`spalstf.datasets.simulate`, truth in ``st.obsm["truth"]``), network alone
   (``predictors=("network",)``, the fixed blend: ridge + aligned-neighbour prior refined by
   the diffusion), the default network size, `max_steps` updates without early stopping.
   a. Inference only: ONE model, trained on the CPU, imputed on the CPU (float32) and on the
      GPU with bf16 autocast, and again on the GPU in float32. The random draws are the same
      (per-cell Philox generators on the host), so the difference is the GPU's arithmetic alone.
   b. Trained on each device with the same seed (all draws come from host generators, so the
      same batches, timesteps and noise) and imputed there: the whole GPU path, where bf16
      rounding in training is amplified by hundreds of updates. Compared with the spread
      between two seeds on the GPU (what the result is known to vary by anyway).
   c. The same fit repeated on the GPU (information only: the CPU reproduces a seed exactly;
      the GPU need not, atomics in the backward pass).
2. The osmFISH pair (``../shared/data/osmfish`` or ``--data-dir``; skipped when absent): the
   first of 5 gene folds hidden, ``spalstf.impute(...)`` on CPU and GPU, each scored against
   the measured values.
3. torchrun, one process per GPU, running ``spalstf fit`` (the command line) with the process
   group joined although the world has one process (the library joins it only for several:
   `distributed.launched` is patched in that worker), so NCCL and DistributedDataParallel
   (device_ids, gradient all-reduce, `distributed.all_sum`) really run; its model is compared
   with a plain single-process fit. With two GPUs or more, also a plain 2-process run.

Tolerances (principled, not tuned to pass): bfloat16 keeps 8 significant bits (relative
rounding 2**-9, about 0.2%) and autocast puts only the denoiser's matrix products in it.

- Same model, bf16 vs CPU: per-gene PCC of the imputation >= 0.99 for every gene, and of the
  network's refinement (imputation minus its prior) median >= 0.95; median accuracy within
  0.005. These bound what 2**-9 relative rounding in the denoiser's products can do to a
  handful of DDIM steps, while a broken cast (overflow, a wrong dtype reaching the sampler)
  would not stay within them. With bf16 emulated on CPU (``--device cpu --quick``, a tiny
  network) the measures were 1.0000 / 1.0000 / 0.0000, max abs difference 0.001; they were
  not measured on the full-size network (too slow on the 2 shared cores where this script
  was written): the first GPU run is what tells the margin.
- Same model, GPU float32 vs CPU: per-gene PCC >= 0.999 for every gene (TF32 in cuDNN's LSTM
  and reduction order are the only differences).
- Trained on each device: per-gene PCC between the two imputations, median >= 0.95; median
  accuracy (PCC against the truth / measured values) within 0.02; and the refinement's
  CPU-vs-GPU median PCC at least the two-seed one minus 0.05 (the device may not move the
  network's output more than a change of seed does).
- torchrun: exit status 0, the log names the backend (nccl on GPU, gloo on CPU), the network
  was wrapped in DistributedDataParallel, and the model's imputation matches a plain fit on
  the same device (per-gene PCC median >= 0.95; on CPU it is the same to float noise).

Run on a GPU machine (an estimate, never measured: 3 to 4 minutes on one H100 with 16 cores,
about a minute of it GPU work, the rest the CPU reference on the same machine; the tables are
written after every section, so a run cut short keeps what it measured; ``--max-steps 200``
shrinks it):

    # the image's python3 holds a CUDA torch, numpy, scipy, pandas, h5py, scikit-learn, tqdm;
    # anndata and its few missing dependencies travel as wheels (.whl, ignored by git), and
    # the osmFISH pair as a copy inside the checkout (../shared does not travel):
    #   here:  mkdir -p .gpu_data && cp -r ../shared/data/osmfish .gpu_data/
    #          python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    #              --platform manylinux2014_x86_64 -d .whl anndata array-api-compat \
    #              legacy-api-wrap natsort zarr numcodecs donfig crc32c scverse-misc
    #          (add --platform manylinux_2_28_x86_64 etc. where pip finds none; see the
    #           device README) and add /.whl/ and /.gpu_data/ to .git/info/exclude
    #   there (carry .whl and .gpu_data):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT --data-dir .gpu_data

Elsewhere, with a CUDA build of torch: ``pip install torch`` (the CUDA wheel of your
platform, https://pytorch.org), then ``pip install -e .``, then
``python benchmarks/gpu_check.py --out benchmarks/results``.

``--device cpu --quick`` runs the whole flow on the CPU in seconds (tiny data, gloo instead of
NCCL; the "device" side is the CPU with bf16 autocast emulated through torch's CPU autocast),
which is how tests/test_gpu_check.py tests this script. ``--device cpu`` without --quick
does the full-size flow on CPU (minutes): a way to see the tolerances' margins with
bf16 emulated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import spalstf  # noqa: E402
from spalstf import metrics  # noqa: E402
from spalstf._atomic import atomic_path  # noqa: E402

#: The sizes of the full check (GPU part about a minute on one H100) and of --quick.
FULL = {
    "sim": dict(n_st=2000, n_sc=4000, n_genes=200, n_measured=150, seed=0),
    "fit": dict(max_steps=500, epochs=1000, patience=None),
    "osmfish_cells": None,  # all of them
}
QUICK = {
    "sim": dict(n_st=80, n_sc=200, n_genes=30, n_measured=22, seed=3),
    "fit": dict(max_steps=12, epochs=1000, patience=None, d_model=16, depth=1, n_heads=2,
                lstm_hidden=16, n_neighbors=4, n_steps=3, n_samples=2, batch_size=64),
    "osmfish_cells": (150, 250),  # ST cells, reference cells (seeded subsample)
}
#: The torchrun fit: tiny in both modes (it checks the launch and the backend, not speed).
TINY_SIM = QUICK["sim"]
TINY_STEPS = 12

#: The tolerances (see the module's docstring for the reasons).
TOL = {
    "infer_bf16_min_pcc": 0.99,
    "infer_bf16_refinement_pcc": 0.95,
    "infer_bf16_accuracy": 0.005,
    "infer_fp32_min_pcc": 0.999,
    "trained_median_pcc": 0.95,
    "trained_accuracy": 0.02,
    "seed_margin": 0.05,
    "ddp_median_pcc": 0.95,
}
NETWORK_ONLY = dict(predictors=("network",), combine="blend")

_T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f} s] {message}", flush=True)


# --- numerics of the "device" side ------------------------------------------------------------
@contextlib.contextmanager
def emulated_bf16():
    """bf16 autocast on the CPU where the library would use it on CUDA (train and infer import
    `autocast` by name, so both names are swapped for the block)."""
    from spalstf.diffusion import sample as infer
    from spalstf.train import denoiser as train

    def cpu_autocast(device, enabled=True):
        if enabled:
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    saved = infer.autocast, train.autocast
    infer.autocast = train.autocast = cpu_autocast
    try:
        yield
    finally:
        infer.autocast, train.autocast = saved


class Side:
    """Where a run computes: "cpu" (the reference, float32) or the device under test."""

    def __init__(self, device: str, emulate: bool):
        self.device, self.emulate = device, emulate

    def __call__(self):
        return emulated_bf16() if self.emulate else contextlib.nullcontext()

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


@contextlib.contextmanager
def precision(model, mixed: bool):
    """The model with `mixed_precision` set for the block (it is a training field, fixed at
    fit; only this check swaps it, to impute one model both ways)."""
    saved = model.config
    model.config = saved.replace(mixed_precision=mixed)
    try:
        yield model
    finally:
        model.config = saved


# --- measures ---------------------------------------------------------------------------------
def gene_pcc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-gene PCC between two cells x genes matrices (NaN for a constant gene)."""
    return metrics.pcc(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


def med(values: np.ndarray) -> float:
    return float(np.nanmedian(values)) if np.isfinite(values).any() else float("nan")


def low(values: np.ndarray) -> float:
    return float(np.nanmin(values)) if np.isfinite(values).any() else float("nan")


class Report:
    """The rows of the table: one criterion each (or a measure given for information)."""

    def __init__(self, args, out: Path):
        self.rows: list[dict] = []
        self.timings: list[dict] = []
        self.out = out
        self.meta = {
            "device_arg": args.device, "quick": bool(args.quick),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
            "bf16": "emulated on CPU" if args.device == "cpu" else "CUDA autocast",
            "cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
            "spalstf": spalstf.__version__,
        }

    def check(self, key: str, section: str, measure: str, value: float, limit: float | None,
              higher: bool = True) -> None:
        if limit is None:
            result = "info"
        elif not np.isfinite(value):
            result = "FAIL"
        else:
            result = "pass" if (value >= limit if higher else value <= limit) else "FAIL"
        self.rows.append({"key": key, "section": section, "measure": measure,
                          "value": float(value), "limit": None if limit is None else
                          f"{'>=' if higher else '<='} {limit:g}", "result": result})
        log(f"{key}: {value:.4g} {self.rows[-1]['limit'] or ''} {result}")

    def fact(self, key: str, section: str, measure: str, ok: bool, detail: str) -> None:
        self.rows.append({"key": key, "section": section, "measure": measure,
                          "value": detail, "limit": "true", "result": "pass" if ok else "FAIL"})
        log(f"{key}: {detail} {'pass' if ok else 'FAIL'}")

    def skip(self, key: str, section: str, why: str) -> None:
        self.rows.append({"key": key, "section": section, "measure": why, "value": None,
                          "limit": None, "result": "skipped"})
        log(f"{key}: skipped ({why})")

    def time(self, data: str, device: str, fit: float, impute: float) -> None:
        self.timings.append({"data": data, "device": device, "fit_seconds": fit,
                             "impute_seconds": impute})

    @property
    def failures(self) -> list[str]:
        return [r["key"] for r in self.rows if r["result"] == "FAIL"]

    def markdown(self) -> str:
        m = self.meta
        lines = [f"# GPU check ({'quick' if m['quick'] else 'full'}, device {m['device_arg']})",
                 "",
                 f"torch {m['torch']} (CUDA {m['cuda']}), GPU {m['gpu']}, bf16: {m['bf16']}, "
                 f"{m['cpu_threads']} CPU threads, Python {m['python']}, spalstf "
                 f"{m['spalstf']}; {time.perf_counter() - _T0:.0f} s in all.", "",
                 "| check | section | measure | value | limit | result |",
                 "|---|---|---|---|---|---|"]
        for r in self.rows:
            value = r["value"]
            shown = "" if value is None else (f"{value:.4f}" if isinstance(value, float)
                                              else str(value))
            lines.append(f"| {r['key']} | {r['section']} | {r['measure']} | {shown} | "
                         f"{r['limit'] or ''} | {r['result']} |")
        lines += ["", "| data | device | fit s | impute s |", "|---|---|---|---|"]
        for t in self.timings:
            lines.append(f"| {t['data']} | {t['device']} | {t['fit_seconds']:.1f} | "
                         f"{t['impute_seconds']:.2f} |")
        failed = self.failures
        lines += ["", f"Result: {'FAILED: ' + ', '.join(failed) if failed else 'all passed'}."]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """Written after every section, so a run cut short still leaves what it measured."""
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out / "gpu_check.md") as tmp:
            tmp.write_text(self.markdown())
        doc = {**self.meta, "seconds": time.perf_counter() - _T0, "tolerances": TOL,
               "rows": self.rows, "timings": self.timings, "failures": self.failures,
               "passed": not self.failures}
        with atomic_path(self.out / "gpu_check.json") as tmp:
            tmp.write_text(json.dumps(_finite(doc), indent=1))


def _finite(value):
    """`value` with NaN and infinities as None (strict JSON)."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# --- 1. simulated data ------------------------------------------------------------------------
def fit_timed(side: Side, sc, known, targets, seed: int, opts: dict):
    with side():
        start = time.perf_counter()
        model = spalstf.fit(sc, known, targets, seed=seed, device=side.device, progress=False,
                            config=NETWORK_ONLY, **opts)
        side.sync()
    return model, time.perf_counter() - start


def impute_timed(side: Side, model, st, **options):
    """(imputation, its prior alone, seconds of the imputation)."""
    with side():
        start = time.perf_counter()
        x = np.asarray(model.impute(st, seed=0, device=side.device, progress=False,
                                    **options).X)
        side.sync()
        seconds = time.perf_counter() - start
        prior = np.asarray(model.impute(st, seed=0, device=side.device, progress=False,
                                        residual_weight=0.0, **options).X)
    return x, prior, seconds


def simulated(report: Report, size: dict, dev: Side, cpu: Side) -> None:
    section = "simulated"
    st, sc = spalstf.datasets.simulate(**size["sim"])
    truth = st.obsm["truth"].to_numpy()
    known, targets = list(st.var_names), list(st.obsm["truth"].columns)
    opts = size["fit"]
    log(f"simulated: {st.n_obs} ST cells, {sc.n_obs} reference cells, {len(known)} known -> "
        f"{len(targets)} targets; fitting on the CPU")
    accuracy = lambda x: med(gene_pcc(truth, x))  # noqa: E731

    model_cpu, fit_cpu = fit_timed(cpu, sc, known, targets, 0, opts)
    x_cpu, prior_cpu, imp_cpu = impute_timed(cpu, model_cpu, st)
    report.time(section, "cpu", fit_cpu, imp_cpu)
    # a. one model, imputed on each side
    x_bf, prior_bf, _ = impute_timed(dev, model_cpu, st)
    key = "sim_infer_bf16"
    report.check(f"{key}.min_pcc", section, "same model, device (bf16) vs CPU: lowest "
                 "per-gene PCC of the imputation", low(gene_pcc(x_cpu, x_bf)),
                 TOL["infer_bf16_min_pcc"])
    report.check(f"{key}.refinement_pcc", section, "same model, bf16 vs CPU: median per-gene "
                 "PCC of the network's refinement (imputation - prior)",
                 med(gene_pcc(x_cpu - prior_cpu, x_bf - prior_bf)),
                 TOL["infer_bf16_refinement_pcc"])
    report.check(f"{key}.max_abs", section, "same model, bf16 vs CPU: max abs difference "
                 "(log1p scale)", float(np.abs(x_cpu - x_bf).max()), None)
    report.check(f"{key}.accuracy_delta", section, "same model: median PCC vs truth, bf16 minus "
                 "CPU (absolute)", abs(accuracy(x_bf) - accuracy(x_cpu)), TOL["infer_bf16_accuracy"],
                 higher=False)
    with precision(model_cpu, False) as fp32:
        x_32, _, _ = impute_timed(dev, fp32, st)
    report.check("sim_infer_fp32.min_pcc", section, "same model, device in float32 vs CPU: "
                 "lowest per-gene PCC", low(gene_pcc(x_cpu, x_32)), TOL["infer_fp32_min_pcc"])
    report.check("sim_infer_fp32.max_abs", section, "same model, float32 vs CPU: max abs "
                 "difference", float(np.abs(x_cpu - x_32).max()), None)
    report.write()

    # b. trained on each side
    log(f"simulated: fitting on {dev.device}" + (" (bf16 emulated)" if dev.emulate else ""))
    model_dev, fit_dev = fit_timed(dev, sc, known, targets, 0, opts)
    x_dev, prior_dev, imp_dev = impute_timed(dev, model_dev, st)
    report.time(section, dev.device + (" (bf16 emulated)" if dev.emulate else ""), fit_dev,
                imp_dev)
    key = "sim_trained"
    report.check(f"{key}.median_pcc", section, "trained on each device, same seed: median "
                 "per-gene PCC between the imputations", med(gene_pcc(x_cpu, x_dev)),
                 TOL["trained_median_pcc"])
    report.check(f"{key}.max_abs", section, "trained on each device: max abs difference",
                 float(np.abs(x_cpu - x_dev).max()), None)
    report.check(f"{key}.accuracy_cpu", section, "median PCC vs truth, CPU",
                 accuracy(x_cpu), None)
    report.check(f"{key}.accuracy_device", section, "median PCC vs truth, device",
                 accuracy(x_dev), None)
    report.check(f"{key}.accuracy_delta", section, "median PCC vs truth, device minus CPU (absolute)",
                 abs(accuracy(x_dev) - accuracy(x_cpu)), TOL["trained_accuracy"], higher=False)
    # against the spread of two seeds, on the device
    model_s1, _ = fit_timed(dev, sc, known, targets, 1, opts)
    x_s1, prior_s1, _ = impute_timed(dev, model_s1, st)
    seeds = med(gene_pcc(x_dev - prior_dev, x_s1 - prior_s1))
    report.check("sim_seeds.refinement_pcc", section, "device, seed 0 vs seed 1: median "
                 "per-gene PCC of the refinement (the reference spread)", seeds, None)
    report.check(f"{key}.refinement_pcc", section, "trained on each device: median per-gene "
                 "PCC of the refinement, limit the two seeds' minus "
                 f"{TOL['seed_margin']}", med(gene_pcc(x_cpu - prior_cpu, x_dev - prior_dev)),
                 seeds - TOL["seed_margin"])
    # c. the same fit again on the device
    model_again, _ = fit_timed(dev, sc, known, targets, 0, opts)
    x_again, _, _ = impute_timed(dev, model_again, st)
    report.check("sim_repeat.max_abs", section, "device, the same fit twice: max abs "
                 "difference (0: reproducible)", float(np.abs(x_dev - x_again).max()), None)
    report.write()


# --- 2. osmFISH ------------------------------------------------------------------------------
def osmfish(report: Report, size: dict, dev: Side, cpu: Side, data_dir: str | None) -> None:
    section = "osmfish"
    try:
        st, sc = spalstf.datasets.load("osmfish", data_dir=data_dir)
    except (FileNotFoundError, ValueError, OSError) as exc:
        report.skip("osmfish", section, f"data not found: {str(exc).splitlines()[0][:120]}")
        report.write()
        return
    from spalstf.evaluate.cv import gene_folds

    if size["osmfish_cells"] is not None:
        rng = np.random.default_rng(0)
        n_st, n_sc = size["osmfish_cells"]
        st = st[np.sort(rng.choice(st.n_obs, min(n_st, st.n_obs), replace=False))].copy()
        sc = sc[np.sort(rng.choice(sc.n_obs, min(n_sc, sc.n_obs), replace=False))].copy()
    shared = [g for g in st.var_names if g in set(sc.var_names)]
    st = st[:, shared].copy()
    hidden = gene_folds(shared, 5, 0)[0]
    counts = st.X.toarray() if hasattr(st.X, "toarray") else np.asarray(st.X)
    measured = np.log1p(counts / np.clip(counts.sum(1, keepdims=True), 1e-12, None) * 1e4)
    measured = measured[:, [shared.index(g) for g in hidden]]
    st_known = st[:, [g for g in shared if g not in hidden]].copy()
    log(f"osmfish: {st.n_obs} ST cells, {sc.n_obs} reference cells, {len(hidden)} hidden genes")
    fit_opts = {k: v for k, v in size["fit"].items()}
    results = {}
    for side in (cpu, dev):
        with side():
            res = spalstf.impute(st_known, sc, hidden, seed=0, device=side.device,
                                 progress=False, select=None, config=NETWORK_ONLY, **fit_opts)
        t = res.uns["spalstf"]["timings"]
        name = side.device + (" (bf16 emulated)" if side.emulate else "")
        report.time(section, name, t["fit_seconds"], t["impute_seconds"])
        results[side is dev] = np.asarray(res[:, hidden].X)
    x_cpu, x_dev = results[False], results[True]
    acc_cpu, acc_dev = med(gene_pcc(measured, x_cpu)), med(gene_pcc(measured, x_dev))
    report.check("osmfish_trained.median_pcc", section, "trained on each device: median "
                 "per-gene PCC between the imputations", med(gene_pcc(x_cpu, x_dev)),
                 TOL["trained_median_pcc"])
    report.check("osmfish_trained.accuracy_cpu", section, "median PCC vs measured, CPU",
                 acc_cpu, None)
    report.check("osmfish_trained.accuracy_device", section, "median PCC vs measured, device",
                 acc_dev, None)
    report.check("osmfish_trained.accuracy_delta", section, "median PCC vs measured, device "
                 "minus CPU (absolute)", abs(acc_dev - acc_cpu), TOL["trained_accuracy"], higher=False)
    report.write()


# --- 3. torchrun ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_worker(argv: list[str]) -> int:
    """Under torchrun: `spalstf fit` (the command line) with the process group joined even for
    a world of one process, so the backend and DistributedDataParallel really run."""
    import torch.distributed as dist

    from spalstf.cli import main
    from spalstf.train import distributed

    if os.environ.get("SPALSTF_FORCE_GROUP") == "1":
        distributed.launched = lambda: True
        distributed.active = lambda: dist.is_available() and dist.is_initialized()
    wrap = distributed.wrap

    def recording_wrap(module, device):
        wrapped = wrap(module, device)
        print(f"GPU_CHECK wrapped {type(wrapped).__name__} backend "
              f"{dist.get_backend() if dist.is_initialized() else 'none'} world "
              f"{dist.get_world_size() if dist.is_initialized() else 1} device {device}",
              file=sys.stderr, flush=True)
        return wrapped

    distributed.wrap = recording_wrap  # spalstf.train.denoiser calls it through the module
    return main(argv)


def torchrun(report: Report, dev: Side, workdir: Path) -> None:
    section = "torchrun"
    backend = "nccl" if dev.device == "cuda" else "gloo"
    st, sc = spalstf.datasets.simulate(**TINY_SIM)
    sc_path = workdir / "tiny_sc.h5ad"
    sc.write_h5ad(sc_path)
    known, targets = list(st.var_names), list(st.obsm["truth"].columns)
    fit_args = ["fit", "--sc", str(sc_path), "--known", ",".join(known), "--genes",
                ",".join(targets), "--max-steps", str(TINY_STEPS), "--epochs", "1000",
                "--batch-size", "64", "--seed", "0", "--quiet", "--device", dev.device,
                "--predictors", "network"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])),
        "SPALSTF_FORCE_GROUP": "1"}
    if dev.device == "cpu":
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
    nproc = 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(Path(__file__).resolve()), "--ddp-worker", "-v", *fit_args,
           "--model-out", str(workdir / "ddp")]
    log(f"torchrun: 1 process, {backend}")
    start = time.perf_counter()
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        report.fact("torchrun_1.exit", section, "torchrun exited within 240 s", False,
                    "timed out")
        report.write()
        return
    seconds = time.perf_counter() - start
    ok = run.returncode == 0
    detail = f"exit {run.returncode} in {seconds:.0f} s"
    if not ok:
        print(run.stdout[-2000:], run.stderr[-4000:], sep="\n", file=sys.stderr)
    report.fact("torchrun_1.exit", section, "torchrun --nproc_per_node 1, spalstf fit: exit "
                "status 0", ok, detail)
    joined = f"joined a {backend} process group: rank 0 of 1" in run.stderr
    report.fact("torchrun_1.backend", section, f"the log says the process joined a {backend} "
                "group", joined, "yes" if joined else "no")
    wrapped = f"wrapped DistributedDataParallel backend {backend}" in run.stderr
    report.fact("torchrun_1.ddp", section, "the network was wrapped in "
                "DistributedDataParallel", wrapped, "yes" if wrapped else "no")
    if ok:
        ddp_model = spalstf.load(workdir / "ddp", device=dev.device)
        # the command line's settings: the network alone, the default combination (no
        # stack is learnt without --st, so both impute by the fixed blend)
        plain = spalstf.fit(sc, known, targets, seed=0, device=dev.device, progress=False,
                            max_steps=TINY_STEPS, epochs=1000, batch_size=64,
                            predictors=("network",))
        a = np.asarray(plain.impute(st, seed=0, device=dev.device, progress=False).X)
        b = np.asarray(ddp_model.impute(st, seed=0, device=dev.device, progress=False).X)
        report.check("torchrun_1.median_pcc", section, "its model vs a plain fit on the same "
                     "device: median per-gene PCC of the imputations", med(gene_pcc(a, b)),
                     TOL["ddp_median_pcc"])
        report.check("torchrun_1.max_abs", section, "its model vs a plain fit: max abs "
                     "difference", float(np.abs(a - b).max()), None)
    if dev.device == "cuda" and torch.cuda.device_count() >= 2:
        env2 = {k: v for k, v in env.items() if k != "SPALSTF_FORCE_GROUP"}
        cmd2 = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                "-m", "spalstf.cli", "-v", *fit_args, "--model-out", str(workdir / "ddp2")]
        try:
            run2 = subprocess.run(cmd2, env=env2, capture_output=True, text=True, timeout=240)
            ok2 = run2.returncode == 0 and "nccl process group: rank 1 of 2" in run2.stderr
            detail2 = f"exit {run2.returncode}"
        except subprocess.TimeoutExpired:
            ok2, detail2 = False, "timed out"
        report.fact("torchrun_2.nccl", section, "torchrun --nproc_per_node 2 (two GPUs): "
                    "exit 0, rank 1 of 2 joined nccl", ok2, detail2)
    report.write()


# --- main -------------------------------------------------------------------------------------
def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="the device under test (cpu: the flow on CPU, bf16 emulated, gloo)")
    ap.add_argument("--quick", action="store_true", help="tiny data and training: seconds")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                    help="folder for gpu_check.md and gpu_check.json")
    ap.add_argument("--data-dir", default=None,
                    help="folder holding osmfish/ (default: $SPALSTF_DATA, ../shared/data)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="training updates of the simulated and osmFISH fits (default 500; "
                         "quick 12)")
    ap.add_argument("--skip", default="", metavar="LIST",
                    help="sections to leave out: any of simulated,osmfish,torchrun")
    ap.add_argument("--no-emulate", action="store_true",
                    help="with --device cpu: no bf16 emulation (then CPU vs CPU)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--ddp-worker":
        return ddp_worker(argv[1:])
    args = parse(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: --device cuda, but this torch ({torch.__version__}) sees no CUDA "
              "device; install a CUDA build of torch, or run --device cpu --quick",
              file=sys.stderr)
        return 2
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - {"simulated", "osmfish", "torchrun"}
    if unknown:
        print(f"gpu_check: unknown sections in --skip: {sorted(unknown)}", file=sys.stderr)
        return 2
    size = {**(QUICK if args.quick else FULL)}
    size["fit"] = dict(size["fit"])
    if args.max_steps is not None:
        size["fit"]["max_steps"] = args.max_steps
    if args.device == "cuda" and torch.cuda.is_available() \
            and not torch.cuda.is_bf16_supported():
        log("warning: this GPU does not support bf16: the library computes in float32 there")
    cpu = Side("cpu", False)
    dev = Side(args.device, args.device == "cpu" and not args.no_emulate)
    report = Report(args, Path(args.out))
    log(f"gpu_check: device {args.device}{' (bf16 emulated)' if dev.emulate else ''}, "
        f"{'quick' if args.quick else 'full'}, out {args.out}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in (("simulated", lambda: simulated(report, size, dev, cpu)),
                          ("osmfish", lambda: osmfish(report, size, dev, cpu, args.data_dir)),
                          ("torchrun", lambda: torchrun(report, dev, Path(tmp)))):
            if name in skip:
                report.skip(name, name, "--skip")
                report.write()
                continue
            try:
                run()
            except Exception as exc:  # a crash on the GPU is a finding: record it, go on
                import traceback

                traceback.print_exc()
                report.fact(f"{name}.crash", name, "the section ran without an error", False,
                            f"{type(exc).__name__}: {str(exc)[:200]}")
            report.write()
    print()
    print(report.markdown(), flush=True)
    failed = report.failures
    if failed:
        print(f"gpu_check FAILED: {', '.join(failed)} (see {Path(args.out) / 'gpu_check.md'})",
              file=sys.stderr)
        return 1
    print(f"gpu_check passed; wrote {Path(args.out) / 'gpu_check.md'} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
