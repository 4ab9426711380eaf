"""experiments/cfg_alignment.py: standard vs guidance-aligned training at equal compute.

Default set: bad inputs are one line ``cfg_alignment.py: error: ...``, status 2, no files written,
and the two variants' configurations make the same number of network example-passes. Slow: the
``--quick`` run end to end.
"""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import assert_one_line_error, load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "cfg_alignment.py"


@pytest.fixture(scope="module")
def mod():
    return load_script(SCRIPT, "cfg_alignment")


BAD_INPUTS = [
    (["--variants", "standard,guided"], "unknown variant(s) 'guided'"),
    (["--variants", ""], "--variants is empty"),
    (["--scales", "0,two"], "--scales must be a comma list of numbers"),
    (["--scales", "0,nan"], "finite"),
    (["--nfe", "5,0"], "--nfe values must be positive integers"),
    (["--solver", "nope"], "unknown solver 'nope'"),
    (["--solver", "ddpm"], "is stochastic"),
    (["--train-seeds", "0,x"], "--train-seeds must be a comma list of integers"),
    (["--train-seeds", "0,0"], "lists a value twice"),
    (["--equal-compute", "flops"], "invalid choice"),
    (["--batch-size", "65"], "must be even"),
    (["--equal-compute", "steps", "--steps", "7"], "--steps must be even"),
    (["--align-scale", "-1"], "--align-scale must be non-negative"),
    (["--align-scale-sampling", "gauss"], "unknown align_scale_sampling 'gauss'"),
    (["--align-mix", "2"], "--align-mix must be at most 1"),
    (["--variants", "standard", "--align-scale", "3"], "applies to the aligned variant"),
    (["--seed", "1"], "use --train-seeds"),
    (["--guidance-loss", "aligned"], "use --variants"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--n-samples", "0"], "--n-samples must be at least 1"),
    (["--grid", "fancy"], "unknown grid 'fancy'"),
    (["--data", "mix2d"], "labelled images"),
    (["--workdir", "FILE"], "exists and is not a directory"),
    (["--no-train"], "holds no trained run"),
    (["--workdir", "OLD"], "holds a run with a different configuration"),
    (["--workdir", "FEAT"], "caches a feature network trained for 50 steps"),
]


def _prepare(tmp_path):
    from jdiff.run import RunConfig

    (tmp_path / "FILE").write_text("not a directory")
    (tmp_path / "OLD" / "standard").mkdir(parents=True)  # a run with another configuration
    (tmp_path / "OLD" / "standard" / "config.json").write_text(json.dumps(dataclasses.asdict(RunConfig())))
    (tmp_path / "FEAT").mkdir()  # a feature network cached with other steps
    (tmp_path / "FEAT" / "feature_net.json").write_text(json.dumps({"steps": 50}))


@pytest.mark.parametrize("argv,message", BAD_INPUTS, ids=[" ".join(a) or "empty" for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_status_2(argv, message, mod, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _prepare(tmp_path)
    assert_one_line_error(mod.main, argv, "cfg_alignment.py", message, tmp_path, capsys)


def test_bad_input_from_the_shell_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--scales", "1,1"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == "cfg_alignment.py: error: --scales lists a scale twice: '1,1'\n"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("mode", ["batch", "steps"])
def test_variants_train_at_equal_compute(mod, mode):
    args = mod.parse_args(["--equal-compute", mode, "--align-scale", "3", "--steps", "1000"])
    std, ali = mod.variant_config(args, "standard", 0), mod.variant_config(args, "aligned", 0)
    assert (std.guidance_loss, ali.guidance_loss) == ("standard", "aligned")
    assert std.conditional and ali.conditional and std.seed == ali.seed == 0
    assert std.align_scale == 1.0 and ali.align_scale == 3.0  # the standard run keeps RunConfig's defaults
    assert mod.network_passes(std) == mod.network_passes(ali) == 1000 * 128
    if mode == "batch":
        assert (ali.steps, ali.batch_size) == (1000, 64)
    else:
        assert (ali.steps, ali.batch_size, ali.warmup_steps) == (500, 128, std.warmup_steps // 2)
    assert mod.run_dir(Path("w"), "aligned", 0) == Path("w/aligned")
    assert mod.run_dir(Path("w"), "aligned", 2) == Path("w/aligned_seed2")


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    work, out_dir = tmp_path / "work", tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--quiet", "--workdir", str(work), "--out", str(out_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((out_dir / "results.json").read_text())
    assert res["variants"] == ["standard", "aligned"] and res["train_seeds"] == [0]
    assert res["scales"] == [0.0, 1.0, 2.0, 4.0] and res["nfe_budgets"] == [5, 10, 20]
    assert [m["variant"] for m in res["models"]] == ["standard", "aligned"]
    assert res["models"][0]["network_passes"] == res["models"][1]["network_passes"]
    assert res["models"][1]["config"]["batch_size"] == res["models"][0]["config"]["batch_size"] // 2
    for m in res["models"]:
        assert sorted((r["w"], r["nfe_budget"]) for r in m["rows"]) == sorted(
            (w, n) for w in res["scales"] for n in res["nfe_budgets"])
        for r in m["rows"]:
            assert r["finite"] and len(r["fd_runs"]) == res["repeats"] == 2
            assert all(math.isfinite(r[k]) and r[k] >= 0 for k in ("fd", "fd_std", "accuracy", "fd_vs_test"))
            assert 0.0 <= r["accuracy"] <= 1.0
    assert math.isfinite(res["baselines"]["test split vs train"]) and 0 < res["feature_net"]["test_accuracy"] <= 1
    assert res["align"] == {"align_scale": 2.0, "align_scale_sampling": "fixed", "align_stop_grad": True,
                            "align_mix": 0.0}
    for name in ("cfg_table.md", "fd_vs_w.png", "samples_standard_w2_nfe10.png", "samples_aligned_w2_nfe10.png"):
        assert (out_dir / name).stat().st_size > 0, name
    table = (out_dir / "cfg_table.md").read_text()
    assert "| aligned | 4 (≙ 0.67) |" in table and "±" in table


@pytest.mark.parametrize("sampling,mix", [("fixed", 0.0), ("fixed", 0.3), ("uniform", 0.0), ("uniform", 0.5)])
def test_standard_equivalent_scale_is_the_exact_fit_of_the_aligned_loss(mod, sampling, mix):
    """Fit the aligned loss exactly by least squares over many (s, mixing) draws for scalar targets
    F_c, F_u; guidance with the fitted output must equal standard guidance at w'."""
    import numpy as np

    rng = np.random.default_rng(0)
    s_max, f_c, f_u = 2.0, 0.7, -0.4
    n = 400_000
    s = np.full(n, s_max) if sampling == "fixed" else rng.uniform(0, s_max, n)
    plain = rng.uniform(size=n) < mix  # examples trained on the standard loss
    coef = np.where(plain, 1.0, 1.0 + s)  # residual: coef * m_c - (coef - 1) * m_u - F_c
    m_c = np.sum(coef * (f_c + (coef - 1) * f_u)) / np.sum(coef**2)
    to_std = mod.equivalent_scale(dict(align_scale=s_max, align_scale_sampling=sampling, align_stop_grad=True,
                                       align_mix=mix))
    for w in (0.0, 1.0, 2.0, 4.0):
        w_std = to_std(w)
        assert (1 + w) * m_c - w * f_u == pytest.approx((1 + w_std) * f_c - w_std * f_u, abs=5e-3)
    assert mod.equivalent_scale(dict(align_scale=2.0, align_scale_sampling="fixed", align_stop_grad=False,
                                     align_mix=0.0)) is None
