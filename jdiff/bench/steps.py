"""Step-count benchmark: solver error against NFE on analytic testbeds.

For every testbed, grid, solver and NFE budget we sample from the same initial noise and compare
with a high-accuracy diffrax solve of the probability-flow ODE from that noise to the same final
time (:func:`jdiff.reference_solve`). Errors (per-dimension RMS, so testbeds of different
dimension are comparable):

* ``rmse``: ``sqrt(mean over samples and dims of (x - x_ref)^2)``;
* ``median_error``: median over samples of ``||x - x_ref|| / sqrt(D)``;
* ``sw``: sliced Wasserstein-1 distance (128 fixed random directions) between the samples and
  exact data samples; ``sw_floor`` is the same distance for the reference solve, i.e. the
  finite-sample noise floor. For stochastic solvers (``ddpm``, ``euler_ancestral``) the
  trajectory errors are not discretisation errors of the ODE; compare them by ``sw``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from .. import grids as grids_mod
from ..reference import reference_solve
from ..sampling import init_noise, nfe as count_nfe, sample
from ..schedules import get_schedule
from ..solvers import get_solver, steps_for_nfe
from ..testbeds import get_testbed

DEFAULT_TESTBEDS = ("mix2d", "mix16d")
# the default run (< 2 minutes on 2 CPU cores); ``--solvers all`` runs every registered solver.
# euler and euler_ancestral are left out: on one grid they are the ddim and ddpm updates.
DEFAULT_SOLVERS = ("ddpm", "ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc_bh2")
DEFAULT_NFE = (5, 6, 8, 10, 15, 20, 50)


@dataclass
class StepCountConfig:
    testbeds: tuple = DEFAULT_TESTBEDS
    solvers: tuple = DEFAULT_SOLVERS
    nfe: tuple = DEFAULT_NFE
    grids: tuple = ("logsnr",)
    schedule: str = "vp_discrete"
    final: str = "zero"
    n_samples: int = 1000
    seed: int = 0
    noise: str | None = None  # path to a .npy of standard-normal noise, shape (n, dim)
    accel: Any = None  # a jdiff.accel.plan.AccelPlan: teleport and/or DualFast for every run


def parse_list(value: str, valid, what: str, allow_all: bool = True, default=None) -> tuple:
    """Split a comma list, expanding ``all`` (and ``default``); ``ValueError`` names unknown
    entries and lists the valid ones."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError(f"empty {what} list")
    if allow_all and items == ["all"]:
        return tuple(valid)
    if items == ["default"] and default is not None:
        return tuple(default)
    bad = [v for v in items if v not in valid]
    if allow_all and "all" in items and len(items) > 1:
        raise ValueError(f"'all' stands alone in the {what} list, got {value!r}")
    if bad:
        raise ValueError(f"unknown {what} {', '.join(map(repr, bad))}; valid: {', '.join(valid)}"
                         + (" or all" if allow_all else ""))
    return tuple(items)


def parse_nfe(value: str) -> tuple:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--nfe must be a comma list of integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise ValueError(f"--nfe values must be positive integers, got {value!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"--nfe lists a budget twice: {value!r}")
    return out


def load_noise(path: str, dim: int) -> np.ndarray:
    try:
        z = np.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read noise file {path!r}: {e}") from None
    if z.ndim != 2 or z.shape[1] != dim:
        raise ValueError(f"noise in {path!r} has shape {z.shape}; the testbed needs (n, {dim})")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"noise in {path!r} has non-finite values")
    return z.astype(np.float32)


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, n_dirs: int = 128, seed: int = 0) -> float:
    """Sliced Wasserstein-1 distance between two equal-size samples, per-dimension scale."""
    rng = np.random.RandomState(seed)
    d = rng.standard_normal((a.shape[1], n_dirs))
    d /= np.linalg.norm(d, axis=0, keepdims=True)
    pa, pb = np.sort(a @ d, axis=0), np.sort(b @ d, axis=0)
    return float(np.mean(np.abs(pa - pb)))


