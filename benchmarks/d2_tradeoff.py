"""Third-order multistep DPM-Solver(++): Taylor-correct D2 coefficient vs the published one.

jdiff's ``dpm_solver_3`` / ``dpmpp_3m`` use ``2 phi_3 D2`` (true third order); the official code,
diffusers and k-diffusion use ``phi_3 D2`` (``reference_d2=True``). This script measures both on
the built-in mixtures (logsnr grid, final step to 0) at the field's NFE grid, and on the float64
Gaussian order problem of the tests at larger step counts (grid ending at t_min).

    python benchmarks/d2_tradeoff.py          # writes benchmarks/results/d2_tradeoff.{json,md}
    python benchmarks/d2_tradeoff.py --quick  # mix2d, NFE 5/10, 200 samples, 12/24 steps; prints only
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import jdiff  # noqa: E402
from jdiff import grids  # noqa: E402
from jdiff.solvers.dpm_solver import dpm_solver_multistep  # noqa: E402

VARIANTS = ("taylor", "published")


def rmse(x, ref):
    return float(np.sqrt(np.mean((np.asarray(x, np.float64) - ref) ** 2)))


def solvers():
    return {name: {v: dpm_solver_multistep(3, predict_x0=px0, reference_d2=(v == "published"))
                   for v in VARIANTS}
            for name, px0 in (("dpm_solver_3", False), ("dpmpp_3m", True))}


def mixtures(vp, testbeds, nfes, n_samples):
    """rmse vs the reference solve per (testbed, solver, NFE, variant)."""
    rows = []
    for tbn in testbeds:
        tb = jdiff.testbeds.get_testbed(tbn)
        m = tb.model_fn(vp)
        z = np.random.RandomState(0).standard_normal((n_samples, tb.dim)).astype(np.float32)
        ref = jdiff.reference_solve(m, vp, z, 1.0, 0.0)
        for name, vs in solvers().items():
            for n in nfes:
                g = grids.make_grid(vp, "logsnr", n)
                rows.append({"testbed": tbn, "solver": name, "nfe": n,
                             **{v: rmse(jdiff.sample(m, vp, vs[v], g, z), ref) for v in VARIANTS}})
    return rows


def gaussian(vp, steps):
    """rmse per step count and the fitted order, per (solver, variant), on the float64 Gaussian."""
    rows = []
    rng = np.random.RandomState(0)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    cov = (q * np.logspace(-2, 0, 8)) @ q.T
    with jax.enable_x64(True):
        tb = jdiff.testbeds.from_arrays([1.0], 0.3 * rng.standard_normal((1, 8)), covs=cov[None],
                                        dtype=jnp.float64)
        m = tb.model_fn(vp)
        x_T = jax.random.normal(jax.random.key(3), (32, 8), jnp.float64)
        g0 = grids.make_grid(vp, "logsnr", 4, "t_min")
        ref = jdiff.reference_solve(m, vp, x_T, g0[0], g0[-1])
        for name, vs in solvers().items():
            for v in VARIANTS:
                errs = [rmse(jdiff.sample(m, vp, vs[v], grids.make_grid(vp, "logsnr", n, "t_min"), x_T), ref)
                        for n in steps]
                order = float(np.polyfit(np.log(1.0 / np.asarray(steps)), np.log(errs), 1)[0])
                rows.append({"solver": name, "variant": v, "steps": list(steps), "rmse": errs,
                             "order": order})
    return rows


def write_md(res):
    cfg = res["config"]
    nfes, steps = cfg["nfes"], cfg["steps"]
    L = common.md_header("Third-order multistep: Taylor D2 coefficient (jdiff default) vs published",
                         res, timed=False)
    L += [f"## Built-in mixtures, logsnr grid ending at 0, {cfg['n_samples']} samples, float32", "",
          "rmse vs the reference solve; each cell `taylor / published`.", ""]
    cells = {}
    for r in res["mixtures"]:
        cells.setdefault((r["testbed"], r["solver"]), []).append(f"{r['taylor']:.2e} / {r['published']:.2e}")
    L += common.md_table(["testbed", "solver"] + [f"NFE {n}" for n in nfes],
                         [[tb, s] + c for (tb, s), c in cells.items()])
    L += ["", "## Float64 Gaussian (8-D, full covariance), logsnr grid ending at t_min", ""]
    L += common.md_table(["solver", "variant"] + [f"{n} steps" for n in steps] + ["measured order"],
                         [[r["solver"], r["variant"]] + [f"{e:.2e}" for e in r["rmse"]]
                          + [f"{r['order']:.2f}"] for r in res["gaussian"]])
    return L


def main(argv=None):
    ap = common.parser(__doc__, "smoke run: mix2d, NFE 5 and 10, 200 samples, 12 and 24 steps")
    ap.add_argument("--out", default=None, help="output prefix (default benchmarks/results/d2_tradeoff)")
    args = ap.parse_args(argv)
    cfg = dict(testbeds=["mix2d", "mix16d"], nfes=[5, 6, 8, 10, 15, 20, 50], n_samples=1000,
               steps=[12, 24, 48, 96])
    if args.quick:
        cfg = dict(testbeds=["mix2d"], nfes=[5, 10], n_samples=200, steps=[12, 24])
    out = common.out_prefix(args, "d2_tradeoff")
    run = common.Run(__file__, argv)
    vp = jdiff.schedules.vp_discrete()
    res = run.finish({"config": cfg,
                      "mixtures": mixtures(vp, cfg["testbeds"], cfg["nfes"], cfg["n_samples"]),
                      "gaussian": gaussian(vp, cfg["steps"])})
    return common.report(out, res, write_md(res))


if __name__ == "__main__":
    main()
