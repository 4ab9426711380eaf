"""``jdiff bench discrete``: writes its outputs; every bad input is one line, status 2, no files."""

import json
import sys

import pytest

from jdiff.cli import main as jdiff_main


@pytest.mark.parametrize("steps", ["8", pytest.param("1,8", marks=pytest.mark.slow)])
def test_bench_discrete_writes_json_md_png(tmp_path, capsys, monkeypatch, steps):
    out = tmp_path / "bd"
    argv = ["bench", "discrete", "--steps", steps, "--T", "1,2,64", "--schedules", "linear", "--n", "3000",
            "--out", str(out), "--quiet"]
    monkeypatch.setattr(sys, "argv", ["jdiff", *argv])
    code = jdiff_main(argv)
    assert code == 0
    assert "wrote" in capsys.readouterr().out
    recs = json.loads((out / "discrete.json").read_text())
    samp = {r["steps"]: r for r in recs if r["record"] == "sampler"}
    bnd = {r["T"]: r for r in recs if r["record"] == "bound"}
    assert set(samp) == {int(k) for k in steps.split(",")} and set(bnd) == {1, 2, 64}
    assert {"sampler", "steps", "tv", "tv_floor"} <= set(samp[8]) and {"T", "bound_bits", "entropy_bits"} <= set(bnd[1])
    assert samp[8]["mask_left"] == 0 and samp[8]["tv"] < 2 * samp[8]["tv_floor"]
    if 1 in samp:
        assert samp[8]["tv"] < samp[1]["tv"]
    assert bnd[1]["bound_bits"] > bnd[2]["bound_bits"] > bnd[64]["bound_bits"] > bnd[64]["entropy_bits"]
    assert bnd[1]["method"] == "exact" and bnd[1]["bound_se_bits"] == 0
    md = (out / "discrete.md").read_text()
    assert "Command: `jdiff bench discrete" in md and "| ancestral-linear |" in md and "T = 64" in md
    assert (out / "discrete.png").stat().st_size > 1000


BAD = [
    (["--steps", "0"], "--steps values must be positive integers"),
    (["--steps", "2,x"], "--steps must be a comma list of integers"),
    (["--T", "4,4"], "--T lists a value twice"),
    (["--schedules", "linear,spindle"], "unknown discrete schedule(s) 'spindle'"),
    (["--schedules", ""], "--schedules is empty"),
    (["--testbed", "nope"], "unknown discrete testbed 'nope'"),
    (["--testbed", ""], "--testbed is empty"),
    (["--testbed", "missing.json"], "missing.json"),
    (["--testbed", "SPEC"], "field 'probs' must sum to 1"),
    (["--n", "1"], "--n must be at least 2"),
    (["--mc", "1"], "--mc must be 0 (auto) or at least 2"),
    (["--out", "FILE"], "is not a directory"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_status_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("not a directory")
    (tmp_path / "spec.json").write_text(json.dumps({"weights": [1.0], "probs": [[[0.6, 0.6]]]}))
    argv = ["spec.json" if a == "SPEC" else a for a in argv]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    try:
        code = jdiff_main(["bench", "discrete", *argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert err.startswith("jdiff: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert "Traceback" not in err and out == ""
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
