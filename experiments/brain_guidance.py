"""Brain-guided synthesis (BrainDiVE) on digits, with simulated voxels: does the guidance raise the TRUE response?

    python experiments/brain_guidance.py                 # CPU default, about 15 minutes on 2 vCPUs
    python experiments/brain_guidance.py --quick         # smoke run, under a minute of work

BrainDiVE (Luo et al., NeurIPS 2023) guides a diffusion model with the gradient of a brain
region's mean response predicted by a linear encoder on frozen image features, then keeps the
top 20 % of the images by that prediction. Without fMRI data this study builds a world in which
the true response of every "voxel" to any image is known, so the method can be judged by the
truth and not by the encoder it optimised:

1. An unconditional digits diffusion model (:func:`jdiff.run.train_run`, resumed from
   ``--workdir``), trained on the digits train split.
2. Two small CNN classifiers (:mod:`jdiff.metrics.feature_net`), each on one half of the train
   split, with different seeds and widths: the **true** network defines the voxels, the
   **backbone** (never shown the true network) provides the encoder's features.
3. Simulated voxels (:func:`jdiff.guidance.brain.simulated_voxels`): one region of
   ``--voxels-per-region`` voxels per digit class; a voxel responds with a random gain to the
   true network's probability of its class, plus a random linear mix of its (L2-normalised)
   features, plus Gaussian measurement noise ``--noise-std``.
4. Noisy responses to the train-split images fit the encoders on the backbone's L2-normalised
   features: closed-form ridge (penalty chosen on a 20 % validation part) and BrainDiVE's AdamW
   recipe (lr 3e-4, weight decay 2e-2, batch 64, 100 epochs, lr decaying to 0.5x). Both are
   scored by R^2 on the held-out test split (noisy responses, and the noise-free truth).
5. For the target region (voxels selective for ``--target``), samples with
   :func:`jdiff.guidance.objective_guidance` (BrainDiVE's residual-noise preview) at each
   ``--scales`` value (0 = unguided), from the same initial noise per seed; every set is also
   re-ranked by the guiding encoder (top ``--keep``). Each set is scored by the TRUE noise-free
   region response, the encoder's predicted response, the fraction the true network classifies
   as the target digit, and diversity (mean pairwise pixel distance; trace of the covariance of
   the true network's features). Means with 95 % t confidence intervals over the seeds.

Outputs in ``--out``: ``results.json``, ``results.md``, ``response_vs_scale.png``,
``guided_samples.png``; a summary with the command, machine and reading at ``--summary``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jdiff
from jdiff import metrics
from jdiff.cli import Parser, check_output_dir, run_command
from jdiff.data import from_model_range, load_digits, stratified_split, to_model_range
from jdiff.guidance import brain, objective_guidance
from jdiff.guidance.gradient import PREVIEWS
from jdiff.run import RunConfig, load_run, train_run
from jdiff.solvers import SOLVERS, get_solver, steps_for_nfe
from jdiff.training import stop_on_signals

ROOT = Path(__file__).resolve().parents[1]
PROG = "brain_guidance.py"

# The diffusion model: the digits UNet of the laptop preset (765k parameters), unconditional.
UNET = dict(data="digits", model="unet_digits", model_kwargs='{"num_res_blocks": 1, "dropout": 0.0}',
            conditional=False, batch_size=128, lr=2e-3, warmup_steps=200, ema_decay=0.999, save_every=500,
            log_every=50)
# --quick: a tiny UNet (ch 8) so that compiling and a few steps take seconds.
UNET_QUICK = dict(UNET, model_kwargs='{"num_res_blocks": 1, "dropout": 0.0, "ch": 8, "attn_resolutions": []}',
                  warmup_steps=10, ema_decay=0.9, save_every=50, log_every=10)
NETS = {"true": dict(widths=(16, 32), feature_dim=64, seed=101, half=0),
        "backbone": dict(widths=(24, 48), feature_dim=48, seed=202, half=1)}

DEFAULTS = dict(steps=1500, feature_steps=600, scales="0,1,3,10,30", seeds="0,1,2,3,4", n_samples=200, nfe=20,
                adamw_epochs=100, workdir="runs/brain_digits")
QUICK = dict(steps=40, feature_steps=60, scales="0,10", seeds="0,1", n_samples=16, nfe=8, adamw_epochs=5,
             workdir="runs/brain_digits_quick")


def parse_args(argv=None):
    p = Parser(prog=PROG, description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke run: tiny model, few steps and samples")
    p.add_argument("--workdir", default=None, help=f"run directory, reused (default {DEFAULTS['workdir']}; "
                                                   f"--quick: {QUICK['workdir']})")
    p.add_argument("--out", default="benchmarks/results/brain_guidance", help="output directory")
    p.add_argument("--summary", default="benchmarks/results/brain_guidance.md",
                   help="summary Markdown file (empty: none)")
    p.add_argument("--steps", type=int, default=None, help=f"UNet training steps (default {DEFAULTS['steps']})")
    p.add_argument("--feature-steps", type=int, default=None,
                   help=f"training steps of each classifier (default {DEFAULTS['feature_steps']})")
    p.add_argument("--target", type=int, default=3, help="digit class whose region is the guidance target")
    p.add_argument("--scales", default=None, help=f"comma list of guidance scales, 0 = unguided "
                                                  f"(default {DEFAULTS['scales']})")
    p.add_argument("--seeds", default=None, help=f"comma list of sampling seeds (default {DEFAULTS['seeds']})")
    p.add_argument("--n-samples", type=int, default=None,
                   help=f"samples per seed and scale (default {DEFAULTS['n_samples']})")
    p.add_argument("--keep", type=float, default=0.2, help="re-ranking keeps this top fraction by the encoder")
    p.add_argument("--solver", default="dpmpp_2m", help=f"one of {', '.join(SOLVERS)}")
    p.add_argument("--nfe", type=int, default=None, help=f"model evaluations per sample (default {DEFAULTS['nfe']})")
    p.add_argument("--preview", default="braindive", choices=PREVIEWS, help="what the objective sees")
    p.add_argument("--guide-encoder", default="ridge", choices=("ridge", "adamw"), help="encoder used to guide "
                   "and to re-rank")
    p.add_argument("--voxels-per-region", type=int, default=20, help="simulated voxels per digit class")
    p.add_argument("--noise-std", type=float, default=0.3, help="measurement noise of the simulated voxels")
    p.add_argument("--adamw-epochs", type=int, default=None,
                   help=f"epochs of the AdamW encoder fit (default {DEFAULTS['adamw_epochs']})")
    p.add_argument("--no-train", action="store_true", help="use the diffusion model in --workdir as is")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def parse_floats(text: str, flag: str) -> list[float]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError(f"{flag} is empty")
    out = []
    for s in items:
        try:
            v = float(s)
        except ValueError:
            raise ValueError(f"{flag}: {s!r} is not a number") from None
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"{flag}: values must be finite and >= 0, got {s!r}")
        out.append(v)
    if len(set(out)) != len(out):
        raise ValueError(f"{flag} lists a value twice: {text!r}")
    return out


def parse_seeds(text: str) -> list[int]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    try:
        seeds = [int(s) for s in items]
    except ValueError:
        raise ValueError(f"--seeds must be a comma list of integers, got {text!r}") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ValueError(f"--seeds needs at least two distinct non-negative seeds (for confidence intervals), "
                         f"got {text!r}")
    return seeds


def check_args(args):
    """Fill the defaults (``--quick`` or not) and check every input before any work."""
    preset = QUICK if args.quick else DEFAULTS
    for name, value in preset.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    for name in ("feature_steps", "n_samples", "nfe", "voxels_per_region", "adamw_epochs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.steps < 0:
        raise ValueError(f"--steps must be at least 0, got {args.steps}")
    if not 0 <= args.target < 10:
        raise ValueError(f"--target must be a digit class 0..9, got {args.target}")
    if not 0 < args.keep <= 1:
        raise ValueError(f"--keep must be a fraction in (0, 1], got {args.keep}")
    if not (math.isfinite(args.noise_std) and args.noise_std >= 0):
        raise ValueError(f"--noise-std must be finite and >= 0, got {args.noise_std}")
    if args.n_samples * args.keep < 2:
        raise ValueError(f"--n-samples {args.n_samples} with --keep {args.keep} re-ranks to fewer than 2 samples")
    args.scale_list = parse_floats(args.scales, "--scales")
    if 0.0 not in args.scale_list:
        args.scale_list = [0.0] + args.scale_list  # the unguided baseline is always run
    args.scale_list = sorted(args.scale_list)
    args.seed_list = parse_seeds(args.seeds)
    solver = get_solver(args.solver)  # unknown names: ValueError listing the valid ones
    if solver.stochastic:
        raise ValueError(f"--solver {args.solver!r} is stochastic; use a deterministic one (dpmpp_2m, ddim, ...)")
    steps_for_nfe(solver, args.nfe)
    check_output_dir(args.workdir)
    check_output_dir(args.out, "--out")
    if args.summary:
        summary = Path(args.summary)
        if summary.is_dir():
            raise ValueError(f"--summary {args.summary!r} is a directory; give a file name")
        check_output_dir(str(summary.parent), "--summary folder")
    if args.no_train and not (Path(args.workdir) / "config.json").exists():
        raise ValueError(f"--no-train: {args.workdir} holds no trained run")


# ----------------------------------------------------------------------------- helpers


def bench_common():
    """``benchmarks/common.py`` (machine record, load average, other processes' CPU share)."""
    if "bench_common" in sys.modules:
        return sys.modules["bench_common"]
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "common.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_common"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def ci95(values) -> dict:
    """Mean and 95 % Student-t confidence half-width over seeds."""
    from scipy import stats

    v = np.asarray(values, np.float64)
    k = len(v)
    sd = float(np.std(v, ddof=1)) if k > 1 else float("nan")
    half = float(stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k)) if k > 1 else float("nan")
    return {"mean": float(v.mean()), "ci95": half, "sd": sd, "runs": [float(x) for x in v]}


