"""Analytical teleportation on the mixture testbeds: error vs NFE, plain vs teleported.

    python benchmarks/teleport_mixtures.py            # mix16d + mix64d, 1000 samples (~3-4 min on 2 CPUs)
    python benchmarks/teleport_mixtures.py --quick    # 200 samples, NFE 5 and 8, two solvers

Question: at equal NFE, does skipping the first part of the sampling range with the closed-form
Gaussian PF-ODE solution (Wang & Vastola 2024, :mod:`jdiff.accel.teleport`) reduce the error of
ipndm / dpmpp_2m / dpmpp_3m / unipc_bh2 against the exact ODE solution of the mixture?

Setup, per testbed (exact mixture eps model, ``GaussianStats.from_mixture`` = the mixture's exact
mean and covariance):

* Schedule ``vp_discrete`` (DDPM linear betas), grids uniform in log-SNR (``logsnr``) ending at
  t = 0 (``final="zero"``), float32 sampling; noise ``z = RandomState(seed).standard_normal``,
  ``x_T = z`` at ``t_max = 1``.
* Ground truth: :func:`jdiff.reference_solve` (Dopri8, float64, rtol = atol = 1e-10) from
  ``x_T`` at t = 1 to t = 0; errors as ``jdiff bench steps`` computes them (``rmse``: RMS over
  samples and dimensions; ``median_error``: median per-sample RMS).
* ``plain``: ``steps_for_nfe(solver, NFE)`` steps of the logsnr grid from t_max.
* ``tele f``: teleport ``x_T`` with the closed form to the time ``t_f`` a fraction f of the
  log-SNR range [lambda(t_max), lambda(t_min)] in (:func:`jdiff.accel.time_at_fraction`), then the
  same number of steps on a logsnr grid from ``t_f`` (:func:`jdiff.accel.tail_grid`). This is
  skipping the first k of N steps of a logsnr grid with ``f = k / (N - 1)``, but without rounding
  f to a step. Same NFE as plain; the closed form costs no model call.
* ``auto``: :func:`jdiff.accel.auto_skip` on a candidate grid of fractions 0, 1/M, ..., picks the
  largest fraction where the Gaussian x0 agrees with the model's within ``--tol`` (relative to
  the data std) on ``--n-probe`` probe samples; its probe calls (on the probe batch, one-off per
  model and schedule) are reported in ``probe_calls``; ``nfe_total = nfe + probe_calls``.
* ``+hist``: as ``tele f`` / ``auto`` but with the multistep history at ``t_f`` taken from the
  closed form (:func:`jdiff.accel.closed_form_state`: up to 3 earlier points of the same log-SNR
  spacing, where they fit in the schedule's range).

Writes ``benchmarks/results/teleport_mixtures.{json,md}`` (``--out PREFIX`` to change).
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

DEFAULT_SOLVERS = "ipndm,dpmpp_2m,dpmpp_3m,unipc_bh2"


def parse_args(argv=None):
    ap = common.parser(__doc__, "200 samples, NFE 5 and 8, solvers ipndm and unipc_bh2, fractions 0.2 and 0.4")
    ap.add_argument("--testbeds", default="mix16d,mix64d")
    ap.add_argument("--solvers", default=DEFAULT_SOLVERS)
    ap.add_argument("--nfe", default="5,6,8,10")
    ap.add_argument("--fractions", default="0.1,0.2,0.3,0.4,0.5")
    ap.add_argument("--tol", type=float, default=0.1, help="auto: relative x0 agreement (default 0.1)")
    ap.add_argument("--candidates", type=int, default=20, help="auto: candidate fractions k / M, M = this")
    ap.add_argument("--n-probe", type=int, default=16)
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--history-steps", type=int, default=3)
    ap.add_argument("--no-history", action="store_true", help="skip the closed-form-history variants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="output prefix (default benchmarks/results/teleport_mixtures)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_samples, args.nfe, args.solvers, args.fractions = 200, "5,8", "ipndm,unipc_bh2", "0.2,0.4"
    return args


def main(argv=None):
    args = parse_args(argv)
    run = common.Run(__file__, argv)
    import jax
    import jax.numpy as jnp

    import jdiff
    from jdiff import accel
    from jdiff.bench import _errors  # the error measures of `jdiff bench steps`
    from jdiff.solvers import get_solver, steps_for_nfe

    schedule = jdiff.schedules.vp_discrete()
    t_max = float(schedule.t_max)
    testbeds = [s.strip() for s in args.testbeds.split(",") if s.strip()]
    solvers = {s.strip(): get_solver(s.strip()) for s in args.solvers.split(",") if s.strip()}
    budgets = [int(v) for v in args.nfe.split(",")]
    fractions = [float(v) for v in args.fractions.split(",")]
    cand = jdiff.grids.make_grid(schedule, "logsnr", args.candidates, "t_min")  # index k: fraction k / M

    def lam_of(t):
        with jax.enable_x64(True):
            return float(schedule.log_snr(jnp.float64(t)))

    records, meta = [], {}
    for tb_name in testbeds:
        tb = jdiff.testbeds.get_testbed(tb_name)
        model = tb.model_fn(schedule)
        stats = accel.GaussianStats.from_mixture(tb)
        z = np.random.RandomState(args.seed).standard_normal((args.n_samples, tb.dim)).astype(np.float32)
        x_T = jnp.asarray(z)
        t0 = time.perf_counter()
        ref = jdiff.reference_solve(model, schedule, z, t_max, 0.0)
        t_ref = time.perf_counter() - t0
        probe = x_T[:args.n_probe]
        k_auto, calls = accel.auto_skip(model, stats, schedule, cand, probe, args.tol)
        cand_errs = accel.probe_errors(model, stats, schedule, cand, probe, range(1, min(len(cand) - 1, k_auto + 3)))
        f_auto = k_auto / args.candidates
        meta[tb_name] = {"auto_fraction": f_auto, "auto_index": k_auto, "probe_calls": calls,
                         "probe_errors": cand_errs, "reference_s": t_ref,
                         "auto_t": float(cand[k_auto]), "auto_sigma_hat": float(np.exp(-lam_of(cand[k_auto])))}
        print(f"{tb_name}: reference {t_ref:.1f} s; auto fraction {f_auto} after {calls} probe calls "
              f"(errors {np.round(cand_errs, 4).tolist()})", flush=True)
        variants = [("plain", 0.0, 0)] + [(f"tele {f:g}", f, 0) for f in fractions] + [("auto", f_auto, calls)]
        for sname, solver in solvers.items():
            for budget in budgets:
                n = steps_for_nfe(solver, budget, True)
                for label, f, probe_calls in variants:
                    hist_opts = [False] if (f == 0.0 or args.no_history) else [False, True]
                    for hist in hist_opts:
                        t_f = accel.time_at_fraction(schedule, f) if f > 0 else t_max
                        x0 = x_T if f == 0 else accel.gaussian_flow(stats, schedule, x_T, t_max, t_f)
                        k_hist = 0
                        if hist:
                            grid, k_hist = common.extended_tail(schedule, t_f, n, args.history_steps, t_max)
                        if k_hist:
                            # closed_form_state maps from grid[0] (before t_f): start it there
                            x_pre = accel.gaussian_flow(stats, schedule, x_T, t_max, grid[0])
                            st = accel.closed_form_state(stats, schedule, solver, grid, x_pre, k_hist,
                                                         history_steps=args.history_steps)
                            x = jdiff.sample(model, schedule, solver, grid, None, start=k_hist, state=st)
                        elif hist:
                            continue  # no room for an earlier point: same as the fresh run
                        else:
                            grid = (jdiff.grids.make_grid(schedule, "logsnr", n) if f == 0
                                    else accel.tail_grid(schedule, "logsnr", n, t_f))
                            x = jdiff.sample(model, schedule, solver, grid, x0)
                        x = np.asarray(x)
                        nfe = solver.nfe(n, True)
                        rec = {"testbed": tb_name, "dim": tb.dim, "solver": sname, "nfe_budget": budget,
                               "variant": label + (" +hist" if hist else ""), "fraction": f,
                               "t_start": t_f, "sigma_hat_start": float(np.exp(-lam_of(t_f))),
                               "history": "closed_form" if hist else "fresh", "history_points": k_hist,
                               "n_steps": n, "nfe": nfe, "probe_calls": probe_calls,
                               "nfe_total": nfe + probe_calls, **_errors(x, ref),
                               "finite": bool(np.all(np.isfinite(x)))}
                        records.append(rec)
            print(f"  {tb_name} {sname} done ({run.elapsed():.0f} s)", flush=True)
    res = run.finish({"config": vars(args), "schedule": "vp_discrete", "grid": "logsnr", "final": "zero",
                      "auto": meta, "records": records})
    return common.report(common.out_prefix(args, "teleport_mixtures"), res, markdown(res))


def _fmt(v):
    return "nan" if not math.isfinite(v) else f"{v:.3g}"


def markdown(res):
    recs = res["records"]
    cfg = res["config"]
    L = common.md_header("Analytical teleportation on the mixture testbeds", res, timed=False)
    L += [f"Schedule `vp_discrete`, logsnr grids ending at t = 0, float32 sampling, {cfg['n_samples']} "
          "samples; RMSE against the Dopri8 float64 reference ODE solution of the exact mixture model "
          "from the same x_T (see the script's docstring). `tele f`: teleport with the closed-form "
          "Gaussian solution over the first fraction f of the log-SNR range, then the solver's NFE on "
          "the rest. `auto`: fraction chosen by `auto_skip` (tol "
          f"{cfg['tol']}, {cfg['n_probe']} probe samples, candidates k/{cfg['candidates']}); its probe "
          "calls are listed below and are NOT included in the column NFE. `+hist`: multistep history "
          "from the closed form. Bold: best per column (excluding +hist rows).", ""]
    for tb in dict.fromkeys(r["testbed"] for r in recs):
        rs = [r for r in recs if r["testbed"] == tb]
        m = res["auto"][tb]
        budgets = sorted({r["nfe_budget"] for r in rs})
        L += [f"## {tb} ({rs[0]['dim']}-D)", "",
              f"auto: fraction {m['auto_fraction']} (t = {m['auto_t']:.4g}, sigma/alpha = "
              f"{m['auto_sigma_hat']:.3g}) after {m['probe_calls']} probe calls on {cfg['n_probe']} samples "
              f"(total NFE of an auto run = NFE + {m['probe_calls']}); relative x0 disagreement at "
              f"candidates 1/{cfg['candidates']}, 2/{cfg['candidates']}, ...: "
              f"{', '.join(f'{e:.3g}' for e in m['probe_errors'])}", ""]
        cell = {(r["solver"], r["variant"], r["nfe_budget"]): r for r in rs}
        rows = list(dict.fromkeys((r["solver"], r["variant"]) for r in rs if "+hist" not in r["variant"]))
        best = {b: min(cell[k + (b,)]["rmse"] for k in rows if k + (b,) in cell) for b in budgets}
        header = ["solver", "variant"] + [f"NFE {b}" for b in budgets]
        body = []
        for s, v in rows:
            cells = []
            for b in budgets:
                r = cell.get((s, v, b))
                txt = "" if r is None else _fmt(r["rmse"]) + ("" if r["nfe"] == b else f" ({r['nfe']})")
                cells.append(f"**{txt}**" if r is not None and r["rmse"] == best[b] else txt)
            body.append([s, v] + cells)
        L += common.md_table(header, body) + [""]
        # summary: best plain vs best teleported at each NFE
        L += [f"### {tb}: best plain vs best teleported (rmse, solver; NFE without auto's probe calls)", ""]
        srows = []

        def best(b, keep):
            rr = [r for r in rs if r["nfe_budget"] == b and keep(r["variant"])]
            r = min(rr, key=lambda r: r["rmse"]) if rr else None
            return r, ("" if r is None else f"{_fmt(r['rmse'])} ({r['solver']}"
                       + ("" if keep("plain") else f", {r['variant'].replace(' +hist', '')}") + ")")

        for b in budgets:
            plain, p_txt = best(b, lambda v: v == "plain")
            _, t_txt = best(b, lambda v: v != "plain" and "+hist" not in v)
            auto, a_txt = best(b, lambda v: v == "auto")
            autoh, ah_txt = best(b, lambda v: v == "auto +hist")
            _, th_txt = best(b, lambda v: "+hist" in v)
            srows.append([b, p_txt, t_txt, a_txt, ah_txt, th_txt,
                          f"{plain['rmse'] / auto['rmse']:.2f}",
                          "" if autoh is None else f"{plain['rmse'] / autoh['rmse']:.2f}"])
        L += common.md_table(["NFE", "best plain", "best teleported (any f)", "best auto",
                              "best auto +hist", "best teleported +hist (any f)", "plain / auto",
                              "plain / auto +hist"], srows) + [""]
        hist = [r for r in rs if "+hist" in r["variant"]]
        if hist:
            L += [f"### {tb}: closed-form history vs fresh warm-up (rmse fresh -> +hist)", ""]
            hrows = []
            for r in hist:
                fresh = cell[(r["solver"], r["variant"].replace(" +hist", ""), r["nfe_budget"])]
                hrows.append([r["solver"], r["variant"].replace(" +hist", ""), r["nfe_budget"],
                              r["history_points"], f"{_fmt(fresh['rmse'])} -> {_fmt(r['rmse'])}",
                              f"{r['rmse'] / fresh['rmse']:.2f}"])
            better = sum(1 for h in hrows if float(h[-1]) < 1)
            L += [f"History helps (ratio < 1) in {better} of {len(hrows)} runs.", ""]
            L += common.md_table(["solver", "variant", "NFE", "history points", "rmse", "ratio"], hrows) + [""]
    bad = [r for r in recs if not r["finite"]]
    L += [f"Non-finite samples: {len(bad)} runs of {len(recs)}."]
    return L


if __name__ == "__main__":
    main()
