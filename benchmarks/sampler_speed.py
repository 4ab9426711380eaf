"""Sampler speed: one-jit ``jdiff.sample`` vs a Python-loop driver vs bare model calls.

    python benchmarks/sampler_speed.py          # full run: all solvers, NFE 10 and 50 (~3-5 min,
                                                # quiet CPU); writes results/sampler_speed.{json,md}
    python benchmarks/sampler_speed.py --quick  # smoke run (~30 s): ddim/euler/heun at NFE 10;
                                                # prints only (add --out PREFIX to write files)

Setup (shared with ``prng_speed.py`` and ``step_micro.py``, see ``common.make_mlp``): an
eps-prediction MLP (:class:`jdiff.models.MLP`; default width 512, 4 hidden layers, data dim 64,
time embedding 128: about 1.9 GFLOP per call at batch 1024), the DDPM ``vp_discrete`` schedule, a
``trailing`` grid ending at t = 0, batch 1024, float32. Each solver (all registered ones by
default) gets, per NFE budget (10 and 50), the most steps whose NFE fits the budget (Heun at 10
takes 5 steps = 9 evaluations: its last step onto sigma = 0 skips the corrector); overheads use
that exact NFE.

Measured side by side:

(a) ``sample``: the public :func:`jdiff.sample` call (one jitted program, ``lax.scan`` over the
    steps), the model passed as ``Partial(ignore_args(model.apply), params)``; wall time from the
    Python call to ``block_until_ready`` of the result, after warm-up.
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
    noise), ``loop cost = (b_e) - (d_e)`` the same for the Python-loop driver.

Stochastic solvers are timed twice (``--stochastic-keys``): with JAX's default key
(``jax.random.key``, threefry2x32) and with :func:`jdiff.prng.key`; rows of the latter are
labelled ``[threefry_xla key]``. (The noise draw itself is studied in ``prng_speed.py``.)

Derived (table ``derived`` of the report, per group of solvers): ``(b)/(a)``; the sampler
overhead ``(a) / (NFE * (c)) - 1``, paired (below) and its noise-robust estimate
``sampler cost / (NFE * (c))``; the sampler cost split into a part per call and a part per step
(two-point fit over the NFE budgets).

Noise control: rounds are interleaved -- every round times every configuration once, in a
shuffled order, each as (a), a burst of ``--burst`` (10) single model calls (c), (d) and (b) back
to back, the order reversed in odd rounds, then the stand-in timings (e). The *paired* overhead
``(a) / (NFE * mean burst call) - 1`` compares timings taken within about a second of each
other (median over rounds with its interquartile range), split into a scan part
``(d) / (NFE * mean burst call) - 1`` and a step-math part ``((a) - (d)) / (NFE * mean burst
call)``. The CPU time other processes used during the run is recorded (``foreign_cpu_share``).

Threads: XLA:CPU runs its matmuls on an intra-op pool with one thread per available CPU, so the
PyTorch anchor uses ``torch.set_num_threads(len(os.sched_getaffinity(0)))`` (override with
``--torch-threads``). The process CPU time / wall time during JAX model calls is recorded as
``jax_cpu_per_wall``.

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

import os
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import ms, pct, summary, timeit  # noqa: E402

import jdiff  # noqa: E402
from jdiff.prediction import to_x0_eps  # noqa: E402
from jdiff.solvers.base import grid_coeffs  # noqa: E402


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
        return solver.step(denoise, state, g, i, to_zero)[0]

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
        for _ in range(args.randn_reps):
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


def derived(res):
    """The quantities the report's ``derived`` tables show, computed from the rows."""
    rows = res["jax"]
    groups = {"all": rows, "deterministic": [r for r in rows if not r["stochastic"]]}
    for k in res["config"]["stochastic_keys"]:
        groups[f"stochastic, {k} keys"] = [r for r in rows if r["stochastic"] and r["key"] == k]

    def span(rs, f, below=None):
        v = [f(r) for r in rs]
        out = {"min": min(v), "max": max(v)}
        if below is not None:
            out[f"below_{below}"] = sum(x < below for x in v)
        return out

    by_group = [{
        "group": name, "configs": len(rs),
        "overhead_paired": span(rs, lambda r: r["overhead_paired"]["median"], 0.02),
        "overhead_est": span(rs, lambda r: r["overhead_est"], 0.02),
        "loop_overhead_est": span(rs, lambda r: r["loop_overhead_est"]),
        "loop_over_sample": span(rs, lambda r: r["loop_over_sample"]),
        "scan_paired": (span([r for r in rs if r["scan_paired"]], lambda r: r["scan_paired"]["median"])
                        if any(r["scan_paired"] for r in rs) else None),
    } for name, rs in groups.items() if rs]
    fits = []
    for name in dict.fromkeys(r["label"] for r in rows):
        rs = sorted((r for r in rows if r["label"] == name), key=lambda r: r["steps"])
        if len(rs) >= 2 and rs[-1]["steps"] > rs[0]["steps"]:
            slope = ((rs[-1]["sampler_cost_s"] - rs[0]["sampler_cost_s"])
                     / (rs[-1]["steps"] - rs[0]["steps"]))
            fits.append({"label": name, "steps": [rs[0]["steps"], rs[-1]["steps"]],
                         "per_call_s": rs[0]["sampler_cost_s"] - slope * rs[0]["steps"],
                         "per_step_s": slope})
    return {"groups": by_group, "sampler_cost_fit": fits}


