"""Zero-shot restoration with a trained diffusion model: every task x method on held-out images.

    python experiments/restoration.py          # CPU default: digits UNet of runs/laptop, 10-15 min on 2 idle vCPUs
    python experiments/restoration.py --quick  # smoke run: 8 images, NFE 4; trains 30 steps in an empty workdir

The model is the digits UNet of the ``laptop`` preset of ``experiments/cifar10_sampling.py``
(class-conditional with label dropout; used here *unconditionally*, through its null class, as
zero-shot restoration requires). ``--workdir`` holding a trained run reuses it as is; an empty
one is trained first with that preset's code (:func:`jdiff.run.train_run`, ``--steps`` to
shorten). A CIFAR-10 run trained by that script works the same way (``--workdir runs/cifar10_16``).

For ``--n-images`` images of the held-out test split, each ``--tasks`` degradation ``y = A x +
sigma_y n`` (:mod:`jdiff.restoration.operators`; sigma_y in the model's [-1, 1] scale, so 0.05
here is 0.025 on [0, 1] pixels) at each ``--sigma-y`` is restored by each ``--methods`` method
(:data:`jdiff.restoration.METHODS`, the library defaults of each, one sample per image) and by
the pseudo-inverse ``A^+ y`` (no model). Tasks (:data:`TASKS`): centre-box inpainting (the
central H/2 x W/2 box missing), random inpainting (a random half of the pixels kept, one mask for
all images), 2x super-resolution by average pooling, Gaussian deblurring (5 taps, std 1 pixel,
reflect boundary; exact blur, no singular value truncated) and colorization (RGB data only:
skipped, and said so, for grayscale digits). RePaint runs for the inpainting tasks only (it
replaces known pixels); DDNM+ only for sigma_y > 0 (at sigma_y = 0 it is DDNM by construction).

Metrics per method, averaged over the images: PSNR and SSIM (dm-pix, on [0, 1] pixels after
clipping to the data range; SSIM with a 5-tap Gaussian window of std 1 on images under 16
pixels, dm-pix's 11 / 1.5 otherwise), measurement consistency ``||A x - y|| / ||y||`` on the
method's raw output (the ground truth's own value, 0 or about the noise, is the row ``truth``),
the Frechet distance of the restored set to the training images in the project's own feature
network (:mod:`jdiff.metrics.feature_net`, cached in the work directory as by
``cifar10_sampling.py``; with at least :data:`FD_MIN_IMAGES` images; the ground-truth images'
own distance is the floor), the realised NFE (model evaluations per image; DPS and PiGDM also
make as many backward passes) and the wall time of the call (the first call of a method on an
operator type includes its compilation).

Outputs in ``--out``: ``restoration.json`` (everything), ``restoration_table.md`` and
``grid_<task>_sy<sigma>.png`` (rows: images; columns: ground truth, the measurement (y where it
has the image's shape, else A^+ y), then each method).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import metrics
from jdiff import restoration as R
from jdiff.cli import Parser, check_output_dir, run_command
from jdiff.data import from_model_range, to_model_range
from jdiff.run import RunConfig, load_image_data, load_run, train_run
from jdiff.training import stop_on_signals

ROOT = Path(__file__).resolve().parents[1]
PROG = "restoration.py"

# task name -> operator spec of jdiff.restoration.parse_operator
TASKS = {"inpaint_box": "inpaint:box", "inpaint_random": "mask:0.5", "sr2": "sr:2",
         "blur": "blur:gauss:5:1.0:reflect", "color": "color"}
MASK_TASKS = ("inpaint_box", "inpaint_random")
METHODS = ("pinv", "ddnm", "ddnm_plus", "ddrm", "dps", "pigdm", "repaint")
FD_MIN_IMAGES = 50  # below this the Frechet distance is not computed (too few samples)

DEFAULTS = dict(n_images=100, nfe=20, dps_nfe=100, sigma_y="0,0.05", workdir="runs/laptop", feature_steps=2000)
QUICK = dict(n_images=8, nfe=4, dps_nfe=4, sigma_y="0,0.05", workdir="runs/restoration_quick", feature_steps=100,
             steps=30)


def _load_sibling(name):
    """A script of experiments/ (not a package) as a module."""
    path = Path(__file__).resolve().parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bench_common():
    """``benchmarks/common.py`` (machine record, load average, other processes' CPU share)."""
    if "bench_common" in sys.modules:
        return sys.modules["bench_common"]
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "common.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_common"] = mod
    spec.loader.exec_module(mod)
    return mod


