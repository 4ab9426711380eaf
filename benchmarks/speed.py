"""Sampler speed: one-jit ``jdiff.sample`` vs a Python-loop driver vs bare model calls.

    python benchmarks/speed.py          # full run: all solvers, NFE 10 and 50 (~5 min, quiet CPU)
    python benchmarks/speed.py --quick  # smoke run (~30 s): ddim/euler/heun at NFE 10; prints only
                                        # (add --out PREFIX to write PREFIX.json / PREFIX.md)

Setup: an eps-prediction MLP (:class:`jdiff.models.MLP`; default width 512, 4 hidden layers, data
dim 64, time embedding 128: about 1.9 GFLOP per call at batch 1024; 4.3-10 ms on quiet 2-vCPU
AMD EPYC VMs, see results/speed.md, and more when other processes share the machine), the DDPM
``vp_discrete`` schedule, a ``trailing`` grid ending at t = 0, batch 1024, float32. Each solver
(all registered ones by default) gets, per NFE budget (10 and 50), the most steps whose NFE fits
the budget (Heun at 10 takes 5 steps = 9 evaluations: its last step onto sigma = 0 skips the
corrector); overheads use that exact NFE.

Measured side by side:

(a) ``sample``: the public :func:`jdiff.sample` call (one jitted program, ``lax.scan`` over the
    steps), the model passed as ``Partial(model.apply, params)``; wall time from the Python call
    to ``block_until_ready`` of the result, after warm-up.
(b) ``loop``: the same solver driven step by step from Python, as PyTorch schedulers run.
    Separately jitted programs, called from Python at every step:
      * ``model = jax.jit(model.apply)(params, x, t)``: only the network;
      * for solvers with k > 1 evaluations per step (Heun, single-step DPM-Solver, ...): a
        ``stage(eps_1..eps_j, state, grid, i)`` program per extra evaluation j returning its
        (x, t) (e.g. Heun's Euler predictor);
      * ``step(eps_1..eps_k, state, grid, i)``: the prediction conversion (``to_x0_eps``) and the
        solver update (``solver.step`` with a denoise that replays the given eps), including the
        noise draw of stochastic solvers and the history update of multistep ones.
    The first evaluation of a step is at (state.x, grid.t[i]) (asserted on the jaxpr), so it
    needs no program; grid times and step indices are device scalars made before the loop (as
    iterating ``scheduler.timesteps``). One-evaluation solvers: 2 dispatches per step. No host
    synchronisation inside the loop (JAX dispatches asynchronously); one block at the end.
    Its result is checked against (a) (with the stand-in model of (e), which shares the loop's
    programs).
(c) ``model``: one call of the ``model`` program at batch 1024, blocked on; median of all calls.
(d) ``scan`` (only ``--scan-solvers``, default ddim, euler, heun): NFE model calls in one
    ``lax.scan`` (x <- model(x, t_i)) and nothing else, the floor of (a).
(e) (a), (b), (d) again with a near-free stand-in model ``eps = 0.5 x + 0.1 t`` (one fused
    elementwise op): ``sampler cost = (a_e) - (d_e)`` is what ``jdiff.sample`` adds on top of its
    model calls (Python wrapper, dispatch, coefficient gathers, prediction conversion, update,
    noise), ``loop cost = (b_e) - (d_e)`` the same for the Python-loop driver. Each takes a few
    milliseconds, so many repeats pin them down even on a noisy machine.

Stochastic solvers are timed twice (``--stochastic-keys``): with JAX's default key
(``jax.random.key``, threefry2x32) and with :func:`jdiff.prng.key` (the same Threefry cipher,
expanded by XLA's RngBitGenerator); rows of the latter are labelled ``[threefry_xla key]``.

Derived: ``(b)/(a)``; the sampler overhead ``(a) / (NFE * (c)) - 1`` (target < 2%), and its
noise-robust estimate ``sampler cost / (NFE * (c))`` (which assumes that a model call costs the
same inside the scan as alone; (d) checks that, within the noise).

Noise control: rounds are interleaved -- every round times every configuration once, in a
shuffled order, each as (a), a burst of ``--burst`` (10) single model calls (c), (d) and (b) back
to back, the order reversed in odd rounds, then the stand-in timings (e). Besides the overhead
from medians over the whole run, the *paired* overhead ``(a) / (NFE * mean burst call) - 1``
compares timings taken within about a second of each other; it is reported as the median over
rounds with its interquartile range, split into a scan part ``(d) / (NFE * mean burst call) - 1``
and a step-math part ``((a) - (d)) / (NFE * mean burst call)``. The CPU time that other
processes used during the run is recorded (``foreign_cpu_share``, from /proc/stat); above 10% the
report carries a warning.

Threads: XLA:CPU runs its matmuls on an intra-op pool with one thread per available CPU, so the
PyTorch anchor uses ``torch.set_num_threads(len(os.sched_getaffinity(0)))`` (override with
``--torch-threads``). The process CPU time / wall time during JAX model calls is recorded as
``jax_cpu_per_wall`` (1.8-1.95 on quiet 2-vCPU VMs; 1.0 when other processes took a core).

Optional PyTorch anchor (torch + diffusers imported lazily; skipped if either is missing or with
``--no-torch``), run after all JAX timings so that no OpenMP thread spins while JAX runs: the same
MLP in PyTorch (weights copied from the Flax parameters), diffusers' own loop
``for t in timesteps: x = sched.step(model(sched.scale_model_input(x, t), t), t, x).prev_sample``
with ``set_timesteps`` inside the timed region (it resets multistep state), under
``torch.inference_mode``. Schedulers: DDIM and Euler with ``trailing`` spacing at every NFE (same
solver and grid as jdiff's ddim/euler: the final samples are compared), DPM-Solver++(2M) and UniPC
(diffusers defaults) at NFE 10. Same paired rounds with bursts of torch model calls, and the
stand-in model for the scheduler's own cost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
from jax import lax

import jdiff
from jdiff.models import MLP
from jdiff.prediction import to_x0_eps
from jdiff.solvers.base import grid_coeffs

# jdiff.prng's keys without the conditional that keeps the words out of the consumer's fusion
_THREEFRY_XLA_FUSED = jex_random.define_prng_impl(
    key_shape=(4,), seed=jex_random.rbg_prng_impl.seed, split=jex_random.rbg_prng_impl.split,
    random_bits=partial(jdiff.prng._threefry_xla_bits, materialize=False),
    fold_in=jex_random.rbg_prng_impl.fold_in, name="threefry_xla_fused", tag="tfxf")

HERE = os.path.dirname(os.path.abspath(__file__))


# ----------------------------------------------------------------------------- timing helpers


def _block(x):
    return jax.block_until_ready(x)


def timeit(fn, sync=_block):
    t0 = time.perf_counter()
    sync(fn())
    return time.perf_counter() - t0


def summary(xs):
    xs = sorted(xs)
    if len(xs) == 1:
        q1 = med = q3 = xs[0]
    else:
        q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return {"median": med, "q1": q1, "q3": q3, "min": xs[0], "max": xs[-1], "n": len(xs)}


# ----------------------------------------------------------------------------- JAX drivers


def label(solver, key_name):
    """Row name: the solver, with the key implementation unless it is JAX's default."""
    return solver if key_name == "threefry2x32" else f"{solver} [{key_name} key]"