def batched(fn, x, batch: int = 256):
    """``fn`` over ``x`` in fixed-size batches (the last padded): one compile per function."""
    x = np.asarray(x)
    n = x.shape[0]
    outs = []
    for i in range(0, n, batch):
        part = x[i:i + batch]
        k = part.shape[0]
        if k < batch:
            part = np.concatenate([part, np.repeat(part[-1:], batch - k, axis=0)])
        outs.append(jax.tree_util.tree_map(lambda a: np.asarray(a)[:k], fn(jnp.asarray(part))))
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a), *outs)


def quantise(x) -> np.ndarray:
    """Model-range samples as the data are stored: uint8 pixels, back in [-1, 1]."""
    return np.asarray(to_model_range(from_model_range(np.asarray(x))))


def classifier(workdir: Path, name: str, cfg: dict, steps: int, train, test, log):
    """Train (or reuse from ``workdir``) the ``name`` classifier on its half of the train split."""
    path, info_path = workdir / f"{name}_net.npz", workdir / f"{name}_net.json"
    want = {"steps": steps, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}}
    if path.exists() and info_path.exists():
        info = json.loads(info_path.read_text())
        if info.get("config") == want:
            model, params = metrics.load_feature_net(path)
            log(f"{name} network: reused ({path})")
            return model, params, info
    halves = stratified_split(train.labels, 0.5, seed=7)  # two disjoint, class-balanced halves
    idx = halves[cfg["half"]]
    t0 = time.perf_counter()
    model = metrics.FeatureNet(num_classes=10, widths=tuple(cfg["widths"]), feature_dim=cfg["feature_dim"])
    res = metrics.train_feature_net(to_model_range(train.images[idx]), train.labels[idx], 10, steps=steps,
                                    seed=cfg["seed"], model=model,
                                    test_data=(to_model_range(test.images), test.labels))
    info = {"config": want, "train_images": int(len(idx)), "train_accuracy": res.train_accuracy,
            "test_accuracy": res.test_accuracy, "seconds": round(time.perf_counter() - t0, 1)}
    metrics.save_feature_net(path, res.model, res.params)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    log(f"{name} network: {len(idx)} images, test accuracy {res.test_accuracy:.3f} ({info['seconds']} s)")
    return res.model, res.params, info