def write_md(res):
    cfg, mc = res["config"], res["model_call"]
    L = common.md_header("jdiff sampler speed", res)
    L += [f"Process CPU time / wall time during JAX model calls: {res['jax_cpu_per_wall']:.2f}.",
          "", common.mlp_line(cfg) + f" `{cfg['schedule']}` schedule, `{cfg['grid']}` grid "
          f"ending at t = 0; {cfg['rounds']} interleaved rounds.", "",
          f"(c) one model call: **{ms(mc['median'])} ms** (median of {mc['n']}; IQR "
          f"[{ms(mc['q1'])}, {ms(mc['q3'])}], min {ms(mc['min'])}).", ""]
    L += common.md_table(
        ["solver", "steps", "NFE", "(a) sample ms", "(b) loop ms", "(b)/(a)", "NFE x (c) ms",
         "overhead from medians", "**overhead paired** [IQR]", "scan part", "step-math part"],
        [[r["label"], r["steps"], r["nfe"],
          f"{ms(r['sample']['median'])} [{ms(r['sample']['q1'])}, {ms(r['sample']['q3'])}]",
          f"{ms(r['loop']['median'])} [{ms(r['loop']['q1'])}, {ms(r['loop']['q3'])}]",
          f"{r['loop_over_sample']:.3f}", ms(r["nfe"] * mc["median"]), pct(r["overhead"]),
          f"**{common.iqr_pct(r['overhead_paired'])}**",
          pct(r["scan_paired"]["median"]) if r["scan_paired"] else "-",
          pct(r["step_math_paired"]["median"]) if r["scan_paired"] else "-"]
         for r in res["jax"]])
    L += ["", "(a), (b): medians [IQR] over rounds. Overhead from medians = (a) / (NFE x (c)) - 1; "
          "paired = (a) / (NFE single model calls timed next to it) - 1; scan part = (d) / burst - 1; "
          "step-math part = ((a) - (d)) / burst.", "",
          f"(e) stand-in model `eps = 0.5 x + 0.1 t` ({cfg['trivial_reps']} x {cfg['rounds']} "
          "repeats each, medians); sampler cost = (a_e) - (d_e), loop cost = (b_e) - (d_e), "
          "overhead est. = cost / (NFE x (c)):", ""]
    L += common.md_table(
        ["solver", "NFE", "(a_e) sample ms", "(d_e) scan ms", "(b_e) loop ms",
         "sampler cost us/step", "**overhead est. (a)**", "loop cost us/step",
         "overhead est. (b)"],
        [[r["label"], r["nfe"], ms(r["trivial"]["sample_t"]["median"]),
          ms(r["trivial"]["scan_t"]["median"]), ms(r["trivial"]["loop_t"]["median"]),
          common.us(r["sampler_cost_s"] / r["steps"]), f"**{pct(r['overhead_est'])}**",
          common.us(r["loop_cost_s"] / r["steps"]), pct(r["loop_overhead_est"])]
         for r in res["jax"]])
    L += ["", f"Checks: max |(a) - (b)| (stand-in model) over all configurations = "
          f"{res['checks']['max_abs_diff_sample_vs_loop']:.3g}; all samples finite: "
          f"{res['checks']['all_finite']}.", "", "## Derived", ""]

    def rng(s, below=None):
        if s is None:
            return "-"
        out = f"{pct(s['min'])} .. {pct(s['max'])}"
        return out + (f" ({s[f'below_{below}']} < 2%)" if below else "")

    def ratio(s):
        return f"{s['min']:.3f} .. {s['max']:.3f}"

    d = res["derived"]
    L += common.md_table(
        ["group", "configs", "overhead paired", "overhead est. (a)", "overhead est. (b)",
         "(b)/(a)", "scan part"],
        [[g["group"], g["configs"], rng(g["overhead_paired"], 0.02), rng(g["overhead_est"], 0.02),
          rng(g["loop_overhead_est"]), ratio(g["loop_over_sample"]), rng(g["scan_paired"])]
         for g in d["groups"]])
    if d["sampler_cost_fit"]:
        L += ["", "Sampler cost (e) = per call + per step x steps (two-point fit over the NFE "
              "budgets):", ""]
        L += common.md_table(["solver", "steps", "per call us", "per step us"],
                             [[f["label"], " / ".join(map(str, f["steps"])), common.us(f["per_call_s"]),
                               common.us(f["per_step_s"])] for f in d["sampler_cost_fit"]])
    t = res.get("torch")
    if t:
        tc = t["model_call"]
        L += ["", "## PyTorch anchor: diffusers' own loop", "",
              f"torch {t['torch']}, diffusers {t['diffusers']}, device {t['device']}, "
              f"`torch.set_num_threads({t['num_threads']})`; the same MLP with the Flax weights. "
              f"One torch model call: **{ms(tc['median'])} ms** (IQR [{ms(tc['q1'])}, "
              f"{ms(tc['q3'])}], min {ms(tc['min'])}). `set_timesteps` (inside the timed loop): "
              f"{common.us(t['set_timesteps_dpm10_s'])} us (DPM++, 10); `torch.randn` of one "
              f"batch: {common.us(t['randn_s'])} us.", ""]
        L += common.md_table(
            ["scheduler", "NFE", "diffusers loop ms", "overhead from medians",
             "overhead paired [IQR]", "scheduler cost us/step (e)", "**overhead est.**",
             "/ jdiff sample of the same solver", "max abs diff vs jdiff (relative)"],
            [[r["scheduler"], r["nfe"],
              f"{ms(r['loop']['median'])} [{ms(r['loop']['q1'])}, {ms(r['loop']['q3'])}]",
              pct(r["overhead"]), common.iqr_pct(r["overhead_paired"]),
              common.us(r["scheduler_cost_s"] / r["nfe"]), f"**{pct(r['overhead_est'])}**",
              f"{r['over_jdiff_sample']:.2f} ({r['jdiff_solver']})" if "jdiff_solver" in r else "",
              f"{r['max_abs_diff_vs_jdiff']:.2g} ({r['rel_diff_vs_jdiff']:.1g})"
              if "jdiff_solver" in r else ""] for r in t["rows"]])
        L += ["", "scheduler cost = diffusers loop with the stand-in model `0.5 x + 0.1` minus NFE "
              "stand-in calls; overhead est. = scheduler cost / (NFE x torch model call)."]
    elif "torch" in res:
        L += ["", "PyTorch anchor: skipped (torch/diffusers not importable, or --no-torch)."]
    return L