def make_loop_driver(solver, g, n_steps, final_zero, prediction="eps"):
    """Python-loop driver ``run(model_jit, params, x_T, key)`` of ``solver`` (see docstring).

    The jitted stage / step programs do not depend on the model, so drivers for different
    models share them.
    """

    def replay(eps_given):
        calls = []

        def denoise(x, t, a, s):
            k = len(calls)
            calls.append((x, t))
            pred = eps_given[k] if k < len(eps_given) else jnp.zeros_like(x)
            return to_x0_eps(pred, x, a, s, prediction)

        return denoise, calls

    def stage(eps_given, state, g, i, *, j, to_zero):
        denoise, calls = replay(eps_given)
        solver.step(denoise, state, g, i, to_zero)
        return calls[j]

    def step(eps_given, state, g, i, *, to_zero):
        denoise, _ = replay(eps_given)
        return solver.step(denoise, state, g, i, to_zero)

    def n_calls(to_zero):
        denoise, calls = replay(())
        x = jax.ShapeDtypeStruct((2, 2), jnp.float32)
        jax.eval_shape(lambda x: solver.step(denoise, solver.init(x, g, jax.random.key(0)), g, 0,
                                             to_zero), x)
        return len(calls)

    k_mid, k_last = n_calls(False), n_calls(final_zero)
    # The driver skips stage 0: the first evaluation must be at state.x (first leaf of the args).
    st = solver.init(jnp.zeros((4, 3)), g, jax.random.key(0))
    jpr = jax.make_jaxpr(partial(stage, j=0, to_zero=False))((), st, g, jnp.int32(0)).jaxpr
    if jpr.outvars[0] is not jpr.invars[0]:
        raise RuntimeError(f"solver {solver.name}: first evaluation of a step is not at state.x")

    stage_jit = jax.jit(stage, static_argnames=("j", "to_zero"))
    step_jit = jax.jit(step, static_argnames=("to_zero",))
    t_dev = [jax.device_put(g.t[i]) for i in range(n_steps)]
    i_dev = [jax.device_put(jnp.int32(i)) for i in range(n_steps)]

    def run(model_jit, params, x_T, key):
        state = solver.init(x_T, g, key)
        for i in range(n_steps):
            last = i == n_steps - 1
            to_zero = final_zero and last
            eps = []
            for j in range(k_last if last else k_mid):
                if j == 0:
                    x, t = state.x, t_dev[i]
                else:
                    x, t = stage_jit(tuple(eps), state, g, i_dev[i], j=j, to_zero=to_zero)
                eps.append(model_jit(params, x, t))
            state = step_jit(tuple(eps), state, g, i_dev[i], to_zero=to_zero)
        return state.x

    return run, (k_mid, k_last)


def make_model_scan(model_apply):
    @jax.jit
    def run(params, x, ts):
        def body(x, t):
            return model_apply(params, x, t), None

        return lax.scan(body, x, ts)[0]

    return run


def micro_benchmarks(params, model_apply, x, sch, reps):
    """Cost of the pieces of one solver step, each as its own jitted program (median)."""
    g = jax.jit(grid_coeffs, static_argnums=2)(sch, jdiff.grids.make_grid(sch, "trailing", 10),
                                                jnp.float32)
    a_t, s_t, a_s, s_s = g.alpha[3], g.sigma[3], g.alpha[4], g.sigma[4]
    eps = model_apply(params, x, g.t[3])
    i3 = jnp.int32(3)
    noise = lambda k, i: jax.random.normal(jax.random.fold_in(k, i), x.shape, x.dtype)  # noqa: E731
    progs = {
        "dispatch floor (jitted x[0, 0] + 1)": (jax.jit(lambda x: x[0, 0] + 1), (x,)),
        "ddim update incl. to_x0_eps": (
            jax.jit(lambda x, e, a, s, a2, s2: a2 * ((x - s * e) / a) + s2 * e),
            (x, eps, a_t, s_t, a_s, s_s)),
        "euler update (x / a_t + dh eps) * a_s": (
            jax.jit(lambda x, e, a, d, a2: a2 * (x / a + d * e)), (x, eps, a_t, s_s - s_t, a_s)),
        "coefficient gathers g.alpha[i], g.sigma[i], ...": (
            jax.jit(lambda g, i: (g.t[i], g.alpha[i], g.sigma[i], g.alpha[i + 1], g.sigma[i + 1],
                                  g.sigma_hat[i], g.sigma_hat[i + 1])), (g, i3)),
        "noise: fold_in + normal, threefry (partitionable, jax default)": (
            jax.jit(noise), (jax.random.key(1), i3)),
        # where the noise time goes, and the other key implementations jax offers
        "noise: fold_in + random bits only, threefry": (
            jax.jit(lambda k, i: jax.random.bits(jax.random.fold_in(k, i), x.shape)),
            (jax.random.key(1), i3)),
        "noise: fold_in + normal, threefry_xla keys (jdiff.prng)": (
            jax.jit(noise), (jdiff.prng.key(1), i3)),
        "noise: fold_in + random bits only, threefry_xla keys": (
            jax.jit(lambda k, i: jax.random.bits(jax.random.fold_in(k, i), x.shape)),
            (jdiff.prng.key(1), i3)),
        "noise: fold_in + normal, rbg keys": (jax.jit(noise), (jax.random.key(1, impl="rbg"), i3)),
        "noise: fold_in + normal, unsafe_rbg keys": (
            jax.jit(noise), (jax.random.key(1, impl="unsafe_rbg"), i3)),
    }
    ts = {k: [] for k in progs}
    for f, a in progs.values():
        _block(f(*a))
    for _ in range(reps):
        for k, (f, a) in progs.items():
            ts[k].append(timeit(lambda f=f, a=a: f(*a)))
    out = {k: statistics.median(v) for k, v in ts.items()}
    # the same noise draw with the non-partitionable threefry (a global config flag)
    old = jax.config.jax_threefry_partitionable
    try:
        jax.config.update("jax_threefry_partitionable", not old)
        f = jax.jit(lambda k, i: jax.random.normal(jax.random.fold_in(k, i), x.shape, x.dtype))
        _block(f(jax.random.key(1), i3))
        v = [timeit(lambda: f(jax.random.key(1), i3)) for _ in range(reps)]
        out[f"noise: fold_in + normal, threefry (partitionable={not old})"] = statistics.median(v)
    finally:
        jax.config.update("jax_threefry_partitionable", old)
    out.update(history_benchmarks(x, reps))
    return out


