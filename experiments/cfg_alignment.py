"""Guidance-aligned vs standard training at equal compute: FD and class accuracy vs CFG scale w and NFE.

    python experiments/cfg_alignment.py                  # CPU default: ~15 min on 2 cores (digits)
    python experiments/cfg_alignment.py --quick          # smoke run, < 90 s
    python experiments/cfg_alignment.py --train-seeds 0,1,2 --repeats 5

The question (Patel, Salamanca & Barba, "Bridging the Gap: Addressing Discrepancies in Diffusion
Model Training for Classifier-Free Guidance", arXiv 2311.00938): training the classifier-free-guided
prediction itself (``guidance_loss='aligned'`` of :mod:`jdiff.losses`, an **unverified
reconstruction** of the paper's loss) is claimed to give better FID at fewer sampling steps and an
FID that depends less on the guidance scale w. Here on class-conditional digits:

1. Train each variant of ``--variants`` (``standard``: label-dropout CFG training; ``aligned``:
   the aligned loss with ``--align-scale``, ``--align-scale-sampling``, ``--align-stop-grad``,
   ``--align-mix``) from scratch, with the same seed, steps and every other setting, **at equal
   compute**: an aligned step runs the network on twice its batch (conditional and unconditional
   halves), so ``--equal-compute batch`` (default) gives it half the batch size and
   ``--equal-compute steps`` half the steps; both variants then make the same number of network
   example-passes. Each run lives in ``<workdir>/<variant>`` (``<variant>_seed<k>`` for training
   seed k > 0) and is resumed / reused when present. The rest of the configuration is the
   ``laptop`` preset of ``experiments/cifar10_sampling.py`` with ``--steps`` (default 2500) and
   any ``jdiff.run.RunConfig`` field overridable.
2. Train (once, cached as ``<workdir>/feature_net.npz``) the own feature network of
   :mod:`jdiff.metrics.feature_net` on the training split only. Its penultimate layer is the
   feature space of the Frechet distances (**not comparable with published FIDs**); its logits
   classify the samples (its accuracy on the held-out test split is reported as its quality).
3. For each trained model (EMA parameters), every w of ``--scales`` and NFE of ``--nfe``: sample
   ``--n-samples`` images (default: as many as the test split) with classifier-free guidance
   (:func:`jdiff.guidance.classifier_free`, ``(1 + w) m(x, c) - w m(x, null)``, null class =
   number of classes) and one deterministic ``--solver`` (default ``ddim``, the paper's), balanced
   labels ``i % 10``, from the same initial noises for every cell (``--repeats R`` sets, noise
   seeds ``sample_seed .. sample_seed + R - 1``), rounded to uint8 pixels like the data. Measures:
   Frechet distance of the samples to the training images (mean ± sd over the R sets) and class
   accuracy (the fraction classified as their requested label). Baseline: the test split vs the
   training images (what a perfect model's samples would score with as many images).

Outputs in ``--out`` (default ``<workdir>/out``): ``results.json`` (everything), ``cfg_table.md``
(rows variant x w, columns NFE; FD and accuracy tables and the spread of FD over w),
``fd_vs_w.png`` (FD and accuracy vs w, per NFE and variant) and ``samples_<variant>_w2_nfe10.png``
(10 columns = classes 0..9; the w and NFE nearest to 2 and 10 when those are not swept).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jdiff
from jdiff import metrics
from jdiff.cli import Parser, add_run_config_args, check_output_dir, check_run_flags, run_command
from jdiff.data import from_model_range, to_model_range
from jdiff.grids import GRIDS
from jdiff.guidance import classifier_free
from jdiff.plotting import save_image_grid
from jdiff.run import RunConfig, load_image_data, load_run, train_run
from jdiff.solvers import SOLVERS, get_solver, steps_for_nfe
from jdiff.training import TrainingInterrupted, stop_on_signals

PROG = "cfg_alignment.py"
VARIANTS = ("standard", "aligned")
EQUAL_COMPUTE = ("batch", "steps")
ALIGN_FIELDS = ("align_scale", "align_scale_sampling", "align_stop_grad", "align_mix")
# Fields this script sets itself (per variant and seed); the RunConfig flags of the same name are refused.
OWN_FIELDS = ("guidance_loss", "seed", "conditional")
DEFAULT_STEPS = 2500  # two variants ~10 min on 2 CPU cores (batch 128, 8x8 digits UNet)
DEFAULT_ALIGN = dict(align_scale=2.0, align_scale_sampling="fixed", align_stop_grad=True, align_mix=0.0)
GRID_W, GRID_NFE = 2.0, 10  # the sample grid shown per variant
QUICK = dict(steps=20, feature_steps=100, n_samples=50, repeats=2, save_every=20, log_every=10)


def _load_sibling():
    """``experiments/cifar10_sampling.py`` as a module (experiments/ is not a package): its laptop
    preset and the cached feature network are reused."""
    path = Path(__file__).resolve().parent / "cifar10_sampling.py"
    spec = importlib.util.spec_from_file_location("_cifar10_sampling", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SIBLING = _load_sibling()
PRESET = dict(SIBLING.CONFIGS["laptop"], steps=DEFAULT_STEPS, **DEFAULT_ALIGN)


def parse_args(argv=None):
    p = Parser(prog=PROG, description=__doc__)
    p.add_argument("--workdir", default=None,
                   help="training runs and the feature network (default runs/cfg_alignment; "
                        "runs/cfg_alignment_quick with --quick)")
    p.add_argument("--out", default=None, help="output directory (default <workdir>/out)")
    p.add_argument("--variants", default="standard,aligned", help=f"comma list of {', '.join(VARIANTS)}")
    p.add_argument("--equal-compute", default="batch", choices=EQUAL_COMPUTE,
                   help="how the aligned variant (2 network passes per example) matches the standard one's "
                        "compute: half the batch size, or half the steps")
    p.add_argument("--train-seeds", default="0", help="comma list of training seeds (each trains every variant)")
    p.add_argument("--scales", default="0,1,2,4", help="comma list of CFG scales w (0: purely conditional)")
    p.add_argument("--nfe", default="5,10,20", help="comma list of NFE budgets")
    p.add_argument("--solver", default="ddim", help="deterministic solver, one of " + ", ".join(SOLVERS))
    p.add_argument("--grid", default="logsnr", help=f"time grid, one of {', '.join(GRIDS)}")
    p.add_argument("--n-samples", type=int, default=None, help="samples per cell (default: size of the test split)")
    p.add_argument("--repeats", type=int, default=None,
                   help="sample sets per cell from new initial noise (mean ± sd reported; default 3, quick 2)")
    p.add_argument("--sample-seed", type=int, default=1234,
                   help="noise seed of the first sample set (set r uses sample_seed + r)")
    p.add_argument("--sample-batch", type=int, default=500, help="samples per sampler call")
    p.add_argument("--feature-steps", type=int, default=None,
                   help="training steps of the own feature network (default 2000, quick 100)")
    p.add_argument("--no-train", action="store_true", help="evaluate the existing runs as they are")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: {QUICK['steps']} training steps, {QUICK['feature_steps']} feature steps, "
                        f"{QUICK['n_samples']} samples, {QUICK['repeats']} repeats (explicit flags win)")
    p.add_argument("--quiet", action="store_true")
    overrides = p.add_argument_group(
        "run configuration overrides (jdiff.run.RunConfig; the value used in parentheses; the align "
        "fields apply to the aligned variant; --batch-size / --steps are the standard variant's)")
    add_run_config_args(overrides, presets={"default": PRESET})
    for action in overrides._group_actions:
        if action.dest in OWN_FIELDS:  # set per variant / seed here (refused with a hint when given)
            action.help = argparse.SUPPRESS
    return p.parse_args(argv)


def _split(value: str, flag: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError(f"{flag} is empty")
    if len(set(items)) != len(items):
        raise ValueError(f"{flag} lists a value twice: {value!r}")
    return items


def run_dir(workdir: Path, variant: str, seed: int) -> Path:
    return workdir / (variant if seed == 0 else f"{variant}_seed{seed}")


def variant_config(args, variant: str, seed: int) -> RunConfig:
    """The RunConfig of one variant and training seed (equal compute: see the module docstring)."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = dict(PRESET)
    cfg.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    cfg.update(conditional=True, seed=seed)
    if variant == "standard":
        cfg["guidance_loss"] = "standard"
        for name in ALIGN_FIELDS:  # the standard loss leaves them at RunConfig's defaults
            cfg[name] = RunConfig.__dataclass_fields__[name].default
    else:
        cfg["guidance_loss"] = "aligned"
        if args.equal_compute == "batch":
            cfg["batch_size"] = cfg["batch_size"] // 2
        else:
            cfg["steps"] = cfg["steps"] // 2
            cfg["warmup_steps"] = cfg["warmup_steps"] // 2
    return RunConfig(**cfg)


