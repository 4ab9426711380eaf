"""CIFAR-10 (or digits) sampling study: train or resume a model, then Frechet distance vs solver x NFE.

    python experiments/cifar10_sampling.py                          # laptop default: sklearn digits
    python experiments/cifar10_sampling.py --config cifar10_16 --data-path ../shared/data/cifar10_test_batch_jpegq75.pkl
    python experiments/cifar10_sampling.py --config cifar10 --data-path data/cifar-10-batches-py   # accelerator

Steps:

1. Train (or resume from ``--workdir``) a diffusion model with :func:`jdiff.run.train_run`; every
   :class:`jdiff.run.RunConfig` field can be overridden (``--steps``, ``--batch-size``, ``--lr``...).
2. Train (once, cached in the work directory) the own feature network of
   :mod:`jdiff.metrics.feature_net` on the training images and labels. Frechet distances below are
   in that feature space: **not comparable with published FIDs**. With ``--inception PATH`` (an
   ``.npz`` in pytorch-fid's state-dict layout, see ``scripts/convert_inception_weights.py``) the
   Inception-v3 pool_3 distance is computed as well.
3. Reference statistics from the training images; baselines: the held-out test split (the
   distance a perfect model would reach with as many samples) and Gaussian noise. With
   ``--repeats R`` also the spread of that baseline: the pooled train + test images re-split R
   times at random and R times stratified by class, held-out part vs the rest. The test split is
   stratified; an unconditional model's samples have random class proportions, which in a
   classifier's feature space move the mean, so the random re-splits are its fair comparator.
   For the distances to the test images (n samples vs n test images: more small-sample bias than
   n test vs all training images), the yardstick is stratified subsets of n training images vs
   the test images (R of them with ``--repeats R``).
4. Sample ``--n-samples`` images (default: as many as the test split, so samples vs train and
   test vs train have the same small-sample bias) with every solver and NFE from the same initial
   noise (``--repeats R``: R such sets, mean ± standard deviation reported), using the EMA
   parameters (class-conditional runs: balanced labels ``i % K``, no guidance), round them to
   uint8 pixels like the data (standard FID practice), and write to
   ``--out``: ``results.json`` (everything),
   ``fd_table.md`` (best solver per NFE in bold), ``fd_vs_nfe.png``, ``samples_<solver>_nfe<k>.png``,
   ``data_train.png``.

5. With ``--variants plain,teleport,dualfast,both`` every solver also runs with the accelerators
   of :mod:`jdiff.accel` at the same NFE: analytical teleportation (``--teleport FRACTION|auto``;
   the Gaussian is the training images' mean and covariance; ``auto`` probes the model once on 16
   noises, its calls reported per sample) and the DualFast hook (``--dualfast k=v,...``). Rows are
   labelled ``solver+variant``.

The model function handed to the sampler comes from :meth:`jdiff.run.Run.model_fn` (one seam,
``model_fn(x, t, args)``); accelerators and guidance wrap that function.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jdiff
from jdiff import accel, metrics
from jdiff.accel.plan import (DEFAULT_TOL, AccelPlan, dualfast_plan, grid_fraction, parse_teleport, resolve_fraction,
                              teleported_sample)
from jdiff.cli import Parser, add_run_config_args, check_output_dir, check_run_flags, run_command
from jdiff.data import from_model_range, stratified_split, to_model_range
from jdiff.plotting import save_image_grid
from jdiff.run import RunConfig, load_image_data, load_run, train_run
from jdiff.grids import GRIDS
from jdiff.solvers import SOLVERS, get_solver, steps_for_nfe
from jdiff.training import stop_on_signals

# Training presets. 'laptop' trains on sklearn digits in minutes on a CPU; 'cifar10_16' is
# CIFAR-10 mean-pooled to 16x16 (a larger CPU run); 'cifar10' is the full DDPM++-size model for
# an accelerator (35.7M parameters, batch 128, lr 2e-4 with 5k warm-up, EMA 0.9999).
CONFIGS = {
    "laptop": dict(data="digits", model="unet_digits", model_kwargs='{"num_res_blocks": 1, "dropout": 0.0}',
                   conditional=True, steps=4000, batch_size=128, lr=2e-3, warmup_steps=200, ema_decay=0.999,
                   save_every=500, log_every=50),
    "cifar10_16": dict(data="cifar10:{path}@16", model="unet_digits", steps=20000, batch_size=128, lr=5e-4,
                       warmup_steps=500, ema_decay=0.9995, save_every=1000, log_every=100),
    "cifar10": dict(data="cifar10:{path}", model="unet_cifar10", steps=400000, batch_size=128, lr=2e-4,
                    warmup_steps=5000, ema_decay=0.9999, save_every=5000, log_every=100),
}
DEFAULT_SOLVERS = "ddim,heun,dpmpp_2m,dpmpp_3m,unipc_bh2,ipndm"
DEFAULT_NFE = "5,6,8,10,15,20"
VARIANTS = ("plain", "teleport", "dualfast", "both")  # accelerators of each solver (jdiff.accel)


def parse_args(argv=None):
    p = Parser(prog="cifar10_sampling.py", description=__doc__)
    p.add_argument("--config", default="laptop", choices=sorted(CONFIGS),
                   help="training preset (its values are listed under the overrides below)")
    p.add_argument("--data-path", default=None, help="CIFAR-10 directory, batch pickle or .npz (cifar configs)")
    p.add_argument("--workdir", default=None, help="training run directory (default runs/<config>)")
    p.add_argument("--out", default=None, help="output directory (default <workdir>/sampling)")
    p.add_argument("--no-train", action="store_true", help="use the existing checkpoint as is")
    p.add_argument("--solvers", default=DEFAULT_SOLVERS, help=f"comma list of solver names ({', '.join(SOLVERS)})")
    p.add_argument("--nfe", default=DEFAULT_NFE, help="comma list of NFE budgets")
    p.add_argument("--grid", default="logsnr", help=f"time grid, one of {', '.join(GRIDS)}")
    p.add_argument("--n-samples", type=int, default=None, help="default: size of the test split")
    p.add_argument("--sample-batch", type=int, default=500, help="samples per sampler call")
    p.add_argument("--feature-steps", type=int, default=2000, help="training steps of the own feature network")
    p.add_argument("--inception", default=None, help="Inception-v3 weights .npz (pytorch-fid layout)")
    p.add_argument("--sample-seed", type=int, default=1234, help="seed of the initial noise")
    p.add_argument("--repeats", type=int, default=1,
                   help="sample sets per solver and NFE, each from new initial noise; the tables give "
                        "the mean Frechet distance and its standard deviation over them")
    p.add_argument("--variants", default="plain",
                   help="comma list of plain, teleport, dualfast, both: each solver with each accelerator")
    p.add_argument("--teleport", default="auto", metavar="FRACTION|auto",
                   help="teleport of the teleport/both variants (Gaussian statistics of the training images)")
    p.add_argument("--teleport-tol", type=float, default=DEFAULT_TOL, help="auto teleport tolerance")
    p.add_argument("--dualfast", default="", metavar="k=v,...",
                   help="DualFast options of the dualfast/both variants (empty: defaults)")
    p.add_argument("--quiet", action="store_true")
    overrides = p.add_argument_group(
        "run configuration overrides (jdiff.run.RunConfig; each preset's value in parentheses)")
    add_run_config_args(overrides, presets=CONFIGS)
    return p.parse_args(argv)


def build_config(args) -> RunConfig:
    preset = dict(CONFIGS[args.config])
    if "{path}" in preset["data"]:
        if not args.data_path:
            raise ValueError(f"--config {args.config} needs --data-path (CIFAR-10 directory, pickle or .npz)")
        if not Path(args.data_path).expanduser().exists():
            raise ValueError(f"--data-path {args.data_path!r} does not exist")
        preset["data"] = preset["data"].format(path=args.data_path)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    preset.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    return RunConfig(**preset)


def check_args(args):
    """Every input error before any work: ``(solvers, nfe budgets, variants, teleport, DualFast
    hook)`` when all is well."""
    from jdiff.bench import parse_nfe
    from jdiff.grids import CONTINUOUS_GRIDS, GRIDS

    check_run_flags(args)
    for name in ("sample_batch", "feature_steps", "repeats", "n_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    if not solvers:
        raise ValueError("--solvers is empty")
    for name in solvers:
        get_solver(name)  # an unknown name is a ValueError listing the valid ones
    nfes = list(parse_nfe(args.nfe))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ValueError(f"unknown variant(s) {', '.join(map(repr, bad)) or '(none)'}; valid: {', '.join(VARIANTS)}")
    teleport, dualfast = parse_teleport(args.teleport), dualfast_plan(args.dualfast)
    AccelPlan(teleport=teleport, tol=args.teleport_tol, **dualfast)  # checks the tolerance
    if teleport is not None and any(v in ("teleport", "both") for v in variants) and args.grid not in CONTINUOUS_GRIDS:
        raise ValueError(f"teleportation needs a continuous grid ({', '.join(CONTINUOUS_GRIDS)}), got {args.grid!r}")
    if args.grid not in GRIDS:
        raise ValueError(f"unknown grid {args.grid!r}; valid: {', '.join(GRIDS)}")
    if args.inception:
        if not Path(args.inception).is_file():
            raise ValueError(f"--inception {args.inception!r} is not a file")
        try:
            with np.load(args.inception, allow_pickle=False) as f:
                f.files  # noqa: B018 - an .npz lists its arrays; anything else fails here
        except (OSError, ValueError):
            raise ValueError(f"--inception {args.inception!r} is not an .npz of Inception weights") from None
    if args.sample_seed < 0:
        raise ValueError(f"--sample-seed must be non-negative, got {args.sample_seed}")
    if args.data_path and "{path}" not in CONFIGS[args.config]["data"]:
        raise ValueError(f"--data-path applies to the cifar10 configs, not --config {args.config}")
    for name in solvers:
        for budget in nfes:
            steps_for_nfe(get_solver(name), budget)  # a budget below a solver's minimum: ValueError
    workdir = args.workdir or f"runs/{args.config}"
    check_output_dir(workdir)
    check_output_dir(args.out or str(Path(workdir) / "sampling"), "--out")
    if args.no_train and not (Path(workdir) / "config.json").exists():
        raise ValueError(f"--no-train: {workdir} holds no trained run")
    return solvers, nfes, variants, teleport, dualfast


def feature_network(workdir: Path, train_ds, test_ds, steps: int, log):
    path = workdir / "feature_net.npz"
    info_path = workdir / "feature_net.json"
    if path.exists() and info_path.exists():
        model, params = metrics.load_feature_net(path)
        return model, params, json.loads(info_path.read_text())
    t0 = time.perf_counter()
    res = metrics.train_feature_net(to_model_range(train_ds.images), train_ds.labels, train_ds.num_classes,
                                    steps=steps, seed=0,
                                    test_data=(to_model_range(test_ds.images), test_ds.labels))
    info = {"train_accuracy": res.train_accuracy, "test_accuracy": res.test_accuracy, "steps": steps,
            "seconds": round(time.perf_counter() - t0, 1), "label": metrics.OWN_FEATURE_LABEL}
    metrics.save_feature_net(path, res.model, res.params)
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    log(f"feature network: train accuracy {res.train_accuracy:.3f}, test accuracy {res.test_accuracy:.3f}")
    return res.model, res.params, info


def markdown_table(rows, solvers, nfes, baselines, label, command, spread=None):
    lines = ["# Frechet distance vs solver and NFE", "", f"{label}. Lower is better; best per NFE budget in "
             "bold (deterministic solvers). Columns are NFE budgets: each solver takes the most steps "
             "that fit, and a cell says the NFE it used when that is less (Heun: 2 per step, 1 for the "
             "last). Samples are rounded to uint8 pixels before their features are taken, like the "
             "data.", "", f"Command: `{command}`", ""]
    runs = next((len(r["fd_runs"]) for r in rows if r.get("fd_runs")), 1)
    if runs > 1:
        lines += [f"Each cell: mean ± standard deviation over {runs} sample sets, each from new initial "
                  "noise (the same noises for every solver and NFE).", ""]
    lines += table_lines(rows, solvers, nfes, "fd", "FD of samples vs the training images")
    lines += [""] + table_lines(rows, solvers, nfes, "fd_vs_test", "FD of samples vs the held-out test images")
    lines += ["", "Baselines (same feature network). A perfect model's samples score like the held-out split "
              "against the training images; against the test images, like a same-sized subset of the "
              "training images (a Frechet distance between few images is biased upwards, more so the "
              "smaller both sets are, so 'test split vs train' is not the yardstick for 'vs test'):", ""]
    for k, v in baselines.items():
        lines.append(f"- {k}: {v:.3f}")
    for k, v in (spread or {}).items():
        lines.append(f"- {k}: {v['mean']:.3f} ± {v['std']:.2f} over {len(v['runs'])} draws "
                     f"({', '.join(f'{x:.2f}' for x in v['runs'])})")
    return "\n".join(lines) + "\n"


def table_lines(rows, solvers, nfes, key, title):
    lines = [f"### {title}", ""]
    lines.append("| solver | " + " | ".join(f"NFE ≤ {n}" for n in nfes) + " |")
    lines.append("|---|" + "---|" * len(nfes))
    best = {}
    for n in nfes:
        vals = [r[key] for r in rows if r["nfe_budget"] == n and not r["stochastic"]]
        best[n] = min(vals) if vals else None
    for s in solvers:
        cells = []
        for n in nfes:
            r = next((r for r in rows if r["solver"] == s and r["nfe_budget"] == n), None)
            if r is None:
                cells.append("n/a")
            else:
                std = r.get(key + "_std")
                cell = f"{r[key]:.3f}" + (f" ± {std:.2f}" if std is not None else "")
                cell = f"**{cell}**" if r[key] == best[n] else cell
                # a solver whose NFE per step does not fit the budget exactly uses fewer
                cells.append(cell + (f" (NFE {r['nfe']})" if r["nfe"] != n else ""))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return lines


def plot_fd(rows, solvers, nfes, baselines, path, label):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for s in solvers:
        pts = sorted((r["nfe"], r["fd"], r.get("fd_std") or 0.0) for r in rows if r["solver"] == s)
        if pts:
            nfe, fd, std = zip(*pts)
            ax.errorbar(nfe, fd, yerr=std if any(std) else None, marker="o", capsize=2, label=s)
    if "test split vs train" in baselines:
        ax.axhline(baselines["test split vs train"], color="k", ls="--", lw=1, label="test split")
    ax.set_xlabel("NFE")
    ax.set_ylabel("Frechet distance")
    ax.set_yscale("log")
    ax.set_xticks(nfes)
    ax.set_title(label, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    """The experiment; bad input is one line ``cifar10_sampling.py: error: ...`` and status 2."""
    args = parse_args(argv)
    return run_command(_main, args, prog="cifar10_sampling.py")


def _main(args) -> int:
    solvers, nfes, variants, teleport, dualfast = check_args(args)
    tol = args.teleport_tol
    cfg = build_config(args)
    workdir = Path(args.workdir or f"runs/{args.config}")
    out = Path(args.out or workdir / "sampling")
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)

    t0 = time.perf_counter()
    if not args.no_train:
        with stop_on_signals() as stop:
            res = train_run(cfg, workdir, progress=not args.quiet, stop=stop)
        log(f"trained to step {int(res.state.step)} in {time.perf_counter() - t0:.0f} s")
    train_seconds = time.perf_counter() - t0
    run, state = load_run(workdir)
    params = state.ema_params
    train_ds = run.dataset
    test_ds = load_image_data(run.config.data, "test")
    history = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    out.mkdir(parents=True, exist_ok=True)  # after the run is built: a failed start leaves nothing

    fmodel, fparams, finfo = feature_network(workdir, train_ds, test_ds, args.feature_steps, log)
    feats = metrics.feature_fn(fparams, fmodel)
    extractors = {"own": feats}
    if args.inception:
        extractors["inception"] = metrics.inception_feature_fn(metrics.load_inception_params(args.inception))

    def stats_of(name, images_float):
        return metrics.compute_stats(extractors[name], np.asarray(images_float), batch_size=250)

    ref = {k: stats_of(k, to_model_range(train_ds.images)) for k in extractors}
    ref_test = {k: stats_of(k, to_model_range(test_ds.images)) for k in extractors}
    n = args.n_samples or len(test_ds)
    shape = tuple(train_ds.images.shape[1:])
    rng = np.random.default_rng(args.sample_seed)
    noise_images = np.clip(rng.standard_normal((n,) + shape) * 0.5, -1, 1).astype(np.float32)
    baselines = {}
    for k in extractors:
        tag = "" if k == "own" else f" [{k}]"
        baselines["test split vs train" + tag] = metrics.frechet_distance_from_stats(ref_test[k], ref[k])
        noise_stats = stats_of(k, noise_images)
        baselines["Gaussian noise images vs train" + tag] = metrics.frechet_distance_from_stats(noise_stats, ref[k])
        baselines["Gaussian noise images vs test" + tag] = metrics.frechet_distance_from_stats(noise_stats, ref_test[k])
    baseline_spread = {}
    if args.repeats > 1:
        # The spread of the 'test split vs train' baseline: re-split the pooled train + test images
        # at random into the same two sizes, `repeats` times, and take the distance of the held-out
        # part to the rest. (The feature network saw the original training images, so this is an
        # approximation of a perfect model's spread, not an exact one.)
        # Unstratified re-splits leave the class proportions of the held-out part random, as in the
        # samples of an unconditional model; stratified ones fix them, as in the test split.
        pool = np.concatenate([to_model_range(train_ds.images), to_model_range(test_ds.images)])
        pool_labels = np.concatenate([train_ds.labels, test_ds.labels])
        n_train = len(train_ds)
        perm_rng = np.random.default_rng(args.sample_seed)
        splits = {"random": [], "stratified": []}
        for r in range(args.repeats):
            perm = perm_rng.permutation(len(pool))
            splits["random"].append((perm[:n_train], perm[n_train:]))
            splits["stratified"].append(stratified_split(pool_labels, len(test_ds) / len(pool),
                                                         seed=args.sample_seed + r))
        for k in extractors:
            tag = "" if k == "own" else f" [{k}]"
            for kind, pairs in splits.items():
                vals = [metrics.frechet_distance_from_stats(stats_of(k, pool[held]), stats_of(k, pool[rest]))
                        for rest, held in pairs]
                baseline_spread[f"{kind} re-splits of train + test: held-out vs rest" + tag] = {
                    "mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)), "runs": vals}
    # the yardstick of the 'vs test' table: n training images (a perfect model's n samples, with
    # the balanced classes of the stratified split) against the test images
    if n < len(train_ds):
        train_x = to_model_range(train_ds.images)
        for k in extractors:
            tag = "" if k == "own" else f" [{k}]"
            vals = []
            for r in range(max(args.repeats, 1)):
                _, sub = stratified_split(train_ds.labels, n / len(train_ds), seed=args.sample_seed + r)
                vals.append(metrics.frechet_distance_from_stats(stats_of(k, train_x[sub]), ref_test[k]))
            name = f"stratified subsets of {n} training images vs test" + tag
            if len(vals) == 1:
                baselines[name] = vals[0]
            else:
                baseline_spread[name] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)),
                                         "runs": vals}
    log("baselines: " + ", ".join(f"{k} {v:.3f}" for k, v in baselines.items()))
    save_image_grid(out / "data_train.png", train_ds.images[:64], 8, scale=4 if shape[0] <= 16 else 2)

    # repeat r draws its initial noise from seed sample_seed + r (r = 0 is the single-run default)
    zs = [jax.random.normal(jax.random.key(args.sample_seed + r), (n,) + shape, jnp.float32)
          for r in range(args.repeats)]
    labels = (jnp.arange(n) % run.num_classes).astype(jnp.int32) if run.config.conditional else None
    sched = run.schedule
    rows = []
    accel_stats, fractions = None, {}
    if any(v in ("teleport", "both") for v in variants):
        accel_stats = accel.GaussianStats.from_dataset(train_ds)

    def fraction_for(plan):
        """The teleport fraction (``auto``: probed once on 16 noises, with their labels)."""
        if "f" not in fractions:
            probe_z = jdiff.init_noise(sched, float(sched.t_max), zs[0][:plan.probe])
            probe_model = run.model_fn(params, None if labels is None else labels[:plan.probe])
            fractions["f"] = resolve_fraction(plan, probe_model, accel_stats, sched, args.grid, probe_z,
                                              prediction=run.prediction)
            log(f"teleport fraction {fractions['f'][0]:.2f} ({fractions['f'][1]} probe calls)")
        return fractions["f"]

    for name, variant in [(s_, v) for s_ in solvers for v in variants]:
        solver = get_solver(name)
        label_name = name if variant == "plain" else f"{name}+{variant}"
        plan = AccelPlan(teleport=teleport if variant in ("teleport", "both") else None, tol=tol,
                         **(dualfast if variant in ("dualfast", "both") else {}))
        for budget in nfes:
            try:
                steps = steps_for_nfe(solver, budget)
            except ValueError as err:
                log(f"skip {label_name} at NFE {budget}: {err}")
                continue
            grid = jdiff.grids.make_grid(sched, args.grid, steps)
            fraction = fraction_for(plan)[0] if plan.teleport is not None else 0.0
            t1 = time.perf_counter()
            fds: dict = {}
            finite = True
            for r, z in enumerate(zs):
                x_T = jdiff.init_noise(sched, grid[0], z)
                chunks = []
                for i in range(0, n, args.sample_batch):
                    sl = slice(i, i + args.sample_batch)
                    model_fn = run.model_fn(params, None if labels is None else labels[sl])
                    key = jax.random.fold_in(jax.random.key(args.sample_seed + 1 + 7919 * r), i)
                    if plan.teleport is not None:
                        x, full, info = teleported_sample(plan, model_fn, accel_stats, sched, solver, args.grid,
                                                          steps, "zero", x_T[sl], fraction, key,
                                                          prediction=run.prediction)
                        grid = full[info.skip_index:]
                        realised = grid_fraction(full, info.skip_index, "zero")
                    else:
                        x = jdiff.sample(model_fn, sched, solver, grid, x_T[sl], key, prediction=run.prediction,
                                         hooks=plan.hooks_for(solver))
                    chunks.append(np.asarray(jnp.clip(x, -1.0, 1.0)))
                samples = np.concatenate(chunks)
                finite = finite and bool(np.isfinite(samples).all())
                # the data are uint8 pixels: round the samples the same way before taking features
                samples = to_model_range(from_model_range(samples))
                if r == 0:
                    grid_samples = samples  # the PNG grid shows the first noise set
                for k in extractors:
                    st = stats_of(k, samples)
                    suffix = "" if k == "own" else f"_{k}"
                    fds.setdefault("fd" + suffix, []).append(metrics.frechet_distance_from_stats(st, ref[k]))
                    fds.setdefault("fd_vs_test" + suffix, []).append(
                        metrics.frechet_distance_from_stats(st, ref_test[k]))
            seconds = time.perf_counter() - t1
            row = {"solver": label_name, "base_solver": name, "variant": variant, "nfe_budget": budget,
                   "nfe": jdiff.nfe(solver, grid), "steps": steps, "stochastic": bool(solver.stochastic),
                   "seconds": round(seconds, 2), "finite": finite, **plan.describe(solver)}
            if plan.teleport is not None:
                row.update(teleport_fraction=realised, teleport_request=fraction, teleport_t=float(grid[0]),
                           probe_calls=fractions["f"][1], probe_nfe_per_sample=fractions["f"][1] * plan.probe / n)
            for key_name, vals in fds.items():
                row[key_name] = float(np.mean(vals))
                row[key_name + "_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
                row[key_name + "_runs"] = vals
            rows.append(row)
            save_image_grid(out / f"samples_{label_name}_nfe{budget}.png", from_model_range(grid_samples[:64]), 8,
                            scale=4 if shape[0] <= 16 else 2)
            log(f"{label_name:>18s} NFE {row['nfe']:>3d}: FD vs train {row['fd']:.3f}, vs test {row['fd_vs_test']:.3f}"
                f"  ({seconds:.1f} s)")

    label = metrics.OWN_FEATURE_LABEL
    labels_all = [name if v == "plain" else f"{name}+{v}" for name in solvers for v in variants]
    table = markdown_table(rows, labels_all, nfes, {k: v for k, v in baselines.items()}, label, command,
                           baseline_spread)
    (out / "fd_table.md").write_text(table)
    plot_fd(rows, labels_all, nfes, baselines, out / "fd_vs_nfe.png", label)
    result = {"command": command, "config": run.config.to_json(), "workdir": str(workdir), "n_samples": n,
              "grid": args.grid, "train_seconds_this_call": round(train_seconds, 1),
              "train_steps": int(state.step), "final_train_loss": history[-1].get("loss") if history else None,
              "feature_net": finfo, "baselines": baselines, "baseline_spread": baseline_spread, "rows": rows, "label": label,
              "devices": [str(d) for d in jax.devices()]}
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    log(table)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
