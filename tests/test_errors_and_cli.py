"""Clear errors on bad input (library ValueError and CLI one-liners) and the CLI end to end."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import grids, solvers
from jdiff.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_unknown_solver_lists_valid(capsys):
    with pytest.raises(ValueError, match="valid: ddpm, ddim, euler, euler_ancestral, heun"):
        solvers.get_solver("dpm_nope")
    code, _, err = run_cli(capsys, "bench", "steps", "--solvers", "ddim,nope", "--out", "unused")
    assert code == 2 and err.count("\n") == 1
    assert "unknown solver 'nope'" in err and "valid: ddpm, ddim" in err


def test_unknown_testbed_grid_schedule(capsys):
    code, _, err = run_cli(capsys, "bench", "steps", "--testbed", "mix2d,nope")
    assert code == 2 and "unknown testbed 'nope'" in err and "mix16d" in err
    code, _, err = run_cli(capsys, "bench", "steps", "--grid", "fancy")
    assert code == 2 and "unknown grid 'fancy'" in err and "karras" in err
    code, _, err = run_cli(capsys, "bench", "steps", "--schedule", "vpp")
    assert code == 2 and "unknown schedule 'vpp'" in err
    code, _, err = run_cli(capsys, "sample", "--solver", "nope")
    assert code == 2 and "valid: ddpm" in err


def test_nfe_below_minimum(capsys):
    with pytest.raises(ValueError, match="'heun' needs NFE >= 3"):
        solvers.steps_for_nfe(solvers.get_solver("heun"), 2)
    code, _, err = run_cli(capsys, "bench", "steps", "--solvers", "heun", "--nfe", "2,10")
    assert code == 2 and "needs NFE >= 3" in err
    code, _, err = run_cli(capsys, "bench", "steps", "--nfe", "0")
    assert code == 2 and "positive" in err
    with pytest.raises(ValueError, match="at least 2 steps"):
        jdiff.sample(lambda x, t, args: x, jdiff.schedules.vp_discrete(), solvers.get_solver("heun"),
                     np.array([1.0, 0.0]), jnp.ones((1, 2)))


def test_noise_shape_mismatch(capsys, tmp_path):
    p = tmp_path / "z.npy"
    np.save(p, np.zeros((10, 3), np.float32))
    code, _, err = run_cli(capsys, "bench", "steps", "--testbed", "mix2d", "--noise", str(p))
    assert code == 2 and "shape (10, 3)" in err and "(n, 2)" in err
    code, _, err = run_cli(capsys, "sample", "--testbed", "mix16d", "--noise", str(p))
    assert code == 2 and "(n, 16)" in err


def test_malformed_spec_cli(capsys, tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"weights": [1.0], "means": [[0.0]], "stds": [[0.0]]}))
    code, _, err = run_cli(capsys, "bench", "steps", "--testbed", str(p))
    assert code == 2 and "field 'stds' must be positive" in err


def test_stochastic_needs_key():
    with pytest.raises(ValueError, match="stochastic: pass a PRNG key"):
        jdiff.sample(lambda x, t, args: x, jdiff.schedules.vp_discrete(), solvers.get_solver("ddpm"),
                     grids.make_grid(jdiff.schedules.vp_discrete(), "logsnr", 3), jnp.ones((1, 2)))


def test_non_finite_values_name_first_bad_step():
    vp = jdiff.schedules.vp_discrete()
    g = grids.make_grid(vp, "uniform_t", 6)

    def model(x, t, args=None):  # blows up once t < 0.45
        return jnp.where(t < 0.45, jnp.nan, 0.1 * x)

    with pytest.raises(ValueError, match=r"first appeared at step 3 \(t=0.4006 -> 0.2008\)"):
        jdiff.sample(model, vp, solvers.get_solver("ddim"), g, jnp.ones((2, 2)), check_finite=True)
    # without the check the NaNs come back silently (the check is opt-in)
    x = jdiff.sample(model, vp, solvers.get_solver("ddim"), g, jnp.ones((2, 2)))
    assert np.isnan(np.asarray(x)).all()
    with pytest.raises(ValueError, match="non-finite values in x_T"):
        jdiff.sample(model, vp, solvers.get_solver("ddim"), g, jnp.full((2, 2), jnp.inf),
                     check_finite=True)


def test_bench_steps_small_run_writes_outputs(capsys, tmp_path):
    out = tmp_path / "bench"
    code, stdout, _ = run_cli(
        capsys, "bench", "steps", "--testbed", "mix2d", "--solvers", "ddim,heun,ddpm",
        "--nfe", "5,9", "--grid", "logsnr,karras", "--n", "200", "--out", str(out), "--quiet")
    assert code == 0, stdout
    recs = json.loads((out / "step_counts.json").read_text())
    assert len(recs) == 1 * 3 * 2 * 2
    for r in recs:
        for k in ("testbed", "solver", "grid", "nfe", "rmse", "median_error", "sw"):
            assert k in r
        assert r["nfe"] <= r["nfe_budget"] and r["finite"]
    by = {(r["solver"], r["grid"], r["nfe_budget"]): r for r in recs}
    # more steps, less error (deterministic solvers); Heun beats DDIM at NFE 9
    assert by[("ddim", "karras", 9)]["rmse"] < by[("ddim", "karras", 5)]["rmse"]
    assert by[("heun", "logsnr", 9)]["nfe"] == 9
    md = (out / "step_counts.md").read_text()
    assert "| ddim | logsnr |" in md and "**" in md
    assert (out / "step_counts.png").stat().st_size > 1000


def test_bench_steps_with_accelerators_records_them_and_teleport_is_exact_on_a_gaussian(capsys, tmp_path):
    """On gauss16d the closed-form teleport is exact: DDIM then takes its steps over half the
    range, with less error; records say what was done (DualFast at scale 0 is the identity)."""
    base = ["bench", "steps", "--testbed", "gauss16d", "--solvers", "ddim,dpmpp_2m", "--nfe", "5",
            "--n", "200", "--quiet"]
    assert run_cli(capsys, *base, "--out", str(tmp_path / "plain"))[0] == 0
    code, _, err = run_cli(capsys, *base, "--teleport", "0.5", "--dualfast", "scale=0",  # 0: the identity
                           "--out", str(tmp_path / "acc"))
    assert code == 0, err
    plain, acc = ({(r["solver"], r["nfe_budget"]): r for r in json.loads((tmp_path / d / "step_counts.json").read_text())}
                  for d in ("plain", "acc"))
    for key, r in acc.items():
        assert r["nfe"] == r["nfe_budget"] == plain[key]["nfe"] and r["nfe_total"] == r["nfe"]
        assert 0.3 < r["teleport_fraction"] <= 0.5 and r["teleport"] == 0.5 and r["probe_calls"] == 0
        assert r["dualfast"] is None and r["dualfast_per_solver"] and r["finite"]  # scale 0: off, no hook
    # DDIM (first order, no history): the same steps over half the range
    assert acc[("ddim", 5)]["rmse"] < 0.67 * plain[("ddim", 5)]["rmse"]
    assert "teleport 0.5" in (tmp_path / "acc" / "step_counts.md").read_text()


def test_bench_noise_file_is_used(capsys, tmp_path):
    z = np.random.RandomState(3).standard_normal((50, 2)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    code, _, _ = run_cli(capsys, "bench", "steps", "--testbed", "mix2d", "--solvers", "ddim",
                         "--nfe", "6", "--noise", str(tmp_path / "z.npy"), "--out", str(tmp_path / "o"),
                         "--quiet")
    assert code == 0
    rec = json.loads((tmp_path / "o" / "step_counts.json").read_text())[0]
    assert rec["n_samples"] == 50


def test_sample_command(capsys, tmp_path):
    out = tmp_path / "s.dat"  # written under the name given (np.save would append .npy)
    code, stdout, _ = run_cli(capsys, "sample", "--testbed", "mix2d", "--solver", "heun", "--nfe", "9",
                              "--n", "64", "--out", str(out))
    assert code == 0 and "NFE 9" in stdout and f"wrote {out}" in stdout
    assert np.load(out).shape == (64, 2)



def test_sample_denoise_to_zero_needs_t_min_and_counts_its_call(capsys, tmp_path):
    out = tmp_path / "s.npy"
    code, _, err = run_cli(capsys, "sample", "--testbed", "mix2d", "--denoise-to-zero", "--out", str(out))
    assert code == 2 and "--final t_min" in err
    code, stdout, _ = run_cli(capsys, "sample", "--testbed", "mix2d", "--solver", "ddim", "--nfe", "6",
                              "--final", "t_min", "--denoise-to-zero", "--n", "16", "--out", str(out))
    assert code == 0 and "NFE 6" in stdout  # 5 steps + the final denoising call fit the budget


def test_sample_command_prng_choice(capsys, tmp_path):
    """--prng picks the key of stochastic solvers: same seed, other stream, same distribution."""
    outs = {}
    for impl in ("threefry2x32", "threefry_xla"):
        outs[impl] = tmp_path / f"{impl}.npy"
        code, _, _ = run_cli(capsys, "sample", "--testbed", "mix2d", "--solver", "ddpm", "--nfe", "8",
                             "--n", "32", "--prng", impl, "--out", str(outs[impl]))
        assert code == 0
    a, b = (np.load(outs[k]) for k in ("threefry2x32", "threefry_xla"))
    assert a.shape == b.shape == (32, 2) and np.all(np.isfinite(b))
    assert np.max(np.abs(a - b)) > 1e-2


def test_console_script_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jdiff.cli", "bench", "steps", "--solvers", "bogus"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("jdiff: error: unknown solver 'bogus'")
    assert r.stderr.strip().count("\n") == 0


def test_help_shows_defaults_and_valid_names(capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: ipndm)" in out and "(default: 10)" in out and "(default: logsnr)" in out
    assert "dpmpp_3m_sde, unipc_bh1" in out and "vp_cosine, ve, edm" in out


def test_default_solver_is_the_step_count_tables_best_at_the_default_nfe():
    """jdiff sample's default solver: the lowest RMSE among deterministic solvers at NFE 10 on
    both built-in testbeds of the committed step-count table."""
    from pathlib import Path

    from jdiff.cli import DEFAULT_SOLVER, build_parser

    table = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "step_counts.json"
    data = json.loads(table.read_text())
    recs = data["records"] if isinstance(data, dict) else data
    assert build_parser().parse_args(["sample"]).solver == DEFAULT_SOLVER
    for tb in ("mix2d", "mix16d"):
        rows = [r for r in recs if r["testbed"] == tb and r["nfe_budget"] == 10
                and not solvers.get_solver(r["solver"]).stochastic]
        assert min(rows, key=lambda r: r["rmse"])["solver"] == DEFAULT_SOLVER, tb


def test_finished_run_rerun_reports_its_last_loss(capsys, tmp_path):
    argv = ["train", "--workdir", str(tmp_path / "run"), "--data", "mix2d", "--model", "mlp",
            "--mlp-features", "16", "--mlp-depth", "1", "--steps", "4", "--batch-size", "32",
            "--log-every", "2", "--save-every", "2", "--warmup-steps", "0", "--quiet"]
    code, first, _ = run_cli(capsys, *argv)
    assert code == 0 and "last loss" in first and "nan" not in first, first
    loss = first.split("last loss ")[1].split(";")[0]
    code, again, _ = run_cli(capsys, *argv)
    assert code == 0 and f"last loss {loss};" in again, again