def network_passes(cfg: RunConfig) -> int:
    """Examples through the network over the whole run (an aligned step evaluates 2 per example)."""
    return cfg.steps * cfg.batch_size * (2 if cfg.guidance_loss == "aligned" else 1)


def check_args(args):
    """Every input error before any work: ``(variants, seeds, scales, nfes, solver, plan)`` with
    ``plan`` a list of ``(variant, seed, workdir, RunConfig)``."""
    from jdiff.bench import parse_nfe
    from jdiff.bench.guidance import parse_scales

    for name in OWN_FIELDS:
        if getattr(args, name, None) is not None:
            hint = {"guidance_loss": "--variants", "seed": "--train-seeds",
                    "conditional": "nothing (the runs are always class-conditional)"}[name]
            raise ValueError(f"--{name.replace('_', '-')} is set by this experiment; use {hint}")
    check_run_flags(args)
    for name in ("sample_batch", "feature_steps", "repeats", "n_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.sample_seed < 0:
        raise ValueError(f"--sample-seed must be non-negative, got {args.sample_seed}")
    variants = _split(args.variants, "--variants")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ValueError(f"unknown variant(s) {', '.join(map(repr, bad))}; valid: {', '.join(VARIANTS)}")
    try:
        seeds = [int(s) for s in _split(args.train_seeds, "--train-seeds")]
    except ValueError as err:
        if "is empty" in str(err) or "twice" in str(err):
            raise
        raise ValueError(f"--train-seeds must be a comma list of integers, got {args.train_seeds!r}") from None
    if any(s < 0 for s in seeds):
        raise ValueError(f"--train-seeds must be non-negative, got {args.train_seeds!r}")
    scales = list(parse_scales(args.scales))
    nfes = list(parse_nfe(args.nfe))
    solver = get_solver(args.solver)  # an unknown name is a ValueError listing the valid ones
    if solver.stochastic:
        raise ValueError(f"--solver {args.solver!r} is stochastic; this study uses one deterministic solver "
                         "(e.g. ddim)")
    for budget in nfes:
        steps_for_nfe(solver, budget)  # a budget below the solver's minimum: ValueError
    if args.grid not in GRIDS:
        raise ValueError(f"unknown grid {args.grid!r}; valid: {', '.join(GRIDS)}")
    data = args.data or PRESET["data"]
    if data != "digits" and not data.startswith("cifar10:"):
        raise ValueError(f"--data must be labelled images (digits or cifar10:PATH[@16]), got {data!r}")
    workdir = Path(args.workdir)
    check_output_dir(str(workdir))
    check_output_dir(args.out or str(workdir / "out"), "--out")
    given = [k for k in ALIGN_FIELDS if getattr(args, k) is not None]
    if given and "aligned" not in variants:
        raise ValueError(f"--{given[0].replace('_', '-')} applies to the aligned variant, which --variants leaves out")
    if "aligned" in variants:
        what = "batch_size" if args.equal_compute == "batch" else "steps"
        value = getattr(args, what) if getattr(args, what) is not None else PRESET[what]
        if value < 2 or value % 2:
            raise ValueError(f"--equal-compute {args.equal_compute} halves the {what.replace('_', ' ')} of the aligned "
                             f"variant: --{what.replace('_', '-')} must be even and at least 2, got {value}")
    plan = []
    for seed in seeds:
        for variant in variants:
            cfg = variant_config(args, variant, seed)  # RunConfig checks names and the align fields
            rdir = run_dir(workdir, variant, seed)
            _check_existing(rdir, cfg, args.no_train)
            plan.append((variant, seed, rdir, cfg))
    feature_info = workdir / "feature_net.json"
    if feature_info.exists():
        try:
            cached = json.loads(feature_info.read_text()).get("steps")
        except ValueError:
            raise ValueError(f"{feature_info} is not valid JSON; remove it and feature_net.npz") from None
        if cached != args.feature_steps:
            raise ValueError(f"{workdir} caches a feature network trained for {cached} steps; use --feature-steps "
                             f"{cached} or another --workdir")
    return variants, seeds, scales, nfes, solver, plan


def _check_existing(rdir: Path, cfg: RunConfig, no_train: bool) -> None:
    """A run directory must hold the same configuration (steps aside) and no later checkpoint."""
    path = rdir / "config.json"
    if not path.exists():
        if no_train:
            raise ValueError(f"--no-train: {rdir} holds no trained run")
        return
    try:
        old = RunConfig.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a run configuration ({err})") from None
    diff = [f.name for f in dataclasses.fields(cfg)
            if f.name != "steps" and getattr(old, f.name) != getattr(cfg, f.name)]
    if diff and not no_train:
        raise ValueError(f"{rdir} holds a run with a different configuration ({', '.join(diff)}); use another "
                         "--workdir (or --no-train to evaluate it as it is)")
    ckpt = rdir / "checkpoints"
    done = sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()) if ckpt.is_dir() else []
    if done and done[-1] > cfg.steps and not no_train:
        raise ValueError(f"{rdir} holds a run at step {done[-1]}, beyond the {cfg.steps} steps asked; give more "
                         "--steps or another --workdir")