def _errors(x: np.ndarray, ref: np.ndarray) -> dict:
    diff = x.astype(np.float64) - ref
    per_sample = np.linalg.norm(diff, axis=1) / np.sqrt(diff.shape[1])
    return {
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "median_error": float(np.median(per_sample)),
        "max_error": float(np.max(per_sample)),
    }


def check_step_counts(cfg: StepCountConfig) -> list[tuple]:
    """Every input error of ``cfg`` before any work (names, NFE below a solver's minimum, grids,
    testbed specs, the noise file); returns the plan ``(testbed, grid, solver, budget, steps)``."""
    schedule = get_schedule(cfg.schedule)
    solvers = {name: get_solver(name) for name in cfg.solvers}
    plan = []
    for tb_name in cfg.testbeds:
        tb = get_testbed(tb_name)
        if cfg.noise:
            load_noise(cfg.noise, tb.dim)
        for grid_name in cfg.grids:
            if cfg.accel is not None:
                cfg.accel.check_grid(grid_name)
            for sname, solver in solvers.items():
                for budget in cfg.nfe:
                    n = steps_for_nfe(solver, budget, cfg.final == "zero")
                    grids_mod.make_grid(schedule, grid_name, n, cfg.final)
                    plan.append((tb_name, grid_name, sname, budget, n))
    return plan


def run_step_counts(cfg: StepCountConfig, progress=None, plan=None) -> list[dict]:
    """Run the benchmark; returns a list of records (see module docstring). ``plan``: the result
    of :func:`check_step_counts` when the caller has already checked ``cfg``."""
    plan = check_step_counts(cfg) if plan is None else plan
    schedule = get_schedule(cfg.schedule)
    solvers = {name: get_solver(name) for name in cfg.solvers}
    records = []
    task = progress.add_task("step counts", total=len(plan)) if progress else None
    key = jax.random.key(cfg.seed)
    testbeds, refs, data, accel_cache = {}, {}, {}, {}
    for tb_name, grid_name, sname, budget, n in plan:
        if tb_name not in testbeds:
            tb = get_testbed(tb_name)
            if cfg.noise:
                z = load_noise(cfg.noise, tb.dim)
            else:
                z = np.random.RandomState(cfg.seed).standard_normal((cfg.n_samples, tb.dim)).astype(np.float32)
            x_data = np.asarray(tb.sample(jax.random.fold_in(key, 1), z.shape[0]))
            testbeds[tb_name] = (tb, tb.model_fn(schedule), z)
            data[tb_name] = x_data
        tb, model_fn, z = testbeds[tb_name]
        full = grids_mod.make_grid(schedule, grid_name, n, cfg.final)
        x_T = np.asarray(init_noise(schedule, full[0], z))
        rkey = (tb_name, float(full[0]), float(full[-1]))
        if rkey not in refs:
            ref = reference_solve(model_fn, schedule, x_T, full[0], full[-1])
            refs[rkey] = (ref, sliced_wasserstein(ref, data[tb_name]))
        ref, sw_floor = refs[rkey]
        solver = solvers[sname]
        grid, accel_rec = full, {}
        t0 = time.perf_counter()
        if cfg.accel is not None and cfg.accel.active:
            x, grid, accel_rec = _accelerated_run(cfg, accel_cache, tb_name, tb, model_fn, schedule, solver,
                                                  grid_name, full, x_T, jax.random.fold_in(key, 2))
        else:
            x = sample(model_fn, schedule, solver, grid, x_T, key=jax.random.fold_in(key, 2))
        x = np.asarray(x)
        wall = time.perf_counter() - t0
        rec = {
            "testbed": tb_name,
            "dim": tb.dim,
            "schedule": cfg.schedule,
            "solver": sname,
            "stochastic": solver.stochastic,
            "grid": grid_name,
            "final": cfg.final,
            "nfe_budget": budget,
            "nfe": count_nfe(solver, grid),
            "n_steps": n,
            "n_samples": int(z.shape[0]),
            **accel_rec,
            **_errors(x, ref),
            "sw": sliced_wasserstein(x, data[tb_name]),
            "sw_floor": sw_floor,
            "nfe_total": count_nfe(solver, grid) + accel_rec.get("probe_nfe_per_sample", 0.0),
            "finite": bool(np.all(np.isfinite(x))),
            "wall_s_incl_compile": wall,
        }
        records.append(rec)
        if progress:
            progress.advance(task)
    return records