def history_benchmarks(x, reps, n=50, order=3):
    """Per-step cost inside one ``lax.scan`` of keeping a multistep history of ``order`` samples.

    Each body makes a new ``m`` from x, stores it and combines the history into the next x:
    ``none`` keeps no history (the floor); ``roll`` shifts it (``jnp.roll(h, -1, 0).at[-1].set``,
    as ``jnp.concatenate([m[None], h[:-1]])`` costs the same); ``ring`` writes slot ``i % order``
    with ``lax.dynamic_update_index_in_dim`` and reads slots by index; ``tensordot`` combines the
    shifted history with ``jnp.tensordot(c, h, 1)`` instead of an unrolled sum; ``noise`` is
    ``none`` plus the Gaussian draw of a stochastic solver (``noise_xla``: with a
    :func:`jdiff.prng.key`).
    """
    c = jnp.linspace(1.0, 0.5, order)

    def scan(update):
        def run(x, h):
            def body(carry, i):
                x, h = carry
                m = 0.5 * x + 0.01
                h, comb = update(h, m, i)
                return (0.9 * x + 0.1 * comb, h), None

            return lax.scan(body, (x, h), jnp.arange(n))[0]

        return jax.jit(run)

    def shifted(h, m):
        return jnp.roll(h, -1, axis=0).at[-1].set(m)

    def ring(h, m, i):
        h = lax.dynamic_update_index_in_dim(h, m, i % order, 0)
        comb = sum(c[j] * lax.dynamic_index_in_dim(h, (i - j) % order, 0, keepdims=False)
                   for j in range(order))
        return h, comb

    variants = {
        "none": lambda h, m, i: (h, c[0] * m),
        "roll": lambda h, m, i: (lambda h2: (h2, sum(c[j] * h2[-1 - j] for j in range(order))))(
            shifted(h, m)),
        "ring": ring,
        "tensordot": lambda h, m, i: (lambda h2: (h2, jnp.tensordot(c[::-1], h2, axes=1)))(
            shifted(h, m)),
        "noise": lambda h, m, i: (h, c[0] * m + jax.random.normal(
            jax.random.fold_in(jax.random.key(1), i), m.shape, m.dtype)),
        "noise_xla": lambda h, m, i: (h, c[0] * m + jax.random.normal(
            jax.random.fold_in(jdiff.prng.key(1), i), m.shape, m.dtype)),
        "noise_xla_fused": lambda h, m, i: (h, c[0] * m + jax.random.normal(
            jax.random.fold_in(jax.random.key(1, impl=_THREEFRY_XLA_FUSED), i), m.shape,
            m.dtype)),
    }
    labels = {
        "none": "in-scan step without history (floor)",
        "roll": f"in-scan history of {order}: shift (roll + set) + unrolled sum",
        "ring": f"in-scan history of {order}: ring buffer (dynamic_update_slice) + unrolled sum",
        "tensordot": f"in-scan history of {order}: shift + jnp.tensordot combine",
        "noise": "in-scan step without history + a noise draw (threefry keys: fold_in + normal)",
        "noise_xla": "in-scan step without history + a noise draw (threefry_xla keys: fold_in + "
                     "normal)",
        "noise_xla_fused": "in-scan step without history + a noise draw (threefry_xla keys, "
                           "words not materialized: XLA fuses the Threefry expansion into the "
                           "transform)",
    }
    h0 = jnp.zeros((order,) + x.shape, x.dtype)
    fs = {k: scan(v) for k, v in variants.items()}
    for f in fs.values():
        _block(f(x, h0))
    ts = {k: [] for k in fs}
    for _ in range(max(5, reps // 10)):
        for k, f in fs.items():
            ts[k].append(timeit(lambda f=f: f(x, h0)) / n)
    return {f"{labels[k]} (per step)": statistics.median(v) for k, v in ts.items()}


# ----------------------------------------------------------------------------- PyTorch anchor


def torch_phase(args, flax_params, x_np, n_threads, jax_rows):
    try:
        import diffusers
        import torch
        from diffusers import (
            DDIMScheduler,
            DPMSolverMultistepScheduler,
            EulerDiscreteScheduler,
            UniPCMultistepScheduler,
        )
    except ImportError as e:  # optional dependency
        print(f"[torch] skipped: {e}", flush=True)
        return None

    torch.set_num_threads(n_threads)
    use_cuda = torch.cuda.is_available() and jax.default_backend() == "gpu"
    dev = torch.device("cuda" if use_cuda else "cpu")

    def sync(_=None):
        if use_cuda:
            torch.cuda.synchronize()

    nn, F, N = torch.nn, torch.nn.functional, 1000

    class TorchMLP(nn.Module):
        """:class:`jdiff.models.MLP` in PyTorch, called with diffusers' integer timestep."""

        def __init__(self, dim, features, depth, emb_dim, time_scale=1000.0, max_period=10000.0):
            super().__init__()
            self.emb_dim, self.time_scale, self.max_period = emb_dim, time_scale, max_period
            self.time_dense = nn.Linear(emb_dim, features)
            self.dense_in = nn.Linear(dim, features)
            self.hidden = nn.ModuleList([nn.Linear(features, features) for _ in range(depth - 1)])
            self.dense_out = nn.Linear(features, dim)

        def forward(self, x, timestep):
            t = (timestep.to(torch.float32) + 1.0) / N * self.time_scale  # jdiff t = (n + 1) / N
            half = self.emb_dim // 2
            freqs = torch.exp(-np.log(self.max_period) / half
                              * torch.arange(half, device=x.device, dtype=torch.float32))
            emb = torch.cat([torch.cos(t * freqs), torch.sin(t * freqs)])
            h = self.dense_in(x) + F.silu(self.time_dense(emb))
            for layer in self.hidden:
                h = layer(F.silu(h))
            return self.dense_out(F.silu(h))

    tm = TorchMLP(args.dim, args.width, args.depth, args.temb).to(dev).eval()
    p = flax_params["params"]
    named = [("time_dense", tm.time_dense), ("dense_in", tm.dense_in), ("dense_out", tm.dense_out)]
    named += [(f"dense_{k + 1}", layer) for k, layer in enumerate(tm.hidden)]
    with torch.no_grad():
        for name, lin in named:
            lin.weight.copy_(torch.from_numpy(np.array(p[name]["kernel"]).T))
            lin.bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))

    x_T = torch.from_numpy(np.array(x_np)).to(dev)
    ts0 = torch.tensor(499, device=dev)
    common = dict(num_train_timesteps=N, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    factories = {
        "DDIM": lambda: DDIMScheduler(**common, timestep_spacing="trailing", set_alpha_to_one=True,
                                      clip_sample=False),
        "Euler": lambda: EulerDiscreteScheduler(**common, timestep_spacing="trailing"),
        "DPM++2M": lambda: DPMSolverMultistepScheduler(**common),
        "UniPC": lambda: UniPCMultistepScheduler(**common),
    }
    configs = [(name, nfe) for nfe in args.nfe for name in ("DDIM", "Euler")]
    configs += [(name, 10) for name in ("DPM++2M", "UniPC") if 10 in args.nfe]
    scheds = {name: factories[name]() for name in factories}

    def run(sched, nfe, model=tm):
        sched.set_timesteps(nfe, device=dev)
        x = x_T * sched.init_noise_sigma  # 1 for DDIM/DPM/UniPC, 1 / alpha_T for Euler
        for t in sched.timesteps:
            x = sched.step(model(sched.scale_model_input(x, t), t), t, x).prev_sample
        return x

    def trivial(x, t):  # the stand-in model of (e)
        return 0.5 * x + 0.1

    def model_call():
        return tm(x_T, ts0)

    with torch.inference_mode():
        for _ in range(3):
            model_call()
        rows = {}
        for c in configs:
            out = run(scheds[c[0]], c[1]).cpu().numpy()
            rows[c] = {"scheduler": c[0], "nfe": len(scheds[c[0]].timesteps), "out": out,
                       "loop": [], "burst": [], "loop_t": []}
            run(scheds[c[0]], c[1], trivial)
        trivial_times = []
        model_times = []
        for r in range(args.rounds):
            order = list(configs)
            random.Random(1000 + r).shuffle(order)
            for c in order:
                row = rows[c]
                burst = lambda row=row: [timeit(model_call, sync)  # noqa: E731
                                         for _ in range(min(row["nfe"], args.burst))]
                loop = lambda c=c: timeit(lambda: run(scheds[c[0]], c[1]), sync)  # noqa: E731
                if r % 2:
                    b = burst()
                    row["loop"].append(loop())
                else:
                    row["loop"].append(loop())
                    b = burst()
                row["burst"].append(sum(b) / len(b))
                model_times += b
                for _ in range(args.trivial_reps):
                    row["loop_t"].append(timeit(lambda c=c: run(scheds[c[0]], c[1], trivial), sync))
                    trivial_times.append(timeit(lambda: trivial(x_T, ts0), sync))
            print(f"[torch] round {r + 1}/{args.rounds}", flush=True)
        v = []
        for _ in range(args.micro_reps):
            t0 = time.perf_counter()
            torch.randn(x_T.shape, device=dev)
            sync()
            v.append(time.perf_counter() - t0)
        randn_s = statistics.median(v)
        v = []
        for _ in range(20):
            t0 = time.perf_counter()
            scheds["DPM++2M"].set_timesteps(10, device=dev)
            v.append(time.perf_counter() - t0)
        set_ts_s = statistics.median(v)

    model_med = statistics.median(model_times)
    out_rows = []
    for c in configs:
        row = rows[c]
        s = summary(row["loop"])
        nfe = row["nfe"]
        paired = summary([a / (nfe * b) - 1.0 for a, b in zip(row["loop"], row["burst"])])
        cost = statistics.median(row["loop_t"]) - nfe * statistics.median(trivial_times)
        o = {"scheduler": row["scheduler"], "nfe": nfe, "loop": s,
             "overhead": s["median"] / (nfe * model_med) - 1.0, "overhead_paired": paired,
             "loop_t": summary(row["loop_t"]), "scheduler_cost_s": cost,
             "overhead_est": cost / (nfe * model_med)}
        jd = {"DDIM": "ddim", "Euler": "euler"}.get(c[0])
        match = [r for r in jax_rows if r["solver"] == jd and r["nfe_budget"] == c[1]
                 and r["key"] == "threefry2x32"]
        if match:
            o["jdiff_solver"] = jd
            o["over_jdiff_sample"] = s["median"] / match[0]["sample"]["median"]
            o["max_abs_diff_vs_jdiff"] = float(np.max(np.abs(row["out"] - match[0]["_x"])))
            o["rel_diff_vs_jdiff"] = (o["max_abs_diff_vs_jdiff"]
                                      / float(np.max(np.abs(match[0]["_x"]))))
        out_rows.append(o)
    return {
        "torch": torch.__version__, "diffusers": diffusers.__version__, "device": str(dev),
        "num_threads": torch.get_num_threads(), "model_call": summary(model_times),
        "trivial_call": summary(trivial_times),
        "randn_s": randn_s, "set_timesteps_dpm10_s": set_ts_s, "rows": out_rows,
    }


# ----------------------------------------------------------------------------- report


def cpu_busy_s():
    """Busy CPU seconds of the whole machine so far (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
    except (OSError, ValueError, IndexError):
        return None


def machine_info():
    try:
        n_avail = len(os.sched_getaffinity(0))
    except AttributeError:
        n_avail = os.cpu_count()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
        "os_cpu_count": os.cpu_count(), "cpus_available": n_avail,
        "jax": jax.__version__, "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
    }


def ms(s):
    return f"{s * 1e3:.1f}" if s >= 0.1 else f"{s * 1e3:.2f}"


def pct(x):
    return f"{100 * x:+.1f}%"


def iqr_pct(s):
    return f"{pct(s['median'])} [{pct(s['q1'])}, {pct(s['q3'])}]"


def findings(res):
    """Summary lines computed from this run's numbers."""
    L = []
    fs = res.get("foreign_cpu_share")
    if fs is not None and fs > 0.1:
        L.append(f"- WARNING: other processes used {100 * fs:.0f}% of the machine's CPU during "
                 "this run; its timings are contaminated (re-run on a quiet machine).")
    mc = res["model_call"]["median"]
    rows = res["jax"]
    groups = {"deterministic solvers": [r for r in rows if not r["stochastic"]]}
    for k in res["config"].get("stochastic_keys", ["threefry2x32"]):
        groups[f"stochastic solvers with {k} keys"] = [
            r for r in rows if r["stochastic"] and r.get("key", "threefry2x32") == k]

    def spread(field):
        return "; ".join(f"{name}: {pct(min(field(r) for r in rs))} .. {pct(max(field(r) for r in rs))}"
                         for name, rs in groups.items() if rs)

    ok = sum(r["overhead_paired"]["median"] < 0.02 for r in rows)
    L.append(f"- Paired overhead of `jdiff.sample` below 2% in {ok}/{len(rows)} configurations; "
             + spread(lambda r: r["overhead_paired"]["median"]) + ".")
    est = [r["overhead_est"] for r in rows]
    ok_e = sum(e < 0.02 for e in est)
    L.append(f"- Noise-robust estimate (stand-in model): sampler cost = {pct(min(est))} .. "
             f"{pct(max(est))} of the model time; below 2% in {ok_e}/{len(rows)} configurations; "
             + spread(lambda r: r["overhead_est"]) + ".")
    per_step = {r["label"]: [] for r in rows}
    for r in rows:
        per_step[r["label"]].append(r["sampler_cost_s"] / r["steps"] * 1e6)
    fits = []
    for name in per_step:
        rs = sorted((r for r in rows if r["label"] == name), key=lambda r: r["steps"])
        if len(rs) >= 2 and rs[-1]["steps"] > rs[0]["steps"]:
            slope = ((rs[-1]["sampler_cost_s"] - rs[0]["sampler_cost_s"])
                     / (rs[-1]["steps"] - rs[0]["steps"]))
            fixed = rs[0]["sampler_cost_s"] - slope * rs[0]["steps"]
            fits.append(f"{name} {fixed * 1e6:.0f} us + {slope * 1e6:.0f} us/step")
    if fits:
        L.append("- Sampler cost split into a fixed part per `sample` call and a part per step "
                 "(two-point fit over the NFE budgets): " + "; ".join(fits) + ".")
    L.append("- Sampler cost per step (us, per NFE budget): "
             + "; ".join(f"{k} {', '.join(f'{v:.0f}' for v in vs)}" for k, vs in per_step.items())
             + ".")
    lc = [r["loop_overhead_est"] for r in rows]
    L.append(f"- Python-loop driver cost (upper bound): {pct(min(lc))} .. {pct(max(lc))} of the "
             "model time.")
    sc = [r["scan_paired"]["median"] for r in rows if r["scan_paired"]]
    L.append(f"- Model calls inside `lax.scan` vs the same calls dispatched one by one: "
             f"{pct(min(sc))} .. {pct(max(sc))} (paired medians).")
    ratios = [r["loop_over_sample"] for r in rows]
    L.append(f"- Python-loop driver (b) / one-jit sample (a): {min(ratios):.3f} .. "
             f"{max(ratios):.3f}.")
    if res.get("micro"):
        m = res["micro"]
        noise = [v for k, v in m.items() if k.startswith("noise: fold_in + normal, threefry (")]
        L.append(f"- Drawing the noise of one step (fold_in + normal, threefry, {x_shape(res)}) "
                 f"costs {min(noise) * 1e6:.0f} .. {max(noise) * 1e6:.0f} us as a separate call = "
                 f"{100 * min(noise) / mc:.1f} .. {100 * max(noise) / mc:.1f}% of a model call: "
                 "the per-step cost of the stochastic solvers.")
        other = {k[len("noise: "):]: v for k, v in m.items()
                 if k.startswith("noise") and not k.startswith("noise: fold_in + normal, threefry (")}
        if other:
            L.append("- Other noise variants (separate calls): " + "; ".join(
                f"{k}: {v * 1e6:.0f} us" for k, v in other.items()) + ".")
        floor = next((v for k, v in m.items() if k.startswith("in-scan step without history (")),
                     None)
        for kname in ("threefry", "threefry_xla"):
            label = f"in-scan step without history + a noise draw ({kname} keys: "
            in_scan = next((v for k, v in m.items() if k.startswith(label)), None)
            if floor is not None and in_scan is not None:
                L.append(f"- The same noise draw inside a `lax.scan` with {kname} keys adds "
                         f"{(in_scan - floor) * 1e6:.0f} us per step = "
                         f"{100 * (in_scan - floor) / mc:.1f}% of a model call.")
        fused = next((v for k, v in m.items() if "words not materialized" in k), None)
        if floor is not None and fused is not None:
            L.append(f"- With threefry_xla keys whose words XLA fuses into the transform (no "
                     f"conditional, `prng._materialized`) the draw adds {(fused - floor) * 1e6:.0f}"
                     f" us per step = {100 * (fused - floor) / mc:.1f}% of a model call.")
        hist = {k: v for k, v in m.items() if k.startswith("in-scan")}
        if hist:
            L.append("- Multistep history inside a scan, per step: " + "; ".join(
                f"{k.replace('in-scan ', '').replace(' (per step)', '')}: {v * 1e6:.0f} us"
                for k, v in hist.items()) + ".")
    t = res.get("torch")
    if t:
        ov = [r["overhead_est"] for r in t["rows"]]
        L.append("- diffusers scheduler cost per step: " + "; ".join(
            f"{r['scheduler']} (NFE {r['nfe']}) {r['scheduler_cost_s'] / r['nfe'] * 1e6:.0f} us"
            for r in t["rows"]) + ".")
        L.append(f"- diffusers loops: estimated overhead {pct(min(ov))} .. {pct(max(ov))} of a torch "
                 f"model call ({ms(t['model_call']['median'])} ms, "
                 f"{t['num_threads']} thread(s)); torch.randn of one sample batch "
                 f"{t['randn_s'] * 1e6:.0f} us.")
    return L


def x_shape(res):
    return f"{res['config']['batch']} x {res['config']['dim']}"


def write_md(path, res):
    m, cfg, mc = res["machine"], res["config"], res["model_call"]
    L = [
        "# jdiff sampler speed",
        "",
        f"Command: `{res['command']}` (wall time {res['wall_s']:.0f} s)  ",
        f"Machine: {m['cpu']}, {m['cpus_available']} CPUs available (os.cpu_count() = "
        f"{m['os_cpu_count']}), {m['platform']}, Python {m['python']}  ",
        f"JAX {m['jax']}, backend `{m['jax_backend']}`, jax.devices() = {m['jax_devices']}; "
        f"process CPU time / wall time during JAX model calls = {res['jax_cpu_per_wall']:.2f} "
        "(how many cores XLA:CPU actually got)  ",
        f"Load average (1/5/15 min) before / after: {res['loadavg_before']} / "
        f"{res['loadavg_after']}; CPU used by other processes during the run: "
        + (f"{100 * res['foreign_cpu_share']:.0f}% of the machine"
           if res.get("foreign_cpu_share") is not None else "unknown"),
        "",
        f"Model: `jdiff.models.MLP(features={cfg['width']}, depth={cfg['depth']}, "
        f"time_embedding_dim={cfg['temb']})`, data dim {cfg['dim']}, batch {cfg['batch']}, "
        f"float32, eps-prediction; `vp_discrete` schedule, `trailing` grid ending at t = 0. "
        f"{cfg['rounds']} interleaved rounds.",
        "",
        f"(c) one model call: **{ms(mc['median'])} ms** (median of {mc['n']}; IQR "
        f"[{ms(mc['q1'])}, {ms(mc['q3'])}], min {ms(mc['min'])}).",
        "",
        "| solver | steps | NFE | (a) sample ms | (b) loop ms | (b)/(a) | NFE x (c) ms "
        "| overhead from medians | **overhead paired** [IQR] | scan part | step-math part |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["jax"]:
        a, b = r["sample"], r["loop"]
        L.append(
            f"| {r['label']} | {r['steps']} | {r['nfe']} | {ms(a['median'])} [{ms(a['q1'])}, "
            f"{ms(a['q3'])}] | {ms(b['median'])} [{ms(b['q1'])}, {ms(b['q3'])}] | "
            f"{r['loop_over_sample']:.3f} | {ms(r['nfe'] * mc['median'])} | "
            f"{pct(r['overhead'])} | **{iqr_pct(r['overhead_paired'])}** | "
            + (f"{pct(r['scan_paired']['median'])} | {pct(r['step_math_paired']['median'])} |"
               if r["scan_paired"] else "- | - |")
        )
    L += [
        "",
        "- (a), (b): medians over rounds [IQR]. (b) = per step, a jitted model call + a jitted "
        "step program (conversion + update + noise) dispatched from Python; Heun adds a jitted "
        "stage program for its corrector input.",
        "- overhead from medians = (a) / (NFE x (c)) - 1 with the run-wide medians.",
        "- overhead paired = (a) / (sum of NFE single model calls timed right next to it) - 1, "
        "median over rounds [IQR]; scan part = (d) / burst - 1 with (d) = NFE model calls in one "
        "`lax.scan` and nothing else; step-math part = ((a) - (d)) / burst.",
        "",
        "Noise-robust decomposition (e), with the stand-in model `eps = 0.5 x + 0.1 t` "
        f"({res['config']['trivial_reps']} x {res['config']['rounds']} repeats each, medians):",
        "",
        "| solver | NFE | (a_e) sample ms | (d_e) scan ms | (b_e) loop ms | sampler cost us/step "
        "| **overhead est. (a)** | loop cost us/step | overhead est. (b) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["jax"]:
        tr = r["trivial"]
        L.append(
            f"| {r['label']} | {r['nfe']} | {ms(tr['sample_t']['median'])} | "
            f"{ms(tr['scan_t']['median'])} | {ms(tr['loop_t']['median'])} | "
            f"{r['sampler_cost_s'] / r['steps'] * 1e6:.0f} | **{pct(r['overhead_est'])}** | "
            f"{r['loop_cost_s'] / r['steps'] * 1e6:.0f} | {pct(r['loop_overhead_est'])} |"
        )
    L += [
        "",
        "overhead est. = (sampler or loop cost) / (NFE x (c)); sampler cost = (a_e) - (d_e), loop "
        "cost = (b_e) - (d_e). The loop estimate is an upper bound: with a real model, Python's "
        "dispatch of the next call overlaps the running one.",
        "",
        f"Checks: max |(a) - (b)| (stand-in model) over all configurations = "
        f"{res['checks']['max_abs_diff_sample_vs_loop']:.3g}; all samples finite: "
        f"{res['checks']['all_finite']}.",
    ]
    if res.get("micro"):
        L += ["", f"Per-step pieces (jitted, batch {cfg['batch']} x {cfg['dim']}, median; the "
              "first ones are separate calls and include one dispatch each, the `in-scan` ones "
              "are per step of a 50-step `lax.scan`):", ""]
        L += [f"- {k}: {v * 1e6:.0f} us ({100 * v / mc['median']:.2f}% of a model call)"
              for k, v in res["micro"].items()]
    t = res.get("torch")
    if t:
        tc = t["model_call"]
        L += [
            "",
            "## PyTorch anchor: diffusers' own loop",
            "",
            f"torch {t['torch']}, diffusers {t['diffusers']}, device {t['device']}, "
            f"`torch.set_num_threads({t['num_threads']})` (= CPUs available = XLA:CPU's pool size). "
            f"Same MLP in PyTorch with the Flax weights. One torch model call: "
            f"**{ms(tc['median'])} ms** (IQR [{ms(tc['q1'])}, {ms(tc['q3'])}], min "
            f"{ms(tc['min'])}). `set_timesteps` (inside the timed loop): "
            f"{t['set_timesteps_dpm10_s'] * 1e6:.0f} us (DPM++, 10); `torch.randn` of one batch: "
            f"{t['randn_s'] * 1e6:.0f} us.",
            "",
            "| scheduler | NFE | diffusers loop ms | overhead from medians | "
            "overhead paired [IQR] | scheduler cost us/step (e) | **overhead est.** "
            "| / jdiff sample of the same solver | max abs diff vs jdiff (relative) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in t["rows"]:
            s = r["loop"]
            rel = f"{r['over_jdiff_sample']:.2f} ({r['jdiff_solver']})" if "jdiff_solver" in r else ""
            diff = (f"{r['max_abs_diff_vs_jdiff']:.2g} ({r['rel_diff_vs_jdiff']:.1g})"
                    if "jdiff_solver" in r else "")
            L.append(f"| {r['scheduler']} | {r['nfe']} | {ms(s['median'])} [{ms(s['q1'])}, "
                     f"{ms(s['q3'])}] | {pct(r['overhead'])} | {iqr_pct(r['overhead_paired'])}"
                     f" | {r['scheduler_cost_s'] / r['nfe'] * 1e6:.0f} | "
                     f"**{pct(r['overhead_est'])}** | {rel} | {diff} |")
        L += ["", "scheduler cost = diffusers loop with the stand-in model `0.5 x + 0.1` minus NFE "
              "stand-in calls (includes `set_timesteps`, `scale_model_input`, `step` and Python); "
              "overhead est. = scheduler cost / (NFE x torch model call)."]
    elif "torch" in res:
        L += ["", "PyTorch anchor: skipped (torch/diffusers not importable, or --no-torch)."]
    L += ["", "## Findings (computed from this run)", ""] + res["notes"]
    with open(path, "w") as f:
        f.write("\n".join(L) + "\n")


# ----------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 rounds, NFE 10, ddim/euler/heun; writes nothing unless --out")
    ap.add_argument("--solvers", default="all", help="comma list, or 'all' registered solvers")
    ap.add_argument("--nfe", default="10,50", help="comma list of NFE budgets")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--temb", type=int, default=128, help="time embedding dim")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds")
    ap.add_argument("--burst", type=int, default=10,
                    help="single model calls timed next to each sample (paired reference)")
    ap.add_argument("--scan-solvers", default="ddim,euler,heun",
                    help="solvers for which (d), NFE model calls in one scan, is timed")
    ap.add_argument("--trivial-reps", type=int, default=5,
                    help="repeats per round of the stand-in-model timings (e)")
    ap.add_argument("--micro-reps", type=int, default=200, help="repeats of each micro-benchmark")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads (default: the number of CPUs available)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch/diffusers anchor")
    ap.add_argument("--no-micro", action="store_true", help="skip the per-piece micro-benchmarks")
    ap.add_argument("--stochastic-keys", default="threefry2x32,threefry_xla",
                    help="key implementations the stochastic solvers are timed with (one "
                         "configuration each): threefry2x32 (jax.random.key) and/or threefry_xla "
                         "(jdiff.prng.key)")
    ap.add_argument("--out", default=None,
                    help="output prefix: writes PREFIX.json and PREFIX.md (default "
                         "benchmarks/results/speed; nothing for --quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 2)
        args.micro_reps = min(args.micro_reps, 30)
        args.nfe = "10" if args.nfe == "10,50" else args.nfe
        args.solvers = "ddim,euler,heun" if args.solvers == "all" else args.solvers
    args.nfe = [int(v) for v in args.nfe.split(",")]
    names = list(jdiff.solvers.SOLVERS) if args.solvers == "all" else args.solvers.split(",")
    scan_solvers = set(args.scan_solvers.split(","))
    out = args.out if args.out is not None else (
        None if args.quick else os.path.join(HERE, "results", "speed"))

    t_start = time.perf_counter()
    busy0, own0 = cpu_busy_s(), time.process_time()
    load_before = [round(v, 2) for v in os.getloadavg()]
    info = machine_info()
    print(f"[speed] {info['cpu']}, {info['cpus_available']} CPUs, jax {info['jax']} "
          f"{info['jax_devices']}", flush=True)

    model = MLP(features=args.width, depth=args.depth, time_embedding_dim=args.temb)
    params = model.init(jax.random.key(0), jnp.zeros((1, args.dim)), 0.5)
    x_T = jax.random.normal(jax.random.key(1), (args.batch, args.dim), jnp.float32)
    keys = {"threefry2x32": jax.random.key(2), "threefry_xla": jdiff.prng.key(2)}
    key_names = args.stochastic_keys.split(",")
    if not key_names or any(k not in keys for k in key_names):
        ap.error(f"--stochastic-keys: choose from {sorted(keys)}")
    sch = jdiff.schedules.vp_discrete()
    model_fn = jax.tree_util.Partial(model.apply, params)
    model_jit = jax.jit(model.apply)
    model_scan = make_model_scan(model.apply)
    t_mid = jax.device_put(jnp.float32(0.5))

    def model_call():
        return model_jit(params, x_T, t_mid)

    # (e) a near-free stand-in model, to measure what the sampler itself costs (see docstring)
    def trivial_apply(p, x, t):
        return p[0] * x + p[1] * t

    t_params = jnp.array([0.5, 0.1], jnp.float32)
    trivial_fn = jax.tree_util.Partial(trivial_apply, t_params)
    trivial_jit = jax.jit(trivial_apply)
    trivial_scan = make_model_scan(trivial_apply)

    for _ in range(3):
        _block(model_call())
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(20):
        _block(model_call())
    cpu_per_wall = (time.process_time() - c0) / (time.perf_counter() - w0)

    coeffs_jit = jax.jit(grid_coeffs, static_argnums=2)

    def prepare(nfe_budget, name, key_name):
        solver = jdiff.solvers.get_solver(name)
        key = keys[key_name]
        steps = jdiff.solvers.steps_for_nfe(solver, nfe_budget)
        grid = jdiff.grids.make_grid(sch, "trailing", steps)
        g = coeffs_jit(sch, grid, jnp.float32)
        loop, ks = make_loop_driver(solver, g, steps, True)
        nfe = jdiff.nfe(solver, grid)
        c = dict(solver=name, key_name=key_name, key=key, label=label(name, key_name),
                 nfe_budget=nfe_budget, steps=steps, nfe=nfe, obj=solver,
                 grid=grid, loop=loop, ks=ks, stochastic=solver.stochastic,
                 scan=name in scan_solvers, burst=min(nfe, args.burst),
                 ts_scan=jnp.asarray(np.resize(np.asarray(g.t[:-1]), nfe)),
                 times={"sample": [], "loop": [], "scan": [], "burst": [],
                        "sample_t": [], "loop_t": [], "scan_t": []})
        # warm-up (compiles). The loop's stage/step programs are shared by both models, so the
        # loop driver is warmed up, and checked against sample, with the stand-in model.
        xa = np.asarray(jdiff.sample(model_fn, sch, solver, grid, x_T, key=key))
        if c["scan"]:
            _block(model_scan(params, x_T, c["ts_scan"]))
        for _ in range(2):
            xa_t = np.asarray(jdiff.sample(trivial_fn, sch, solver, grid, x_T, key=key))
            xb_t = np.asarray(loop(trivial_jit, t_params, x_T, key))
            _block(trivial_scan(t_params, x_T, c["ts_scan"]))
        c.update(_x=xa, diff=float(np.max(np.abs(xa_t - xb_t))),
                 finite=bool(np.isfinite(xa).all() and np.isfinite(xb_t).all()))
        return c

    # XLA compiles on one thread: warm up (compile) the configurations in parallel.
    t0 = time.perf_counter()
    jobs = [(nfe_budget, name, k) for nfe_budget in args.nfe for name in names
            for k in (key_names if jdiff.solvers.get_solver(name).stochastic else ["threefry2x32"])]
    with ThreadPoolExecutor(max_workers=info["cpus_available"]) as pool:
        configs = list(pool.map(lambda job: prepare(*job), jobs))
    max_diff = max(c["diff"] for c in configs)
    print(f"[speed] {len(configs)} configurations compiled in {time.perf_counter() - t0:.0f} s; "
          f"max |sample - loop| = {max_diff:.3g}; JAX CPU/wall = {cpu_per_wall:.2f}", flush=True)

    def timers(c):
        key = c["key"]
        return {
            "sample": lambda: timeit(lambda: jdiff.sample(model_fn, sch, c["obj"], c["grid"], x_T,
                                                          key=key)),
            "scan": lambda: timeit(lambda: model_scan(params, x_T, c["ts_scan"])),
            "loop": lambda: timeit(lambda: c["loop"](model_jit, params, x_T, key)),
            "sample_t": lambda: timeit(lambda: jdiff.sample(trivial_fn, sch, c["obj"], c["grid"],
                                                            x_T, key=key)),
            "scan_t": lambda: timeit(lambda: trivial_scan(t_params, x_T, c["ts_scan"])),
            "loop_t": lambda: timeit(lambda: c["loop"](trivial_jit, t_params, x_T, key)),
        }

    model_times = []
    for r in range(args.rounds):
        order = list(range(len(configs)))
        random.Random(r).shuffle(order)
        modes = ["sample", "burst", "scan", "loop"]
        if r % 2:
            modes.reverse()
        for ci in order:
            c = configs[ci]
            tm = timers(c)
            for mode in modes:
                if mode == "burst":  # keep the single calls for the run-wide median (c)
                    b = [timeit(model_call) for _ in range(c["burst"])]
                    model_times += b
                    c["times"]["burst"].append(sum(b) / len(b))  # mean time of one call
                elif mode != "scan" or c["scan"]:
                    c["times"][mode].append(tm[mode]())
            trivial_modes = ["sample_t", "scan_t", "loop_t"]
            for k in range(args.trivial_reps):
                for mode in trivial_modes[k % 3:] + trivial_modes[:k % 3]:
                    c["times"][mode].append(tm[mode]())
        print(f"[speed] round {r + 1}/{args.rounds} ({time.perf_counter() - t_start:.0f} s)",
              flush=True)

    model_med = statistics.median(model_times)
    med = statistics.median
    rows = []
    for c in configs:
        T, n = c["times"], c["nfe"]
        s = summary(T["sample"])
        rows.append({
            "solver": c["solver"], "key": c["key_name"], "label": c["label"],
            "stochastic": c["stochastic"], "nfe_budget": c["nfe_budget"],
            "steps": c["steps"], "nfe": c["nfe"], "model_calls_per_step": list(c["ks"]),
            "sample": s, "loop": summary(T["loop"]),
            "scan": summary(T["scan"]) if c["scan"] else None,
            "burst_mean_call": summary(T["burst"]),
            "loop_over_sample": statistics.median(T["loop"]) / s["median"],
            "loop_over_sample_paired": summary([b / a for a, b in zip(T["sample"], T["loop"])]),
            "overhead": s["median"] / (c["nfe"] * model_med) - 1.0,
            "overhead_paired": summary([a / (n * b) - 1 for a, b in zip(T["sample"], T["burst"])]),
            "scan_paired": summary([d / (n * b) - 1 for d, b in zip(T["scan"], T["burst"])])
            if c["scan"] else None,
            "step_math_paired": summary([(a - d) / (n * b) for a, d, b in
                                         zip(T["sample"], T["scan"], T["burst"])])
            if c["scan"] else None,
            "max_abs_diff_sample_vs_loop": c["diff"],
            "trivial": {k: summary(T[k]) for k in ("sample_t", "scan_t", "loop_t")},
            "sampler_cost_s": med(T["sample_t"]) - med(T["scan_t"]),
            "loop_cost_s": med(T["loop_t"]) - med(T["scan_t"]),
            "overhead_est": (med(T["sample_t"]) - med(T["scan_t"])) / (c["nfe"] * model_med),
            "loop_overhead_est": (med(T["loop_t"]) - med(T["scan_t"])) / (c["nfe"] * model_med),
            "_x": c["_x"],
        })

    micro = None if args.no_micro else micro_benchmarks(params, model.apply, x_T, sch,
                                                        args.micro_reps)
    torch_res = None
    if not args.no_torch:
        n_thr = args.torch_threads or info["cpus_available"]
        torch_res = torch_phase(args, params, np.asarray(x_T), n_thr, rows)
    for r in rows:
        r.pop("_x")

    res = {
        "command": "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
        if argv is None else f"benchmarks.speed.main({argv!r})",
        "machine": info,
        "jax_cpu_per_wall": cpu_per_wall,
        "config": {"batch": args.batch, "dim": args.dim, "width": args.width, "depth": args.depth,
                   "temb": args.temb, "rounds": args.rounds, "nfe_budgets": args.nfe,
                   "solvers": names, "grid": "trailing", "schedule": "vp_discrete",
                   "dtype": "float32", "prediction": "eps", "trivial_reps": args.trivial_reps,
                   "burst": args.burst, "scan_solvers": sorted(scan_solvers),
                   "stochastic_keys": key_names},
        "model_call": summary(model_times),
        "jax": rows,
        "checks": {"max_abs_diff_sample_vs_loop": max_diff,
                   "all_finite": all(c["finite"] for c in configs)},
        "micro": micro,
        "torch": torch_res,
        "loadavg_before": load_before,
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
    }
    res["wall_s"] = time.perf_counter() - t_start
    busy1 = cpu_busy_s()
    res["foreign_cpu_share"] = (
        None if busy0 is None or busy1 is None else
        max(0.0, (busy1 - busy0) - (time.process_time() - own0))
        / (res["wall_s"] * info["cpus_available"]))
    res["notes"] = findings(res)
    if out:  # files first, so that nothing measured is lost to a printing error
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out + ".json", "w") as f:
            json.dump(res, f, indent=1)
        write_md(out + ".md", res)

    print(f"\n(c) model call: {model_med * 1e3:.2f} ms")
    print(f"{'solver':28s} {'NFE':>4s} {'(a) ms':>9s} {'(b) ms':>9s} {'b/a':>6s} {'(d) ms':>9s} "
          f"{'ovh med':>8s} {'ovh paired [IQR]':>26s} {'est (a)':>8s} {'est (b)':>8s}")
    for r in rows:
        o = r["overhead_paired"]
        print(f"{r['label']:28s} {r['nfe']:4d} {r['sample']['median'] * 1e3:9.1f} "
              f"{r['loop']['median'] * 1e3:9.1f} {r['loop_over_sample']:6.3f} "
              + (f"{r['scan']['median'] * 1e3:9.1f}" if r["scan"] else f"{'-':>9s}")
              + f" {pct(r['overhead']):>8s} "
              f"{pct(o['median']):>8s} [{pct(o['q1'])}, {pct(o['q3'])}] "
              f"{pct(r['overhead_est']):>8s} {pct(r['loop_overhead_est']):>8s}")
    if torch_res:
        print(f"\ntorch model call: {torch_res['model_call']['median'] * 1e3:.2f} ms "
              f"({torch_res['num_threads']} threads)")
        for r in torch_res["rows"]:
            print(f"diffusers {r['scheduler']:8s} NFE {r['nfe']:3d} {r['loop']['median'] * 1e3:9.1f}"
                  f" ms  overhead {pct(r['overhead'])}  paired {pct(r['overhead_paired']['median'])}")
    print("\n" + "\n".join(res["notes"]))
    fs = res["foreign_cpu_share"]
    print(f"\n[speed] total {res['wall_s']:.0f} s; other processes used "
          + ("?" if fs is None else f"{100 * fs:.0f}%") + " of the machine's CPU meanwhile")
    if out:
        print(f"[speed] wrote {out}.json and {out}.md")
    return res


if __name__ == "__main__":
    main()
