"""DualFast with multistep solvers: which options remove its harm, and the default per solver.

    python benchmarks/dualfast_multistep.py             # full study (a few minutes on a loaded 2-core CPU)
    python benchmarks/dualfast_multistep.py --quick     # smoke run: 256 samples, 2 solvers, NFE 5 and 6
    python benchmarks/dualfast_multistep.py --from-json benchmarks/results/dualfast_multistep.json

Question (issue 13 leftover): with its measured default (scale 0.25, ``time`` ramp, ``first``
reference, ``eps`` space) DualFast lowers the error of DDIM / DPM-Solver++(2M) / UniPC-bh2 on a
learned model but raises that of iPNDM and DPM-Solver++(3M)
(``benchmarks/results/accelerators.md``). Hypothesis: multistep solvers of order >= 3 already
extrapolate over several history terms, so mixing every stored output with an earlier one
double-counts. Candidates, each with the scales ``--scales`` (a traced array: one compile per
static option set and cell):

* ``mixed`` (the rule as built: the solver stores the mixed outputs in its history) with the
  ``time`` ramp and the ``first`` reference, i.e. the default's family at other scales (a
  per-solver coefficient);
* ``raw`` history (``DualFast(history="raw")``): only the newest output is mixed, the solver's
  history keeps the raw outputs, so the correction enters the step once and is not extrapolated;
* the ``previous`` reference (mixing against the newest earlier output, tau = t_{i-1});
* the ``constant`` ramp (with the ``first`` reference and mixed history, the multistep solver's
  combination of mixed outputs is exactly ``D + c (D - m_ref)``: the history carries the same
  correction as the newest term).

Model: the MLP trained on mix16d by ``benchmarks/accelerators.py``, loaded from ``--workdir``
(default ``runs/accel_mix16d``; trained there by that script's ``train_or_load`` if absent), EMA
parameters, the run's schedule and prediction. Noise: ``--n-samples`` standard-normal x_T
(``RandomState(seed)``, the accelerators benchmark's draw), logsnr grids ending at t = 0,
float32. References (Dopri8 float64 ``jdiff.reference_solve``, rtol = atol = ``--ref-tol``,
cached in the work directory): the EXACT mixture model's ODE solution (``rmse_true``: total
error, what DualFast is meant to lower) and the LEARNED model's (``rmse_learned``: discretisation
only). ``sw``: sliced Wasserstein to exact data samples. Control: plain and the ``CONTROL`` option
sets on the EXACT mixture model (no approximation error; its rmse is discretisation error only).

Choosing the default per solver (honest split): the samples are split in two halves by index. On
the first (selection) half, an option set qualifies for a solver when its ``rmse_true`` is at most
plain's in every NFE cell. The default stays the old one (``DEFAULT``: measured on two models, the
digits UNet included) where it qualifies; otherwise the qualifying set with the lowest
geometric-mean ratio to plain; none qualifying means "off" (scale 0). The best qualifying set is
reported too (tuned on this one model only). The second (held-out) half reports the chosen sets'
ratios.

Writes ``benchmarks/results/dualfast_multistep.{json,md}`` (``--out PREFIX``; ``--quick`` writes
nothing unless ``--out``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

DEFAULT = (0.25, "time", "first", "mixed")  # DualFast()'s options before this study
CONTROL = (DEFAULT, (0.25, "time", "first", "raw"), (0.05, "time", "first", "mixed"))
FAMILIES = (("time", "first", "mixed"), ("time", "first", "raw"), ("time", "previous", "mixed"),
            ("constant", "first", "mixed"))


def parse_args(argv=None):
    ap = common.parser(__doc__, "256 samples, ddim and ipndm at NFE 5 and 6, scales 0.1 and 0.25")
    ap.add_argument("--workdir", default="runs/accel_mix16d")
    ap.add_argument("--n-samples", type=int, default=2000)
    ap.add_argument("--ref-tol", type=float, default=1e-6)
    ap.add_argument("--solvers", default="ddim,dpmpp_2m,dpmpp_3m,unipc_bh2,ipndm")
    ap.add_argument("--nfe", default="5,6,8,10")
    ap.add_argument("--scales", default="0.05,0.1,0.15,0.25,0.4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--from-json", default=None, metavar="JSON")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_samples, args.solvers, args.nfe, args.scales = 256, "ddim,ipndm", "5,6", "0.1,0.25"
    return args


def _list(s, typ=str):
    return [typ(v.strip()) for v in s.split(",") if v.strip()]


def _load(args):
    """``(run, state)`` of the cached mix16d MLP (trained by the accelerators benchmark)."""
    import accelerators

    a = accelerators.parse_args(["--workdir", args.workdir, "--seed", str(args.seed)])
    run, state, info = accelerators.train_or_load(a)
    return run, state, info


def _refs(args, run, state, x_T, learned, exact):
    import jdiff

    wd = Path(args.workdir)
    path = wd / f"dualfast_refs_n{args.n_samples}_s{args.seed}_tol{args.ref_tol:g}.npz"
    if path.exists():
        z = np.load(path)
        if np.array_equal(z["x_T"], np.asarray(x_T)):
            print(f"reusing references {path}", flush=True)
            return z["ref_true"], z["ref_learned"], {"cached": str(path)}
    sched, tmax, tol = run.schedule, float(run.schedule.t_max), args.ref_tol
    t0 = time.perf_counter()
    rt = jdiff.reference_solve(exact, sched, np.asarray(x_T), tmax, 0.0, rtol=tol, atol=tol)
    t1 = time.perf_counter()
    rl = jdiff.reference_solve(learned, sched, np.asarray(x_T), tmax, 0.0, rtol=tol, atol=tol,
                               prediction=run.prediction)
    t2 = time.perf_counter()
    np.savez(path, x_T=np.asarray(x_T), ref_true=rt, ref_learned=rl)
    return rt, rl, {"seconds_true": t1 - t0, "seconds_learned": t2 - t1}


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        res["choice"] = choose(res)
        prefix = args.out or str(Path(args.from_json).with_suffix(""))
        Path(f"{prefix}.md").write_text("\n".join(markdown(res)).rstrip("\n") + "\n")
        print(f"wrote {prefix}.md", flush=True)
        return res
    rec_run = common.Run(__file__, argv)
    import jax
    import jax.numpy as jnp

    import jdiff
    from jdiff.accel import DualFast
    from jdiff.bench import sliced_wasserstein
    from jdiff.solvers import get_solver, steps_for_nfe

    def log(msg):
        print(f"[{rec_run.elapsed():6.0f} s] {msg}", flush=True)

    run, state, train_info = _load(args)
    sched, pred = run.schedule, run.prediction
    learned = run.model_fn(state.ema_params)
    tb = jdiff.testbeds.get_testbed(run.config.data)
    exact = tb.model_fn(sched)
    z = np.random.RandomState(args.seed).standard_normal((args.n_samples, tb.dim)).astype(np.float32)
    x_T = jdiff.init_noise(sched, float(sched.t_max), jnp.asarray(z))
    data_sw = np.asarray(tb.sample(jax.random.key(args.seed + 200), args.n_samples), np.float64)
    ref_true, ref_learned, ref_info = _refs(args, run, state, x_T, learned, exact)
    floor = float(np.sqrt(np.mean((ref_true - ref_learned) ** 2)))
    log(f"references ready ({ref_info}); approximation floor rmse {floor:.4f}")
    half = args.n_samples // 2
    parts = {"all": slice(None), "sel": slice(0, half), "held": slice(half, None)}

    def measure(x):
        x = np.asarray(x, np.float64)
        fin = bool(np.all(np.isfinite(x)))
        out = {"finite": fin, "sw": sliced_wasserstein(x, data_sw) if fin else float("nan")}
        for name, sl in parts.items():
            out[f"rmse_true_{name}"] = float(np.sqrt(np.mean((x[sl] - ref_true[sl]) ** 2)))
            out[f"rmse_learned_{name}"] = float(np.sqrt(np.mean((x[sl] - ref_learned[sl]) ** 2)))
        return out

    scales = _list(args.scales, float)
    option_sets = [(s,) + f for f in FAMILIES for s in scales]
    if DEFAULT not in option_sets:
        option_sets.insert(0, DEFAULT)
    records = []
    for sname in _list(args.solvers):
        solver = get_solver(sname)
        for nfe in _list(args.nfe, int):
            n = steps_for_nfe(solver, nfe, True)
            grid = jdiff.grids.make_grid(sched, "logsnr", n)
            x = jdiff.sample(learned, sched, solver, grid, x_T, prediction=pred)
            records.append({"model": "learned", "solver": sname, "nfe": nfe, "n_steps": n, "variant": "plain",
                            **measure(x)})
            for scale, ramp, ref, hist in option_sets:
                hook = DualFast(jnp.asarray(scale, jnp.float32), ramp=ramp, reference=ref, history=hist)
                x = jdiff.sample(learned, sched, solver, grid, x_T, hooks=hook, prediction=pred)
                records.append({"model": "learned", "solver": sname, "nfe": nfe, "n_steps": n, "variant": "dualfast",
                                "scale": scale, "ramp": ramp, "reference": ref, "history": hist, **measure(x)})
            p = records[-len(option_sets) - 1]
            log(f"{sname} NFE {nfe}: plain {p['rmse_true_all']:.4f}; best DualFast "
                f"{min(r['rmse_true_all'] for r in records[-len(option_sets):]):.4f}")
            # control: the exact mixture model (no approximation error; rmse_true is discretisation only)
            for opt in (None,) + CONTROL:
                hooks = () if opt is None else DualFast(jnp.asarray(opt[0], jnp.float32), ramp=opt[1],
                                                        reference=opt[2], history=opt[3])
                x = jdiff.sample(exact, sched, solver, grid, x_T, hooks=hooks)
                records.append({"model": "exact", "solver": sname, "nfe": nfe, "n_steps": n,
                                "variant": "plain" if opt is None else "dualfast",
                                **({} if opt is None else dict(zip(("scale", "ramp", "reference", "history"), opt,
                                                                   strict=True))), **measure(x)})
    res = rec_run.finish({"config": vars(args), "train": {k: v for k, v in train_info.items() if k != "loss_curve"},
                          "schedule": repr(sched), "prediction": pred, "reference": ref_info,
                          "approximation_floor_rmse": floor, "default_before": list(DEFAULT),
                          "option_sets": [list(o) for o in option_sets], "records": records})
    res["choice"] = choose(res)
    common.report(common.out_prefix(args, "dualfast_multistep"), res, markdown(res))
    return res


# ----------------------------------------------------------------------------- analysis


def _key(r):
    return (r["scale"], r["ramp"], r["reference"], r["history"])


def _cells(res, model="learned"):
    recs = [r for r in res["records"] if r.get("model", "learned") == model]
    plain = {(r["solver"], r["nfe"]): r for r in recs if r["variant"] == "plain"}
    df = {(r["solver"], r["nfe"], _key(r)): r for r in recs if r["variant"] == "dualfast"}
    return plain, df


def _ratios(res, solver, opt, part, metric="rmse_true", model="learned"):
    plain, df = _cells(res, model)
    nfes = sorted({n for s, n in plain if s == solver})
    return [df[(solver, n, opt)][f"{metric}_{part}"] / plain[(solver, n)][f"{metric}_{part}"] for n in nfes]


def _geo(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if all(x > 0 and math.isfinite(x) for x in xs) \
        else float("inf")


def choose(res):
    """Per solver (module docstring): the old default if it is no worse than plain in any NFE cell
    of the selection half, else the qualifying option set with the lowest geometric-mean
    rmse_true ratio there, else None (off); ``best``: the best qualifying set regardless."""
    out = {}
    opts = [tuple(o) for o in res["option_sets"]]
    old = tuple(res["default_before"])

    def entry(s, o):
        return {"options": list(o), "sel_geomean": _geo(_ratios(res, s, o, "sel")),
                "held_ratios": _ratios(res, s, o, "held"), "held_geomean": _geo(_ratios(res, s, o, "held")),
                "all_ratios": _ratios(res, s, o, "all"),
                "learned_ratios": _ratios(res, s, o, "all", "rmse_learned")}

    for s in dict.fromkeys(r["solver"] for r in res["records"]):
        ok = [o for o in opts if max(_ratios(res, s, o, "sel")) <= 1.0]
        best = min(ok, key=lambda o: _geo(_ratios(res, s, o, "sel"))) if ok else None
        pick = old if old in ok else best
        out[s] = {"chosen": None if pick is None else entry(s, pick),
                  "best": None if best is None else entry(s, best)}
    return out


def _f(x, d=3):
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{d}g}"


def _opt_label(o):
    s, ramp, ref, hist = o
    return f"{s:g} {ramp}/{ref}/{hist}"


def markdown(res):
    L = common.md_header("DualFast with multistep solvers: options and per-solver defaults (mix16d MLP)", res,
                         timed=False)
    cfg = res["config"]
    plain, df = _cells(res)
    solvers = list(dict.fromkeys(r["solver"] for r in res["records"]))
    nfes = sorted({r["nfe"] for r in res["records"]})
    opts = [tuple(o) for o in res["option_sets"]]
    d = tuple(res["default_before"])
    L += ["* Model: the learned mix16d MLP of `benchmarks/accelerators.py` (`runs/accel_mix16d`, reused, "
          f"schedule `{res['schedule']}`, prediction `{res['prediction']}`).",
          f"* {cfg['n_samples']} fixed x_T (RandomState({cfg['seed']}), the accelerators benchmark's draw), logsnr "
          f"grids ending at t = 0, float32. References: Dopri8 float64 rtol = atol = {cfg['ref_tol']:g} of the exact "
          f"mixture model (`rmse_true`) and of the learned model (`rmse_learned`). Approximation floor (learned vs "
          f"exact reference) rmse {res['approximation_floor_rmse']:.4f}.",
          "* Option sets: scale x (ramp / reference / history), space `eps` throughout (x0 mixing diverged in "
          "`accelerators.md`). `mixed`: the solver's history holds the mixed outputs (the rule as built); `raw`: "
          "only the newest output is mixed (`DualFast(history='raw')`). The old default is "
          f"`{_opt_label(d)}`.",
          "* Default per solver (chosen on samples 0..n/2-1, held out: n/2..n-1): an option set qualifies when "
          "its rmse_true is at most plain's in every NFE cell. The old default stays where it qualifies (it was "
          "also measured on the digits UNet); otherwise the qualifying set with the lowest geometric-mean ratio; "
          "none qualifying: off (scale 0). `best` is the best qualifying set (tuned on this model only).", ""]

    # --- plain vs old default vs chosen
    ch = {k: v["chosen"] for k, v in res["choice"].items()}
    bq = {k: v["best"] for k, v in res["choice"].items()}
    L += ["## 1. Plain vs the old default vs the chosen per-solver default (rmse_true, all samples)", "",
          "Cells: rmse_true (ratio to plain). `rmse_learned` ratios of the chosen set in the last column.", ""]
    rows = []
    for s in solvers:
        c = ch[s]
        copt = None if c is None else tuple(c["options"])
        for label, opt in (("plain", None), ("old default", d), ("chosen: " + ("off" if copt is None else
                                                                               _opt_label(copt)), copt)):
            if label.startswith("chosen") and copt is None:
                rows.append([s, label] + ["= plain"] * len(nfes) + [""])
                continue
            row = [s, label]
            for n in nfes:
                p = plain[(s, n)]["rmse_true_all"]
                if opt is None:
                    row.append(_f(p))
                else:
                    v = df[(s, n, opt)]["rmse_true_all"]
                    row.append(f"{_f(v)} ({v / p:.2f})")
            if label.startswith("chosen"):
                row.append(" ".join(f"{v:.2f}" for v in c["learned_ratios"]))
            else:
                row.append("")
            rows.append(row)
    L += common.md_table(["solver", "variant"] + [f"NFE {n}" for n in nfes] + ["rmse_learned ratios"], rows) + [""]

    L += ["Chosen per solver, and the best qualifying set (selection half; the same set on the held-out half):",
          ""]
    rows = []
    for s in solvers:
        for label, c in (("chosen", ch[s]), ("best", bq[s])):
            if c is None:
                rows.append([s, label, "off (scale 0): no option set is <= plain in every cell", "", "", ""])
            else:
                rows.append([s, label, _opt_label(tuple(c["options"])), f"{c['sel_geomean']:.3f}",
                             f"{c['held_geomean']:.3f}", " ".join(f"{v:.2f}" for v in c["held_ratios"])])
    L += common.md_table(["solver", "", "option set", "sel geomean ratio", "held geomean ratio",
                          "held ratios per NFE"], rows) + [""]

    # --- where the harm stays
    L += ["Where no option set helps: the lowest rmse_true ratio to plain over all option sets, per cell "
          "(all samples; > 1: every option set is worse than plain there), with that option set:", ""]
    rows = []
    for s in solvers:
        row = [s]
        for n in nfes:
            o = min(opts, key=lambda o: df[(s, n, o)]["rmse_true_all"])
            row.append(f"{df[(s, n, o)]['rmse_true_all'] / plain[(s, n)]['rmse_true_all']:.2f} ({_opt_label(o)})")
        rows.append(row)
    L += common.md_table(["solver"] + [f"NFE {n}" for n in nfes], rows) + [""]

    # --- exact-model control
    ctl = [tuple(o) for o in dict.fromkeys(_key(r) for r in res["records"]
                                           if r.get("model") == "exact" and r["variant"] == "dualfast")]
    if ctl:
        L += ["Control on the EXACT mixture model (no approximation error: rmse is discretisation error only): "
              "ratio to plain per NFE, and the learned model's ratio for comparison:", ""]
        rows = []
        for s in solvers:
            for o in ctl:
                lr = " ".join(f"{v:.2f}" for v in _ratios(res, s, o, "all")) if o in opts else "(not swept)"
                rows.append([s, _opt_label(o), " ".join(f"{v:.2f}" for v in _ratios(res, s, o, "all", model="exact")),
                             lr])
        L += common.md_table(["solver", "option set", "exact model: ratio per NFE", "learned model: ratio per NFE"],
                             rows) + [""]

    # --- every option set: geomean ratio per solver, and max ratio
    L += ["## 2. Every option set: geometric-mean rmse_true ratio to plain over NFE "
          + ", ".join(map(str, nfes)) + " (all samples; in parentheses the worst cell)", "",
          "< 1: DualFast better. Bold: the chosen set per solver; italics: the best qualifying one.", ""]
    rows = []
    for o in opts:
        row = [_opt_label(o)]
        for s in solvers:
            r = _ratios(res, s, o, "all")
            t = f"{_geo(r):.3f} ({max(r):.2f})"
            if ch[s] is not None and tuple(ch[s]["options"]) == o:
                t = f"**{t}**"
            if bq[s] is not None and tuple(bq[s]["options"]) == o:
                t = f"_{t}_"
            row.append(t)
        rows.append(row)
    L += common.md_table(["option set"] + solvers, rows) + [""]

    L += ["## 3. Same, rmse_learned (discretisation error vs the learned model's own ODE solution)", ""]
    rows = []
    for o in opts:
        r = [_ratios(res, s, o, "all", "rmse_learned") for s in solvers]
        rows.append([_opt_label(o)] + [f"{_geo(x):.3f} ({max(x):.2f})" for x in r])
    L += common.md_table(["option set"] + solvers, rows) + [""]

    # --- full cells for the multistep solvers of interest
    L += ["## 4. Cell by cell (rmse_true, all samples)", ""]
    for s in solvers:
        rows = [["plain"] + [_f(plain[(s, n)]["rmse_true_all"]) for n in nfes]]
        for o in opts:
            rows.append([_opt_label(o)] + [_f(df[(s, n, o)]["rmse_true_all"]) for n in nfes])
        L += [f"### {s}", ""] + common.md_table(["variant"] + [f"NFE {n}" for n in nfes], rows) + [""]
    bad = [r for r in res["records"] if not r["finite"]]
    L += [f"Non-finite runs: {len(bad)} of {len(res['records'])}."]
    return L


if __name__ == "__main__":
    main()