def _accelerated_run(cfg, cache, tb_name, tb, model_fn, schedule, solver, grid_name, full, x_T, key):
    """``(x, grid, record fields)`` of a run with ``cfg.accel``: DualFast as a hook; teleport with
    the testbed's exact mean and covariance as the Gaussian (``auto`` probed once per testbed and
    grid), as many steps after the teleport as ``full`` (the plain run's grid) has."""
    from ..accel.plan import grid_fraction, resolve_fraction, teleported_sample

    plan = cfg.accel
    rec = {**plan.describe(solver)}
    if plan.teleport is None:
        return sample(model_fn, schedule, solver, full, x_T, key=key, hooks=plan.hooks_for(solver)), full, rec
    if ("stats", tb_name) not in cache:
        from ..accel import GaussianStats

        cache[("stats", tb_name)] = GaussianStats.from_mixture(tb)
    stats = cache[("stats", tb_name)]
    if (tb_name, grid_name) not in cache:
        cache[(tb_name, grid_name)] = resolve_fraction(plan, model_fn, stats, schedule, grid_name, x_T)
    fraction, calls, n_probe = cache[(tb_name, grid_name)]
    x, grid, info = teleported_sample(plan, model_fn, stats, schedule, solver, grid_name, len(full) - 1, cfg.final,
                                      x_T, fraction, key)
    k = info.skip_index
    rec.update(teleport_fraction=grid_fraction(grid, k, cfg.final), teleport_t=float(grid[k]), teleport_index=k,
               probe_calls=calls, probe_nfe_per_sample=calls * n_probe / x_T.shape[0])
    return x, grid[k:], rec


# --- reports ---------------------------------------------------------------------------------
def _accel_label(rec: dict) -> str:
    parts = []
    if rec.get("teleport") is not None:
        parts.append(f"teleport {rec['teleport']} (to fraction {rec['teleport_fraction']:.2f}, "
                     f"probe {rec['probe_calls']} calls = {rec['probe_nfe_per_sample']:.3f} NFE per sample)")
    if rec.get("dualfast") is not None:
        parts.append("DualFast " + ", ".join(f"{k}={v}" for k, v in rec["dualfast"].items()))
    return "; " + "; ".join(parts) if parts else ""


