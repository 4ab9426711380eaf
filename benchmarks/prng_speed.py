"""Noise-draw speed: JAX's default keys vs :func:`jdiff.prng.key` (the PRNG workaround) and others.

    python benchmarks/prng_speed.py          # full run (~1 min, quiet CPU); writes
                                             # benchmarks/results/prng_speed.{json,md}
    python benchmarks/prng_speed.py --quick  # smoke run (~20 s); prints only (--out PREFIX to write)

What a stochastic solver's step draws: one Gaussian of the batch's shape,
``jax.random.normal(jax.random.fold_in(key, i), x.shape)``, here for the 1024 x 64 float32 batch
of the MLP setup shared with ``sampler_speed.py`` (``common.make_mlp``). Timed three ways:

1. separate calls (``--micro-reps`` rounds, medians; each includes one dispatch): the draw jitted
   on its own with JAX's default ``threefry2x32`` keys (partitionable, the JAX default, and
   non-partitionable, a global config flag toggled for that one program), with
   :func:`jdiff.prng.key` (``threefry_xla``: the same Threefry cipher expanded by XLA's
   RngBitGenerator into a buffer of its own), with JAX's ``rbg`` and ``unsafe_rbg`` keys; and the
   random bits alone (``jax.random.bits``) for threefry and threefry_xla;
2. inside a 50-step ``lax.scan`` (``common.in_scan_per_step``; time per step): a solver-like
   step without history (the floor) and the same step plus the draw, with threefry keys, with
   threefry_xla keys, and with threefry_xla keys whose words are not materialized (no
   ``lax.cond``, so XLA fuses the Threefry expansion into the transform:
   ``jdiff.prng._threefry_xla_bits(..., materialize=False)``), so that the two parts of the
   workaround are measured separately;
3. in the sampler: ``jdiff.sample`` of the stochastic solvers (``--solvers``) at NFE ``--nfe``
   with the stand-in model ``eps = 0.5 x + 0.1 t`` (so that the sampler's own cost is what is
   timed), with ``jax.random.key`` and with ``jdiff.prng.key``, interleaved (``--sample-reps``
   rounds, medians).

Each is also given as a share of one MLP model call (timed among the separate calls), the unit
in which ``sampler_speed.py`` states the sampler overhead. The ``derived`` table states the
workaround's measured benefit: the draw with threefry keys minus the draw with threefry_xla keys,
per step, in each setting, and what materializing the words adds or saves.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
from functools import partial

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import pct, summary, timeit, us  # noqa: E402

import jdiff  # noqa: E402

# jdiff.prng's keys without the conditional that keeps the words out of the consumer's fusion
_THREEFRY_XLA_FUSED = jex_random.define_prng_impl(
    key_shape=(4,), seed=jex_random.rbg_prng_impl.seed, split=jex_random.rbg_prng_impl.split,
    random_bits=partial(jdiff.prng._threefry_xla_bits, materialize=False),
    fold_in=jex_random.rbg_prng_impl.fold_in, name="threefry_xla_fused", tag="tfxf")

MODEL = "model call (MLP, batch x dim)"
NORMAL = "noise: fold_in + normal, "
BITS = "noise: fold_in + random bits only, "
SEPARATE = {  # row label -> key of the draw (labels as in the former speed.py "micro" dict)
    NORMAL + "threefry (partitionable, jax default)": lambda: jax.random.key(1),
    BITS + "threefry": lambda: jax.random.key(1),
    NORMAL + "threefry_xla keys (jdiff.prng)": lambda: jdiff.prng.key(1),
    BITS + "threefry_xla keys": lambda: jdiff.prng.key(1),
    NORMAL + "rbg keys": lambda: jax.random.key(1, impl="rbg"),
    NORMAL + "unsafe_rbg keys": lambda: jax.random.key(1, impl="unsafe_rbg"),
}
FLOOR = "in-scan step without history (floor) (per step)"
IN_SCAN = {  # in-scan variant -> (row label, key)
    "noise": ("in-scan step without history + a noise draw (threefry keys: fold_in + normal) "
              "(per step)", lambda: jax.random.key(1)),
    "noise_xla": ("in-scan step without history + a noise draw (threefry_xla keys: fold_in + "
                  "normal) (per step)", lambda: jdiff.prng.key(1)),
    "noise_xla_fused": ("in-scan step without history + a noise draw (threefry_xla keys, words "
                        "not materialized: XLA fuses the Threefry expansion into the transform) "
                        "(per step)", lambda: jax.random.key(1, impl=_THREEFRY_XLA_FUSED)),
}
KEYS = {"threefry2x32": lambda: jax.random.key(2), "threefry_xla": lambda: jdiff.prng.key(2)}


def separate_calls(mlp, reps):
    """Section 1 (and the model call): median seconds per label."""
    x, i3 = mlp.x, jnp.int32(3)
    normal = jax.jit(lambda k, i: jax.random.normal(jax.random.fold_in(k, i), x.shape, x.dtype))
    bits = jax.jit(lambda k, i: jax.random.bits(jax.random.fold_in(k, i), x.shape))
    progs = {MODEL: (mlp.jit, (mlp.params, x, jnp.float32(0.5)))}
    progs.update({k: (bits if k.startswith(BITS) else normal, (make(), i3))
                  for k, make in SEPARATE.items()})
    out = common.call_medians(progs, reps)
    # the same draw with the non-partitionable threefry (a global config flag)
    old = jax.config.jax_threefry_partitionable
    try:
        jax.config.update("jax_threefry_partitionable", not old)
        f = jax.jit(lambda k, i: jax.random.normal(jax.random.fold_in(k, i), x.shape, x.dtype))
        out[NORMAL + f"threefry (partitionable={not old})"] = common.call_medians(
            {"": (f, (jax.random.key(1), i3))}, reps)[""]
    finally:
        jax.config.update("jax_threefry_partitionable", old)
    return out


def in_scan(mlp, reps, order=3):
    """Section 2: median seconds per step per label."""
    c = jnp.linspace(1.0, 0.5, order)

    def draw(make_key):
        return lambda h, m, i: (h, c[0] * m + jax.random.normal(
            jax.random.fold_in(make_key(), i), m.shape, m.dtype))

    variants = {"none": lambda h, m, i: (h, c[0] * m)}
    variants.update({v: draw(make) for v, (_, make) in IN_SCAN.items()})
    h0 = jnp.zeros((order,) + mlp.x.shape, mlp.x.dtype)
    t = common.in_scan_per_step(mlp.x, h0, variants, reps)
    return {FLOOR: t["none"], **{lab: t[v] for v, (lab, _) in IN_SCAN.items()}}


def in_sampler(mlp, solvers, nfe_budget, reps):
    """Section 3: per solver and key, the stand-in-model sample times (summaries)."""
    sch = jdiff.schedules.vp_discrete()
    configs = {}
    for name in solvers:
        solver = jdiff.solvers.get_solver(name)
        steps = jdiff.solvers.steps_for_nfe(solver, nfe_budget)
        grid = jdiff.grids.make_grid(sch, "trailing", steps)
        for kname, make in KEYS.items():
            key = make()
            call = partial(jdiff.sample, mlp.t_fn, sch, solver, grid, mlp.x, key=key)
            for _ in range(2):
                common.block(call())
            configs[(name, kname)] = (call, steps)
    times = {k: [] for k in configs}
    for r in range(reps):
        order = list(configs)
        random.Random(r).shuffle(order)
        for k in order:
            times[k].append(timeit(configs[k][0]))
    rows = []
    for name in solvers:
        row = {"solver": name, "nfe_budget": nfe_budget, "steps": configs[(name, "threefry2x32")][1]}
        row.update({f"sample_{k}": summary(times[(name, k)]) for k in KEYS})
        row["diff_per_step_s"] = statistics.median(
            [a - b for a, b in zip(times[(name, "threefry2x32")], times[(name, "threefry_xla")])]
        ) / row["steps"]
        rows.append(row)
    return rows


def derived(micro, sampler, model_s):
    floor = micro[FLOOR]
    sep = {"threefry2x32": micro[NORMAL + "threefry (partitionable, jax default)"],
           "threefry_xla": micro[NORMAL + "threefry_xla keys (jdiff.prng)"]}
    scan = {"threefry2x32": micro[IN_SCAN["noise"][0]] - floor,
            "threefry_xla": micro[IN_SCAN["noise_xla"][0]] - floor,
            "threefry_xla_fused": micro[IN_SCAN["noise_xla_fused"][0]] - floor}
    rows = [
        {"quantity": "separate call: threefry2x32 - threefry_xla draw",
         "seconds": sep["threefry2x32"] - sep["threefry_xla"],
         "ratio_xla_over_default": sep["threefry_xla"] / sep["threefry2x32"]},
        {"quantity": "in lax.scan: threefry2x32 - threefry_xla draw, per step",
         "seconds": scan["threefry2x32"] - scan["threefry_xla"],
         "ratio_xla_over_default": scan["threefry_xla"] / scan["threefry2x32"]},
        {"quantity": "in lax.scan: threefry_xla words fused - materialized, per step",
         "seconds": scan["threefry_xla_fused"] - scan["threefry_xla"],
         "ratio_xla_over_default": None},
    ]
    for r in sampler:
        rows.append({"quantity": f"jdiff.sample {r['solver']} (NFE {r['nfe_budget']}, stand-in "
                     "model): threefry2x32 - threefry_xla, per step",
                     "seconds": r["diff_per_step_s"],
                     "ratio_xla_over_default": r["sample_threefry_xla"]["median"]
                     / r["sample_threefry2x32"]["median"]})
    for r in rows:
        r["share_of_model_call"] = r["seconds"] / model_s
    return {"in_scan_draw_s": scan, "separate_call_draw_s": sep, "benefit": rows}


def write_md(res):
    d, cfg = res["derived"], res["config"]
    L = common.micro_md("Noise-draw speed: jax.random.key vs jdiff.prng.key", res)
    L += ["", f"`jdiff.sample` with the stand-in model, NFE {cfg['nfe']}, {cfg['sample_reps']} "
          "interleaved rounds (median [IQR] ms):", ""]
    L += common.md_table(
        ["solver", "steps", "threefry2x32 keys", "threefry_xla keys", "difference us/step"],
        [[r["solver"], r["steps"]]
         + [f"{common.ms(s['median'])} [{common.ms(s['q1'])}, {common.ms(s['q3'])}]"
            for s in (r["sample_threefry2x32"], r["sample_threefry_xla"])]
         + [us(r["diff_per_step_s"])] for r in res["sampler"]])
    L += ["", "## Derived: the measured benefit of jdiff.prng keys", ""]
    L += common.md_table(
        ["quantity", "us", "% of a model call", "threefry_xla / threefry2x32"],
        [[r["quantity"], us(r["seconds"]), pct(r["share_of_model_call"]),
          "-" if r["ratio_xla_over_default"] is None else f"{r['ratio_xla_over_default']:.2f}"]
         for r in d["benefit"]])
    return L


def main(argv=None):
    ap = common.parser(__doc__, "smoke run: 30 micro reps, 2 solvers, 5 sample rounds")
    common.add_mlp_args(ap, micro_reps=True)
    ap.add_argument("--solvers", default="ddpm,euler_ancestral,dpmpp_2m_sde,dpmpp_3m_sde",
                    help="stochastic solvers timed in jdiff.sample with both keys")
    ap.add_argument("--nfe", type=int, default=10, help="NFE budget of the sampler timings")
    ap.add_argument("--sample-reps", type=int, default=20)
    args = ap.parse_args(argv)
    if args.quick:
        args.micro_reps = min(args.micro_reps, 30)
        args.sample_reps = min(args.sample_reps, 5)
        if args.solvers == ap.get_default("solvers"):
            args.solvers = "ddpm,dpmpp_2m_sde"
    out = common.out_prefix(args, "prng_speed")
    run = common.Run(__file__, argv)
    mlp = common.make_mlp(args)
    micro = separate_calls(mlp, args.micro_reps)
    model_s = micro.pop(MODEL)
    print(f"[prng_speed] separate calls done ({run.elapsed():.0f} s)", flush=True)
    micro.update(in_scan(mlp, max(5, args.micro_reps // 10)))
    print(f"[prng_speed] in-scan draws done ({run.elapsed():.0f} s)", flush=True)
    sampler = in_sampler(mlp, args.solvers.split(","), args.nfe, args.sample_reps)
    res = run.finish({
        "config": {**mlp.config, "micro_reps": args.micro_reps, "nfe": args.nfe,
                   "sample_reps": args.sample_reps, "solvers": args.solvers.split(","),
                   "schedule": "vp_discrete", "grid": "trailing"},
        "model_call_s": model_s, "micro": micro, "sampler": sampler})
    res["derived"] = derived(micro, sampler, model_s)
    return common.report(out, res, write_md(res))


if __name__ == "__main__":
    main()
