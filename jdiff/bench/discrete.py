"""Discrete-diffusion benchmark against exact answers (``jdiff bench discrete``).

On a mixture of product distributions over short sequences (:mod:`jdiff.discrete.testbeds`) the
absorbing process has an exact denoiser, so what remains is the sampler's and the bound's own
error. Records (``discrete.json``):

* ``{"record": "sampler", sampler, schedule, steps, nfe, tv, tv_floor, mask_left}``: total
  variation between the histogram of ``n`` samples of the x0-parameterised ancestral sampler
  (``steps`` iterations, continuous-time grid, exact denoiser) over all V^L sequences and the
  exact distribution; ``tv_floor``: the same for ``n`` exact samples (the Monte-Carlo floor of a
  perfect sampler; mean over 8 independent sets, ``tv_floor_sd`` their standard deviation);
* ``{"record": "bound", schedule, T, bound_bits, bound_se_bits, entropy_bits, method}``: the exact
  denoiser's variational bound with T steps in bits per token (``method='exact'``: enumeration of
  x0 and mask patterns, se 0; ``'mc'``: Monte Carlo with its standard error) against the exact
  entropy per token. The bound is an upper bound on the entropy for every T (the exact denoiser is
  the best x0 model, and the bound of the true data distribution is its cross-entropy bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import numpy as np

from .steps import write_report

DEFAULT_STEPS = (1, 2, 4, 8, 16, 64)
DEFAULT_T = (1, 2, 4, 8, 16, 64, 256, 1024)
SAMPLER_SCHEDULES = ("linear", "cosine")
FLOOR_REPEATS = 8  # independent sets of n exact samples behind tv_floor (mean) and tv_floor_sd
MAX_EXACT = 4_000_000  # V^L 2^L (x0, mask pattern) pairs enumerated for the exact bound


@dataclass
class DiscreteConfig:
    testbed: str = "k3l4v5"
    steps: tuple = DEFAULT_STEPS
    T: tuple = DEFAULT_T
    schedules: tuple = ("linear", "cosine")
    n: int = 20000
    n_mc: int = 0  # 0: exact bound when V^L 2^L <= MAX_EXACT, else 200000 Monte-Carlo draws
    seed: int = 0


def parse_ints(value: str, flag: str) -> tuple:
    try:
        out = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} must be a comma list of integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise ValueError(f"{flag} values must be positive integers, got {value!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{flag} lists a value twice: {value!r}")
    return out


def parse_schedules(value: str) -> tuple:
    out = tuple(v.strip() for v in value.split(",") if v.strip())
    if not out:
        raise ValueError("--schedules is empty")
    bad = [v for v in out if v not in SAMPLER_SCHEDULES]
    if bad:
        raise ValueError(f"unknown discrete schedule(s) {', '.join(map(repr, bad))} for the exact testbed; "
                         f"valid: {', '.join(SAMPLER_SCHEDULES)} (the spindle makes the exact denoiser t-dependent)")
    return out


def check_discrete(cfg: DiscreteConfig) -> list[tuple]:
    """Every input error before any work; the plan ``("sampler"|"bound", schedule, steps|T)``."""
    from ..discrete import get_discrete_testbed
    from ..discrete.testbeds import MAX_ENUM

    tb = get_discrete_testbed(cfg.testbed)
    if tb.V ** tb.L > MAX_ENUM:
        raise ValueError(f"testbed {tb.name}: V^L = {tb.V ** tb.L} sequences are too many for an exact "
                         f"histogram (at most {MAX_ENUM})")
    if cfg.n < 2:
        raise ValueError(f"--n must be at least 2, got {cfg.n}")
    if cfg.n_mc < 0 or cfg.n_mc == 1:
        raise ValueError(f"--mc must be 0 (auto) or at least 2, got {cfg.n_mc}")
    parse_schedules(",".join(cfg.schedules))
    plan = [("sampler", s, k) for s in cfg.schedules for k in cfg.steps]
    plan += [("bound", s, T) for s in cfg.schedules for T in cfg.T]
    return plan


def run_discrete(cfg: DiscreteConfig, progress=None, plan=None) -> list[dict]:
    from .. import discrete as D

    plan = check_discrete(cfg) if plan is None else plan
    tb = D.get_discrete_testbed(cfg.testbed)
    probs = tb.all_probs()
    entropy_bits = tb.entropy() / tb.L / math.log(2)
    key = jax.random.key(cfg.seed)
    floors = [D.tv_distance(np.asarray(tb.sample(jax.random.fold_in(jax.random.fold_in(key, 1), r), cfg.n)),
                            probs, tb.V) for r in range(FLOOR_REPEATS)]
    tv_floor, tv_floor_sd = float(np.mean(floors)), float(np.std(floors, ddof=1))
    n_mc = cfg.n_mc or (0 if tb.V ** tb.L * 2 ** tb.L <= MAX_EXACT else 200_000)
    table = D.nll_table(tb) if n_mc == 0 and any(w == "bound" for w, _, _ in plan) else None
    task = progress.add_task("discrete", total=len(plan)) if progress else None
    records = []
    for what, sched_name, k in plan:
        sched = D.get_schedule(sched_name)
        if what == "sampler":
            proc = D.absorbing(sched, tb.num_states, tb.mask_id)
            x = np.asarray(D.sample(D.denoiser_apply, tb, proc, jax.random.fold_in(key, 2), (cfg.n, tb.L), k))
            left = int((x == tb.mask_id).sum())
            tv = D.tv_distance(np.where(x == tb.mask_id, 0, x), probs, tb.V)
            records.append({"record": "sampler", "testbed": tb.name, "sampler": f"ancestral-{sched_name}",
                            "schedule": sched_name, "steps": k, "nfe": D.sampler_nfe(k), "n": cfg.n,
                            "tv": tv, "tv_floor": tv_floor, "tv_floor_sd": tv_floor_sd, "mask_left": left})
        else:
            b, se = D.exact_bound(tb, sched, k, n_mc=n_mc, key=jax.random.fold_in(key, 3), table=table)
            scale = 1.0 / (tb.L * math.log(2))
            records.append({"record": "bound", "testbed": tb.name, "schedule": sched_name, "T": k,
                            "bound_bits": b * scale, "bound_se_bits": se * scale, "entropy_bits": entropy_bits,
                            "method": "mc" if n_mc else "exact", "n_mc": n_mc})
        if progress:
            progress.advance(task)
    return records


def markdown_tables(records: list[dict]) -> str:
    out = []
    samp = [r for r in records if r["record"] == "sampler"]
    if samp:
        steps = sorted({r["steps"] for r in samp})
        r0 = samp[0]
        out.append(f"### Sampler: total variation to the exact distribution ({r0['testbed']}, n = {r0['n']})\n")
        out.append(f"Floor (n exact samples, mean ± sd of {FLOOR_REPEATS} sets): TV {r0['tv_floor']:.4f} "
                   f"± {r0['tv_floor_sd']:.4f}.\n")
        out.append("| sampler | " + " | ".join(f"{k} steps" for k in steps) + " |")
        out.append("|---|" + "---|" * len(steps))
        for s in dict.fromkeys(r["sampler"] for r in samp):
            cells = [next((f"{r['tv']:.4f}" for r in samp if r["sampler"] == s and r["steps"] == k), "")
                     for k in steps]
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        out.append("")
    bnd = [r for r in records if r["record"] == "bound"]
    if bnd:
        Ts = sorted({r["T"] for r in bnd})
        r0 = bnd[0]
        out.append(f"### Exact denoiser's bound, bits per token ({r0['testbed']}, {r0['method']})\n")
        out.append(f"Exact entropy: {r0['entropy_bits']:.5f} bits per token.\n")
        out.append("| schedule | " + " | ".join(f"T = {T}" for T in Ts) + " |")
        out.append("|---|" + "---|" * len(Ts))
        for s in dict.fromkeys(r["schedule"] for r in bnd):
            cells = []
            for T in Ts:
                r = next((r for r in bnd if r["schedule"] == s and r["T"] == T), None)
                cells.append("" if r is None else f"{r['bound_bits']:.5f}"
                             + (f" ± {r['bound_se_bits']:.5f}" if r["bound_se_bits"] else ""))
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.4, 4.2))
    samp = [r for r in records if r["record"] == "sampler"]
    for s in dict.fromkeys(r["sampler"] for r in samp):
        pts = sorted((r["steps"], r["tv"]) for r in samp if r["sampler"] == s)
        a1.loglog(*zip(*pts), marker="o", ms=3, label=s)
    if samp:
        a1.axhline(samp[0]["tv_floor"], color="k", ls=":", lw=0.8, label="floor (exact samples)")
    a1.set_xlabel("sampler steps (NFE)")
    a1.set_ylabel("TV to the exact distribution")
    a1.grid(True, which="both", alpha=0.3)
    a1.legend(fontsize=7)
    bnd = [r for r in records if r["record"] == "bound"]
    for s in dict.fromkeys(r["schedule"] for r in bnd):
        pts = sorted((r["T"], r["bound_bits"] - r["entropy_bits"]) for r in bnd if r["schedule"] == s)
        pts = [(T, g) for T, g in pts if g > 0]
        if pts:
            a2.loglog(*zip(*pts), marker="o", ms=3, label=f"bound - entropy, {s}", base=2)
    if bnd:
        T0 = min(r["T"] for r in bnd)
        g0 = max(r["bound_bits"] - r["entropy_bits"] for r in bnd if r["T"] == T0)
        Ts = sorted({r["T"] for r in bnd})
        a2.loglog(Ts, [g0 * T0 / T for T in Ts], color="k", ls=":", lw=0.8, label="slope -1", base=2)
    a2.set_xlabel("T (diffusion steps)")
    a2.set_ylabel("bound minus exact entropy (bits per token)")
    a2.grid(True, which="both", alpha=0.3)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(records: list[dict], out_dir: str, command: str) -> dict:
    md = (f"# Absorbing diffusion against an exact discrete testbed\n\nCommand: `{command}`\n\n"
          + markdown_tables(records))
    return write_report(records, out_dir, "discrete", md, plot)


__all__ = ["DiscreteConfig", "check_discrete", "run_discrete", "parse_ints", "parse_schedules",
           "markdown_tables", "plot", "write_outputs", "DEFAULT_STEPS", "DEFAULT_T"]