SAMPLING = _load_sibling("cifar10_sampling")  # the laptop preset and the cached feature network


def parse_args(argv=None):
    p = Parser(prog=PROG, description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke run: few images and steps")
    p.add_argument("--workdir", default=None, help=f"trained run to reuse, or where to train one (default "
                                                   f"{DEFAULTS['workdir']}; --quick: {QUICK['workdir']})")
    p.add_argument("--out", default="benchmarks/results/restoration", help="output directory")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--sigma-y", default=None, help=f"comma list of measurement noise std in the model's [-1, 1] "
                                                   f"scale (default {DEFAULTS['sigma_y']})")
    p.add_argument("--nfe", type=int, default=None,
                   help=f"NFE budget of every method but DPS (default {DEFAULTS['nfe']}; --quick {QUICK['nfe']})")
    p.add_argument("--dps-nfe", type=int, default=None,
                   help=f"NFE budget of DPS (DDPM steps; default {DEFAULTS['dps_nfe']}; --quick {QUICK['dps_nfe']})")
    p.add_argument("--n-images", type=int, default=None,
                   help=f"held-out test images restored (default {DEFAULTS['n_images']}; --quick {QUICK['n_images']})")
    p.add_argument("--grid-images", type=int, default=8, help="images (rows) in each PNG grid")
    p.add_argument("--seed", type=int, default=0, help="seed of the random mask, the noise and the samplers")
    p.add_argument("--steps", type=int, default=None, help="training steps when the work directory holds no "
                                                           "run (default: the laptop preset's 4000; --quick 30)")
    p.add_argument("--feature-steps", type=int, default=None,
                   help="training steps of the own feature network when none is cached (default 2000)")
    p.add_argument("--no-train", action="store_true", help="fail unless --workdir holds a trained run")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def _names(text: str, valid, flag: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError(f"{flag} is empty")
    bad = [s for s in items if s not in valid]
    if bad:
        raise ValueError(f"unknown {flag[2:].rstrip('s')}(s) {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")
    if len(set(items)) != len(items):
        raise ValueError(f"{flag} lists a name twice: {text!r}")
    return items


def parse_sigmas(text: str) -> list[float]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError("--sigma-y is empty")
    try:
        out = [float(s) for s in items]
    except ValueError:
        raise ValueError(f"--sigma-y must be a comma list of numbers, got {text!r}") from None
    if not all(math.isfinite(v) and v >= 0 for v in out):
        raise ValueError(f"--sigma-y values must be finite and >= 0, got {text!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"--sigma-y lists a value twice: {text!r}")
    return out


def check_args(args):
    """Fill the defaults (``--quick`` or not) and check every input before any work; the data
    specification of the run (its own if the work directory holds one, else the preset's)."""
    preset = QUICK if args.quick else DEFAULTS
    for k in ("n_images", "nfe", "dps_nfe", "workdir", "feature_steps"):
        if getattr(args, k) is None:
            setattr(args, k, preset[k])
    if args.sigma_y is None:
        args.sigma_y = preset["sigma_y"]
    args.task_list = _names(args.tasks, TASKS, "--tasks")
    args.method_list = _names(args.methods, METHODS, "--methods")
    args.sigmas = parse_sigmas(args.sigma_y)
    for name in ("nfe", "dps_nfe", "n_images", "grid_images", "feature_steps"):
        v = getattr(args, name)
        if v < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    if args.seed < 0:
        raise ValueError(f"--seed must be non-negative, got {args.seed}")
    check_output_dir(args.workdir)
    check_output_dir(args.out, "--out")
    cfg_path = Path(args.workdir) / "config.json"
    if cfg_path.exists():
        data = json.loads(cfg_path.read_text())["data"]
    elif args.no_train:
        raise ValueError(f"--no-train: {args.workdir} holds no trained run")
    else:
        data = SAMPLING.CONFIGS["laptop"]["data"]
    test = load_image_data(data, "test")
    if args.n_images > len(test):
        raise ValueError(f"--n-images {args.n_images} is more than the {len(test)} test images of {data!r}")
    channels = test.images.shape[-1]
    if channels != 3 and args.task_list == ["color"]:  # with other tasks it is skipped, and said so
        raise ValueError(f"the color task needs RGB data; {data!r} has {channels} channel(s)")
    return data


def training_config(args) -> RunConfig:
    """The laptop preset of cifar10_sampling.py (``--steps``; ``--quick``: 30 steps and frequent saves)."""
    preset = dict(SAMPLING.CONFIGS["laptop"])
    if args.quick:
        preset.update(steps=QUICK["steps"], save_every=QUICK["steps"], log_every=10, warmup_steps=5)
    if args.steps is not None:
        preset["steps"] = args.steps
    return RunConfig(**preset)


def load_model(args, log):
    """``(make_model_fn(batch), schedule, prediction, info, train_ds, test_ds)``: the run in the work
    directory (trained first when there is none), used unconditionally (null class)."""
    workdir = Path(args.workdir)
    t0 = time.perf_counter()
    trained_now = False
    if not (workdir / "config.json").exists() or args.steps is not None:
        with stop_on_signals() as stop:
            train_run(training_config(args), workdir, progress=not args.quiet, stop=stop)
        trained_now = True
    run, state = load_run(workdir)
    params = state.ema_params
    log(f"model: {run.config.model} on {run.config.data}, step {int(state.step)} "
        f"({'trained' if trained_now else 'reused'}, {time.perf_counter() - t0:.0f} s)")

    def make(batch):
        if run.config.conditional:  # the null class: the unconditional model
            return run.model_fn(params, jnp.full((batch,), run.null_label, jnp.int32))
        return run.model_fn(params)

    info = {"workdir": str(workdir), "train_steps": int(state.step), "trained_this_call": trained_now,
            "train_seconds_this_call": round(time.perf_counter() - t0, 1) if trained_now else 0.0,
            "config": run.config.to_json(), "unconditional_via_null_class": bool(run.config.conditional)}
    test = load_image_data(run.config.data, "test")
    return make, run.schedule, run.prediction, info, run.dataset, test


def feature_extractor(args, train_ds, test_ds, log):
    """The own feature network (cached in the work directory, as cifar10_sampling.py does)."""
    model, params, info = SAMPLING.feature_network(Path(args.workdir), train_ds, test_ds, args.feature_steps, log)
    return metrics.feature_fn(params, model), info


# ----------------------------------------------------------------------------- metrics


def to_unit(x) -> np.ndarray:
    """Model range [-1, 1] -> [0, 1] pixels, clipped to the data range."""
    return (np.clip(np.asarray(x, np.float32), -1.0, 1.0) + 1.0) / 2.0


def ssim_window(height: int) -> tuple[int, float]:
    return (5, 1.0) if height < 16 else (11, 1.5)


@partial(jax.jit, static_argnames=("size", "sigma"))
def _psnr_ssim(a, b, size, sigma):
    import dm_pix as dix

    return dix.psnr(a, b), dix.ssim(a, b, max_val=1.0, filter_size=size, filter_sigma=sigma)


def image_metrics(x, truth) -> dict:
    """Per-image PSNR and SSIM (dm-pix) of restored ``x`` against ``truth`` (both model range)."""
    a, b = jnp.asarray(to_unit(x)), jnp.asarray(to_unit(truth))
    size, sigma = ssim_window(a.shape[1])
    psnr, ssim = _psnr_ssim(a, b, size, sigma)
    return {"psnr": np.asarray(psnr, np.float64), "ssim": np.asarray(ssim, np.float64)}


@jax.jit
def _measure(op, x, sigma_y, key):
    """``y = A x + sigma_y n`` (one compiled program per operator type; sigma_y traced: 0 adds 0 * n)."""
    return R.measure(op, x, sigma_y, key)


def consistency(op, x, y) -> np.ndarray:
    """``||A x - y|| / ||y||`` per image (raw output, no clipping)."""
    ax = np.asarray(op.A(jnp.asarray(x, jnp.float32)), np.float64).reshape(len(x), -1)
    yy = np.asarray(y, np.float64).reshape(len(x), -1)
    return np.linalg.norm(ax - yy, axis=1) / np.maximum(np.linalg.norm(yy, axis=1), 1e-12)


def quantize(x) -> np.ndarray:
    """Round to the data's uint8 pixels and back (as the sampling experiment does before features)."""
    return to_model_range(from_model_range(np.clip(np.asarray(x, np.float32), -1.0, 1.0)))


# ----------------------------------------------------------------------------- the experiment


def plan(task_list, method_list, sigmas, channels):
    """``(runs, skipped)``: runs ``(task, sigma_y, method)``; skipped with the reason."""
    runs, skipped = [], []
    for task in task_list:
        if task == "color" and channels != 3:
            skipped.append({"task": task, "reason": f"the data have {channels} channel(s): nothing to colorize"})
            continue
        for s in sigmas:
            for m in method_list:
                if m == "repaint" and task not in MASK_TASKS:
                    skipped.append({"task": task, "sigma_y": s, "method": m,
                                    "reason": "RePaint replaces known pixels: inpainting only"})
                elif m == "ddnm_plus" and s == 0:
                    skipped.append({"task": task, "sigma_y": s, "method": m,
                                    "reason": "DDNM+ is DDNM at sigma_y = 0"})
                else:
                    runs.append((task, s, m))
    return runs, skipped


def restore(method, make_model, schedule, prediction, op, y, sigma_y, budget, key):
    """``(x, nfe, backward passes)`` of one method on a batch of measurements."""
    if method == "pinv":
        return op.pinv(y), 0, 0
    x = R.METHODS[method](make_model(y.shape[0]), schedule, op, y, sigma_y, budget, key, prediction=prediction)
    nfe = int(R.method_nfe(method, schedule, budget))
    return x, nfe, nfe if method in ("dps", "pigdm") else 0


def run_experiment(args, make_model, schedule, prediction, truth, feats=None, ref_stats=None, progress=None,
                   on_problem=None):
    """Every task x sigma_y x method on ``truth`` (N, H, W, C), model range. Returns ``(rows,
    skipped, examples)``; ``examples[(task, sigma)]`` holds the grid images. ``feats`` and
    ``ref_stats``: feature function and training-image statistics for the Frechet distance (None:
    not computed)."""
    n, shape = truth.shape[0], tuple(truth.shape[1:])
    runs, skipped = plan(args.task_list, args.method_list, args.sigmas, shape[-1])
    bar = progress.add_task("restoration", total=len(runs)) if progress is not None else None
    use_fd = feats is not None and ref_stats is not None and n >= FD_MIN_IMAGES
    rows, examples = [], {}
    truth_j = jnp.asarray(truth, jnp.float32)
    base = jax.random.key(args.seed)
    fd_truth = metrics.frechet_distance_from_stats(metrics.compute_stats(feats, quantize(truth)), ref_stats) \
        if use_fd else None
    ops = {}
    for ti, task in enumerate(args.task_list):
        if not any(r[0] == task for r in runs):
            continue
        ops[task] = op = R.parse_operator(TASKS[task], shape, args.seed)
        for si, s in enumerate(args.sigmas):
            todo = [m for (t_, s_, m) in runs if t_ == task and s_ == s]
            y = _measure(op, truth_j, jnp.float32(s), jax.random.fold_in(base, 1000 * ti + si))
            cons_truth = consistency(op, truth, y)
            rows.append({"task": task, "operator": TASKS[task], "sigma_y": s, "method": "truth", "nfe": 0,
                         "consistency": float(cons_truth.mean()), "fd": fd_truth})
            shown = np.asarray(y if tuple(op.out_shape) == shape else op.pinv(y))
            ex = {"truth": np.asarray(truth[:args.grid_images]), "measurement": shown[:args.grid_images]}
            for m in todo:
                budget = args.dps_nfe if m == "dps" else args.nfe
                key = jax.random.fold_in(base, 7 + 1000 * ti + si)
                t0 = time.perf_counter()
                x, nfe, vjp = restore(m, make_model, schedule, prediction, op, y, s, budget, key)
                x = np.asarray(jax.block_until_ready(x))
                seconds = time.perf_counter() - t0
                finite = bool(np.isfinite(x).all())
                im = image_metrics(np.nan_to_num(x), truth)
                cons = consistency(op, x, y)
                row = {"task": task, "operator": TASKS[task], "sigma_y": s, "method": m,
                       "nfe_budget": 0 if m == "pinv" else budget, "nfe": nfe, "backward_passes": vjp,
                       "psnr": float(im["psnr"].mean()), "psnr_std": float(im["psnr"].std(ddof=1)) if n > 1 else None,
                       "ssim": float(im["ssim"].mean()), "ssim_std": float(im["ssim"].std(ddof=1)) if n > 1 else None,
                       "consistency": float(cons.mean()), "consistency_max": float(cons.max()),
                       "fd": None, "seconds": round(seconds, 2), "finite": finite}
                if use_fd and finite:
                    row["fd"] = metrics.frechet_distance_from_stats(metrics.compute_stats(feats, quantize(x)),
                                                                    ref_stats)
                rows.append(row)
                ex[m] = x[:args.grid_images]
                if progress is not None:
                    progress.update(bar, advance=1, description=f"{task} sigma_y {s:g}: {m} (NFE {nfe}) "
                                                                f"PSNR {row['psnr']:.2f}")
            examples[(task, s)] = ex
            if on_problem is not None:
                on_problem(rows, skipped)
    return rows, skipped, examples


# ----------------------------------------------------------------------------- outputs


def _fmt(v, spec, none="-"):
    if v is None:
        return none
    return "nan" if not math.isfinite(v) else format(v, spec)


def markdown(rows, skipped, method_list, header_lines=()) -> str:
    """The long table (task x sigma_y x method) and the PSNR / SSIM matrices (best in bold)."""
    lines = ["# Zero-shot restoration on held-out images", "", *header_lines]
    problems = list(dict.fromkeys((r["task"], r["sigma_y"]) for r in rows))
    methods = [m for m in method_list if any(r["method"] == m for r in rows)]
    for key, title in (("psnr", "PSNR (dB, higher is better)"), ("ssim", "SSIM (higher is better)"),
                       ("consistency", "consistency ||A x - y|| / ||y|| (truth: the measurement noise's own)")):
        lines += [f"### {title}", "", "| task | sigma_y | " + " | ".join(methods)
                  + (" | truth |" if key == "consistency" else " |"),
                  "|---|---|" + "---|" * (len(methods) + (key == "consistency"))]
        for task, s in problems:
            cells = {r["method"]: r for r in rows if (r["task"], r["sigma_y"]) == (task, s)}
            vals = [cells[m][key] for m in methods if m in cells and m != "pinv" and cells[m].get(key) is not None
                    and math.isfinite(cells[m][key])]
            best = (max(vals) if key != "consistency" else None) if vals else None
            out = []
            for m in methods:
                r = cells.get(m)
                if r is None:
                    out.append("")
                    continue
                c = _fmt(r[key], ".2f" if key == "psnr" else ".3f")
                out.append(f"**{c}**" if best is not None and r[key] == best else c)
            if key == "consistency":
                out.append(_fmt(cells["truth"]["consistency"], ".3f") if "truth" in cells else "")
            lines.append(f"| {task} | {s:g} | " + " | ".join(out) + " |")
        lines.append("")
    has_fd = any(r.get("fd") is not None for r in rows)
    lines += ["### Every run", "", "| task | sigma_y | method | NFE | PSNR | SSIM | consistency | "
              + ("FD | " if has_fd else "") + "seconds |", "|---|---|---|---|---|---|---|" + ("---|" if has_fd else "")
              + "---|"]
    for r in rows:
        if r["method"] == "truth":
            continue
        nfe = str(r["nfe"]) + (f" (+{r['backward_passes']} VJP)" if r.get("backward_passes") else "")
        lines.append(f"| {r['task']} | {r['sigma_y']:g} | {r['method']} | {nfe} | "
                     f"{_fmt(r['psnr'], '.2f')} ± {_fmt(r['psnr_std'], '.1f')} | "
                     f"{_fmt(r['ssim'], '.3f')} ± {_fmt(r['ssim_std'], '.2f')} | {_fmt(r['consistency'], '.3g')} | "
                     + (f"{_fmt(r['fd'], '.2f')} | " if has_fd else "") + f"{r['seconds']:.1f} |")
    if has_fd:
        floors = {r["fd"] for r in rows if r["method"] == "truth" and r.get("fd") is not None}
        if floors:
            lines += ["", f"FD floor (the ground-truth images themselves vs the training images): "
                          f"{min(floors):.2f}."]
    if skipped:
        lines += ["", "Skipped:", ""]
        seen = set()
        for s in skipped:
            what = s["task"] if "method" not in s else f"{s['method']} on {s['task']}"
            if (what, s["reason"]) not in seen:
                seen.add((what, s["reason"]))
                lines.append(f"- {what}: {s['reason']}")
    return "\n".join(lines) + "\n"


def save_grid(path, ex: dict, title: str):
    """One image: rows = images, columns = ``ex``'s entries (titled), tiled by
    :func:`jdiff.plotting.image_grid` and drawn once (fast, unlike one axis per image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jdiff.plotting import image_grid

    cols = list(ex)
    nrow, w = len(ex["truth"]), np.asarray(ex["truth"]).shape[2]
    tiles = np.stack([from_model_range(np.clip(np.asarray(ex[c][i], np.float32), -1, 1))
                      for i in range(nrow) for c in cols])
    grid = image_grid(tiles, len(cols), pad=1)
    fig, ax = plt.subplots(figsize=(max(0.75 * len(cols) + 0.3, 4.0), 0.75 * nrow + 0.7))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray" if grid.shape[-1] == 1 else None,
              vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([j * (w + 1) + (w - 1) / 2 for j in range(len(cols))])
    ax.set_xticklabels([c.replace("_", "\n") for c in cols], fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=8, pad=22)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out: Path, result: dict, examples: dict, header_lines=()) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    common = bench_common()
    (out / "restoration.json").write_text(json.dumps(result, indent=2, default=common.json_default) + "\n")
    (out / "restoration_table.md").write_text(markdown(result["rows"], result["skipped"], result["methods"],
                                                       header_lines))
    names = ["restoration.json", "restoration_table.md"]
    for (task, s), ex in examples.items():
        name = f"grid_{task}_sy{s:g}.png"
        save_grid(out / name, ex, f"{task} ({TASKS[task]}), sigma_y {s:g}")
        names.append(name)
    return names


def main(argv=None) -> int:
    """The experiment; bad input is one line ``restoration.py: error: ...`` and status 2."""
    args = parse_args(argv)
    return run_command(_main, args, prog=PROG)


def _main(args) -> int:
    check_args(args)
    try:
        import dm_pix  # noqa: F401 - PSNR / SSIM
    except ImportError:
        raise ValueError("the metrics need dm-pix: pip install dm-pix") from None
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    common = bench_common()
    record = common.Run(__file__, sys.argv[1:] if argv_is_cli() else [])
    out = Path(args.out)

    make_model, schedule, prediction, model_info, train_ds, test_ds = load_model(args, log)
    truth = to_model_range(test_ds.images[:args.n_images]).astype(np.float32)
    feats = ref = finfo = None
    if args.n_images >= FD_MIN_IMAGES:
        feats, finfo = feature_extractor(args, train_ds, test_ds, log)
        ref = metrics.compute_stats(feats, to_model_range(train_ds.images))
    header = [f"{args.n_images} held-out test images, one restoration each; model {model_info['config']['model']} "
              f"({model_info['workdir']}, step {model_info['train_steps']}); NFE budget {args.nfe} "
              f"(DPS {args.dps_nfe}).", ""]
    result = {"quick": args.quick, "tasks": args.task_list, "operators": {t: TASKS[t] for t in args.task_list},
              "methods": args.method_list, "sigma_y": args.sigmas, "nfe_budget": args.nfe,
              "dps_nfe_budget": args.dps_nfe, "n_images": args.n_images, "seed": args.seed,
              "ssim_window": dict(zip(("filter_size", "filter_sigma"), ssim_window(truth.shape[1]))),
              "model": model_info, "feature_net": finfo, "fd_reference": "training images" if ref else None,
              "data_shape": list(truth.shape[1:])}

    def checkpoint(rows, skipped):  # partial results after every task x sigma_y
        out.mkdir(parents=True, exist_ok=True)
        (out / "restoration.json").write_text(json.dumps({**result, "rows": rows, "skipped": skipped, "partial": True},
                                                         indent=2, default=common.json_default) + "\n")

    progress = None
    if not args.quiet:
        progress = make_progress()
        progress.start()
    try:
        rows, skipped, examples = run_experiment(args, make_model, schedule, prediction, truth, feats, ref,
                                                 progress, on_problem=checkpoint)
    finally:
        if progress is not None:
            progress.stop()
    result = record.finish({**result, "rows": rows, "skipped": skipped})
    header = [f"Command: `{result['command']}`", "", *header]
    names = write_outputs(out, result, examples, header)
    log(markdown(rows, skipped, args.method_list, header))
    log(f"{len(rows)} rows in {result['wall_s']:.0f} s; wrote " + ", ".join(str(out / n) for n in names))
    return 0


def argv_is_cli() -> bool:
    return Path(sys.argv[0]).name == PROG


def make_progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


if __name__ == "__main__":
    sys.exit(main())
