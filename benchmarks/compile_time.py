"""Compile time of ``jdiff.sample`` and its recompilations, before vs after the protocol change.

    python benchmarks/compile_time.py          # 7 solvers, 3 repeats per side (~5-10 min); writes
                                               # benchmarks/results/compile_time.{json,md}
    python benchmarks/compile_time.py --quick  # ddim and dpmpp_2m, 1 repeat (< 1 min); prints only

Two sides: ``before`` is git revision ``--before`` (default 5637499, the last commit before the
solver/model protocol change: model functions ``model_fn(x, t)``, solvers NamedTuples built by
closures, ``step`` returning the state, no ``args``), checked out with ``git worktree add
--detach`` into a temporary directory (removed afterwards); ``after`` is this working tree
(``model_fn(x, t, args)``, frozen-dataclass solvers). Each measurement runs in a fresh Python
subprocess with ``PYTHONPATH`` at that side's tree (the child asserts which ``jdiff`` it
imported, and handles both APIs); the subprocesses alternate, before/after in even repeats and
after/before in odd ones, and the solver order is shuffled per repeat (the same for both sides).
Reported: medians over the repeats (with min and max). The persistent compilation cache is off.

Setup: the exact eps model of the ``mix16d`` testbed
(``jdiff.testbeds.get_testbed("mix16d").model_fn(schedule)``), the ``vp_discrete`` schedule, a
``logsnr`` grid of ``steps_for_nfe(solver, 10)`` steps, batch 1024 of float32 standard normals,
``key = jax.random.key(1)``. Each child first calls ``sample`` once with ddim at batch 2 (the
process's first tracing and compilation, outside the timings), then, per solver:

* ``first``: wall time of the first ``sample`` call (tracing, lowering, XLA compilation,
  execution, ``block_until_ready``); ``second``: the same call again (execution and Python
  overhead); ``compile = first - second``;
* programs compiled (the size of the sampler's jit cache: ``jdiff.sampling.compiled_programs()``,
  before ``jdiff.sampling._sample._cache_size()``) by the first call, by the second call, and by a
  third call with the solver re-created (``get_solver(name)`` again).

Re-creation scenarios, on ``--recreate-solver`` (dpmpp_2m): one call, then ``--recreate-calls``
further calls, each with freshly created ``correct_x0=dynamic_thresholding(0.995)``; with a fresh
``tb.model_fn(schedule)``; with all three (solver, thresholding, model function) fresh. Reported:
programs compiled by the further calls (0: nothing recompiled) and the median wall time of one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SOLVERS = "ddim,heun,dpmpp_2m,dpmpp_3m,unipc_bh2,deis_3,dpmpp_2m_sde"
SIDES = ("before", "after")


# ----------------------------------------------------------------------------- child


def child(args):
    """One side's measurements in this process; written as JSON to ``args.json_out``."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    import jax.numpy as jnp

    import jdiff
    from jdiff.solvers import get_solver, steps_for_nfe
    from jdiff.thresholding import dynamic_thresholding

    if not os.path.realpath(jdiff.__file__).startswith(os.path.realpath(args.root) + os.sep):
        sys.exit(f"imported {jdiff.__file__}, not the jdiff of {args.root}")
    new_api = hasattr(jdiff.sampling, "compiled_programs")
    programs = jdiff.sampling.compiled_programs if new_api else jdiff.sampling._sample._cache_size
    sch = jdiff.schedules.vp_discrete()
    tb = jdiff.testbeds.get_testbed(args.testbed)
    model_fn = tb.model_fn(sch)
    x_T = jax.random.normal(jax.random.key(0), (args.batch, tb.dim), jnp.float32)
    key = jax.random.key(1)

    def grid_for(solver):
        return jdiff.grids.make_grid(sch, "logsnr", steps_for_nfe(solver, args.nfe))

    def call(model, solver, grid, x=x_T, **kw):
        """(wall seconds, programs compiled) of one blocked sample call."""
        n0, t0 = programs(), time.perf_counter()
        jax.block_until_ready(jdiff.sample(model, sch, solver, grid, x, key=key, **kw))
        return time.perf_counter() - t0, programs() - n0

    ddim = get_solver("ddim")
    call(model_fn, ddim, grid_for(ddim), x_T[:2])  # warm-up: the process's first compilation
    solvers = []
    for name in args.solvers.split(","):
        solver = get_solver(name)
        grid = grid_for(solver)
        first, p_first = call(model_fn, solver, grid)
        second, p_same = call(model_fn, solver, grid)
        recreated, p_recreated = call(model_fn, get_solver(name), grid)
        solvers.append(dict(solver=name, steps=len(grid) - 1, first_s=first, second_s=second,
                            compile_s=first - second, programs_first=p_first,
                            programs_same=p_same, recreated_solver_s=recreated,
                            programs_recreated_solver=p_recreated))

    name = args.recreate_solver
    fixed = get_solver(name)
    grid = grid_for(fixed)
    makers = {  # scenario -> fresh (model, solver, keyword arguments)
        "dynamic_thresholding": lambda: (model_fn, fixed,
                                         dict(correct_x0=dynamic_thresholding(0.995))),
        "model_fn": lambda: (tb.model_fn(sch), fixed, {}),
        "all three": lambda: (tb.model_fn(sch), get_solver(name),
                              dict(correct_x0=dynamic_thresholding(0.995))),
    }
    recreate = []
    for scenario, make in makers.items():
        m, s, kw = make()
        call(m, s, grid, **kw)
        res = []
        for _ in range(args.recreate_calls):
            m, s, kw = make()
            res.append(call(m, s, grid, **kw))
        recreate.append(dict(scenario=scenario, solver=name, calls=args.recreate_calls,
                             programs=sum(p for _, p in res),
                             median_call_s=statistics.median(t for t, _ in res)))
    with open(args.json_out, "w") as f:
        json.dump(dict(side=args.side, api="new" if new_api else "old",
                       jdiff_file=os.path.relpath(jdiff.__file__, args.root),  # no machine paths
                       solvers=solvers, recreate=recreate), f)