def mean_sd(vals):
    vals = [float(v) for v in vals]
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def evaluate(run, params, *, scales, nfes, solver, grid_name, zs, labels, sample_batch, sample_seed,
             feats, classify, ref, ref_test, log, tag, grid_pick):
    """Rows ``{w, nfe, fd, fd_std, fd_runs, accuracy, ...}`` of one trained model; the sample grid
    images of ``grid_pick = (w, nfe)``."""
    sched = run.schedule
    n = labels.shape[0]
    rows, grid_images = [], None
    for budget in nfes:
        steps = steps_for_nfe(solver, budget)
        grid = jdiff.grids.make_grid(sched, grid_name, steps)
        for w in scales:
            t0 = time.perf_counter()
            fd, fd_test, acc = [], [], []
            finite = True
            for r, z in enumerate(zs):
                x_T = jdiff.init_noise(sched, grid[0], z)
                chunks = []
                for i in range(0, n, sample_batch):
                    sl = slice(i, i + sample_batch)
                    y = labels[sl]
                    guided = classifier_free(run.model_fn(params, y), jnp.asarray(w, jnp.float32),
                                             null_label=run.null_label)
                    key = jax.random.fold_in(jax.random.key(sample_seed + 1 + 7919 * r), i)
                    x = jdiff.sample(guided, sched, solver, grid, x_T[sl], key, args={"y": y},
                                     prediction=run.prediction)
                    chunks.append(np.asarray(jnp.clip(x, -1.0, 1.0)))
                samples = np.concatenate(chunks)
                finite = finite and bool(np.isfinite(samples).all())
                samples = to_model_range(from_model_range(samples))  # uint8 pixels, like the data
                if r == 0 and (w, budget) == grid_pick:
                    grid_images = from_model_range(samples[:100])
                st = metrics.compute_stats(feats, samples, batch_size=250)
                fd.append(metrics.frechet_distance_from_stats(st, ref))
                fd_test.append(metrics.frechet_distance_from_stats(st, ref_test))
                acc.append(float(np.mean(classify(samples) == np.asarray(labels))))
            row = {"w": w, "nfe_budget": budget, "nfe": jdiff.nfe(solver, grid), "steps": steps, "finite": finite,
                   "seconds": round(time.perf_counter() - t0, 2)}
            for name, vals in (("fd", fd), ("fd_vs_test", fd_test), ("accuracy", acc)):
                row[name], row[name + "_std"] = mean_sd(vals)
                row[name + "_runs"] = vals
            rows.append(row)
            sd = f" ± {row['fd_std']:.2f}" if row["fd_std"] is not None else ""
            log(f"{tag:>16s} w {w:>4g} NFE {row['nfe']:>3d}: FD {row['fd']:.3f}{sd}, accuracy "
                f"{row['accuracy']:.3f}  ({row['seconds']:.1f} s)")
    return rows, grid_images


