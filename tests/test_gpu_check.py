"""benchmarks/gpu_check.py, the prepared GPU check, runs end to end on the CPU.

``--device cpu --quick``: tiny data, the "device" side being the CPU with bf16 autocast
emulated; it must write its table and JSON with every row. The torchrun section (gloo, one
process with the group forced) is tested on its own, as it starts a second Python.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SHARED_OSMFISH = REPO / ".." / "shared" / "data" / "osmfish"

SIMULATED_KEYS = [
    "sim_infer_bf16.min_pcc", "sim_infer_bf16.refinement_pcc", "sim_infer_bf16.max_abs",
    "sim_infer_bf16.accuracy_delta", "sim_infer_fp32.min_pcc", "sim_infer_fp32.max_abs",
    "sim_trained.median_pcc", "sim_trained.max_abs", "sim_trained.accuracy_cpu",
    "sim_trained.accuracy_device", "sim_trained.accuracy_delta", "sim_seeds.refinement_pcc",
    "sim_trained.refinement_pcc", "sim_repeat.max_abs",
]
OSMFISH_KEYS = ["osmfish_trained.median_pcc", "osmfish_trained.accuracy_cpu",
                "osmfish_trained.accuracy_device", "osmfish_trained.accuracy_delta"]
TORCHRUN_KEYS = ["torchrun_1.exit", "torchrun_1.backend", "torchrun_1.ddp",
                 "torchrun_1.median_pcc", "torchrun_1.max_abs"]


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out",
                           str(out), *extra], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def _read(out: Path) -> tuple[str, dict]:
    table = (out / "gpu_check.md").read_text()
    doc = json.loads((out / "gpu_check.json").read_text())
    return table, doc


def test_quick_cpu_flow_writes_the_table_and_json(tmp_path):
    run = _run(tmp_path, "--skip", "torchrun")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    table, doc = _read(tmp_path)
    keys = [row["key"] for row in doc["rows"]]
    expected = SIMULATED_KEYS + (OSMFISH_KEYS if SHARED_OSMFISH.is_dir() else ["osmfish"])
    assert keys == expected + ["torchrun"]
    assert doc["passed"] and doc["failures"] == []
    assert doc["bf16"] == "emulated on CPU" and doc["quick"]
    results = {row["key"]: row["result"] for row in doc["rows"]}
    assert results["torchrun"] == "skipped"
    assert results["sim_infer_bf16.min_pcc"] == "pass" and results["sim_repeat.max_abs"] == "info"
    # the emulated bf16 really changes the arithmetic, and the CPU reproduces a seed exactly
    values = {row["key"]: row["value"] for row in doc["rows"]}
    assert 0 < values["sim_infer_bf16.max_abs"] < 0.1
    assert values["sim_infer_fp32.max_abs"] == 0 and values["sim_repeat.max_abs"] == 0
    for key in expected:
        assert f"| {key} |" in table
    assert "Result: all passed." in table and "| simulated | cpu |" in table
    assert "gpu_check passed" in run.stdout


def test_a_failed_criterion_exits_non_zero_naming_it(tmp_path):
    # a tolerance no run can meet (through the module, in the same process: no subprocess)
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    report = gpu_check.Report(gpu_check.parse(["--device", "cpu", "--out", str(tmp_path)]),
                              tmp_path)
    report.check("x.pcc", "s", "a measure", 0.5, 0.95)
    report.check("x.delta", "s", "a difference", 0.01, 0.02, higher=False)
    report.check("x.nan", "s", "not finite", float("nan"), 0.5)
    report.write()
    table, doc = _read(tmp_path)
    assert doc["failures"] == ["x.pcc", "x.nan"] and not doc["passed"]
    assert "Result: FAILED: x.pcc, x.nan." in table


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo, as test_scale")
def test_the_torchrun_section_joins_gloo_and_wraps_ddp(tmp_path):
    run = _run(tmp_path, "--skip", "simulated,osmfish")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    _, doc = _read(tmp_path)
    rows = {row["key"]: row for row in doc["rows"]}
    assert list(rows) == ["simulated", "osmfish"] + TORCHRUN_KEYS
    assert all(rows[k]["result"] == "pass" for k in TORCHRUN_KEYS if k != "torchrun_1.max_abs")
    # one process in DDP is the plain fit up to float noise
    assert rows["torchrun_1.max_abs"]["value"] < 1e-3
