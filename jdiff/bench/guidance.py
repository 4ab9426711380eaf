"""Guidance benchmark on labelled Gaussian mixtures, where every answer is exact.

A labelled mixture (:mod:`jdiff.testbeds`: ``classes2d``, ``classes16d`` or a spec with
``"labels"``) has the exact conditional and unconditional models and the exact noisy classifier
``log p(c | x_t)``. For each method, scale, solver and NFE we sample ``n_per_class`` points of
every class from the same initial noise and measure

* ``accuracy``: the fraction of samples that the exact Bayes classifier of the data,
  ``argmax_c p(c | x_0)``, assigns to the requested class (the exact class-conditional samples
  score ``accuracy_exact``, the Bayes accuracy: classes overlap);
* ``sw``: the sliced Wasserstein-1 distance (128 directions) to exact samples of the requested
  class, averaged over classes; ``sw_floor`` is the same distance between two independent exact
  sample sets (the finite-sample floor);
* ``diversity``: the mean distance between two samples of the same class, per dimension
  (``sqrt(mean ||x_i - x_j||^2 / D)`` over pairs), averaged over classes; ``diversity_exact`` is
  that of exact class samples;
* ``mode_entropy``: the entropy (nats) of the samples' spread over their class's mixture
  components (each sample assigned to its most probable component of the class), averaged over
  classes; ``mode_entropy_exact`` that of exact class samples. Pairwise distance can *rise* under
  guidance (samples are pushed away from the other classes, towards the outside of their own)
  while the components of a class are covered less evenly; the two measures tell these apart.

Methods and their scales (``jdiff.guidance``):

* ``cfg``: classifier-free guidance with the exact conditional model, ``w = scale`` (0: the
  conditional model, so the samples should reach the floor as NFE grows);
* ``classifier``: the exact unconditional model guided by the exact classifier with scale ``s``
  (1: Bayes' rule, the exact conditional model again; 0: unconditional).

On exact models the two coincide at ``s = 1 + w``: ``score_u + (1 + w) grad log p(c | x_t) =
score_c + w (score_c - score_u)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .. import grids as grids_mod
from ..guidance import classifier_free, classifier_guidance
from ..sampling import init_noise, nfe as count_nfe, sample
from ..schedules import get_schedule
from ..solvers import get_solver, steps_for_nfe
from ..testbeds import get_testbed
from .steps import sliced_wasserstein, write_report

METHODS = ("cfg", "classifier")
DEFAULT_TESTBEDS = ("classes2d", "classes16d")
DEFAULT_SCALES = (0.0, 1.0, 2.0, 4.0)
DEFAULT_SOLVERS = ("dpmpp_2m",)
DEFAULT_NFE = (5, 10, 20, 50)


@dataclass
class GuidanceConfig:
    testbeds: tuple = DEFAULT_TESTBEDS
    methods: tuple = METHODS
    scales: tuple = DEFAULT_SCALES
    solvers: tuple = DEFAULT_SOLVERS
    nfe: tuple = DEFAULT_NFE
    grid: str = "logsnr"
    schedule: str = "vp_discrete"
    final: str = "zero"
    n_per_class: int = 500
    seed: int = 0


def parse_scales(value: str) -> tuple:
    """A comma list of finite guidance scales; ``ValueError`` otherwise."""
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--scales must be a comma list of numbers, got {value!r}") from None
    if not out:
        raise ValueError("--scales is empty")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"--scales must be finite numbers, got {value!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"--scales lists a scale twice: {value!r}")
    return out


def check_guidance(cfg: GuidanceConfig) -> list[tuple]:
    """Every input error before any work; returns the plan ``(testbed, method, solver, nfe, steps)``."""
    schedule = get_schedule(cfg.schedule)
    if cfg.n_per_class < 2:
        raise ValueError(f"--n-per-class must be at least 2, got {cfg.n_per_class}")
    for m in cfg.methods:
        if m not in METHODS:
            raise ValueError(f"unknown guidance method {m!r}; valid: {', '.join(METHODS)}")
    for s in cfg.scales:
        if not math.isfinite(s):
            raise ValueError(f"guidance scales must be finite, got {s}")
    solvers = {name: get_solver(name) for name in cfg.solvers}
    plan = []
    for tb_name in cfg.testbeds:
        tb = get_testbed(tb_name)
        if tb.labels is None:
            raise ValueError(f"testbed {tb_name!r} has no component labels: guidance needs a labelled "
                             "mixture (spec field 'labels'; built-in: classes2d, classes16d)")
        for method in cfg.methods:
            for sname, solver in solvers.items():
                for budget in cfg.nfe:
                    n = steps_for_nfe(solver, budget, cfg.final == "zero")
                    grids_mod.make_grid(schedule, cfg.grid, n, cfg.final)
                    plan.append((tb_name, method, sname, budget, n))
    return plan


def _diversity(x: np.ndarray, rng: np.random.RandomState, pairs: int = 4000) -> float:
    i, j = rng.randint(0, x.shape[0], pairs), rng.randint(0, x.shape[0], pairs)
    keep = i != j
    d2 = np.sum((x[i[keep]] - x[j[keep]]) ** 2, axis=1) / x.shape[1]
    return float(np.sqrt(np.mean(d2)))


def _mode_entropy(tb, x: np.ndarray, c: int) -> float:
    """Entropy (nats) of how samples of class ``c`` spread over that class's components, each
    sample assigned to its most probable component of the class under the data distribution."""
    logits = np.asarray(tb._component_logits(jnp.asarray(x), 1.0, 0.0)[0])
    comps = np.flatnonzero(np.asarray(tb.labels) == c)
    counts = np.bincount(np.argmax(logits[:, comps], axis=1), minlength=comps.size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-np.sum(p * np.log(p)))


def _class_measures(tb, x: np.ndarray, y: np.ndarray, exact: np.ndarray, seed: int) -> dict:
    """accuracy, per-class sliced Wasserstein to ``exact``, diversity and mode entropy of ``x``."""
    pred = np.asarray(jnp.argmax(tb.class_log_probs(jnp.asarray(x)), axis=1))
    rng = np.random.RandomState(seed)
    sw, div, ent = [], [], []
    for c in range(tb.n_classes):
        sw.append(sliced_wasserstein(x[y == c], exact[y == c]))
        div.append(_diversity(x[y == c], rng))
        ent.append(_mode_entropy(tb, x[y == c], c))
    return {"accuracy": float(np.mean(pred == y)), "sw": float(np.mean(sw)), "diversity": float(np.mean(div)),
            "mode_entropy": float(np.mean(ent))}


def run_guidance(cfg: GuidanceConfig, progress=None, plan=None) -> list[dict]:
    """Run the benchmark; one record per (testbed, method, scale, solver, NFE)."""
    plan = check_guidance(cfg) if plan is None else plan
    schedule = get_schedule(cfg.schedule)
    key = jax.random.key(cfg.seed)
    task = progress.add_task("guidance", total=len(plan) * len(cfg.scales)) if progress else None
    cache, records = {}, []
    for tb_name, method, sname, budget, n in plan:
        if tb_name not in cache:
            tb = get_testbed(tb_name)
            y = np.arange(cfg.n_per_class * tb.n_classes) % tb.n_classes
            z = np.random.RandomState(cfg.seed).standard_normal((y.size, tb.dim)).astype(np.float32)
            exact = np.asarray(tb.sample(jax.random.fold_in(key, 1), y.size, y=jnp.asarray(y)))
            exact2 = np.asarray(tb.sample(jax.random.fold_in(key, 2), y.size, y=jnp.asarray(y)))
            floor = _class_measures(tb, exact2, y, exact, cfg.seed)
            cache[tb_name] = (tb, y, z, exact, floor)
        tb, y, z, exact, floor = cache[tb_name]
        solver = get_solver(sname)
        grid = grids_mod.make_grid(schedule, cfg.grid, n, cfg.final)
        x_T = init_noise(schedule, grid[0], jnp.asarray(z))
        for scale in cfg.scales:
            w = jnp.float32(scale)  # traced: one program per (method, solver, grid)
            if method == "cfg":
                model = classifier_free(tb.model_fn(schedule), w, null_label=tb.n_classes)
            else:
                model = classifier_guidance(tb.model_fn(schedule, conditional=False), schedule,
                                            tb.classifier(schedule), w)
            x = np.asarray(sample(model, schedule, solver, grid, x_T, key=jax.random.fold_in(key, 3),
                                  args={"y": jnp.asarray(y, jnp.int32)}))
            finite = bool(np.all(np.isfinite(x)))
            measures = (_class_measures(tb, x, y, exact, cfg.seed) if finite
                        else {"accuracy": float("nan"), "sw": float("nan"), "diversity": float("nan"),
                           "mode_entropy": float("nan")})
            records.append({
                "testbed": tb_name, "dim": tb.dim, "n_classes": tb.n_classes, "method": method,
                "scale": float(scale), "solver": sname, "stochastic": solver.stochastic, "grid": cfg.grid,
                "schedule": cfg.schedule, "final": cfg.final, "nfe_budget": budget,
                # CFG evaluates the model twice per call; classifier guidance once plus a classifier gradient
                "nfe": count_nfe(solver, grid), "model_calls": count_nfe(solver, grid) * (2 if method == "cfg" else 1),
                "n_per_class": cfg.n_per_class, **measures, "sw_floor": floor["sw"],
                "accuracy_exact": floor["accuracy"], "diversity_exact": floor["diversity"],
                "mode_entropy_exact": floor["mode_entropy"], "finite": finite,
            })
            if progress:
                progress.advance(task)
    return records


# --- reports ---------------------------------------------------------------------------------
def _fmt(v: float, spec: str) -> str:
    return "nan" if not math.isfinite(v) else format(v, spec)


def markdown_tables(records: list[dict]) -> str:
    out = []
    for tb in dict.fromkeys(r["testbed"] for r in records):
        rs = [r for r in records if r["testbed"] == tb]
        r0 = rs[0]
        nfes = sorted({r["nfe_budget"] for r in rs})
        out.append(f"### {tb} ({r0['dim']}-D, {r0['n_classes']} classes, {r0['n_per_class']} samples per "
                   f"class); schedule {r0['schedule']}, grid {r0['grid']}, final {r0['final']}\n")
        out.append(f"Exact class samples: accuracy {r0['accuracy_exact']:.3f} (Bayes), diversity "
                   f"{r0['diversity_exact']:.3f}, mode entropy {r0['mode_entropy_exact']:.3f} nats, sliced "
                   f"Wasserstein floor {r0['sw_floor']:.4f}.\n")
        out.append("Sliced Wasserstein-1 to exact class-conditional samples:\n")
        out.append("| method | scale | solver | " + " | ".join(f"NFE {b}" for b in nfes) + " |")
        out.append("|---|---|---|" + "---|" * len(nfes))
        rows = list(dict.fromkeys((r["method"], r["scale"], r["solver"]) for r in rs))
        cell = {(r["method"], r["scale"], r["solver"], r["nfe_budget"]): r for r in rs}
        for m, s, sv in rows:
            cells = [_fmt(cell[(m, s, sv, b)]["sw"], ".4f") if (m, s, sv, b) in cell else "" for b in nfes]
            out.append(f"| {m} | {s:g} | {sv} | " + " | ".join(cells) + " |")
        top = nfes[-1]
        out.append(f"\nAccuracy and diversity at NFE {top}:\n")
        out.append("| method | scale | solver | accuracy | diversity | mode entropy | sw |")
        out.append("|---|---|---|---|---|---|---|")
        for m, s, sv in rows:
            r = cell.get((m, s, sv, top))
            if r:
                out.append(f"| {m} | {s:g} | {sv} | {_fmt(r['accuracy'], '.3f')} | {_fmt(r['diversity'], '.3f')} | "
                           f"{_fmt(r['mode_entropy'], '.3f')} | {_fmt(r['sw'], '.4f')} |")
        out.append("")
    return "\n".join(out) + "\n"


def plot(records: list[dict], path: str) -> None:
    """Per testbed: sliced Wasserstein against NFE for each (method, scale) with the floor, and
    accuracy / diversity against the scale at the largest NFE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tbs = list(dict.fromkeys(r["testbed"] for r in records))
    fig, axes = plt.subplots(len(tbs), 4, figsize=(21, 4.3 * len(tbs)), squeeze=False)
    styles = {"cfg": "-", "classifier": "--"}
    for row, tb in enumerate(tbs):
        rs = [r for r in records if r["testbed"] == tb and r["finite"]]
        if not rs:
            continue
        solver = rs[0]["solver"]
        rs = [r for r in rs if r["solver"] == solver]
        scales = sorted({r["scale"] for r in rs})
        cmap = plt.get_cmap("viridis")
        ax = axes[row][0]
        for method in dict.fromkeys(r["method"] for r in rs):
            for k, s in enumerate(scales):
                pts = sorted((r["nfe"], r["sw"]) for r in rs if r["method"] == method and r["scale"] == s)
                if pts:
                    ax.loglog(*zip(*pts), styles.get(method, "-"), marker="o", ms=3,
                              color=cmap(k / max(len(scales) - 1, 1)), label=f"{method} {s:g}")
        ax.axhline(rs[0]["sw_floor"], color="k", ls=":", lw=0.8, label="floor (exact vs exact)")
        ax.set_xlabel("NFE")
        ax.set_ylabel("sliced W1 to exact class samples")
        ax.set_title(f"{tb}: {solver}")
        ax.legend(fontsize=7, ncol=2)
        top = max(r["nfe_budget"] for r in rs)
        measures = (("accuracy", "accuracy_exact"), ("diversity", "diversity_exact"),
                    ("mode_entropy", "mode_entropy_exact"))
        for col, (metric, exact_key) in enumerate(measures, 1):
            ax = axes[row][col]
            for method in dict.fromkeys(r["method"] for r in rs):
                pts = sorted((r["scale"], r[metric]) for r in rs if r["method"] == method and r["nfe_budget"] == top)
                ax.plot(*zip(*pts), styles.get(method, "-"), marker="o", label=method)
            ax.axhline(rs[0][exact_key], color="k", ls=":", lw=0.8, label="exact class samples")
            ax.set_xlabel("guidance scale (cfg: w, classifier: s)")
            ax.set_ylabel(metric)
            ax.set_title(f"{tb}: {metric} at NFE {top}")
            ax.legend(fontsize=8)
            ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(records: list[dict], out_dir: str, command: str) -> dict:
    md = (f"# Guidance on exact testbeds\n\nCommand: `{command}`\n\n"
          "cfg: classifier-free guidance, scale w (0 = conditional). classifier: exact classifier "
          "guidance of the unconditional model, scale s (1 = exact conditional). On exact models cfg w "
          "equals classifier s = 1 + w.\n\n" + markdown_tables(records))
    return write_report(records, out_dir, "guidance", md, plot)


__all__ = ["GuidanceConfig", "METHODS", "check_guidance", "parse_scales", "run_guidance", "markdown_tables",
           "plot", "write_outputs"]