def _fmt(mean, sd, digits=3, pct=False):
    if pct:
        return f"{100 * mean:.1f}%" + (f" ± {100 * sd:.1f}" if sd is not None else "")
    return f"{mean:.{digits}f}" + (f" ± {sd:.2f}" if sd is not None else "")


def equivalent_scale(align: dict):
    """``w -> w'``: the standard-training CFG scale that the aligned model sampled at ``w`` equals
    if both networks fit their losses exactly; None without the stop-gradient (then the
    unconditional branch is fitted by both losses and there is no such closed form).

    Write ``F_c``, ``F_u`` for the conditional and unconditional targets that standard training
    fits (``E[eps | x_t, c]`` and ``E[eps | x_t]``). With the gradient stopped, the unconditional
    output is fitted by the dropped-label examples alone (``m_u = F_u``), and the conditional output
    minimises ``mix |m_c - F_c|^2 + (1 - mix) E_s |(1 + s) m_c - s m_u - F_c|^2``, so
    ``m_c = a F_c + (1 - a) F_u`` with ``a = (mix + (1 - mix) E[1 + s]) / (mix + (1 - mix)
    E[(1 + s)^2])``; guidance at ``w`` is then ``(1 + w) a F_c + (1 - (1 + w) a) F_u``, standard
    guidance at ``w' = (1 + w) a - 1`` (fixed ``s``, no mix: ``w' = (w - s) / (1 + s)``)."""
    if not align.get("align_stop_grad", True):
        return None
    s, mix = float(align["align_scale"]), float(align["align_mix"])
    if align["align_scale_sampling"] == "uniform":  # s ~ U(0, S)
        m1, m2 = 1 + s / 2, 1 + s + s * s / 3
    else:
        m1, m2 = 1 + s, (1 + s) ** 2
    a = (mix + (1 - mix) * m1) / (mix + (1 - mix) * m2)
    return lambda w: (1 + w) * a - 1


