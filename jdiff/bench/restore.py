"""Restoration benchmark against exact posteriors.

A Gaussian-mixture prior (a testbed) and a linear-Gaussian measurement ``y = A x + sigma_y n``
have a Gaussian-mixture posterior in closed form (:mod:`jdiff.restoration.posterior`), and the
testbed's exact model is the prior's exact score: every restoration method runs on the exact
prior, so what remains is the method's own error. For ``n_measurements`` measurements (true
``x`` drawn from the prior, then ``y``), each method draws ``n_per_measurement`` samples per
measurement; records hold

* ``mean_error``: RMS distance per dimension of the samples' mean to the exact posterior mean,
  averaged over measurements (``mean_error_floor``: the same for as many exact posterior
  samples: the Monte Carlo floor of a perfect sampler);
* ``sw``: sliced Wasserstein-1 (128 directions) to as many exact posterior samples, averaged over
  measurements; ``sw_floor``: exact vs exact;
* ``consistency``: RMS of ``A x - y`` over samples (0 for a method that projects onto the
  measurement; about ``sigma_y`` per observed dimension is right for a noisy posterior);
* ``nfe``: model evaluations per returned sample (:func:`jdiff.restoration.method_nfe`; for SMC
  the steps times the particles behind each sample);
* ``noise``: the ``--noise`` file whose standard-normal rows (shape (M * S, dim), row ``i * S + j``
  for sample j of measurement i) replaced the methods' initial draw (option ``z``), or None
  (the key's draw; always None for SMC, whose B * particles initial particles come from its key).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..schedules import get_schedule
from ..testbeds import get_testbed
from .steps import load_noise, sliced_wasserstein, write_report

DEFAULT_NFE = (10, 20, 50, 100)
MASK_ONLY = ("repaint",)  # methods defined for inpainting masks only (skipped for other operators)
OWN_NOISE = ("smc",)  # methods that refuse the option z (their initial draw is always the key's)


@dataclass
class RestoreConfig:
    testbeds: tuple = ("mix16d",)
    operators: tuple = ("mask:0.5",)
    sigma_ys: tuple = (0.0, 0.1)
    methods: tuple = ()  # empty: every registered method
    nfe: tuple = DEFAULT_NFE
    schedule: str = "vp_linear"
    n_measurements: int = 8
    n_per_measurement: int = 200
    seed: int = 0
    noise: str | None = None  # .npy of standard-normal initial draws, shape (n_measurements * n_per_measurement, dim)


def registered_methods() -> dict:
    """name -> ``restore(model_fn, schedule, op, y, sigma_y, nfe, key, prediction=...)``."""
    from ..restoration import METHODS

    return dict(METHODS)


def method_nfe(name, schedule, nfe):
    from ..restoration import method_nfe as nfe_of

    return nfe_of(name, schedule, nfe)


def parse_sigma_ys(value: str) -> tuple:
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--sigma-y must be a comma list of numbers, got {value!r}") from None
    if not out:
        raise ValueError("--sigma-y is empty")
    if not all(math.isfinite(v) and v >= 0 for v in out):
        raise ValueError(f"--sigma-y values must be finite and >= 0, got {value!r}")
    return out


def check_restore(cfg: RestoreConfig) -> list[tuple]:
    """Every input error before any work; the plan ``(testbed, operator, sigma_y, method, nfe)``."""
    from ..restoration import Mask, parse_operator

    methods = registered_methods()
    names = cfg.methods or tuple(methods)
    bad = [m for m in names if m not in methods]
    if bad:
        raise ValueError(f"unknown restoration method(s) {', '.join(map(repr, bad))}; valid: "
                         f"{', '.join(methods)} or all")
    get_schedule(cfg.schedule)
    if cfg.n_measurements < 1 or cfg.n_per_measurement < 2:
        raise ValueError("need at least 1 measurement and 2 samples per measurement")
    plan = []
    for tb_name in cfg.testbeds:
        tb = get_testbed(tb_name)
        if cfg.noise:
            _noise(cfg, tb.dim)
        for spec in cfg.operators:
            op = parse_operator(spec, (tb.dim,), cfg.seed)
            for s in cfg.sigma_ys:
                for m in names:
                    if m in MASK_ONLY and not isinstance(op, Mask):
                        continue  # RePaint replaces known entries: a mask's measurement only
                    for n in cfg.nfe:
                        plan.append((tb_name, spec, s, m, n))
    return plan


def _noise(cfg, dim: int) -> np.ndarray:
    z = load_noise(cfg.noise, dim)
    n = cfg.n_measurements * cfg.n_per_measurement
    if z.shape[0] != n:
        raise ValueError(f"noise in {cfg.noise!r} has shape {z.shape}; the benchmark needs "
                         f"(n_measurements * n_per_measurement, dim) = ({n}, {dim})")
    return z


def _problem(cfg, tb_name, spec, sigma_y):
    """Prior, operator, measurements (M, m) and exact posterior samples and means."""
    from ..restoration import measure, parse_operator, posterior_mean, posterior_params, sample_posterior

    tb = get_testbed(tb_name)
    op = parse_operator(spec, (tb.dim,), cfg.seed)
    key = jax.random.key(cfg.seed)
    x_true = tb.sample(jax.random.fold_in(key, 11), cfg.n_measurements)
    y = np.asarray(measure(op, x_true, sigma_y, jax.random.fold_in(key, 12)), np.float64)
    params = posterior_params(tb, op, y, sigma_y)
    exact = sample_posterior(jax.random.fold_in(key, 13), tb, op, y, sigma_y, cfg.n_per_measurement, params=params)
    exact2 = sample_posterior(jax.random.fold_in(key, 14), tb, op, y, sigma_y, cfg.n_per_measurement, params=params)
    mean = posterior_mean(tb, op, y, sigma_y)
    return tb, op, y, exact, exact2, mean


def _measures(x, op, y, exact, mean):
    """x: (M, S, D) samples; exact: (M, S, D); mean: (M, D)."""
    M = x.shape[0]
    d = x.shape[-1]
    mean_err = np.sqrt(np.mean((x.mean(axis=1) - mean) ** 2, axis=1)).mean()
    sw = float(np.mean([sliced_wasserstein(x[i], exact[i]) for i in range(M)]))
    ax = np.asarray(op.A(jnp.asarray(x.reshape(-1, d), jnp.float32)), np.float64).reshape(M, x.shape[1], -1)
    resid = ax - y[:, None, :]
    return {"mean_error": float(mean_err), "sw": sw, "consistency": float(np.sqrt(np.mean(resid**2)))}


def run_restore(cfg: RestoreConfig, progress=None, plan=None) -> list[dict]:
    plan = check_restore(cfg) if plan is None else plan
    methods = registered_methods()
    schedule = get_schedule(cfg.schedule)
    task = progress.add_task("restoration", total=len(plan)) if progress else None
    problems, records = {}, []
    S, M = cfg.n_per_measurement, cfg.n_measurements
    for tb_name, spec, sigma_y, method, nfe in plan:
        pkey = (tb_name, spec, sigma_y)
        if pkey not in problems:
            tb, op, y, exact, exact2, mean = _problem(cfg, tb_name, spec, sigma_y)
            floor = _measures(exact2, op, y, exact, mean)
            problems[pkey] = (tb, op, y, exact, mean, floor)
        tb, op, y, exact, mean, floor = problems[pkey]
        y_rep = jnp.asarray(np.repeat(y, S, axis=0), jnp.float32)  # (M * S, m)
        key = jax.random.fold_in(jax.random.key(cfg.seed), 21)
        noise = cfg.noise if cfg.noise and method not in OWN_NOISE else None
        z = {"z": jnp.asarray(_noise(cfg, tb.dim))} if noise else {}
        x = methods[method](tb.model_fn(schedule), schedule, op, y_rep, sigma_y, nfe, key, prediction="eps", **z)
        used_nfe = method_nfe(method, schedule, nfe)
        x = np.asarray(x, np.float64).reshape(M, S, -1)
        finite = bool(np.all(np.isfinite(x)))
        meas = _measures(x, op, y, exact, mean) if finite else {
            "mean_error": float("nan"), "sw": float("nan"), "consistency": float("nan")}
        records.append({"testbed": tb_name, "dim": tb.dim, "operator": spec, "sigma_y": sigma_y, "method": method,
                        "nfe_budget": nfe, "nfe": float(used_nfe), "schedule": cfg.schedule,
                        "n_measurements": M, "n_per_measurement": S, **meas,
                        "mean_error_floor": floor["mean_error"], "sw_floor": floor["sw"],
                        "consistency_exact": floor["consistency"], "finite": finite, "noise": noise})
        if progress:
            progress.advance(task)
    return records


def _fmt(v, spec):
    return "nan" if not math.isfinite(v) else format(v, spec)


def markdown_tables(records: list[dict]) -> str:
    out = []
    groups = dict.fromkeys((r["testbed"], r["operator"], r["sigma_y"]) for r in records)
    for tb, spec, s in groups:
        rs = [r for r in records if (r["testbed"], r["operator"], r["sigma_y"]) == (tb, spec, s)]
        r0 = rs[0]
        nfes = sorted({r["nfe_budget"] for r in rs})
        out.append(f"### {tb} ({r0['dim']}-D), operator {spec}, sigma_y {s:g}\n")
        out.append(f"Exact posterior samples: sw floor {r0['sw_floor']:.4f}, mean-error floor "
                   f"{r0['mean_error_floor']:.4f}, consistency {r0['consistency_exact']:.4f} "
                   f"({r0['n_measurements']} measurements x {r0['n_per_measurement']} samples).\n")
        out.append("| method | " + " | ".join(f"NFE {n}: sw / mean err / consistency" for n in nfes) + " |")
        out.append("|---|" + "---|" * len(nfes))
        for m in dict.fromkeys(r["method"] for r in rs):
            cells = []
            for n in nfes:
                r = next((r for r in rs if r["method"] == m and r["nfe_budget"] == n), None)
                cells.append("" if r is None else
                             f"{_fmt(r['sw'], '.4f')} / {_fmt(r['mean_error'], '.4f')} / {_fmt(r['consistency'], '.3f')}"
                             + ("" if r["nfe"] == n else f" (NFE {r['nfe']:g})"))
            out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["testbed"], r["operator"], r["sigma_y"]) for r in records))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.2), squeeze=False)
    for ax, (tb, spec, s) in zip(axes[0], groups):
        rs = [r for r in records if (r["testbed"], r["operator"], r["sigma_y"]) == (tb, spec, s) and r["finite"]]
        for m in dict.fromkeys(r["method"] for r in rs):
            pts = sorted((r["nfe"], r["sw"]) for r in rs if r["method"] == m)
            ax.loglog(*zip(*pts), marker="o", ms=3, label=m)
        if rs:
            ax.axhline(rs[0]["sw_floor"], color="k", ls=":", lw=0.8, label="floor (exact vs exact)")
        ax.set_title(f"{tb}, {spec}, sigma_y {s:g}", fontsize=9)
        ax.set_xlabel("NFE per sample")
        ax.set_ylabel("sliced W1 to exact posterior samples")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(records: list[dict], out_dir: str, command: str) -> dict:
    md = (f"# Restoration against exact posteriors\n\nCommand: `{command}`\n\n"
          "Each cell: sliced W1 to exact posterior samples / RMS error of the sample mean "
          "against the exact posterior mean / RMS of A x - y.\n\n" + markdown_tables(records))
    return write_report(records, out_dir, "restore", md, plot)


__all__ = ["RestoreConfig", "check_restore", "run_restore", "parse_sigma_ys", "markdown_tables", "plot",
           "write_outputs", "registered_methods"]