# ----------------------------------------------------------------------------- parent


def git(*a):
    return subprocess.run(["git", "-C", str(common.ROOT), *a], check=True, capture_output=True,
                          text=True).stdout.strip()


def tree_sha256(root):
    """SHA-256 over the paths and contents of ``root/jdiff/**/*.py`` (identifies the tree run)."""
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(os.path.join(root, "jdiff"))):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".py"):
                p = os.path.join(d, f)
                h.update(os.path.relpath(p, root).encode() + b"\0")
                with open(p, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()


def run_child(side, root, order, args):
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--side", side, "--root", root,
           "--solvers", ",".join(order), "--batch", str(args.batch), "--nfe", str(args.nfe),
           "--testbed", args.testbed, "--recreate-solver", args.recreate_solver,
           "--recreate-calls", str(args.recreate_calls), "--json-out", path]
    try:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True,
                           timeout=args.timeout)
        if p.returncode:
            raise RuntimeError(f"{side} child failed ({p.returncode}):\n{p.stderr[-3000:]}")
        with open(path) as f:
            out = json.load(f)
        out["wall_s"] = time.perf_counter() - t0
        return out
    finally:
        os.remove(path)


def aggregate(runs, solvers, recreate_solver):
    def side_runs(side):
        return [r for r in runs if r["side"] == side]

    rows = []
    for name in solvers:
        row = {"solver": name}
        for side in SIDES:
            recs = [s for r in side_runs(side) for s in r["solvers"] if s["solver"] == name]
            row["steps"] = recs[0]["steps"]
            row[side] = {k: common.summary([s[k] for s in recs])
                         for k in ("first_s", "second_s", "compile_s", "recreated_solver_s")}
            row[side].update({k: [s[k] for s in recs] for k in
                              ("programs_first", "programs_same", "programs_recreated_solver")})
        row["compile_after_over_before"] = (row["after"]["compile_s"]["median"]
                                            / row["before"]["compile_s"]["median"])
        rows.append(row)
    scen = []
    for sc in dict.fromkeys(s["scenario"] for r in runs for s in r["recreate"]):
        row = {"scenario": sc, "solver": recreate_solver}
        for side in SIDES:
            recs = [s for r in side_runs(side) for s in r["recreate"] if s["scenario"] == sc]
            row["calls"] = recs[0]["calls"]
            row[side] = {"programs": [s["programs"] for s in recs],
                         "median_call_s": common.summary([s["median_call_s"] for s in recs])}
        scen.append(row)
    return rows, scen


