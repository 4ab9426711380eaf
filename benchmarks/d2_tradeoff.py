"""Third-order multistep DPM-Solver(++): Taylor-correct D2 coefficient vs the published one.

jdiff's ``dpm_solver_3`` / ``dpmpp_3m`` use ``2 phi_3 D2`` (true third order); the official code,
diffusers and k-diffusion use ``phi_3 D2`` (``reference_d2=True``). This script measures both on
the built-in mixtures (logsnr grid, final step to 0) at the field's NFE grid, and on the float64
Gaussian order problem of the tests at larger step counts (grid ending at t_min), and writes
``benchmarks/results/d2_tradeoff.md``.

    python benchmarks/d2_tradeoff.py
"""

from __future__ import annotations

import os
import platform

import jax
import jax.numpy as jnp
import numpy as np

import jdiff
from jdiff import grids
from jdiff.solvers.dpm_solver import dpm_solver_multistep

OUT = os.path.join(os.path.dirname(__file__), "results", "d2_tradeoff.md")
NFES = (5, 6, 8, 10, 15, 20, 50)


def rmse(x, ref):
    return float(np.sqrt(np.mean((np.asarray(x, np.float64) - ref) ** 2)))


def main():
    vp = jdiff.schedules.vp_discrete()
    variants = {
        name: {v: dpm_solver_multistep(3, predict_x0=px0, reference_d2=(v == "published"))
               for v in ("taylor", "published")}
        for name, px0 in (("dpm_solver_3", False), ("dpmpp_3m", True))
    }
    lines = ["# Third-order multistep: Taylor D2 coefficient (jdiff default) vs published", "",
             "Command: `python benchmarks/d2_tradeoff.py`  ",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
             f"JAX {jax.__version__}", "",
             "## Built-in mixtures, logsnr grid ending at 0, 1000 samples, float32", "",
             "rmse vs the diffrax reference; each cell `taylor / published`.", "",
             "| testbed | solver | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
             "|---|---|" + "---|" * len(NFES)]
    for tbn in ("mix2d", "mix16d"):
        tb = jdiff.testbeds.get_testbed(tbn)
        m = tb.model_fn(vp)
        z = np.random.RandomState(0).standard_normal((1000, tb.dim)).astype(np.float32)
        ref = jdiff.reference_solve(m, vp, z, 1.0, 0.0)
        for name, vs in variants.items():
            cells = []
            for n in NFES:
                g = grids.make_grid(vp, "logsnr", n)
                e = [rmse(jdiff.sample(m, vp, vs[v], g, z), ref) for v in ("taylor", "published")]
                cells.append(f"{e[0]:.2e} / {e[1]:.2e}")
            lines.append(f"| {tbn} | {name} | " + " | ".join(cells) + " |")
    steps = (12, 24, 48, 96)
    lines += ["", "## Float64 Gaussian (8-D, full covariance), logsnr grid ending at t_min", "",
              "| solver | variant | " + " | ".join(f"{n} steps" for n in steps) + " | measured order |",
              "|---|---|" + "---|" * len(steps) + "---|"]
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
        for name, vs in variants.items():
            for v in ("taylor", "published"):
                errs = [rmse(jdiff.sample(m, vp, vs[v], grids.make_grid(vp, "logsnr", n, "t_min"), x_T), ref)
                        for n in steps]
                order = np.polyfit(np.log(1.0 / np.asarray(steps)), np.log(errs), 1)[0]
                lines.append(f"| {name} | {v} | " + " | ".join(f"{e:.2e}" for e in errs) + f" | {order:.2f} |")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