def _w_cell(w, variant, results):
    to_std = equivalent_scale(results["align"]) if variant == "aligned" else None
    return f"{w:g}" if to_std is None else f"{w:g} (≙ {round(to_std(w), 9) + 0.0:.2g})"


def model_rows(results):
    """Per (variant, seed) rows, plus per-variant rows averaged over training seeds when there are
    several: ``[(label, variant, {(w, nfe): row})]``."""
    out = []
    for m in results["models"]:
        label = m["variant"] if len(results["train_seeds"]) == 1 else f"{m['variant']} (seed {m['seed']})"
        out.append((label, m["variant"], {(r["w"], r["nfe_budget"]): r for r in m["rows"]}))
    if len(results["train_seeds"]) > 1:
        for variant in results["variants"]:
            ms = [m for m in results["models"] if m["variant"] == variant]
            cells = {}
            for key in {(r["w"], r["nfe_budget"]) for r in ms[0]["rows"]}:
                rs = [next(r for r in m["rows"] if (r["w"], r["nfe_budget"]) == key) for m in ms]
                cell = {"nfe": rs[0]["nfe"]}
                for name in ("fd", "fd_vs_test", "accuracy"):
                    cell[name], cell[name + "_std"] = mean_sd([r[name] for r in rs])
                cells[key] = cell
            out.append((f"{variant} (mean of {len(ms)} seeds; ± over seeds)", variant, cells))
    return out


def spread_over_w(cells, scales, nfe):
    """FD range over w at one NFE (max - min of the means), the best w and its FD."""
    fds = [(cells[(w, nfe)]["fd"], w) for w in scales]
    best_fd, best_w = min(fds)
    return max(f for f, _ in fds) - best_fd, best_w, best_fd