def write_md(res):
    cfg, rev = res["config"], res["revisions"]
    b, a = rev["before"], rev["after"]
    L = common.md_header("jdiff.sample compile time and recompilations: before vs after", res)
    L += [f"before: `{b['commit']}` ({b['subject']}), API {b['api']}.  ",
          f"after: the working tree at HEAD `{a['head']}`"
          + (" with uncommitted changes" if a["dirty"] else "")
          + f" (sha256 of jdiff/**/*.py `{a['jdiff_sha256'][:16]}`), API {a['api']}.", "",
          f"Testbed `{cfg['testbed']}` (exact eps), `vp_discrete`, `logsnr` grid at NFE "
          f"{cfg['nfe']}, batch {cfg['batch']}; {cfg['repeats']} fresh subprocesses per side, "
          "interleaved; medians [min, max] in seconds.", ""]

    def s(x):
        return f"{x['median']:.3f} [{x['min']:.3f}, {x['max']:.3f}]" if x["n"] > 1 else f"{x['median']:.3f}"

    def counts(v):
        return "/".join(str(c) for c in dict.fromkeys(v))

    L += common.md_table(
        ["solver", "steps", "compile before", "compile after", "after / before",
         "first call before", "first call after", "second call before", "second call after"],
        [[r["solver"], r["steps"], s(r["before"]["compile_s"]), s(r["after"]["compile_s"]),
          f"{r['compile_after_over_before']:.2f}", s(r["before"]["first_s"]), s(r["after"]["first_s"]),
          s(r["before"]["second_s"]), s(r["after"]["second_s"])] for r in res["solvers"]])
    L += ["", "compile = first call - second call. Programs compiled (jit cache entries added), "
          "before / after:", ""]
    L += common.md_table(
        ["solver", "first call", "same objects again", "solver re-created",
         "call with re-created solver s (before / after)"],
        [[r["solver"]] + [f"{counts(r['before'][k])} / {counts(r['after'][k])}"
                          for k in ("programs_first", "programs_same", "programs_recreated_solver")]
         + [f"{r['before']['recreated_solver_s']['median']:.3f} / "
            f"{r['after']['recreated_solver_s']['median']:.3f}"] for r in res["solvers"]])
    L += ["", f"Re-created between calls ({res['recreate'][0]['solver'] if res['recreate'] else ''}"
          "; after a first call):", ""]
    L += common.md_table(
        ["re-created", "calls", "programs compiled before", "after", "s per call before", "after"],
        [[r["scenario"], r["calls"], counts(r["before"]["programs"]), counts(r["after"]["programs"]),
          s(r["before"]["median_call_s"]), s(r["after"]["median_call_s"])] for r in res["recreate"]])
    return L


def main(argv=None):
    ap = common.parser(__doc__, "smoke run: ddim,dpmpp_2m, 1 repeat, 1 re-created call")
    ap.add_argument("--solvers", default=SOLVERS)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--nfe", type=int, default=10)
    ap.add_argument("--testbed", default="mix16d")
    ap.add_argument("--repeats", type=int, default=3, help="subprocesses per side")
    ap.add_argument("--before", default="5637499", help="git revision of the before side")
    ap.add_argument("--recreate-solver", default="dpmpp_2m")
    ap.add_argument("--recreate-calls", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    ap.add_argument("--out", default=None, help="output prefix (default "
                    "benchmarks/results/compile_time; nothing for --quick)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--json-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.solvers = "ddim,dpmpp_2m" if args.solvers == SOLVERS else args.solvers
        args.repeats, args.recreate_calls = 1, min(args.recreate_calls, 1)
    out = common.out_prefix(args, "compile_time")
    solvers = args.solvers.split(",")
    run = common.Run(__file__, argv)
    before = git("rev-parse", args.before + "^{commit}")
    revisions = {
        "before": {"commit": before, "subject": git("log", "-1", "--format=%s", before)},
        "after": {"head": git("rev-parse", "HEAD"),
                  "dirty": bool(git("status", "--porcelain", "--untracked-files=all", "--", "jdiff")),
                  "jdiff_sha256": tree_sha256(str(common.ROOT))},
    }
    tmp = tempfile.mkdtemp(prefix="jdiff-compile-time-")
    worktree = os.path.join(tmp, "before")
    git("worktree", "add", "--detach", worktree, before)
    runs = []
    try:
        roots = {"before": worktree, "after": str(common.ROOT)}
        for r in range(args.repeats):
            order = list(solvers)
            random.Random(r).shuffle(order)
            for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
                rec = run_child(side, roots[side], order, args)
                rec["repeat"] = r
                runs.append(rec)
                print(f"[compile_time] repeat {r + 1}/{args.repeats} {side} (API {rec['api']}): "
                      + ", ".join(f"{s['solver']} {s['compile_s']:.2f}s" for s in rec["solvers"])
                      + f" ({run.elapsed():.0f} s)", flush=True)
    finally:
        subprocess.run(["git", "-C", str(common.ROOT), "worktree", "remove", "--force", worktree],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    for side in SIDES:
        revisions[side]["api"] = next(r["api"] for r in runs if r["side"] == side)
    rows, scen = aggregate(runs, solvers, args.recreate_solver)
    res = run.finish({
        "config": {"solvers": solvers, "batch": args.batch, "nfe": args.nfe,
                   "testbed": args.testbed, "schedule": "vp_discrete", "grid": "logsnr",
                   "repeats": args.repeats, "recreate_solver": args.recreate_solver,
                   "recreate_calls": args.recreate_calls},
        "revisions": revisions, "solvers": rows, "recreate": scen, "runs": runs})
    return common.report(out, res, write_md(res))


if __name__ == "__main__":
    main()