def markdown_table(records: list[dict], metric: str = "rmse") -> str:
    """One table per testbed: rows solver/grid, columns NFE budget, best per column in bold."""
    out = []
    for tb in dict.fromkeys(r["testbed"] for r in records):
        rs = [r for r in records if r["testbed"] == tb]
        budgets = sorted({r["nfe_budget"] for r in rs})
        rows = list(dict.fromkeys((r["solver"], r["grid"]) for r in rs))
        cell = {(r["solver"], r["grid"], r["nfe_budget"]): r for r in rs}
        best = {}
        for b in budgets:
            cands = [cell[k + (b,)][metric] for k in rows if k + (b,) in cell
                     and not cell[k + (b,)]["stochastic"]]
            best[b] = min(cands) if cands else None
        accel = _accel_label(rs[0])
        out.append(f"### {tb} ({rs[0]['dim']}-D), {metric} vs reference ODE solve; "
                   f"schedule {rs[0]['schedule']}, final {rs[0]['final']}{accel}\n")
        out.append("| solver | grid | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
        out.append("|---|---|" + "---|" * len(budgets))
        for s, g in rows:
            cells = []
            for b in budgets:
                r = cell.get((s, g, b))
                if r is None:
                    cells.append("")
                    continue
                txt = f"{r[metric]:.2e}" + ("" if r["nfe"] == b else f" ({r['nfe']})")
                if best[b] is not None and r[metric] == best[b] and not r["stochastic"]:
                    txt = f"**{txt}**"
                cells.append(txt)
            label = s + (" (stochastic)" if cell[(s, g, budgets[0])]["stochastic"] else "") \
                if (s, g, budgets[0]) in cell else s
            out.append(f"| {label} | {g} | " + " | ".join(cells) + " |")
        out.append("")
    out.append("Bold: lowest error among deterministic solvers at that NFE budget. A number in "
               "parentheses is the NFE actually used when the solver cannot hit the budget exactly. "
               "Stochastic solvers follow other trajectories; compare them by `sw` in the JSON.")
    return "\n".join(out) + "\n"


def plot(records: list[dict], path: str, metric: str = "rmse") -> None:
    """Two rows of panels, one column per testbed. Top: ``metric`` against the reference ODE
    solve for the deterministic solvers (a discretisation error). Bottom: the sliced Wasserstein
    distance to exact data samples for every solver, stochastic ones dashed (their fair measure:
    they follow other trajectories than the ODE), with the reference solve's ``sw_floor``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    tbs = list(dict.fromkeys(r["testbed"] for r in records))
    series = list(dict.fromkeys((r["solver"], r["grid"]) for r in records))
    one_grid = len({g for _, g in series}) == 1
    colors = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xh<>p"
    fig, axes = plt.subplots(2, len(tbs), figsize=(6 * len(tbs) + 2.5, 9), squeeze=False)
    for col, tb in enumerate(tbs):
        rs = [r for r in records if r["testbed"] == tb]
        nfes = sorted({r["nfe_budget"] for r in rs})
        for row, (key, only_deterministic) in enumerate(((metric, True), ("sw", False))):
            ax = axes[row][col]
            for k, (s, g) in enumerate(series):
                mine = [r for r in rs if r["solver"] == s and r["grid"] == g]
                stochastic = any(r["stochastic"] for r in mine)
                if not mine or (stochastic and only_deterministic):
                    continue
                pts = sorted((r["nfe"], r[key]) for r in mine)
                ax.loglog(*zip(*pts), "--" if stochastic else "-", color=colors[k % 20],
                          marker=markers[k % len(markers)], ms=3.5, lw=1.2,
                          label=(s if one_grid else f"{s} / {g}") + (" (stochastic)" if stochastic else ""))
            if key == "sw":
                floor = float(np.mean([r["sw_floor"] for r in rs]))
                ax.axhline(floor, color="k", lw=0.8, ls=":", label="floor: reference solve")
                ax.set_ylabel("sliced Wasserstein-1 to exact data samples")
            else:
                ax.set_ylabel(f"{metric} vs reference ODE solve (deterministic solvers)")
            ax.set_xticks(nfes)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("NFE")
            ax.grid(True, which="both", alpha=0.3)
            if row == 0:
                ax.set_title(f"{tb} ({rs[0]['dim']}-D), grid {', '.join(sorted({r['grid'] for r in rs}))}, "
                             f"final {rs[0]['final']}")
    for row in range(2):
        axes[row][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(records: list[dict], out_dir: str, stem: str, markdown: str, plot_fn) -> dict:
    """``DIR/STEM.json`` (the records), ``DIR/STEM.md`` (``markdown``) and ``DIR/STEM.png``
    (``plot_fn(records, path)``); returns the three paths (the layout of every ``jdiff bench``)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {k: os.path.join(out_dir, f"{stem}.{k}") for k in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(records, f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(markdown)
    plot_fn(records, paths["png"])
    return paths


def write_outputs(records: list[dict], out_dir: str, command: str) -> dict:
    md = (f"# Step counts\n\nCommand: `{command}`\n\n## RMSE\n\n" + markdown_table(records, "rmse")
          + "\n## Median per-sample error\n\nThe RMS over samples is dominated, at large NFE, "
          "by the few samples that a solver sends to another mixture mode (their error stays "
          "near 0.5 while the median keeps falling); the median shows the convergence of the "
          "typical sample.\n\n" + markdown_table(records, "median_error"))
    return write_report(records, out_dir, "step_counts", md, plot)