def markdown(results) -> str:
    scales, nfes = results["scales"], results["nfe_budgets"]
    rows = model_rows(results)
    head = "| model | w | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    sep = "|---|---|" + "---|" * len(nfes)
    lines = ["# Standard vs guidance-aligned training at equal compute", "",
             f"{results['label']}; class accuracy by the held-out classifier (the same feature network, "
             f"test-split accuracy {results['feature_net']['test_accuracy']:.3f}). Solver `{results['solver']}` on the "
             f"`{results['grid']}` grid, classifier-free guidance `(1 + w) m(x, c) - w m(x, null)`, "
             f"{results['n_samples']} samples per cell (labels i % {results['num_classes']}), EMA parameters; each "
             f"cell: mean ± sd over {results['repeats']} sample sets (noise seeds {results['noise_seeds']}), the same "
             "noises for every cell. Samples are rounded to uint8 pixels before their features are taken.", "",
             f"Command: `{results['command']}`", "",
             "Training (equal compute: " + results["equal_compute"] + "): "
             + "; ".join(f"{m['variant']} seed {m['seed']}: {m['config']['steps']} steps x batch "
                         f"{m['config']['batch_size']} = {m['network_passes']:,} network example-passes"
                         + (f", {m['train_log_seconds']:.0f} s" if m.get("train_log_seconds") else "")
                         for m in results["models"]) + " (training wall time from the run's metrics.jsonl).", "",
             "Aligned loss: " + ", ".join(f"{k} = {v}" for k, v in results["align"].items())
             + " (an unverified reconstruction of arXiv 2311.00938, see jdiff/losses.py).", "",
             ]
    if "aligned" in results["variants"] and equivalent_scale(results["align"]) is not None:
        lines += ["`w (≙ w')`: w' is the standard-training scale that the aligned model at w equals if both "
                  "networks fit their losses exactly (with the stop-gradient the aligned network's conditional output learns "
                  "`a F(x, c) + (1 - a) F(x, null)`, F being what standard training learns, so guidance at w is standard guidance at `w' = (1 + w) a - 1`; "
                  "a fixed align_scale s gives `w' = (w - s) / (1 + s)`): compare rows at equal w', not equal w.", ""]
    lines += ["### Frechet distance of samples vs the training images (lower is better)", "", head, sep]
    for label, variant, cells in rows:
        for w in scales:
            lines.append(f"| {label} | {_w_cell(w, variant, results)} | " + " | ".join(
                _fmt(cells[(w, n)]["fd"], cells[(w, n)]["fd_std"]) for n in nfes) + " |")
    lines += ["", f"Baseline: test split ({results['n_test']} images) vs train: "
              f"{results['baselines']['test split vs train']:.3f}.",
              "", "### Class accuracy of the samples (fraction classified as their requested label)", "", head, sep]
    for label, variant, cells in rows:
        for w in scales:
            lines.append(f"| {label} | {_w_cell(w, variant, results)} | " + " | ".join(
                _fmt(cells[(w, n)]["accuracy"], cells[(w, n)]["accuracy_std"], pct=True) for n in nfes) + " |")
    lines += ["", "Baseline: the classifier's accuracy on the test split "
              f"{100 * results['feature_net']['test_accuracy']:.1f}%.",
              "", "### Robustness to w: FD range over w (max - min of the means) and the best w", "",
              "| model | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---|" * len(nfes)]
    for label, _, cells in rows:
        parts = []
        for n in nfes:
            rng, bw, bfd = spread_over_w(cells, scales, n)
            parts.append(f"{rng:.3f} (best w {bw:g}: {bfd:.3f})")
        lines.append(f"| {label} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales, nfes = results["scales"], results["nfe_budgets"]
    to_std = equivalent_scale(results["align"]) if "aligned" in results["variants"] else None
    fig, axes = plt.subplots(1, 3 if to_std else 2, figsize=(16 if to_std else 11, 4.2))
    colors = {"standard": "tab:blue", "aligned": "tab:red"}
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v"]
    for k, (label, variant, cells) in enumerate(model_rows(results)):
        if len(results["train_seeds"]) > 1 and "mean of" not in label:
            continue  # with several training seeds: the seed means (± over seeds)
        for j, n in enumerate(nfes):
            xs = [to_std(w) if variant == "aligned" else w for w in scales] if to_std else None
            for ax, key, x in zip(axes, ("fd", "accuracy", "fd"), (scales, scales, xs)):
                mean = [cells[(w, n)][key] for w in scales]
                sd = [cells[(w, n)][key + "_std"] or 0.0 for w in scales]
                ax.errorbar(x, mean, yerr=sd if any(sd) else None, color=colors.get(variant),
                            ls=styles[j % len(styles)], marker=markers[j % len(markers)], capsize=2,
                            label=f"{variant}, NFE {n}")
    axes[0].axhline(results["baselines"]["test split vs train"], color="k", ls="--", lw=1, label="test split vs train")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("Frechet distance vs train (own features)")
    axes[1].axhline(results["feature_net"]["test_accuracy"], color="k", ls="--", lw=1, label="classifier on test split")
    axes[1].set_ylabel("class accuracy of samples")
    for ax in axes[:2]:
        ax.set_xlabel("CFG scale w (0: conditional)")
        ax.set_xticks(scales)
        ax.legend(fontsize=7)
    if to_std:
        axes[2].axhline(results["baselines"]["test split vs train"], color="k", ls="--", lw=1)
        axes[2].set_yscale("log")
        axes[2].set_ylabel("Frechet distance vs train (own features)")
        axes[2].set_xlabel("standard-equivalent scale w' (aligned: (1 + w) a - 1)")
        axes[2].set_title("aligned rows moved to the scale they equal at an exact fit", fontsize=8)
    fig.suptitle(f"{results['label']}; solver {results['solver']}, {results['n_samples']} samples x "
                 f"{results['repeats']} sets", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    """The experiment; bad input is one line ``cfg_alignment.py: error: ...`` and status 2."""
    args = parse_args(argv)
    return run_command(_main, args, prog=PROG)


def _main(args) -> int:
    for name, value in QUICK.items():  # --quick fills what was not given
        if args.quick and getattr(args, name) is None:
            setattr(args, name, value)
    args.repeats = 3 if args.repeats is None else args.repeats
    args.feature_steps = 2000 if args.feature_steps is None else args.feature_steps
    args.workdir = args.workdir or ("runs/cfg_alignment_quick" if args.quick else "runs/cfg_alignment")
    variants, seeds, scales, nfes, solver, plan = check_args(args)
    workdir = Path(args.workdir)
    out = Path(args.out or workdir / "out")
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    script = sys.argv[0].replace(str(Path.cwd()) + "/", "")
    command = "python " + " ".join(shlex.quote(a) for a in [script] + sys.argv[1:])
    t_start = time.perf_counter()

    # 1. training (resumed / reused)
    train_seconds = {}
    if not args.no_train:
        for variant, seed, rdir, cfg in plan:
            log(f"training {variant} (seed {seed}): {cfg.steps} steps x batch {cfg.batch_size} = "
                f"{network_passes(cfg):,} network example-passes -> {rdir}")
            t0 = time.perf_counter()
            try:
                with stop_on_signals() as stop:
                    train_run(cfg, rdir, progress=not args.quiet, stop=stop)
            except TrainingInterrupted as err:
                err.resume = command
                raise
            train_seconds[rdir.name] = round(time.perf_counter() - t0, 1)
            log(f"  {rdir.name}: {train_seconds[rdir.name]:.0f} s")

    # 2. feature network on the training split; reference statistics and baselines
    first_run, _ = load_run(plan[0][2])
    train_ds = first_run.dataset
    test_ds = load_image_data(first_run.config.data, "test")
    if not (workdir / "feature_net.npz").exists():
        log(f"training the feature network ({args.feature_steps} steps) -> {workdir / 'feature_net.npz'}")
    fmodel, fparams, finfo = SIBLING.feature_network(workdir, train_ds, test_ds, args.feature_steps, log)
    feats = metrics.feature_fn(fparams, fmodel)

    def classify(images):
        return metrics.predict_logits(fmodel, fparams, images).argmax(-1)

    ref = metrics.compute_stats(feats, to_model_range(train_ds.images), batch_size=250)
    ref_test = metrics.compute_stats(feats, to_model_range(test_ds.images), batch_size=250)
    baselines = {"test split vs train": metrics.frechet_distance_from_stats(ref_test, ref)}
    log(f"baseline: test split vs train FD {baselines['test split vs train']:.3f}; classifier test accuracy "
        f"{finfo['test_accuracy']:.3f}")

    # 3. sampling with CFG
    n = args.n_samples or len(test_ds)
    shape = tuple(train_ds.images.shape[1:])
    num_classes = first_run.num_classes
    labels = (jnp.arange(n) % num_classes).astype(jnp.int32)
    noise_seeds = [args.sample_seed + r for r in range(args.repeats)]
    zs = [jax.random.normal(jax.random.key(s), (n,) + shape, jnp.float32) for s in noise_seeds]
    grid_pick = (min(scales, key=lambda w: (abs(w - GRID_W), w)), min(nfes, key=lambda k: (abs(k - GRID_NFE), k)))
    out.mkdir(parents=True, exist_ok=True)
    models = []
    t_eval = time.perf_counter()
    for variant, seed, rdir, _ in plan:
        run, state = load_run(rdir)
        history = [json.loads(x) for x in (rdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        rows, images = evaluate(run, state.ema_params, scales=scales, nfes=nfes, solver=solver, grid_name=args.grid,
                                zs=zs, labels=labels, sample_batch=args.sample_batch, sample_seed=args.sample_seed,
                                feats=feats, classify=classify, ref=ref, ref_test=ref_test, log=log, tag=rdir.name,
                                grid_pick=grid_pick)
        w_tag = f"{grid_pick[0]:g}".replace("-", "m")
        name = f"samples_{rdir.name}_w{w_tag}_nfe{grid_pick[1]}.png"
        save_image_grid(out / name, images, num_classes, scale=4 if shape[0] <= 16 else 2)
        models.append({"variant": variant, "seed": seed, "workdir": str(rdir), "config": run.config.to_json(),
                       "train_steps": int(state.step), "network_passes": network_passes(run.config),
                       # the run's own loss (aligned: of the guided prediction), mean of the last 10 logged
                       "final_loss": float(np.mean([h["loss"] for h in history if "loss" in h][-10:] or [np.nan])),
                       "train_log_seconds": history[-1].get("time") if history else None,
                       "train_seconds_this_call": train_seconds.get(rdir.name), "sample_grid": name, "rows": rows})
    eval_seconds = time.perf_counter() - t_eval

    aligned_cfg = next((m["config"] for m in models if m["variant"] == "aligned"), None)  # --no-train: as trained
    align = {k: (aligned_cfg[k] if aligned_cfg else PRESET[k] if getattr(args, k) is None else getattr(args, k))
             for k in ALIGN_FIELDS}
    results = {"command": command, "label": metrics.OWN_FEATURE_LABEL, "variants": variants, "train_seeds": seeds,
               "equal_compute": args.equal_compute, "align": align, "scales": scales, "nfe_budgets": nfes,
               "solver": args.solver, "grid": args.grid, "n_samples": n, "n_test": len(test_ds),
               "num_classes": num_classes, "repeats": args.repeats, "noise_seeds": noise_seeds,
               "feature_net": finfo, "baselines": baselines, "sample_grid_at": {"w": grid_pick[0], "nfe": grid_pick[1]},
               "models": models, "eval_seconds": round(eval_seconds, 1),
               "standard_equivalent_w": ({f"{w:g}": equivalent_scale(align)(w) for w in scales}
                                         if equivalent_scale(align) else None),
               "total_seconds": round(time.perf_counter() - t_start, 1), "devices": [str(d) for d in jax.devices()]}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (out / "cfg_table.md").write_text(table)
    plot(results, out / "fd_vs_w.png")
    log(table)
    log(f"wrote {out} ({results['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
