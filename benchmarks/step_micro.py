"""Solver-step micro-benchmarks: the pieces of one step and the multistep history layouts.

    python benchmarks/step_micro.py          # full run (~30 s, quiet CPU); writes
                                             # benchmarks/results/step_micro.{json,md}
    python benchmarks/step_micro.py --quick  # smoke run (~10 s); prints only (--out PREFIX to write)

On the 1024 x 64 float32 batch of the MLP setup shared with ``sampler_speed.py``
(``common.make_mlp``), each as its own jitted program:

1. separate calls (``--micro-reps`` rounds, medians; each includes one dispatch): the dispatch
   floor (``x[0, 0] + 1``), the DDIM update including the eps -> x0 conversion, the Euler update,
   and the gathers of a step's coefficients from :func:`jdiff.solvers.base.grid_coeffs`;
2. per step of a 50-step ``lax.scan`` (``common.in_scan_per_step``): keeping a multistep history
   of 3 model outputs. ``none`` keeps none (the floor); ``roll`` shifts the stack
   (``jnp.roll(h, -1, 0).at[-1].set(m)``; ``jnp.concatenate([m[None], h[:-1]])`` costs the same)
   and combines it with an unrolled sum; ``ring`` writes slot ``i % 3`` in place
   (``lax.dynamic_update_index_in_dim``, the layout of ``jdiff.solvers.base.ring_write``) and
   reads slots by index; ``tensordot`` shifts and combines with ``jnp.tensordot(c, h, 1)``.

One MLP model call is timed among the separate calls; every row is also given as a share of it.
(The noise draw of stochastic solvers is studied in ``prng_speed.py``.)
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import pct, us  # noqa: E402

import jdiff  # noqa: E402
from jdiff.solvers.base import grid_coeffs  # noqa: E402

MODEL = "model call (MLP, batch x dim)"
ORDER = 3
FLOOR = "in-scan step without history (floor) (per step)"
HISTORY = {  # variant -> row label (as in the former speed.py "micro" dict)
    "roll": f"in-scan history of {ORDER}: shift (roll + set) + unrolled sum (per step)",
    "ring": f"in-scan history of {ORDER}: ring buffer (dynamic_update_slice) + unrolled sum (per step)",
    "tensordot": f"in-scan history of {ORDER}: shift + jnp.tensordot combine (per step)",
}


def separate_calls(mlp, reps):
    x, params = mlp.x, mlp.params
    sch = jdiff.schedules.vp_discrete()
    g = jax.jit(grid_coeffs, static_argnums=2)(sch, jdiff.grids.make_grid(sch, "trailing", 10),
                                                jnp.float32)
    a_t, s_t, a_s, s_s = g.alpha[3], g.sigma[3], g.alpha[4], g.sigma[4]
    eps = mlp.model.apply(params, x, g.t[3])
    progs = {
        MODEL: (mlp.jit, (params, x, jnp.float32(0.5))),
        "dispatch floor (jitted x[0, 0] + 1)": (jax.jit(lambda x: x[0, 0] + 1), (x,)),
        "ddim update incl. to_x0_eps": (
            jax.jit(lambda x, e, a, s, a2, s2: a2 * ((x - s * e) / a) + s2 * e),
            (x, eps, a_t, s_t, a_s, s_s)),
        "euler update (x / a_t + dh eps) * a_s": (
            jax.jit(lambda x, e, a, d, a2: a2 * (x / a + d * e)), (x, eps, a_t, s_s - s_t, a_s)),
        "coefficient gathers g.alpha[i], g.sigma[i], ...": (
            jax.jit(lambda g, i: (g.t[i], g.alpha[i], g.sigma[i], g.alpha[i + 1], g.sigma[i + 1],
                                  g.sigma_hat[i], g.sigma_hat[i + 1])), (g, jnp.int32(3))),
    }
    return common.call_medians(progs, reps)


def history(x, reps):
    c = jnp.linspace(1.0, 0.5, ORDER)

    def shifted(h, m):
        return jnp.roll(h, -1, axis=0).at[-1].set(m)

    def roll(h, m, i):
        h = shifted(h, m)
        return h, sum(c[j] * h[-1 - j] for j in range(ORDER))

    def ring(h, m, i):
        h = lax.dynamic_update_index_in_dim(h, m, i % ORDER, 0)
        comb = sum(c[j] * lax.dynamic_index_in_dim(h, (i - j) % ORDER, 0, keepdims=False)
                   for j in range(ORDER))
        return h, comb

    def tensordot(h, m, i):
        h = shifted(h, m)
        return h, jnp.tensordot(c[::-1], h, axes=1)

    variants = {"none": lambda h, m, i: (h, c[0] * m), "roll": roll, "ring": ring,
                "tensordot": tensordot}
    h0 = jnp.zeros((ORDER,) + x.shape, x.dtype)
    t = common.in_scan_per_step(x, h0, variants, reps)
    return {FLOOR: t["none"], **{lab: t[v] for v, lab in HISTORY.items()}}


def derived(micro, model_s):
    floor = micro[FLOOR]
    rows = [{"quantity": f"history of {ORDER}, {v}: minus the floor, per step",
             "seconds": micro[lab] - floor} for v, lab in HISTORY.items()]
    rows += [{"quantity": "roll - ring, per step", "seconds": micro[HISTORY["roll"]]
              - micro[HISTORY["ring"]]},
             {"quantity": "tensordot - roll (unrolled sum), per step",
              "seconds": micro[HISTORY["tensordot"]] - micro[HISTORY["roll"]]}]
    for r in rows:
        r["share_of_model_call"] = r["seconds"] / model_s
    return rows


def write_md(res):
    L = common.micro_md("Solver-step micro-benchmarks", res) + ["", "## Derived", ""]
    L += common.md_table(["quantity", "us", "% of a model call"],
                         [[r["quantity"], us(r["seconds"]), pct(r["share_of_model_call"])]
                          for r in res["derived"]])
    return L


def main(argv=None):
    ap = common.parser(__doc__, "smoke run: 30 micro reps")
    common.add_mlp_args(ap, micro_reps=True)
    args = ap.parse_args(argv)
    if args.quick:
        args.micro_reps = min(args.micro_reps, 30)
    out = common.out_prefix(args, "step_micro")
    run = common.Run(__file__, argv)
    mlp = common.make_mlp(args)
    micro = separate_calls(mlp, args.micro_reps)
    model_s = micro.pop(MODEL)
    micro.update(history(mlp.x, max(5, args.micro_reps // 10)))
    res = run.finish({"config": {**mlp.config, "micro_reps": args.micro_reps, "history": ORDER},
                      "model_call_s": model_s, "micro": micro})
    res["derived"] = derived(micro, model_s)
    return common.report(out, res, write_md(res))


if __name__ == "__main__":
    main()
