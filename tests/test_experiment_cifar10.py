"""The CIFAR-10/digits sampling experiment end to end at toy size (slow: trains and samples)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import load_script

REPO = Path(__file__).resolve().parents[1]


def _experiment_module():
    return load_script(REPO / "experiments" / "cifar10_sampling.py", "cifar10_sampling")


def test_table_marks_budget_columns_and_the_nfe_actually_used():
    """Columns are NFE budgets; Heun at budget 6 takes 3 steps = 5 evaluations, and says so."""
    mod = _experiment_module()
    rows = [dict(solver="ddim", nfe_budget=6, nfe=6, stochastic=False, fd=1.5, fd_std=0.1),
            dict(solver="heun", nfe_budget=6, nfe=5, stochastic=False, fd=2.5, fd_std=0.2)]
    lines = mod.table_lines(rows, ["ddim", "heun"], [6], "fd", "t")
    assert "NFE ≤ 6" in lines[2]
    assert lines[4] == "| ddim | **1.500 ± 0.10** |"
    assert lines[5] == "| heun | 2.500 ± 0.20 (NFE 5) |"


@pytest.mark.slow
def test_experiment_runs_end_to_end_on_digits(tmp_path):
    cmd = [sys.executable, str(REPO / "experiments" / "cifar10_sampling.py"), "--workdir", str(tmp_path / "run"),
           "--steps", "30", "--feature-steps", "100", "--solvers", "ddim,dpmpp_2m", "--nfe", "5,8",
           "--n-samples", "200", "--quiet"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "sampling" / "results.json").read_text())
    assert res["train_steps"] == 30 and len(res["rows"]) == 4
    assert all(r["finite"] and r["fd"] > 0 for r in res["rows"])
    base = res["baselines"]
    assert base["test split vs train"] < 0.2 * base["Gaussian noise images vs train"]
    assert "stratified subsets of 200 training images vs test" in base
    for name in ("fd_table.md", "fd_vs_nfe.png", "samples_ddim_nfe5.png", "data_train.png"):
        assert (tmp_path / "run" / "sampling" / name).stat().st_size > 0
    # sampling again from the trained run, with two noise sets per cell and the baseline spread
    out = subprocess.run(cmd + ["--no-train", "--repeats", "2", "--nfe", "5", "--variants", "plain,both",
                                "--teleport", "0.3"], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "sampling" / "results.json").read_text())
    assert [r["solver"] for r in res["rows"]] == ["ddim", "ddim+both", "dpmpp_2m", "dpmpp_2m+both"]
    for r in res["rows"]:
        if r["variant"] == "both":
            assert 0 < r["teleport_fraction"] <= 0.3 and r["dualfast"] is not None and r["nfe"] == 5
    for r in res["rows"]:
        assert len(r["fd_runs"]) == 2 and r["fd"] == pytest.approx(sum(r["fd_runs"]) / 2)
        assert r["fd_std"] > 0 and r["fd_runs"][0] != r["fd_runs"][1]
    assert {k.split(" ")[0] for k in res["baseline_spread"]} == {"random", "stratified"}
    assert all(len(v["runs"]) == 2 for v in res["baseline_spread"].values())
    assert "stratified subsets of 200 training images vs test" in res["baseline_spread"]
    assert res["config"]["steps"] == 30  # the trained run's configuration, not the preset's
    assert "±" in (tmp_path / "run" / "sampling" / "fd_table.md").read_text()