def choose_ridge(x, y, grid=tuple(10.0 ** np.arange(-4, 1.5, 0.5)), seed: int = 0):
    """Ridge penalty with the best mean validation R^2 on a random 20 % of the rows, then the fit
    on all rows."""
    perm = np.random.default_rng(seed).permutation(len(x))
    n_val = max(2, len(x) // 5)
    val, fit = perm[:n_val], perm[n_val:]
    scores = [float(np.nanmean(brain.r2_score(brain.fit_ridge(x[fit], y[fit], l2), x[val], y[val]))) for l2 in grid]
    best = float(grid[int(np.argmax(scores))])
    return brain.fit_ridge(x, y, best), best, dict(zip([float(g) for g in grid], scores))


def set_metrics(d: dict, idx=None) -> dict:
    """Scalars of one sample set (all, or rows ``idx``) from its per-sample quantities."""
    sel = (lambda a: a) if idx is None else (lambda a: a[idx])
    pix = sel(d["pixels"]).reshape(len(sel(d["true"])), -1).astype(np.float64)
    n = pix.shape[0]
    sq = np.sum(pix * pix, 1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * pix @ pix.T, 0.0))
    feats = sel(d["true_features"]).astype(np.float64)
    return {"true_roi_response": float(sel(d["true"]).mean()),
            "encoder_roi_response": float(sel(d["encoder"]).mean()),
            "target_fraction": float(np.mean(sel(d["pred_class"]) == d["target"])),
            "pairwise_distance": float(dist.sum() / (n * (n - 1))) if n > 1 else float("nan"),
            "feature_cov_trace": float(np.trace(np.cov(feats, rowvar=False))) if n > 1 else float("nan"),
            "nn_train_distance": float(sel(d["nn_train"]).mean()), "n": int(n)}


