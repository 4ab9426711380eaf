"""Teleportation and DualFast on a learned model (an MLP trained on mix16d): error vs NFE.

    python benchmarks/accelerators.py            # full study (~15 min on a loaded 2-core CPU)
    python benchmarks/accelerators.py --quick    # smoke run (~1-2 min): tiny model, 256 samples
    python benchmarks/accelerators.py --from-json benchmarks/results/accelerators.json   # re-render md/png

Question (issue 13): on a *learned* model, whose output differs from the exact score (the
approximation error that DualFast is meant to correct), do analytical teleportation
(:mod:`jdiff.accel.teleport`), DualFast (:class:`jdiff.accel.DualFast`) and both together make
DDIM, DPM-Solver++ 2M / 3M, UniPC-bh2 and iPNDM more accurate at equal NFE, and does the best
combination at NFE 6 match the best plain solver at NFE 10?

Setup:

* **Model**: ``jdiff.run.train_run(RunConfig(data="mix16d", model="mlp", ...))`` (an MLP, eps
  prediction, on fresh exact mixture samples every step), cached in ``--workdir`` (default
  ``runs/accel_mix16d``; delete it to retrain; the training time of the run that trained it is
  kept in ``accel_train.json`` there). The model is the EMA parameters of the last checkpoint
  (``jdiff.run.load_run``); sampling uses the run's own schedule (``run.schedule``, checked to be
  the one its configuration names) and ``run.prediction``.
* **Gaussian statistics** for teleportation, as a user without the exact mixture would get them:
  ``GaussianStats.from_data`` of ``--n-data`` exact mixture samples.
* **Noise**: ``--n-samples`` fixed standard-normal x_T (``RandomState(seed)``) at ``t_max``; grids
  uniform in log-SNR (``logsnr``) ending at t = 0; float32 sampling.
* **References** (Dopri8 float64 :func:`jdiff.reference_solve`, rtol = atol = ``--ref-tol``) from
  the same x_T: of the EXACT mixture model (``rmse_true``: total error = approximation +
  discretisation) and of the LEARNED model (``rmse_learned``: discretisation error only). The
  approximation-error floor is the RMSE between the two references. ``sw``: sliced Wasserstein
  (``jdiff.bench.sliced_wasserstein``, 128 directions) to exact data samples, with its floors
  (each reference's SW, and two independent data sets).
* **Variants** (solver NFE ``nfe``; the closed form costs no model call):
  ``plain``; ``tele F``: teleport x_T with the closed-form Gaussian flow to the time a fraction F
  of the log-SNR range in (``time_at_fraction``), then the full step budget on a logsnr grid from
  there (``tail_grid``); ``tele auto``: F from ``accel.auto_fraction`` (``--tol``, ``--n-probe``
  probe samples of separate noise, disagreement in ``--probe-space``, default eps; its probe calls
  count as ``probe_nfe_per_sample`` = calls x n_probe / n_samples, one-off per model); ``+hist``:
  the multistep history at the teleport point
  from the closed form (``closed_form_state`` on ``common.extended_tail``; multistep solvers only);
  ``dualfast``: the chosen DualFast options (from the sweep below) as a hook; ``both``: teleport
  then DualFast. ``both ... +hist``: the closed-form solver state with a fresh DualFast state put
  in by hand (no reference at the first real step, as with fresh history; the ``step`` ramp then
  counts the prepended history points as steps).
* **DualFast sweep** (chooses the default): scale x ramp x reference x space on
  ``--sweep-solvers`` at ``--sweep-nfe``, on the learned model and, as a control without
  approximation error, on the exact mixture model. Chosen: the option set with the lowest mean
  ``rmse_true`` over the learned-model cells. Self-Guidance (``accel.self_guidance``, 2 model
  calls per evaluation) at solver NFE ``--sg-nfe`` = total NFE twice that, as the ablation.
  For speed the sweep samples through one model function that picks the learned or the exact
  model by a traced flag (``jnp.where``; both are evaluated, so each sampler compiles once for
  both), and DualFast's scale is a traced array (one compile per option set).

Writes ``benchmarks/results/accelerators.{json,md,png}`` (``--out PREFIX`` to change; ``--quick``
writes nothing unless ``--out``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FAMILIES = ("plain", "teleport", "dualfast", "both")


def parse_args(argv=None):
    ap = common.parser(__doc__, "300 training steps (own work directory), 256 samples, ddim and dpmpp_2m "
                                "at NFE 5 and 6, a 4-option DualFast sweep")
    g = ap.add_argument_group("model")
    g.add_argument("--workdir", default=None, help="training run cache (default runs/accel_mix16d, "
                   "runs/accel_mix16d_quick with --quick)")
    g.add_argument("--data", default="mix16d")
    g.add_argument("--train-steps", type=int, default=4000)
    g.add_argument("--batch-size", type=int, default=512)
    g.add_argument("--lr", type=float, default=1e-3)
    g = ap.add_argument_group("evaluation")
    g.add_argument("--n-samples", type=int, default=2000)
    g.add_argument("--n-data", type=int, default=50000, help="data samples for GaussianStats.from_data")
    g.add_argument("--ref-tol", type=float, default=1e-6, help="rtol = atol of the reference solves")
    g.add_argument("--solvers", default="ddim,dpmpp_2m,dpmpp_3m,unipc_bh2,ipndm")
    g.add_argument("--nfe", default="5,6,8,10")
    g.add_argument("--context-nfe", default="15,20", help="plain runs only")
    g.add_argument("--fractions", default="0.2,0.3,0.4,0.5")
    g.add_argument("--tol", type=float, default=0.1, help="auto_fraction tolerance (disagreement in --probe-space)")
    g.add_argument("--probe-space", default="eps", choices=("eps", "x0"),
                   help="auto_fraction's disagreement measure (default eps, the library's default)")
    g.add_argument("--n-probe", type=int, default=64)
    g.add_argument("--resolution", type=int, default=20, help="auto_fraction candidates j / resolution")
    g.add_argument("--history-steps", type=int, default=3)
    g.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("DualFast sweep")
    g.add_argument("--sweep-solvers", default="ddim,dpmpp_2m,unipc_bh2")
    g.add_argument("--sweep-nfe", default="5,6,10")
    g.add_argument("--scales", default="0.1,0.25,0.5,1.0")
    g.add_argument("--ramps", default="constant,step,time")
    g.add_argument("--references", default="previous,first")
    g.add_argument("--spaces", default="eps,x0")
    g.add_argument("--sg-scales", default="0.1,0.3")
    g.add_argument("--sg-deltas", default="0.02,0.05")
    g.add_argument("--sg-nfe", default="3,4,5", help="Self-Guidance solver NFE (total: twice)")
    ap.add_argument("--out", default=None, help="output prefix (default benchmarks/results/accelerators)")
    ap.add_argument("--from-json", default=None, metavar="JSON",
                    help="only re-render PREFIX.md and PREFIX.png from the records of an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.train_steps, args.n_samples, args.n_data, args.ref_tol = 300, 256, 5000, 1e-5
        args.solvers, args.nfe, args.context_nfe, args.fractions = "ddim,dpmpp_2m", "5,6", "10", "0.3"
        args.sweep_solvers, args.sweep_nfe, args.scales = "ddim,dpmpp_2m", "5", "0.5"
        args.ramps, args.references, args.spaces = "constant,step", "previous", "eps,x0"
        args.sg_scales, args.sg_deltas, args.sg_nfe = "0.1", "0.02", "3"
    if args.workdir is None:
        args.workdir = "runs/accel_mix16d" + ("_quick" if args.quick else "")
    return args


def _list(s, typ=str):
    return [typ(v.strip()) for v in s.split(",") if v.strip()]


@dataclasses.dataclass(frozen=True)
class _Select:
    """``model_fn(x, t, args)`` of the learned or the exact model, chosen by a traced flag."""

    def __call__(self, learned, exact, use_learned, x, t, args=None):
        import jax.numpy as jnp

        return jnp.where(use_learned, learned(x, t, args), exact(x, t, args))


# ----------------------------------------------------------------------------- training


def train_or_load(args):
    """``(run, state, info)``: the cached run in ``args.workdir`` if its configuration matches,
    else trained (or resumed) there with ``train_run``."""
    from jdiff.run import RunConfig, load_run, train_run

    cfg = RunConfig(data=args.data, model="mlp", steps=args.train_steps, batch_size=args.batch_size,
                    lr=args.lr, lr_decay="cosine", warmup_steps=100, seed=args.seed,
                    save_every=10**9, log_every=100)
    wd = Path(args.workdir)
    info_path = wd / "accel_train.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else None
    if info is not None and info.get("config") == cfg.to_json():
        info = {**info, "reused": True}
        print(f"reusing the trained run in {wd} (trained in {info['seconds']:.0f} s)", flush=True)
    else:
        print(f"training {cfg.steps} steps in {wd} ...", flush=True)
        t0 = time.perf_counter()
        fit = train_run(cfg, wd, progress=False)
        secs = time.perf_counter() - t0
        losses = [(h["step"], h["loss"]) for h in fit.history if "loss" in h]
        info = {"config": cfg.to_json(), "seconds": secs, "steps": cfg.steps,
                "resumed_from": fit.resumed_from, "final_loss": losses[-1][1] if losses else None,
                "mean_loss_last_500": (float(np.mean([v for s, v in losses if s > cfg.steps - 500]))
                                       if losses else None),
                "loss_curve": losses, "machine_cpu": common.cpu_name(), "loadavg_after": common.loadavg()}
        info_path.write_text(json.dumps(info, indent=1) + "\n")
        info = {**info, "reused": False}
        print(f"trained in {secs:.0f} s, final loss {info['final_loss']}", flush=True)
    run, state = load_run(wd)
    if int(state.step) != cfg.steps:
        raise RuntimeError(f"{wd}: checkpoint at step {int(state.step)}, expected {cfg.steps}")
    return run, state, info


# ----------------------------------------------------------------------------- study


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        prefix = args.out or str(Path(args.from_json).with_suffix(""))
        plot(res, f"{prefix}.png")
        Path(f"{prefix}.md").write_text("\n".join(markdown(res)).rstrip("\n") + "\n")
        print(f"wrote {prefix}.md and {prefix}.png from {args.from_json}", flush=True)
        return res
    rec_run = common.Run(__file__, argv)
    git_state = _git_state()
    import jax
    import jax.numpy as jnp

    import jdiff
    from jdiff import accel
    from jdiff.accel.dualfast import DualFastState
    from jdiff.bench import _errors, sliced_wasserstein
    from jdiff.schedules import get_schedule
    from jdiff.solvers import get_solver, steps_for_nfe

    def log(msg):
        print(f"[{rec_run.elapsed():6.0f} s] {msg}", flush=True)

    # --- 1. the learned model -----------------------------------------------------------------
    run, state, train_info = train_or_load(args)
    schedule, pred = run.schedule, run.prediction
    if schedule != get_schedule(run.config.schedule):
        raise RuntimeError(f"run.schedule {schedule} is not the configured {run.config.schedule!r}")
    learned = run.model_fn(state.ema_params)
    tb = jdiff.testbeds.get_testbed(run.config.data)
    exact = tb.model_fn(schedule)
    t_max = float(schedule.t_max)
    log(f"model ready: schedule {schedule}, prediction {pred}")

    # --- 2. Gaussian statistics from data, noise, data for SW --------------------------------------
    data_stats = np.asarray(tb.sample(jax.random.key(args.seed + 100), args.n_data), np.float64)
    stats = accel.GaussianStats.from_data(data_stats)
    mu_ex, cov_ex = tb.mean_cov()
    stats_err = {"mean_rel": float(np.linalg.norm(data_stats.mean(0) - mu_ex) / np.sqrt(np.trace(cov_ex))),
                 "cov_rel_fro": float(np.linalg.norm(np.cov(data_stats.T) - cov_ex) / np.linalg.norm(cov_ex))}
    z = np.random.RandomState(args.seed).standard_normal((args.n_samples, tb.dim)).astype(np.float32)
    x_T = jdiff.init_noise(schedule, t_max, jnp.asarray(z))
    zp = np.random.RandomState(args.seed + 1).standard_normal((args.n_probe, tb.dim)).astype(np.float32)
    probe = jdiff.init_noise(schedule, t_max, jnp.asarray(zp))
    data_sw = np.asarray(tb.sample(jax.random.key(args.seed + 200), args.n_samples), np.float64)
    data_sw2 = np.asarray(tb.sample(jax.random.key(args.seed + 300), args.n_samples), np.float64)

    # --- references ------------------------------------------------------------------------------
    tol = args.ref_tol
    t0 = time.perf_counter()
    ref_true = jdiff.reference_solve(exact, schedule, np.asarray(x_T), t_max, 0.0, rtol=tol, atol=tol)
    t_ref_true = time.perf_counter() - t0
    log(f"reference of the exact model: {t_ref_true:.0f} s")
    t0 = time.perf_counter()
    ref_learned = jdiff.reference_solve(learned, schedule, np.asarray(x_T), t_max, 0.0, rtol=tol, atol=tol,
                                        prediction=pred)
    t_ref_learned = time.perf_counter() - t0
    floor = _errors(ref_learned, ref_true)
    sw_floor = {"ref_true": sliced_wasserstein(ref_true, data_sw),
                "ref_learned": sliced_wasserstein(ref_learned, data_sw),
                "data_vs_data": sliced_wasserstein(data_sw2, data_sw)}
    log(f"reference of the learned model: {t_ref_learned:.0f} s; approximation floor rmse {floor['rmse']:.4f} "
        f"(median {floor['median_error']:.4f}); SW floors {sw_floor}")

    def measure(x, model="learned"):
        x = np.asarray(x, np.float64)
        fin = bool(np.all(np.isfinite(x)))
        e_t = _errors(x, ref_true)
        out = {"rmse_true": e_t["rmse"], "median_true": e_t["median_error"],
               "sw": sliced_wasserstein(x, data_sw) if fin else float("nan"), "finite": fin}
        if model == "learned":
            e_l = _errors(x, ref_learned)
            out.update(rmse_learned=e_l["rmse"], median_learned=e_l["median_error"])
        else:
            out.update(rmse_learned=None, median_learned=None)
        return out

    # --- auto teleport point ----------------------------------------------------------------------
    auto = accel.auto_fraction(learned, stats, schedule, probe, args.tol, spacing="logsnr",
                               resolution=args.resolution, prediction=pred, space=args.probe_space)
    auto_exact = accel.auto_fraction(exact, stats, schedule, probe, args.tol, spacing="logsnr",
                                     resolution=args.resolution, space=args.probe_space)
    top = int(math.floor(0.9 * args.resolution))
    ladder = np.array([accel.time_at_fraction(schedule, j / args.resolution) for j in range(top + 1)] + [0.0])
    curves = {m: {sp: accel.probe_errors(fn, stats, schedule, ladder, probe, range(1, top + 1), prediction=pred,
                                         space=sp) for sp in ("eps", "x0")}
              for m, fn in (("learned", learned), ("exact", exact))}  # diagnostics: not counted in the NFE
    probe_nfe = auto.nfe_per_sample(args.n_samples)
    log(f"auto_fraction (learned): {auto.fraction} (t = {auto.t:.4g}) after {auto.calls} calls on "
        f"{auto.n_probe} probes = {probe_nfe:.3f} NFE per sample; exact model: {auto_exact.fraction}")

    records = []

    def sample(model, solver, n, t_start=None, hooks=(), hist=False, hook_proto=None):
        """Samples of ``solver`` with ``n`` steps of a logsnr grid from ``t_start`` (teleported
        there; None: plain from t_max); ``hist``: closed-form history (None if no room)."""
        if t_start is None or t_start >= t_max:
            if hist:
                return None, 0
            grid = jdiff.grids.make_grid(schedule, "logsnr", n)
            return jdiff.sample(model, schedule, solver, grid, x_T, hooks=hooks, prediction=pred), 0
        if not hist:
            x0 = accel.gaussian_flow(stats, schedule, x_T, t_max, t_start)
            grid = accel.tail_grid(schedule, "logsnr", n, t_start)
            return jdiff.sample(model, schedule, solver, grid, x0, hooks=hooks, prediction=pred), 0
        grid, k = common.extended_tail(schedule, t_start, n, args.history_steps, t_max)
        if k == 0:
            return None, 0
        x_pre = x_T if grid[0] >= t_max else accel.gaussian_flow(stats, schedule, x_T, t_max, float(grid[0]))
        st = accel.closed_form_state(stats, schedule, solver, grid, x_pre, k, history_steps=args.history_steps)
        if hooks:
            like = st.solver.x
            dfs = DualFastState(jnp.zeros_like(like), jnp.zeros((), bool), jnp.asarray(k, jnp.int32),
                                jnp.asarray(t_start, like.dtype), jnp.asarray(max(len(grid) - 2, 1), like.dtype))
            st = st._replace(hooks=(dfs,))
        return jdiff.sample(model, schedule, solver, grid, None, start=k, state=st, hooks=hooks,
                            prediction=pred), k

    # --- 4. DualFast option sweep (learned and exact models) ------------------------------------
    sel_l = jax.tree_util.Partial(_Select(), learned, exact, jnp.asarray(True))
    sel_e = jax.tree_util.Partial(_Select(), learned, exact, jnp.asarray(False))
    models = {"learned": sel_l, "exact": sel_e}
    sweep_solvers = _list(args.sweep_solvers)
    sweep_nfe = _list(args.sweep_nfe, int)
    sg_nfe = _list(args.sg_nfe, int)
    options = list(itertools.product(_list(args.ramps), _list(args.references), _list(args.spaces)))
    scales = _list(args.scales, float)
    for sname in sweep_solvers:
        solver = get_solver(sname)
        for nfe in sorted(set(sweep_nfe) | {2 * v for v in sg_nfe} | set(sg_nfe)):
            n = steps_for_nfe(solver, nfe, True)
            for mname, m in models.items():
                x, _ = sample(m, solver, n)
                records.append({"study": "sweep", "model": mname, "solver": sname, "nfe": nfe, "nfe_total": nfe,
                                "n_steps": n, "variant": "plain", "family": "plain", **measure(x, mname)})
            if nfe not in sweep_nfe:
                continue
            t0 = time.perf_counter()
            for ramp, ref, space in options:
                for sc in scales:
                    hook = accel.DualFast(jnp.asarray(sc, jnp.float32), ramp=ramp, reference=ref, space=space)
                    for mname, m in models.items():
                        x, _ = sample(m, solver, n, hooks=hook)
                        records.append({"study": "sweep", "model": mname, "solver": sname, "nfe": nfe,
                                        "nfe_total": nfe, "n_steps": n, "variant": "dualfast", "family": "dualfast",
                                        "scale": sc, "ramp": ramp, "reference": ref, "space": space,
                                        **measure(x, mname)})
            cell = [r for r in records if r["study"] == "sweep" and r["solver"] == sname and r["nfe"] == nfe
                    and r["model"] == "learned"]
            p = next(r for r in cell if r["variant"] == "plain")
            b = min((r for r in cell if r["variant"] == "dualfast"), key=lambda r: _key(r["rmse_true"]))
            log(f"sweep {sname} NFE {nfe}: {len(options)} option sets x {len(scales)} scales x 2 models in "
                f"{time.perf_counter() - t0:.0f} s; learned rmse_true plain {p['rmse_true']:.4f}, best DualFast "
                f"{b['rmse_true']:.4f} ({_opt_label(b)})")
        # Self-Guidance at half the total NFE
        t0 = time.perf_counter()
        for nfe_s in sg_nfe:
            n = steps_for_nfe(solver, nfe_s, True)
            for delta in _list(args.sg_deltas, float):
                for sc in _list(args.sg_scales, float):
                    for mname, m in models.items():
                        sg = accel.self_guidance(m, schedule, jnp.asarray(sc, jnp.float32), delta, prediction=pred)
                        x = jdiff.sample(sg, schedule, solver, jdiff.grids.make_grid(schedule, "logsnr", n), x_T,
                                         prediction="eps")
                        records.append({"study": "sweep", "model": mname, "solver": sname, "nfe": nfe_s,
                                        "nfe_total": 2 * nfe_s, "n_steps": n, "variant": "self_guidance",
                                        "family": "self_guidance", "scale": sc, "delta": delta, **measure(x, mname)})
        log(f"self-guidance {sname}: solver NFE {sg_nfe} in {time.perf_counter() - t0:.0f} s")

    sweep = summarise_sweep(records, sweep_solvers, sweep_nfe)
    best = sweep["chosen"]
    log(f"chosen DualFast options: {best}")
    df_default = dict(scale=best["scale"], ramp=best["ramp"], reference=best["reference"], space=best["space"])

    # --- 3. main table (learned model) ---------------------------------------------------------------
    solvers = _list(args.solvers)
    nfes, ctx = _list(args.nfe, int), _list(args.context_nfe, int)
    tele = [("auto", auto.fraction, auto.t, probe_nfe)] + [
        (f"{f:g}", f, accel.time_at_fraction(schedule, f), 0.0) for f in _list(args.fractions, float)]
    hist_ok = {}
    for sname in solvers:
        solver = get_solver(sname)
        for nfe in nfes + [v for v in ctx if v not in nfes]:
            t0 = time.perf_counter()
            n = steps_for_nfe(solver, nfe, True)
            base = {"study": "main", "model": "learned", "solver": sname, "nfe": nfe, "nfe_total": nfe, "n_steps": n}

            def add(x, variant, family, **extra):
                records.append({**base, "variant": variant, "family": family, "probe_nfe_per_sample": 0.0,
                                "fraction": 0.0, "t_start": t_max, "history": "fresh", **extra, **measure(x)})

            x, _ = sample(learned, solver, n)
            add(x, "plain", "plain")
            if nfe not in nfes:  # context: fresh teleport to the fixed fractions only
                for label, f, t_f, pn in tele[1:]:
                    x, _ = sample(learned, solver, n, t_start=t_f)
                    add(x, f"tele {label}", "teleport", teleport=label, fraction=f, t_start=t_f, history_points=0)
            else:
                hook = accel.DualFast(jnp.asarray(df_default["scale"], jnp.float32), ramp=df_default["ramp"],
                                      reference=df_default["reference"], space=df_default["space"])
                x, _ = sample(learned, solver, n, hooks=hook)
                add(x, "dualfast", "dualfast", dualfast=df_default)
                for label, f, t_f, pn in tele:
                    for fam, hooks in (("teleport", ()), ("both", hook)):
                        for hist in (False, True):
                            if hist and hist_ok.get(sname) is False:
                                continue
                            try:
                                x, k = sample(learned, solver, n, t_start=t_f, hooks=hooks, hist=hist)
                            except ValueError as err:
                                if hist and "multistep" in str(err):
                                    hist_ok[sname] = False
                                    continue
                                raise
                            if x is None:
                                continue
                            name = ("tele " if fam == "teleport" else "both ") + label + (" +hist" if hist else "")
                            add(x, name, fam, teleport=label, fraction=f, t_start=t_f, probe_nfe_per_sample=pn,
                                history="closed_form" if hist else "fresh", history_points=k,
                                nfe_total=nfe + pn, **({"dualfast": df_default} if fam == "both" else {}))
            cell = [r for r in records if r["study"] == "main" and r["solver"] == sname and r["nfe"] == nfe]
            bb = min(cell, key=lambda r: _key(r["rmse_true"]))
            log(f"main {sname} NFE {nfe}: {len(cell)} variants in {time.perf_counter() - t0:.0f} s; plain "
                f"rmse_true {cell[0]['rmse_true']:.4f}, best {bb['rmse_true']:.4f} ({bb['variant']})")

    # consistency: the sweep's plain runs (selector model) equal the main table's (learned model)
    dev = [abs(a["rmse_true"] - b["rmse_true"]) for a in records for b in records
           if a["study"] == "sweep" and a["model"] == "learned" and a["variant"] == "plain"
           and b["study"] == "main" and b["variant"] == "plain" and a["solver"] == b["solver"] and a["nfe"] == b["nfe"]]
    res = rec_run.finish({
        "config": vars(args), "git": git_state, "train": train_info, "schedule": repr(schedule), "prediction": pred,
        "grid": "logsnr", "final": "zero",
        "stats": {"n_data": args.n_data, "rank": stats.rank, "data_std": stats.data_std(), **stats_err},
        "reference": {"rtol": tol, "atol": tol, "seconds_true": t_ref_true, "seconds_learned": t_ref_learned},
        "approximation_floor": floor, "sw_floor": sw_floor,
        "auto": {"learned": auto._asdict(), "exact": auto_exact._asdict(), "tol": args.tol,
                 "probe_nfe_per_sample": probe_nfe, "ladder_t": ladder[1:top + 1].tolist(),
                 "space": args.probe_space, "probe_errors": curves},
        "sweep": sweep, "dualfast_default": df_default, "sweep_vs_main_plain_max_abs_diff": max(dev) if dev else None,
        "records": records})
    prefix = common.out_prefix(args, "accelerators")
    if prefix:
        plot(res, f"{prefix}.png")
    return common.report(prefix, res, markdown(res))


def _git_state():
    """HEAD and whether jdiff/ differs from it, when this runs in a git checkout."""
    import subprocess

    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=common.ROOT, capture_output=True, text=True,
                                  timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {"head": git("rev-parse", "HEAD"), "jdiff_dirty": bool(git("status", "--porcelain", "--", "jdiff"))}


def _key(v):
    return v if v is not None and math.isfinite(v) else float("inf")


def _opt_label(r):
    return f"scale {r['scale']:g}, {r['ramp']}, {r['reference']}, {r['space']}"


def summarise_sweep(records, solvers, nfes):
    """Per DualFast option set: mean rmse_true / rmse_learned / sw over the learned cells, the
    cells it improves over plain, and the same on the exact model; the chosen option set."""
    sw_recs = [r for r in records if r["study"] == "sweep"]
    cells = [(s, n) for s in solvers for n in nfes]

    def get(model, s, n, **opt):
        for r in sw_recs:
            if (r["model"] == model and r["solver"] == s and r["nfe"] == n
                    and all(r.get(k) == v for k, v in opt.items())):
                return r
        return None

    def stats_of(model, opt):
        rs = [get(model, s, n, **opt) for s, n in cells]
        ps = [get(model, s, n, variant="plain") for s, n in cells]
        out = {"mean_rmse_true": float(np.mean([r["rmse_true"] for r in rs])),
               "mean_sw": float(np.mean([r["sw"] for r in rs])),
               "geomean_ratio_true": float(np.exp(np.mean([np.log(r["rmse_true"] / p["rmse_true"])
                                                          for r, p in zip(rs, ps, strict=True)]))),
               "better_true": sum(r["rmse_true"] < p["rmse_true"] for r, p in zip(rs, ps, strict=True)),
               "better_sw": sum(r["sw"] < p["sw"] for r, p in zip(rs, ps, strict=True)), "cells": len(cells)}
        if model == "learned":
            out["mean_rmse_learned"] = float(np.mean([r["rmse_learned"] for r in rs]))
            out["better_learned"] = sum(r["rmse_learned"] < p["rmse_learned"] for r, p in zip(rs, ps, strict=True))
        return out

    opts = sorted({(r["scale"], r["ramp"], r["reference"], r["space"]) for r in sw_recs if r["variant"] == "dualfast"})
    rows = []
    for sc, ramp, ref, space in opts:
        o = {"scale": sc, "ramp": ramp, "reference": ref, "space": space}
        rows.append({**o, "learned": stats_of("learned", {"variant": "dualfast", **o}),
                     "exact": stats_of("exact", {"variant": "dualfast", **o})})
    plain = {"learned": stats_of("learned", {"variant": "plain"}), "exact": stats_of("exact", {"variant": "plain"})}
    rows.sort(key=lambda r: _key(r["learned"]["mean_rmse_true"]))
    chosen = {k: rows[0][k] for k in ("scale", "ramp", "reference", "space")}
    by_geo = min(rows, key=lambda r: _key(r["learned"]["geomean_ratio_true"]))
    return {"cells": cells, "options": rows, "plain": plain, "chosen": chosen,
            "best_by_geomean_ratio": {k: by_geo[k] for k in ("scale", "ramp", "reference", "space")}}


# ----------------------------------------------------------------------------- report


def _f(v, d=3):
    if v is None:
        return ""
    return "nan" if not math.isfinite(v) else f"{v:.{d}g}"


def _best(rs, metric, keep):
    rr = [r for r in rs if keep(r) and r.get(metric) is not None]
    return min(rr, key=lambda r: _key(r[metric])) if rr else None


def _family_keep(fam, auto_only=False):
    def keep(r):
        if r["family"] != fam:
            return False
        return not auto_only or fam in ("plain", "dualfast") or r.get("teleport") == "auto"
    return keep


def markdown(res):
    recs = res["records"]
    cfg, tr, sw = res["config"], res["train"], res["sweep"]
    fl, swf, au = res["approximation_floor"], res["sw_floor"], res["auto"]
    main = [r for r in recs if r["study"] == "main"]
    nfes = sorted({r["nfe"] for r in main if r["variant"] != "plain"}) or sorted({r["nfe"] for r in main})
    all_nfe = sorted({r["nfe"] for r in main})
    L = common.md_header("Accelerators on a learned model: teleportation and DualFast (mix16d MLP)", res, timed=False)
    tc = tr["config"]
    L += ["## Setup", "",
          f"* **Model**: `jdiff.run.train_run(RunConfig(data={tc['data']!r}, model='mlp', steps={tc['steps']}, "
          f"batch_size={tc['batch_size']}, lr={tc['lr']}, lr_decay='cosine', warmup_steps={tc['warmup_steps']}))` "
          f"(MLP {tc['mlp_features']} x {tc['mlp_depth']}, eps prediction, EMA {tc['ema_decay']}, schedule "
          f"`{tc['schedule']}`), cached in `{cfg['workdir']}`: {tr['steps']} steps in {tr['seconds']:.0f} s"
          + (" (an earlier run of this script trained it; reused)" if tr.get("reused") else "")
          + f", final logged loss {_f(tr['final_loss'], 4)} (mean of the last 500 steps' logged losses "
          f"{_f(tr['mean_loss_last_500'], 4)}). Sampling uses `run.schedule` = `{res['schedule']}` (checked equal "
          "to the training configuration's schedule) and `run.prediction` = " f"`{res['prediction']}`.",
          f"* **Gaussian statistics**: `GaussianStats.from_data` of {res['stats']['n_data']} exact mixture samples "
          f"(relative error vs the exact moments: mean {res['stats']['mean_rel']:.2g}, covariance (Frobenius) "
          f"{res['stats']['cov_rel_fro']:.2g}).",
          f"* **Library**: HEAD `{(res.get('git') or {}).get('head')}`"
          + (" (jdiff/ modified)" if (res.get("git") or {}).get("jdiff_dirty") else "") + ".",
          f"* **Noise**: {cfg['n_samples']} fixed standard-normal x_T at t_max; `logsnr` grids ending at t = 0; "
          "float32 sampling.",
          f"* **References** (`jdiff.reference_solve`, Dopri8 float64, rtol = atol = {res['reference']['rtol']:g}) "
          f"from the same x_T: exact mixture model ({res['reference']['seconds_true']:.0f} s) and learned model "
          f"({res['reference']['seconds_learned']:.0f} s). `rmse_true`: RMSE against the exact model's solution "
          "(approximation + discretisation error); `rmse_learned`: against the learned model's solution "
          "(discretisation only).",
          f"* **Approximation-error floor** (learned reference vs exact reference): rmse **{fl['rmse']:.4f}**, "
          f"median per-sample RMS {fl['median_error']:.4f}, max {fl['max_error']:.3f} (data std per dimension "
          f"{_data_std(res):.3f}). This is the error of the learned model's exact ODE solution; it is not a "
          "strict lower bound for a coarse sampler (discretisation error can cancel part of it, and teleporting "
          "skips the model where it is worst). DualFast claims to reduce this part.",
          f"* **SW** (sliced Wasserstein-1 to {cfg['n_samples']} exact data samples): floors exact reference "
          f"{swf['ref_true']:.4f}, learned reference {swf['ref_learned']:.4f}, two independent data sets "
          f"{swf['data_vs_data']:.4f} (the sampling-noise level: SW differences below ~{swf['data_vs_data']:.3f} "
          "are noise).",
          f"* **auto teleport**: `auto_fraction(tol={au['tol']}, {au['learned']['n_probe']} probe samples of separate "
          f"noise, resolution {cfg['resolution']})` on the learned model: fraction **{au['learned']['fraction']}** "
          f"(t = {au['learned']['t']:.4g}) after {au['learned']['calls']} probe calls = "
          f"{au['probe_nfe_per_sample']:.3f} NFE per sample (one-off per model; not in the NFE columns, listed as "
          f"`probe_nfe_per_sample` in the JSON). On the exact model it picks {au['exact']['fraction']}. "
          f"Disagreement is measured in `{au['space']}` (`space=` of `auto_fraction`). Model vs Gaussian "
          "disagreement at fractions 1/R, 2/R, ... (diagnostic scan, not counted):", ""]
    L += common.md_table(["model", "space"] + [f"{j}/{cfg['resolution']}" for j in
                                               range(1, len(au["probe_errors"]["learned"]["eps"]) + 1)],
                         [[m, sp] + [_f(v, 2) for v in au["probe_errors"][m][sp]]
                          for m in ("learned", "exact") for sp in ("eps", "x0")]) + [""] + _auto_note(au)

    # --- sweep
    pl, ch = sw["plain"], sw["chosen"]
    cells = ", ".join(f"{s} NFE {n}" for s, n in sw["cells"])
    L += ["## 1. DualFast option sweep (chooses the default)", "",
          f"Cells: {cells}. Per option set: mean over the cells of `rmse_true`, `rmse_learned` and SW on the "
          "learned model, the geometric mean of rmse_true / plain's, and in how many cells it beats plain; "
          "then the same on the EXACT mixture model (control: no approximation error, so any gain there is a "
          "discretisation effect; its `rmse_true` is discretisation error only). Sorted by the learned model's "
          "mean `rmse_true`; the first row is the chosen default.", ""]
    hdr = ["scale", "ramp", "reference", "space", "mean rmse_true", "mean rmse_learned", "mean SW",
           "geomean ratio", "beats plain (true / learned / SW)", "exact: mean rmse", "exact: geomean ratio",
           "exact: beats plain"]
    rows = [["plain", "", "", "", _f(pl["learned"]["mean_rmse_true"], 4), _f(pl["learned"]["mean_rmse_learned"], 4),
             _f(pl["learned"]["mean_sw"], 4), "1", "", _f(pl["exact"]["mean_rmse_true"], 4), "1", ""]]
    for o in sw["options"]:
        a, e = o["learned"], o["exact"]
        name = [f"{o['scale']:g}", o["ramp"], o["reference"], o["space"]]
        if o is sw["options"][0]:
            name = [f"**{v}**" for v in name]
        rows.append(name + [_f(a["mean_rmse_true"], 4), _f(a["mean_rmse_learned"], 4), _f(a["mean_sw"], 4),
                            _f(a["geomean_ratio_true"]), f"{a['better_true']} / {a['better_learned']} / "
                            f"{a['better_sw']} of {a['cells']}", _f(e["mean_rmse_true"], 4),
                            _f(e["geomean_ratio_true"]), f"{e['better_true']} of {e['cells']}"])
    L += common.md_table(hdr, rows) + [""]
    bg = sw["best_by_geomean_ratio"]
    L += [f"Chosen default (lowest mean rmse_true): scale {ch['scale']:g}, ramp `{ch['ramp']}`, reference "
          f"`{ch['reference']}`, space `{ch['space']}`. By the geometric mean of the per-cell ratio instead: scale "
          f"{bg['scale']:g}, `{bg['ramp']}`, `{bg['reference']}`, `{bg['space']}`"
          + (" (the same)." if bg == ch else " (differs: the mean is dominated by the largest errors, at NFE 5)."), ""]
    # per cell for the chosen default
    sweep_recs = [r for r in recs if r["study"] == "sweep"]

    def sget(model, s, n, variant, **opt):
        for r in sweep_recs:
            if (r["model"] == model and r["solver"] == s and r["nfe"] == n and r["variant"] == variant
                    and all(r.get(k) == v for k, v in opt.items())):
                return r
        return None

    crow = []
    for s, n in sw["cells"]:
        p, d = sget("learned", s, n, "plain"), sget("learned", s, n, "dualfast", **ch)
        pe, de = sget("exact", s, n, "plain"), sget("exact", s, n, "dualfast", **ch)
        crow.append([s, n, f"{_f(p['rmse_true'])} -> {_f(d['rmse_true'])}", f"{d['rmse_true'] / p['rmse_true']:.2f}",
                     f"{_f(p['rmse_learned'])} -> {_f(d['rmse_learned'])}",
                     f"{d['rmse_learned'] / p['rmse_learned']:.2f}",
                     f"{_f(p['sw'])} -> {_f(d['sw'])}", f"{_f(pe['rmse_true'])} -> {_f(de['rmse_true'])}",
                     f"{de['rmse_true'] / pe['rmse_true']:.2f}"])
    L += ["### The chosen default, cell by cell (plain -> DualFast; ratio < 1: DualFast helps)", ""]
    L += common.md_table(["solver", "NFE", "learned: rmse_true", "ratio", "learned: rmse_learned", "ratio",
                          "learned: SW", "exact model: rmse", "ratio"], crow) + [""]
    L += _control_text(sw, ch) + [""] + _control_by_solver(sweep_recs, sw, ch) + [""]

    # self-guidance
    sg = [r for r in sweep_recs if r["variant"] == "self_guidance"]
    if sg:
        L += ["### Self-Guidance ablation at equal total NFE (2 model calls per evaluation)", "",
              "rmse_true on the learned model (exact model in parentheses: discretisation only). Plain and the "
              "chosen DualFast at the same total NFE where the sweep ran them, and plain at SG's solver NFE (what "
              "SG changes per step).", ""]
        sg_cfgs = sorted({(r["scale"], r["delta"]) for r in sg})
        hdr = (["solver", "total NFE", "plain", "DualFast (chosen)", "plain at half the NFE (SG's base)"]
               + [f"SG w={a:g}, delta={b:g}" for a, b in sg_cfgs])
        rows = []
        for s in dict.fromkeys(r["solver"] for r in sg):
            for tot in sorted({r["nfe_total"] for r in sg}):
                p, pe = sget("learned", s, tot, "plain"), sget("exact", s, tot, "plain")
                d, de = sget("learned", s, tot, "dualfast", **ch), sget("exact", s, tot, "dualfast", **ch)
                h, he = sget("learned", s, tot // 2, "plain"), sget("exact", s, tot // 2, "plain")
                row = [s, tot, "" if p is None else f"{_f(p['rmse_true'])} ({_f(pe['rmse_true'])})",
                       "" if d is None else f"{_f(d['rmse_true'])} ({_f(de['rmse_true'])})",
                       "" if h is None else f"{_f(h['rmse_true'])} ({_f(he['rmse_true'])})"]
                for a, b in sg_cfgs:
                    r = next((r for r in sg if r["solver"] == s and r["nfe_total"] == tot and r["model"] == "learned"
                              and r["scale"] == a and r["delta"] == b), None)
                    re_ = next((r for r in sg if r["solver"] == s and r["nfe_total"] == tot and r["model"] == "exact"
                                and r["scale"] == a and r["delta"] == b), None)
                    row.append("" if r is None else f"{_f(r['rmse_true'])} ({_f(re_['rmse_true'])})")
                rows.append(row)
        L += common.md_table(hdr, rows) + [""]

    # --- main tables
    dfd = res["dualfast_default"]
    L += ["## 2. Main table: learned model, every solver x variant x NFE", "",
          f"`dualfast` / `both`: the chosen default (scale {dfd['scale']:g}, `{dfd['ramp']}`, `{dfd['reference']}`, "
          f"`{dfd['space']}`). `tele auto` = fraction {au['learned']['fraction']}; auto rows cost "
          f"+{au['probe_nfe_per_sample']:.3f} NFE per sample for the probe (not in the column NFE). `+hist`: "
          "closed-form multistep history (multistep solvers; absent where no earlier grid point fits). Bold: best "
          "per column. NFE 15 and 20 (context): plain and fresh teleport to the fixed fractions only.", ""]
    for metric, title in (("rmse_true", "rmse_true (total error vs the exact model's ODE solution)"),
                          ("sw", "SW to exact data"),
                          ("rmse_learned", "rmse_learned (discretisation error vs the learned model's ODE solution)")):
        cell = {(r["solver"], r["variant"], r["nfe"]): r for r in main}
        rowkeys = list(dict.fromkeys((r["solver"], r["variant"]) for r in main))
        bestv = {b: min((_key(cell[k + (b,)][metric]) for k in rowkeys if k + (b,) in cell), default=None)
                 for b in all_nfe}
        body = []
        for s, v in rowkeys:
            cs = []
            for b in all_nfe:
                r = cell.get((s, v, b))
                if r is None:
                    cs.append("")
                    continue
                t = _f(r[metric])
                cs.append(f"**{t}**" if _key(r[metric]) == bestv[b] else t)
            body.append([s, v] + cs)
        L += [f"### {title}", ""] + common.md_table(["solver", "variant"] + [f"NFE {b}" for b in all_nfe], body) + [""]

    # --- best per family
    L += _dualfast_main(main)
    L += ["## 4. Best plain vs best accelerated, per NFE (learned model)", "",
          "Best over solvers (and teleport points) of each family; `auto only`: teleport point from "
          "`auto_fraction` (the fixed fractions are tuned after the fact, on the evaluation noise). Cells: value "
          "(solver, variant).", ""]
    for metric in ("rmse_true", "sw", "rmse_learned"):
        rows = []
        for b in all_nfe:
            rs = [r for r in main if r["nfe"] == b]
            row = [b]
            for fam, ao in (("plain", False), ("teleport", True), ("teleport", False), ("dualfast", False),
                            ("both", True), ("both", False)):
                r = _best(rs, metric, _family_keep(fam, ao))
                row.append("" if r is None else f"{_f(r[metric])} ({r['solver']}, {r['variant']})")
            rows.append(row)
        L += [f"### {metric}", ""] + common.md_table(
            ["NFE", "plain", "+teleport (auto)", "+teleport (any)", "+DualFast", "+both (auto)", "+both (any)"],
            rows) + [""]

    # --- the goal
    L += ["## 5. Goal: best combination at NFE 6 vs best plain at NFE 10", ""] + _goal(main, fl) + [""]
    bad = [r for r in recs if not r["finite"]]
    L += [f"Non-finite samples: {len(bad)} of {len(recs)} runs"
          + ("." if not bad else ": " + ", ".join(f"{r['solver']} {r['variant']} NFE {r['nfe']}" for r in bad[:20])),
          f"Sweep (selector model) vs main table (learned model) plain runs: max |rmse_true difference| "
          f"{res['sweep_vs_main_plain_max_abs_diff']:.2g}.", "", "![error vs NFE](accelerators.png)"]
    return L


def _auto_note(au):
    c = au["probe_errors"]["learned"]["x0"]
    if not c or c[0] <= au["tol"]:
        return []
    j = int(np.argmin(c))
    note = (f"In `x0` the learned model's disagreement is largest at the highest noise ({_f(c[0], 2)} at the first "
            f"candidate, minimum {_f(c[j], 2)} at candidate {j + 1}): an eps-prediction network's x0 = (x - sigma "
            "eps) / alpha amplifies its eps error by sigma / alpha (about 150 at t_max), so there the model, not "
            "the Gaussian, is the poor approximation, and an x0 criterion at tol "
            f"{au['tol']} rejects every skip (`tele auto` would be plain sampling).")
    if au["space"] == "eps":
        note += " The eps criterion used here does not have that problem."
    return [note, ""]


def _data_std(res):
    return float(res["stats"]["data_std"])


def _control_text(sw, ch):
    o = sw["options"][0]
    a, e = o["learned"], o["exact"]
    helps_exact = e["geomean_ratio_true"] < 0.97
    helps_learned = a["geomean_ratio_true"] < 0.97
    n_help_exact = sum(1 for r in sw["options"] if r["exact"]["geomean_ratio_true"] < 1)
    txt = (f"Control: with the chosen options the geometric-mean rmse ratio to plain is "
           f"{a['geomean_ratio_true']:.2f} on the learned model (vs the exact model's solution; "
           f"{a['better_true']} of {a['cells']} cells better) and {e['geomean_ratio_true']:.2f} on the exact "
           f"mixture model ({e['better_true']} of {e['cells']} cells better); against the learned model's own "
           f"solution (discretisation only) it beats plain in {a['better_learned']} of {a['cells']} cells. "
           f"{n_help_exact} of {len(sw['options'])} option sets lower the exact model's geometric-mean error. ")
    if helps_exact and helps_learned:
        txt += ("DualFast helps the exact model too, where there is no approximation error: its gain is (at least "
                "partly) a discretisation effect, not an approximation-error correction.")
    elif helps_learned:
        txt += ("It helps the learned model but not the exact one: consistent with correcting approximation "
                "error.")
    elif helps_exact:
        txt += "It helps only the exact model: a discretisation effect that the learned model's error masks."
    else:
        txt += "It does not help either model by more than 3% in the geometric mean."
    return [txt]


def _control_by_solver(sweep_recs, sw, ch):
    """Geometric-mean ratio DualFast (chosen) / plain per sweep solver: learned rmse_true, learned
    rmse_learned, exact-model rmse."""
    def ratio(model, s, metric):
        rs = []
        for n in sorted({c[1] for c in sw["cells"]}):
            p = next(r for r in sweep_recs if r["model"] == model and r["solver"] == s and r["nfe"] == n
                     and r["variant"] == "plain")
            d = next(r for r in sweep_recs if r["model"] == model and r["solver"] == s and r["nfe"] == n
                     and r["variant"] == "dualfast" and all(r.get(k) == v for k, v in ch.items()))
            rs.append(math.log(d[metric] / p[metric]))
        return math.exp(sum(rs) / len(rs))

    rows = []
    for s in dict.fromkeys(c[0] for c in sw["cells"]):
        a, b, c = ratio("learned", s, "rmse_true"), ratio("learned", s, "rmse_learned"), ratio("exact", s, "rmse_true")
        if a < 0.97 and c < 0.97:
            why = "helps both models: largely a discretisation effect"
        elif a < 0.97 and b >= 1:
            why = "helps only against the exact solution (moves off the learned ODE): approximation-error correction"
        elif a < 0.97:
            why = "helps the learned model only"
        else:
            why = "no gain"
        rows.append([s, f"{a:.2f}", f"{b:.2f}", f"{c:.2f}", why])
    return (["By solver (geometric mean over the sweep's NFE of DualFast / plain; < 1: DualFast better):", ""]
            + common.md_table(["solver", "learned: rmse_true", "learned: rmse_learned", "exact model: rmse",
                               "reading"], rows))


def _dualfast_main(main):
    """DualFast / plain and both / teleport ratios of rmse_true and SW per solver and NFE."""
    cell = {(r["solver"], r["variant"], r["nfe"]): r for r in main}
    nfes = sorted({r["nfe"] for r in main if r["family"] == "dualfast"})
    tele = sorted({r["variant"][5:] for r in main if r["family"] == "teleport" and r["nfe"] in nfes
                   and r.get("teleport") != "auto"})
    rows = []
    for s in dict.fromkeys(r["solver"] for r in main):
        for metric in ("rmse_true", "sw"):
            row = [s, metric]
            for n in nfes:
                p, d = cell.get((s, "plain", n)), cell.get((s, "dualfast", n))
                pairs = [(cell.get((s, f"tele {t}", n)), cell.get((s, f"both {t}", n))) for t in tele]
                pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
                on_tele = sum(b[metric] < a[metric] for a, b in pairs)
                row.append(f"{d[metric] / p[metric]:.2f} ({on_tele}/{len(pairs)})")
            rows.append(row)
    better = sum(cell[(s, "dualfast", n)]["rmse_true"] < cell[(s, "plain", n)]["rmse_true"]
                 for s in dict.fromkeys(r["solver"] for r in main) for n in nfes)
    total = len({r["solver"] for r in main}) * len(nfes)
    return (["## 3. Where DualFast helps in the main table", "",
             f"Cells: DualFast / plain ratio (< 1: DualFast better); in parentheses, in how many of the teleported "
             "variants (fresh and +hist, every fixed teleport point) adding DualFast lowers the metric. "
             f"DualFast beats "
             f"plain in rmse_true in {better} of {total} solver x NFE cells.", ""]
            + common.md_table(["solver", "metric"] + [f"NFE {n}" for n in nfes], rows) + [""])


def _goal(main, fl):
    out = []
    for metric in ("rmse_true", "rmse_learned", "sw"):
        p10 = _best([r for r in main if r["nfe"] == 10], metric, _family_keep("plain"))
        if p10 is None:
            continue
        rs6 = [r for r in main if r["nfe"] == 6 and r["family"] != "plain"]
        for label, keep in (("any combination", lambda r: True),
                            ("auto teleport or DualFast only (no tuned fraction)",
                             lambda r: r["family"] == "dualfast" or r.get("teleport") == "auto")):
            c6 = _best(rs6, metric, keep)
            if c6 is None:
                continue
            ratio = c6[metric] / p10[metric]
            verdict = ("beats" if ratio <= 1 else "matches (within 5%)" if ratio <= 1.05 else "does NOT match")
            out.append(f"* {metric}, {label}: NFE 6 best {_f(c6[metric], 4)} ({c6['solver']}, {c6['variant']}"
                       + (f", +{c6['probe_nfe_per_sample']:.3f} probe NFE" if c6.get("probe_nfe_per_sample") else "")
                       + f") vs plain NFE 10 best {_f(p10[metric], 4)} ({p10['solver']}): ratio {ratio:.2f}, "
                       f"{verdict}.")
    out.append(f"* For scale: the approximation floor in rmse_true is {fl['rmse']:.4f}.")
    return out


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [r for r in res["records"] if r["study"] == "main"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"plain": "k", "teleport": "tab:blue", "dualfast": "tab:red", "both": "tab:purple"}
    for ax, metric in zip(axes, ("rmse_true", "sw"), strict=True):
        for fam in FAMILIES:
            auto_differs = res["auto"]["learned"]["fraction"] > 0
            for ao in ((False, True) if fam in ("teleport", "both") and auto_differs else (False,)):
                xs, ys = [], []
                for b in sorted({r["nfe"] for r in main}):
                    r = _best([r for r in main if r["nfe"] == b], metric, _family_keep(fam, ao))
                    if r is not None and math.isfinite(r[metric]):
                        xs.append(b)
                        ys.append(r[metric])
                if xs:
                    ax.plot(xs, ys, "o-" if not ao else "s--", color=colors[fam], ms=4,
                            label=f"{'+' if fam != 'plain' else ''}{fam}" + (" (auto only)" if ao else ""))
        if metric == "rmse_true":
            ax.axhline(res["approximation_floor"]["rmse"], color="gray", ls=":",
                       label="approximation error (learned vs exact reference)")
            ax.set_ylabel("RMSE vs exact model's ODE solution")
        else:
            ax.axhline(res["sw_floor"]["ref_learned"], color="gray", ls=":", label="learned reference")
            ax.axhline(res["sw_floor"]["ref_true"], color="k", ls=":", lw=0.8, label="exact reference")
            ax.axhline(res["sw_floor"]["data_vs_data"], color="tan", ls=":", label="data vs data")
            ax.set_ylabel("sliced Wasserstein to data")
        ax.set_yscale("log")
        ax.set_xlabel("NFE (solver; auto adds its probe)")
        ax.set_title(f"{metric}: best over solvers per family")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    title = "mix16d MLP (learned model): plain vs +teleport vs +DualFast vs +both"
    if res["auto"]["learned"]["fraction"] == 0:
        title += " (auto teleport chose 0: auto-only lines equal plain / +DualFast)"
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