# ----------------------------------------------------------------------------- main


def main(argv=None):
    ap = common.parser(__doc__, "smoke run: 2 rounds, NFE 10, ddim/euler/heun")
    ap.add_argument("--solvers", default="all", help="comma list, or 'all' registered solvers")
    ap.add_argument("--nfe", default="10,50", help="comma list of NFE budgets")
    common.add_mlp_args(ap)
    ap.add_argument("--rounds", type=int, default=4, help="interleaved timing rounds")
    ap.add_argument("--burst", type=int, default=10,
                    help="single model calls timed next to each sample (paired reference)")
    ap.add_argument("--scan-solvers", default="ddim,euler,heun",
                    help="solvers for which (d), NFE model calls in one scan, is timed")
    ap.add_argument("--trivial-reps", type=int, default=5,
                    help="repeats per round of the stand-in-model timings (e)")
    ap.add_argument("--randn-reps", type=int, default=200, help="repeats of the torch.randn timing")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="torch.set_num_threads (default: the number of CPUs available)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch/diffusers anchor")
    ap.add_argument("--stochastic-keys", default="threefry2x32,threefry_xla",
                    help="key implementations the stochastic solvers are timed with (one "
                         "configuration each): threefry2x32 (jax.random.key) and/or threefry_xla "
                         "(jdiff.prng.key)")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 2)
        args.randn_reps = min(args.randn_reps, 30)
        args.nfe = "10" if args.nfe == "10,50" else args.nfe
        args.solvers = "ddim,euler,heun" if args.solvers == "all" else args.solvers
    args.nfe = [int(v) for v in args.nfe.split(",")]
    names = list(jdiff.solvers.SOLVERS) if args.solvers == "all" else args.solvers.split(",")
    scan_solvers = set(args.scan_solvers.split(","))
    out = common.out_prefix(args, "sampler_speed")
    keys = {"threefry2x32": jax.random.key(2), "threefry_xla": jdiff.prng.key(2)}
    key_names = args.stochastic_keys.split(",")
    if not key_names or any(k not in keys for k in key_names):
        ap.error(f"--stochastic-keys: choose from {sorted(keys)}")

    run = common.Run(__file__, argv)
    info = run.head["machine"]
    print(f"[sampler_speed] {info['cpu']}, {info['cpus_available']} CPUs, jax {info['jax']} "
          f"{info['jax_devices']}", flush=True)
    mlp = common.make_mlp(args)
    params, x_T, model_fn, model_jit = mlp.params, mlp.x, mlp.fn, mlp.jit
    t_params, trivial_fn, trivial_jit = mlp.t_params, mlp.t_fn, mlp.t_jit
    sch = jdiff.schedules.vp_discrete()
    model_scan = make_model_scan(mlp.model.apply)
    trivial_scan = make_model_scan(common.trivial_apply)
    cpu_per_wall = common.cpu_per_wall(mlp.call)
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
            common.block(model_scan(params, x_T, c["ts_scan"]))
        for _ in range(2):
            xa_t = np.asarray(jdiff.sample(trivial_fn, sch, solver, grid, x_T, key=key))
            xb_t = np.asarray(loop(trivial_jit, t_params, x_T, key))
            common.block(trivial_scan(t_params, x_T, c["ts_scan"]))
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
    print(f"[sampler_speed] {len(configs)} configurations compiled in "
          f"{time.perf_counter() - t0:.0f} s; max |sample - loop| = {max_diff:.3g}; "
          f"JAX CPU/wall = {cpu_per_wall:.2f}", flush=True)

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
                    b = [timeit(mlp.call) for _ in range(c["burst"])]
                    model_times += b
                    c["times"]["burst"].append(sum(b) / len(b))  # mean time of one call
                elif mode != "scan" or c["scan"]:
                    c["times"][mode].append(tm[mode]())
            trivial_modes = ["sample_t", "scan_t", "loop_t"]
            for k in range(args.trivial_reps):
                for mode in trivial_modes[k % 3:] + trivial_modes[:k % 3]:
                    c["times"][mode].append(tm[mode]())
        print(f"[sampler_speed] round {r + 1}/{args.rounds} ({run.elapsed():.0f} s)", flush=True)

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

    torch_res = None
    if not args.no_torch:
        n_thr = args.torch_threads or info["cpus_available"]
        torch_res = torch_phase(args, params, np.asarray(x_T), n_thr, rows)
    for r in rows:
        r.pop("_x")

    res = run.finish({
        "jax_cpu_per_wall": cpu_per_wall,
        "config": {**mlp.config, "rounds": args.rounds, "nfe_budgets": args.nfe,
                   "solvers": names, "grid": "trailing", "schedule": "vp_discrete",
                   "trivial_reps": args.trivial_reps, "burst": args.burst,
                   "scan_solvers": sorted(scan_solvers), "stochastic_keys": key_names},
        "model_call": summary(model_times),
        "jax": rows,
        "checks": {"max_abs_diff_sample_vs_loop": max_diff,
                   "all_finite": all(c["finite"] for c in configs)},
        "torch": torch_res,
    })
    res["derived"] = derived(res)
    return common.report(out, res, write_md(res))


if __name__ == "__main__":
    main()