METRICS = ("true_roi_response", "encoder_roi_response", "target_fraction", "pairwise_distance", "feature_cov_trace",
           "nn_train_distance")
LABELS = {"true_roi_response": "true ROI response", "encoder_roi_response": "encoder-predicted ROI response",
          "target_fraction": "classified as target", "pairwise_distance": "pairwise pixel distance",
          "feature_cov_trace": "feature covariance trace", "nn_train_distance": "distance to nearest training image"}


def fmt(cell: dict, digits: int = 3) -> str:
    return f"{cell['mean']:.{digits}f} ± {cell['ci95']:.{digits}f}"


# ----------------------------------------------------------------------------- outputs


def results_table(rows, references) -> list[str]:
    lines = ["| method | n per seed | " + " | ".join(LABELS[m] for m in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for r in rows:
        lines.append(f"| {r['label']} | {r['n']} | " + " | ".join(fmt(r[m]) for m in METRICS) + " |")
    for r in references:
        lines.append(f"| *{r['label']}* | {r['n']} | "
                     + " | ".join(f"{r[m]:.3f}" for m in METRICS) + " |")
    return lines


def encoder_table(encoders) -> list[str]:
    lines = ["| encoder | held-out R² (noisy responses), all voxels | target ROI | R² vs the noise-free truth, "
             "all voxels | target ROI | fit |", "|---|---|---|---|---|---|"]
    for name, e in encoders.items():
        lines.append(f"| {name} | {e['r2_test_noisy']:.3f} | {e['r2_test_noisy_roi']:.3f} | "
                     f"{e['r2_test_truth']:.3f} | {e['r2_test_truth_roi']:.3f} | {e['fit']} |")
    return lines


def plot_response(rows, references, scales, path: Path, target: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos = np.arange(len(scales))
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    panels = (("true_roi_response", "TRUE region response (noise-free)"),
              ("encoder_roi_response", "encoder-predicted region response"),
              ("target_fraction", f"fraction classified as {target} (true net)"),
              ("nn_train_distance", "distance to nearest training image (pixels)"))
    for ax, (m, title) in zip(axes, panels):
        for kind, marker, label in (("guided", "o", "guided, all samples"),
                                    ("guided+rerank", "s", "guided + top-k by encoder")):
            rs = [next(r for r in rows if r["kind"] == kind and r["scale"] == s) for s in scales]
            ax.errorbar(pos + (0.06 if kind != "guided" else -0.06), [r[m]["mean"] for r in rs],
                        yerr=[r[m]["ci95"] for r in rs], marker=marker, capsize=3, label=label)
        styles = ("--", ":", "-.")
        for ref, ls in zip(references, styles):
            ax.axhline(ref[m], color="k", ls=ls, lw=1, label=ref["label"])
        ax.set_xticks(pos, [f"{s:g}" for s in scales])
        ax.set_xlabel("guidance scale s")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("Simulated-voxel BrainDiVE on digits: mean ± 95% CI over seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_samples(grids: dict, path: Path):
    """One row per set (same initial noise across the guided rows), labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jdiff.plotting import image_grid

    names = list(grids)
    fig, axes = plt.subplots(len(names), 1, figsize=(10, 0.95 * len(names) + 0.3))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, names):
        ax.imshow(image_grid(grids[name], ncols=len(grids[name]))[..., 0], cmap="gray", vmin=0, vmax=255,
                  interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- the study


def main(argv=None) -> int:
    """The experiment; bad input is one line ``brain_guidance.py: error: ...`` and status 2."""
    args = parse_args(argv)
    return run_command(_main, args, prog=PROG)


def _main(args) -> int:
    check_args(args)
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    command = "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]))] + sys.argv[1:])
    workdir, out = Path(args.workdir), Path(args.out)
    t_start = time.perf_counter()
    common = bench_common()
    meter, load_start = common.CpuMeter(), common.loadavg()
    timings = {}

    # 1. the diffusion model
    cfg = RunConfig(**{**(UNET_QUICK if args.quick else UNET), "steps": args.steps})
    t0 = time.perf_counter()
    if not args.no_train:
        with stop_on_signals() as stop:
            train_run(cfg, workdir, progress=not args.quiet, stop=stop)
    run, state = load_run(workdir)
    params = state.ema_params
    timings["diffusion_training"] = round(time.perf_counter() - t0, 1)
    log(f"diffusion model: step {int(state.step)} ({timings['diffusion_training']} s)")
    out.mkdir(parents=True, exist_ok=True)

    # 2. the true classifier and the encoder backbone (disjoint halves of the train split)
    train, test = load_digits("train"), load_digits("test")
    t0 = time.perf_counter()
    true_model, true_params, true_info = classifier(workdir, "true", NETS["true"], args.feature_steps, train,
                                                    test, log)
    bb_model, bb_params, bb_info = classifier(workdir, "backbone", NETS["backbone"], args.feature_steps, train,
                                              test, log)
    timings["classifiers"] = round(time.perf_counter() - t0, 1)

    # 3. simulated voxels; 4. encoders on the backbone's features
    t0 = time.perf_counter()
    sim = brain.simulated_voxels(brain.classifier_outputs(true_model, true_params), jax.random.key(2023),
                                 num_classes=10, feature_dim=NETS["true"]["feature_dim"],
                                 voxels_per_region=args.voxels_per_region, noise_std=args.noise_std)
    roi = sim.roi(args.target)
    backbone = metrics.feature_fn(bb_params, bb_model)
    x_train, x_test = to_model_range(train.images), to_model_range(test.images)
    f_train, f_test = batched(backbone, x_train), batched(backbone, x_test)
    y_train = np.asarray(sim.sample(jnp.asarray(x_train), jax.random.key(1)))  # measured (noisy) responses
    y_test = np.asarray(sim.sample(jnp.asarray(x_test), jax.random.key(2)))
    y_test_truth = np.asarray(sim.mean(jnp.asarray(x_test)))
    ridge, l2, l2_scores = choose_ridge(f_train, y_train)
    steps_adamw = args.adamw_epochs * math.ceil(len(f_train) / 64)
    adamw = brain.fit_adamw(f_train, y_train, steps=steps_adamw, key=jax.random.key(3))
    encoders = {}
    for name, enc, fit in (("ridge", ridge, f"closed form, l2 = {l2:g} (validation R² over a grid)"),
                           ("adamw", adamw, f"AdamW lr 3e-4, wd 2e-2, batch 64, {args.adamw_epochs} epochs "
                                            f"({steps_adamw} steps), lr -> 0.5x")):
        r2n, r2t = brain.r2_score(enc, f_test, y_test), brain.r2_score(enc, f_test, y_test_truth)
        encoders[name] = {"fit": fit, "r2_test_noisy": float(np.nanmean(r2n)),
                          "r2_test_noisy_roi": float(np.nanmean(r2n[roi])),
                          "r2_test_truth": float(np.nanmean(r2t)), "r2_test_truth_roi": float(np.nanmean(r2t[roi]))}
        log(f"{name} encoder: held-out R² {encoders[name]['r2_test_noisy']:.3f} (noisy), "
            f"{encoders[name]['r2_test_truth']:.3f} (vs truth); target ROI {encoders[name]['r2_test_noisy_roi']:.3f}")
    encoders["ridge"]["l2_validation_r2"] = l2_scores
    ceiling = float(np.mean(1.0 - args.noise_std ** 2 / np.var(y_test, axis=0)))
    encoder = ridge if args.guide_encoder == "ridge" else adamw
    objective = brain.roi_objective(encoder, backbone, roi)
    roi_w = brain.roi_weights(roi, sim.num_voxels)
    timings["voxels_and_encoders"] = round(time.perf_counter() - t0, 1)

    # per-sample quantities of a set of images (one compiled program per batch size)
    true_feats = metrics.feature_fn(true_params, true_model)

    @jax.jit  # everything it reads is an argument: no arrays baked into the program
    def per_sample(sim, objective, roi_w, true_feats, images):
        return {"true": sim.mean(images) @ roi_w, "encoder": objective(images, None),
                "pred_class": jnp.argmax(sim.class_probs(images), -1), "true_features": true_feats(images)}

    train_flat = x_train.reshape(len(x_train), -1).astype(np.float64)
    train_sq = np.sum(train_flat ** 2, 1)

    def describe(images):
        d = batched(lambda x: per_sample(sim, objective, roi_w, true_feats, x), images, batch=min(256, len(images)))
        d["pixels"], d["target"] = np.asarray(images), args.target
        flat = d["pixels"].reshape(len(images), -1).astype(np.float64)
        sq = np.sum(flat ** 2, 1)[:, None] + train_sq[None] - 2 * flat @ train_flat.T
        d["nn_train"] = np.sqrt(np.maximum(sq.min(1), 0.0))  # distance to the nearest training image
        return d

    # references: real held-out images (all, the target class, the top fraction by the encoder)
    real = describe(x_test)
    top_real = brain.rerank(x_test, real["encoder"], args.keep)[0]
    references = [dict(set_metrics(real), label="real test images, all"),
                  dict(set_metrics(real, np.flatnonzero(test.labels == args.target)),
                       label=f"real test images of class {args.target}"),
                  dict(set_metrics(real, top_real), label=f"real test images, top {args.keep:.0%} by encoder")]

    # 5. guided sampling
    schedule, solver = run.schedule, get_solver(args.solver)
    n_steps = steps_for_nfe(solver, args.nfe)
    grid = jdiff.grids.make_grid(schedule, "logsnr", n_steps)
    nfe = jdiff.nfe(solver, grid)
    model_fn = run.model_fn(params)
    shape = tuple(run.data_shape)
    per = {}  # (seed, scale) -> per-sample quantities
    sample_grids = {}
    n_show = min(12, args.n_samples)
    t0 = time.perf_counter()
    tasks = [(seed, s) for seed in args.seed_list for s in args.scale_list]
    progress = None
    if not args.quiet:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        progress.start()
        bar = progress.add_task(f"guided sampling ({args.solver}, NFE {nfe})", total=len(tasks))
    try:
        for seed, s in tasks:
            z = jax.random.normal(jax.random.key(seed), (args.n_samples,) + shape, jnp.float32)
            x_T = jdiff.init_noise(schedule, grid[0], z)
            # the scale is a traced array: one compiled program for every scale (0 included)
            guided = objective_guidance(model_fn, schedule, objective, jnp.asarray(s, jnp.float32),
                                        prediction=run.prediction, preview=args.preview)
            x = np.asarray(jdiff.sample(guided, schedule, solver, grid, x_T, prediction=run.prediction))
            if not np.all(np.isfinite(x)):
                raise ValueError(f"non-finite samples at scale {s:g}, seed {seed}: lower the scale")
            images = quantise(x)
            per[seed, s] = describe(images)
            if seed == args.seed_list[0]:
                sample_grids[f"s = {s:g}"] = from_model_range(images[:n_show])
                if s == 0.0:
                    top = brain.rerank(images, per[seed, s]["encoder"], args.keep)[0]
                    unguided_top = from_model_range(images[top[:n_show]])
            if progress is not None:
                progress.advance(bar)
    finally:
        if progress is not None:
            progress.stop()
    timings["sampling"] = round(time.perf_counter() - t0, 1)
    sample_grids[f"s = 0, top {args.keep:.0%}"] = unguided_top

    rows = []
    for s in args.scale_list:
        for kind in ("guided", "guided+rerank"):
            sets = []
            for seed in args.seed_list:
                d = per[seed, s]
                idx = brain.rerank(d["pixels"], d["encoder"], args.keep)[0] if kind == "guided+rerank" else None
                sets.append(set_metrics(d, idx))
            label = ("unguided" if s == 0 else f"guided s = {s:g}") + (
                f" + top {args.keep:.0%}" if kind == "guided+rerank" else "")
            rows.append({"label": label, "kind": kind, "scale": s, "n": sets[0]["n"],
                         **{m: ci95([x[m] for x in sets]) for m in METRICS}})
    timings["total"] = round(time.perf_counter() - t_start, 1)

    # outputs
    plot_response(rows, references[:2], args.scale_list, out / "response_vs_scale.png", args.target)
    plot_samples(sample_grids, out / "guided_samples.png")
    machine = common.machine_info()
    share = meter.share()
    load = {"start": load_start, "end": common.loadavg(),
            "other_processes_cpu_share": None if share is None else round(share, 3)}
    result = {"command": command, "quick": args.quick, "machine": machine, "load": load, "timings_s": timings,
              "seeds": args.seed_list, "scales": args.scale_list, "target": args.target, "keep": args.keep,
              "solver": args.solver, "nfe": nfe, "grid": "logsnr", "preview": args.preview,
              "n_samples": args.n_samples, "guide_encoder": args.guide_encoder,
              "diffusion": {"config": run.config.to_json(), "steps": int(state.step), "workdir": str(workdir)},
              "classifiers": {"true": true_info, "backbone": bb_info},
              "voxels": {"num_voxels": sim.num_voxels, "voxels_per_region": args.voxels_per_region,
                         "target_roi_size": int(roi.sum()), "noise_std": args.noise_std,
                         "mean_noise_ceiling_r2_test": ceiling},
              "encoders": encoders, "rows": rows, "references": references}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out / "results.md").write_text(md)
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        rel = Path(os.path.relpath(out, Path(args.summary).parent))
        Path(args.summary).write_text(summary_markdown(result, md, out, rel))
    log(md)
    log(f"wrote {out}" + (f" and {args.summary}" if args.summary else "") + f" in {timings['total']:.0f} s")
    return 0


def markdown(res: dict) -> str:
    t = res["target"]
    lines = [f"# Brain-guided sampling with simulated voxels: target region = class-{t} voxels", "",
             f"Command: `{res['command']}`", "",
             f"Seeds {res['seeds']} (initial noise; the same noise for every scale), {res['n_samples']} samples "
             f"per seed and scale, {res['solver']} NFE {res['nfe']} (logSNR grid), preview `{res['preview']}`, "
             f"guided and re-ranked by the **{res['guide_encoder']}** encoder. Cells: mean ± 95% t-interval "
             f"half-width over the {len(res['seeds'])} seeds. Samples are rounded to uint8 pixels, like the data, "
             "before they are scored.", "",
             "## Encoders (on the backbone's L2-normalised features; test split, 359 images)", ""]
    lines += encoder_table(res["encoders"])
    v = res["voxels"]
    lines += ["", f"{v['num_voxels']} voxels ({v['voxels_per_region']} per class), noise std {v['noise_std']}; "
              f"mean noise-ceiling R² on the test split {v['mean_noise_ceiling_r2_test']:.3f} "
              "(1 - noise variance / response variance).", "",
              "## Guidance", ""]
    lines += results_table(res["rows"], res["references"])
    lines += ["", "- true ROI response: mean over the target region's voxels of the noise-free simulated "
              "response (the ground truth); encoder-predicted: what the guidance maximised.",
              "- classified as target: share of samples the TRUE classifier assigns to the target class.",
              "- pairwise pixel distance: mean Euclidean distance between two samples of a set (pixels in "
              "[-1, 1]); feature covariance trace: total variance of the true classifier's features.",
              "- distance to nearest training image: mean over samples of the Euclidean pixel distance to the "
              "closest train-split image; off the digit manifold (adversarial patterns) it grows.",
              "- italic rows: real held-out images (one set, no interval)."]
    c = res["classifiers"]
    lines += ["", f"True classifier: test accuracy {c['true']['test_accuracy']:.3f}; backbone: "
              f"{c['backbone']['test_accuracy']:.3f} (each trained on its own half of the train split)."]
    return "\n".join(lines) + "\n"


def reading(res: dict) -> list[str]:
    """Plain statements drawn from the numbers (each with the number behind it)."""
    rows = {(r["kind"], r["scale"]): r for r in res["rows"]}
    base, base_top = rows["guided", 0.0], rows["guided+rerank", 0.0]
    refs = {r["label"].split(",")[0] if "class" not in r["label"] else "class": r for r in res["references"]}
    real_all = next(r for r in res["references"] if r["label"].endswith("all"))
    real_t = next(r for r in res["references"] if "of class" in r["label"])
    scales = [s for s in res["scales"] if s > 0]
    m, keep = "true_roi_response", f"top {res['keep']:.0%}"
    del refs

    def apart(a, b, key):  # a above b with non-overlapping 95% intervals
        return (a[key]["mean"] - a[key]["ci95"]) > (b[key]["mean"] + b[key]["ci95"])

    enc = res["encoders"]
    better, worse = sorted(("ridge", "adamw"), key=lambda k: -enc[k]["r2_test_noisy"])
    out = [f"- Encoders: held-out R² {better} {enc[better]['r2_test_noisy']:.3f} vs {worse} "
           f"{enc[worse]['r2_test_noisy']:.3f} (noise ceiling {res['voxels']['mean_noise_ceiling_r2_test']:.3f}; "
           f"vs the noise-free truth {enc[better]['r2_test_truth']:.3f} and {enc[worse]['r2_test_truth']:.3f})."
           + (" BrainDiVE's AdamW recipe (set for 512-d CLIP features and NSD) underfits this small problem."
              if better == "ridge" else "")]
    prevalence = base["target_fraction"]["mean"]
    ceiling = min(1.0, prevalence / res["keep"])
    out.append(f"- Unguided samples: true target-region response {fmt(base[m])} (real test images: all "
               f"{real_all[m]:.3f}, class {res['target']} only {real_t[m]:.3f}). Re-ranking them by the encoder "
               f"({keep}) alone gives {fmt(base_top[m])}"
               + (" (intervals apart from unguided)" if apart(base_top, base, m) else " (intervals overlap unguided)")
               + f", {base_top['target_fraction']['mean']:.0%} of them classified as {res['target']}: with "
               f"{prevalence:.0%} of the unguided samples classified {res['target']}, a {keep} set can hold at "
               f"most {ceiling:.0%}.")
    for s in scales:
        g, gt = rows["guided", s], rows["guided+rerank", s]
        out.append(f"- s = {s:g}: true {fmt(g[m])}, encoder-predicted {fmt(g['encoder_roi_response'])}, "
                   f"{g['target_fraction']['mean']:.0%} classified as {res['target']}, nearest-training-image "
                   f"distance {g['nn_train_distance']['mean']:.2f}, pairwise distance "
                   f"{g['pairwise_distance']['mean']:.2f}; "
                   f"with {keep}: true {fmt(gt[m])}"
                   + (" (above unguided, intervals apart)" if apart(g, base, m) else "") + ".")
    if scales:
        best = max(scales, key=lambda s: rows["guided", s][m]["mean"])
        b = rows["guided", best]
        gap_b = b["encoder_roi_response"]["mean"] - b[m]["mean"]
        gap_0 = base["encoder_roi_response"]["mean"] - base[m]["mean"]
        out.append(f"- The highest true response of a full guided set is at s = {best:g}. There the encoder's "
                   f"prediction minus the truth is {gap_b:+.3f} (unguided: {gap_0:+.3f})"
                   + (": the guidance climbs the encoder faster than the region." if gap_b > gap_0 + 0.05 else "."))
        best_rr = max(res["scales"], key=lambda s: rows["guided+rerank", s][m]["mean"])
        top = rows["guided+rerank", best_rr]
        lower = top["pairwise_distance"]["mean"] < base["pairwise_distance"]["mean"]
        which = "unguided" if best_rr == 0 else f"guided s = {best_rr:g}"
        out.append(f"- The highest true response overall is {which}"
                   + f" + {keep}: {fmt(top[m])}, at a pairwise distance of {top['pairwise_distance']['mean']:.2f} "
                   f"(unguided {base['pairwise_distance']['mean']:.2f}, real class-{res['target']} images "
                   f"{real_t['pairwise_distance']:.2f})" + (": response is bought with diversity." if lower else "."))
        # off the manifold: farther from the training images than real images and than unguided samples
        limit = 1.5 * max(real_all["nn_train_distance"], base["nn_train_distance"]["mean"])
        far = [s for s in scales if rows["guided", s]["nn_train_distance"]["mean"] > limit]
        if far:
            s0 = far[0]
            g = rows["guided", s0]
            out.append(f"- From s = {s0:g} on the samples leave the digit manifold: their distance to the nearest "
                       f"training image is {g['nn_train_distance']['mean']:.2f} vs {real_all['nn_train_distance']:.2f} "
                       f"for real test images and {base['nn_train_distance']['mean']:.2f} unguided (see the sample "
                       f"grid), yet the true network still calls "
                       f"{g['target_fraction']['mean']:.0%} of them a {res['target']}. Adversarial patterns against "
                       "the backbone transfer in part to the 'true' network (both are small CNNs trained on "
                       "digits), so this simulated truth overrates them; a real region need not be fooled. Read "
                       "the high-scale rows with that in mind.")
    return out


def summary_markdown(res: dict, table_md: str, out: Path, rel: Path) -> str:
    mach = res["machine"]
    kind = (f"{mach.get('cpus_available')}-vCPU CPU machine, no accelerator" if mach.get("jax_backend") == "cpu"
            else ", ".join(mach.get("jax_devices", [])))
    load = res.get("load")
    load_line = []
    if load:
        other = load.get("other_processes_cpu_share")
        load_line = [f"Load average (1/5/15 min) at start / end: {load['start']} / {load['end']}; CPU time taken by "
                     f"other processes: {'n/a' if other is None else f'{other:.0%}'} of the machine (a shared "
                     "machine: the timings are noisy, the results are not).  "]
    lines = ["# BrainDiVE-style brain-guided synthesis on digits, simulated voxels", "",
             f"Command: `{res['command']}`  ",
             f"Machine: {mach.get('cpu')}, {mach.get('cpus_available')} CPUs available ({kind}), "
             f"{mach.get('platform')}, Python {mach.get('python')}, JAX {mach.get('jax')} "
             f"({mach.get('jax_backend')}).  ",
             *load_line,
             f"Seeds: {res['seeds']}; wall time {res['timings_s']['total']:.0f} s "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in res['timings_s'].items() if k != 'total')}).  ",
             f"Outputs: `{out}/` (results.json, results.md, response_vs_scale.png, guided_samples.png).", "",
             "What is simulated, and why: no brain data ship with jdiff, so the 'voxels' are a known function of "
             "the image (a true classifier's class probabilities, selectivity-weighted, plus a random mix of its "
             "features, plus noise). The guidance only sees a linear encoder fitted on a *different* network's "
             "features, as BrainDiVE only sees a CLIP-based encoder of real cortex; the true response scores the "
             "result.", "", "## Reading (generated from the numbers)", ""]
    lines += reading(res)
    lines += ["", f"![response vs scale]({rel.as_posix()}/response_vs_scale.png)", "",
              f"![guided samples]({rel.as_posix()}/guided_samples.png)", ""]
    lines += ["", table_md[table_md.index("Seeds "):]]  # the tables, without the title and command
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
