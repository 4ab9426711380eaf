"""The ``jdiff`` command line: ``jdiff sample``, ``jdiff bench steps|guidance`` and ``jdiff train``.

Bad input prints one line ``jdiff: error: ...`` to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=False)


def _can_write_in(folder: str) -> bool:
    """Whether a file can be created in ``folder`` (tried: permission bits do not tell for root,
    read-only mounts or pseudo file systems such as /proc)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_output_file(path: str) -> None:
    """Fail before any work when ``path`` cannot be written (missing folder, a folder itself, a
    folder where no file can be created)."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"--out {path!r} is a directory; give a file name")
    if not os.path.isdir(folder):
        raise ValueError(f"--out {path!r}: folder {folder!r} does not exist")
    if not _can_write_in(folder):
        raise ValueError(f"--out {path!r}: cannot write in folder {folder!r}")


def _run_bench(run, write, cfg, plan, args) -> int:
    """Run a checked benchmark plan under a progress bar, write its outputs, print one line."""
    t0 = time.perf_counter()
    with _progress() as progress:
        records = run(cfg, progress=progress if not args.quiet else None, plan=plan)
    command = "jdiff " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    paths = write(records, args.out, command)
    print(f"{len(records)} runs in {time.perf_counter() - t0:.1f} s; wrote " + ", ".join(paths.values()))
    return 0


def _cmd_bench_steps(args) -> int:
    from . import bench
    from .grids import GRIDS
    from .schedules import SCHEDULES
    from .solvers import SOLVERS

    testbeds = _split_testbeds(args.testbed, bench.DEFAULT_TESTBEDS)
    if args.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {args.schedule!r}; valid: {', '.join(SCHEDULES)}")
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    check_output_dir(args.out, "--out")
    cfg = bench.StepCountConfig(
        testbeds=tuple(testbeds),
        solvers=bench.parse_list(args.solvers, tuple(SOLVERS), "solver", default=bench.DEFAULT_SOLVERS),
        nfe=bench.parse_nfe(args.nfe),
        grids=bench.parse_list(args.grid, GRIDS, "grid"),
        schedule=args.schedule,
        final=args.final,
        n_samples=args.n,
        seed=args.seed,
        noise=args.noise,
        accel=accel_plan(args),
    )
    plan = bench.check_step_counts(cfg)  # every input error before the progress bar and any work
    return _run_bench(bench.run_step_counts, bench.write_outputs, cfg, plan, args)


def _split_testbeds(values, default) -> list:
    from .testbeds import BUILTIN

    testbeds = []
    for item in values or [",".join(default)]:
        testbeds += [v.strip() for v in item.split(",") if v.strip()]
    if not testbeds:
        raise ValueError(f"--testbed is empty; valid: {', '.join(BUILTIN)} or a path to a .json spec")
    for tb in testbeds:
        if tb not in BUILTIN and not tb.endswith(".json"):
            raise ValueError(f"unknown testbed {tb!r}; valid: {', '.join(BUILTIN)} or a path to a .json spec")
    return testbeds


def _cmd_bench_guidance(args) -> int:
    from .bench import guidance as gb
    from .bench import parse_list, parse_nfe
    from .grids import GRIDS
    from .schedules import SCHEDULES
    from .solvers import SOLVERS

    testbeds = _split_testbeds(args.testbed, gb.DEFAULT_TESTBEDS)
    if args.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {args.schedule!r}; valid: {', '.join(SCHEDULES)}")
    if args.grid not in GRIDS:
        raise ValueError(f"unknown grid {args.grid!r}; valid: {', '.join(GRIDS)}")
    check_output_dir(args.out, "--out")
    cfg = gb.GuidanceConfig(
        testbeds=tuple(testbeds),
        methods=parse_list(args.methods, gb.METHODS, "guidance method"),
        scales=gb.parse_scales(args.scales),
        solvers=parse_list(args.solvers, tuple(SOLVERS), "solver"),
        nfe=parse_nfe(args.nfe), grid=args.grid, schedule=args.schedule, final=args.final,
        n_per_class=args.n_per_class, seed=args.seed,
    )
    return _run_bench(gb.run_guidance, gb.write_outputs, cfg, gb.check_guidance(cfg), args)


def _cmd_bench_restore(args) -> int:
    from .bench import parse_nfe
    from .bench import restore as rb
    from .schedules import SCHEDULES

    testbeds = _split_testbeds(args.testbed, ("mix16d",))
    if args.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {args.schedule!r}; valid: {', '.join(SCHEDULES)}")
    operators = [v.strip() for v in ";".join(args.operator or ["mask:0.5"]).split(";") if v.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if methods == ["all"]:
        methods = []
    elif not methods:
        raise ValueError("--methods is empty")
    for name in ("n_measurements", "n_per_measurement"):
        if getattr(args, name) < (1 if name == "n_measurements" else 2):
            raise ValueError(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    check_output_dir(args.out, "--out")
    cfg = rb.RestoreConfig(testbeds=tuple(testbeds), operators=tuple(operators), sigma_ys=rb.parse_sigma_ys(args.sigma_y),
                           methods=tuple(methods), nfe=parse_nfe(args.nfe), schedule=args.schedule,
                           n_measurements=args.n_measurements, n_per_measurement=args.n_per_measurement,
                           seed=args.seed, noise=args.noise)
    return _run_bench(rb.run_restore, rb.write_outputs, cfg, rb.check_restore(cfg), args)


def _cmd_bench_discrete(args) -> int:
    from .bench import discrete as db
    from .discrete import BUILTIN_DISCRETE

    tb = args.testbed.strip()
    if not tb:
        raise ValueError(f"--testbed is empty; valid: {', '.join(BUILTIN_DISCRETE)} or a path to a .json spec")
    if args.n < 2:
        raise ValueError(f"--n must be at least 2, got {args.n}")
    check_output_dir(args.out, "--out")
    cfg = db.DiscreteConfig(testbed=tb, steps=db.parse_ints(args.steps, "--steps"), T=db.parse_ints(args.T, "--T"),
                            schedules=db.parse_schedules(args.schedules), n=args.n, n_mc=args.mc, seed=args.seed)
    return _run_bench(db.run_discrete, db.write_outputs, cfg, db.check_discrete(cfg), args)


def _guided_testbed_model(args, tb, schedule, n: int):
    """``(model_fn, args for sample, note)`` of ``jdiff sample --labels/--cfg/--classifier-guidance``."""
    import math

    import jax.numpy as jnp
    import numpy as np

    from .guidance import check_labels, classifier_free, classifier_guidance

    guided = args.cfg is not None or args.classifier_guidance is not None
    if args.labels is None:
        if guided:
            raise ValueError("--cfg / --classifier-guidance need --labels (the classes to sample)")
        return tb.model_fn(schedule), None, ""
    if tb.labels is None:
        raise ValueError(f"--labels needs a labelled testbed (spec field 'labels'; built-in: classes2d, "
                         f"classes16d); {tb.name!r} has none")
    if args.cfg is not None and args.classifier_guidance is not None:
        raise ValueError("give one of --cfg and --classifier-guidance")
    try:
        values = [int(v) for v in args.labels.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--labels must be a comma list of integers, got {args.labels!r}") from None
    if not values:
        raise ValueError("--labels is empty")
    labels = check_labels(np.resize(np.asarray(values), n), tb.n_classes, allow_null=not guided)
    note = f"; labels {args.labels} (cycled)"
    model_fn = tb.model_fn(schedule)
    for flag, value in (("--cfg", args.cfg), ("--classifier-guidance", args.classifier_guidance)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{flag} must be a finite number, got {value}")
    if args.cfg is not None:
        model_fn = classifier_free(model_fn, float(args.cfg), null_label=tb.n_classes)
        note += f"; classifier-free guidance w = {args.cfg:g}"
    elif args.classifier_guidance is not None:
        model_fn = classifier_guidance(tb.model_fn(schedule, conditional=False), schedule, tb.classifier(schedule),
                                       float(args.classifier_guidance))
        note += f"; exact classifier guidance s = {args.classifier_guidance:g}"
    return model_fn, {"y": jnp.asarray(labels)}, note


def _cmd_sample(args) -> int:
    import jax
    import numpy as np

    from . import grids, init_noise, nfe, prng, sample
    from .bench import load_noise
    from .schedules import get_schedule
    from .solvers import get_solver, steps_for_nfe
    from .testbeds import get_testbed

    schedule = get_schedule(args.schedule)
    tb = get_testbed(args.testbed)
    solver = get_solver(args.solver)
    if args.n < 1 and not args.noise:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    check_output_file(args.out)
    if args.denoise_to_zero and args.final == "zero":
        raise ValueError("--denoise-to-zero needs --final t_min (a grid ending at t = 0 already "
                         "ends on the data prediction)")
    plan = accel_plan(args)
    if plan is not None:
        plan.check_grid(args.grid)
    n_steps = (args.steps if args.steps is not None
               else steps_for_nfe(solver, args.nfe - int(args.denoise_to_zero), args.final == "zero"))
    grid = grids.make_grid(schedule, args.grid, n_steps, args.final)
    if args.noise:
        z = load_noise(args.noise, tb.dim)
    else:
        z = np.random.RandomState(args.seed).standard_normal((args.n, tb.dim)).astype(np.float32)
    x_T = init_noise(schedule, grid[0], z)
    model_fn, model_args, guide_note = _guided_testbed_model(args, tb, schedule, z.shape[0])
    if model_args is not None and plan is not None:
        raise ValueError("--labels / guidance do not combine with --teleport / --dualfast in jdiff sample yet")
    t0 = time.perf_counter()
    key = prng.key(args.seed) if args.prng == "threefry_xla" else jax.random.key(args.seed)
    accel_note = ""
    if plan is not None and plan.dualfast is not None:
        df = plan.dualfast_for(solver)
        accel_note += f"; {df}" if df is not None else f"; DualFast off (the default for {args.solver})"
    if plan is not None and plan.teleport is not None:
        from .accel import GaussianStats
        from .accel.plan import grid_fraction, resolve_fraction, teleported_sample

        stats = GaussianStats.from_mixture(tb)
        fraction, calls, n_probe = resolve_fraction(plan, model_fn, stats, schedule, args.grid, x_T)
        x, full, info = teleported_sample(plan, model_fn, stats, schedule, solver, args.grid, n_steps, args.final,
                                          x_T, fraction, key, denoise_to_zero=args.denoise_to_zero,
                                          check_finite=args.check_finite)
        grid = full[info.skip_index:]
        accel_note += (f"; teleported to t = {grid[0]:.4g} (fraction {grid_fraction(full, info.skip_index, args.final):.2f}"
                       + (f", auto: {calls} probe calls on {n_probe} samples = "
                          f"{calls * n_probe / z.shape[0]:.3f} NFE per sample" if calls else "") + ")")
    else:
        x = sample(model_fn, schedule, solver, grid, x_T, key=key, hooks=() if plan is None else plan.hooks_for(solver),
                   denoise_to_zero=args.denoise_to_zero, check_finite=args.check_finite, args=model_args)
    x = np.asarray(x)
    wall = time.perf_counter() - t0
    with open(args.out, "wb") as f:  # np.save(name) would append .npy to other names
        np.save(f, x)
    loglik = float(np.mean(np.asarray(tb.log_prob(jax.numpy.asarray(x)))))
    print(f"{args.solver}: {x.shape[0]} samples of {tb.name} ({tb.dim}-D), {n_steps} steps, "
          f"NFE {nfe(solver, grid, args.denoise_to_zero)}{accel_note}{guide_note}, {wall:.2f} s incl. compile; "
          f"mean data log-density {loglik:.3f}; wrote {args.out}")
    return 0


def _last_logged(workdir) -> dict:
    """The last record with a loss in ``workdir/metrics.jsonl`` ({} if none): a finished run
    rerun trains no step but still reports its last loss."""
    import json
    import os

    path = os.path.join(workdir, "metrics.jsonl")
    last = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and "loss" in rec:
                    last = rec
    return last


def check_output_dir(path: str, flag: str = "--workdir") -> None:
    """Fail before any work when ``path`` cannot be (created as) a writable directory."""
    import os

    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} exists and is not a directory")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not _can_write_in(parent):
        raise ValueError(f"{flag} {path!r}: cannot create it in {parent!r}")
    if os.path.isdir(path) and not _can_write_in(path):
        raise ValueError(f"{flag} {path!r} is not writable")


def train_config(args):
    """The :class:`jdiff.run.RunConfig` of ``jdiff train``: the run's own ``config.json`` when
    ``--workdir`` holds one (flags given must agree with it, except ``--steps``), else the
    defaults; flags given override."""
    import dataclasses
    import json
    import os

    from .run import RunConfig

    names = {f.name for f in dataclasses.fields(RunConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    path = os.path.join(args.workdir, "config.json")
    if not os.path.exists(path):
        return RunConfig(**given)
    try:
        stored = RunConfig.from_json(json.loads(open(path, encoding="utf-8").read()))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a jdiff run configuration ({err})") from None
    differ = [k for k, v in given.items() if k != "steps" and getattr(stored, k) != v]
    if differ:
        listed = ", ".join(f"--{k.replace('_', '-')} {given[k]} (run: {getattr(stored, k)})" for k in differ)
        raise ValueError(f"{args.workdir} holds a run with another configuration: {listed}; "
                         "leave those flags out to resume it, or use a new --workdir")
    return dataclasses.replace(stored, **given)


def check_run_flags(args) -> None:
    """Ranges of the run-configuration flags that argparse types cannot express."""
    for name, low in (("steps", 0), ("batch_size", 1), ("save_every", 1), ("log_every", 1), ("keep", 1),
                      ("warmup_steps", 0), ("mlp_features", 1), ("mlp_depth", 1)):
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise ValueError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
    for name in ("lr", "ema_decay", "label_dropout", "weight_decay", "align_scale", "align_mix"):
        value = getattr(args, name, None)
        if value is not None and not value >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be non-negative, got {value}")
    for name in ("ema_decay", "label_dropout"):
        value = getattr(args, name, None)
        if value is not None and value >= 1:
            raise ValueError(f"--{name.replace('_', '-')} must be below 1, got {value}")
    value = getattr(args, "align_mix", None)
    if value is not None and value > 1:
        raise ValueError(f"--align-mix must be at most 1, got {value}")


def _cmd_train(args) -> int:
    from . import training
    from .run import train_run

    check_run_flags(args)
    check_output_dir(args.workdir)
    cfg = train_config(args)
    try:
        with training.stop_on_signals() as stop:
            result = train_run(cfg, args.workdir, progress=not args.quiet, stop=stop)
    except training.TrainingInterrupted as err:
        err.resume = f"jdiff train --workdir {shlex.quote(args.workdir)}"  # printed by run_command
        raise
    last = result.history[-1] if result.history else _last_logged(args.workdir)
    resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from is not None else ""
    print(f"trained to step {int(result.state.step)}{resumed}; last loss {last.get('loss', float('nan')):.5f}; "
          f"work directory {args.workdir}")
    return 0


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def add_run_config_args(parser, presets: dict | None = None) -> None:
    """One ``--flag`` per :class:`jdiff.run.RunConfig` field. Its help gives the field's default,
    or with ``presets`` (``{name: {field: value}}``) the value each preset uses."""
    import dataclasses

    from .losses import ALIGN_SCALE_SAMPLINGS, GUIDANCE_LOSSES, TIME_SAMPLINGS, WEIGHTINGS
    from .network import PARAMETERIZATIONS
    from .run import LR_DECAYS, MODEL_PRESETS, RunConfig
    from .schedules import SCHEDULES
    from .testbeds import BUILTIN

    valid = {
        "data": f"one of {', '.join(BUILTIN)} (exact mixture samples), digits, cifar10:PATH[@16]",
        "model": f"one of mlp, {', '.join(MODEL_PRESETS)}",
        "schedule": f"one of {', '.join(SCHEDULES)}",
        "parameterization": f"one of {', '.join(PARAMETERIZATIONS)}",
        "weighting": f"one of {', '.join(WEIGHTINGS)}",
        "time_sampling": f"one of {', '.join(TIME_SAMPLINGS)}; unset: the parameterization's own",
        "guidance_loss": f"one of {', '.join(GUIDANCE_LOSSES)}; aligned trains the CFG-guided prediction "
                         "(arXiv 2311.00938, unverified reconstruction; needs --conditional true; ~2x cost)",
        "align_scale": "CFG scale w of the aligned loss, >= 0 (w = 0: purely conditional)",
        "align_scale_sampling": f"one of {', '.join(ALIGN_SCALE_SAMPLINGS)} (uniform: w ~ U(0, align-scale) "
                                "per example)",
        "align_stop_grad": "true or false: no gradient through the unconditional branch of the aligned loss",
        "align_mix": "weight in [0, 1] of the standard conditional loss mixed into the aligned loss",
        "lr_decay": f"one of {', '.join(LR_DECAYS)}",
        "compute_dtype": "one of bfloat16, float16, float32; unset: float32",
        "model_kwargs": "JSON object of UNetConfig fields (UNet models only)",
    }

    def parse_bool(v: str) -> bool:
        if v.lower() in ("1", "true", "yes", "on"):
            return True
        if v.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected true/false, got {v!r}")

    for f in dataclasses.fields(RunConfig):
        default = f.default
        kind = type(default)
        if f.name in ("time_sampling", "compute_dtype"):
            kind = str
        elif f.name == "flip":
            kind = parse_bool
        elif f.name == "grad_clip":
            kind = float
        elif kind is bool:
            kind = parse_bool
        if presets:
            values = {name: preset.get(f.name, default) for name, preset in presets.items()}
            shown = (f"(every preset: {default})" if len(set(map(str, values.values()))) == 1 else
                     "(" + ", ".join(f"{name}: {v!r}" if isinstance(v, str) else f"{name}: {v}"
                                for name, v in values.items()) + ")")
        else:
            shown = f"(default: {default})"
        if f.name in valid:
            shown = f"{valid[f.name]} {shown}"
        elif kind is parse_bool:
            shown = f"true or false {shown}"
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None, help=shown)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` for options with a help text and a default other than None; the
    description is printed as written."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's one error path: a usage error is one line ``PROG: error: ...``
    on stderr and exit status 2 (``--help`` shows the usage); defaults shown in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        print(f"{self.prog.split()[0]}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


DEFAULT_SOLVER = "ipndm"  # the most accurate deterministic solver at NFE 10 on both built-in
# testbeds in benchmarks/results/step_counts.md (RMSE 1.2e-2 on mix2d, 6.9e-2 on mix16d)


def add_accel_args(parser) -> None:
    """``--teleport``, ``--teleport-tol`` and ``--dualfast`` (:mod:`jdiff.accel.plan`)."""
    parser.add_argument("--teleport", default=None, metavar="FRACTION|auto",
                        help="skip that fraction of the grid's coordinate with the closed-form Gaussian "
                             "flow (the testbed's exact mean and covariance), spending every step on the "
                             "rest; auto: the largest fraction where model and Gaussian agree within "
                             "--teleport-tol (its probe calls are reported per sample)")
    parser.add_argument("--teleport-tol", type=float, default=None,
                        help="auto teleport: RMS disagreement of model and Gaussian eps predictions "
                             "(default 0.1)")
    parser.add_argument("--dualfast", nargs="?", const="", default=None, metavar="k=v,...",
                        help="DualFast correction (no extra NFE); options scale (default 0.25; 0, i.e. off, "
                             "for ipndm and dpmpp_3m, where it measured harmful), ramp (constant, step, time; "
                             "default time), reference (previous, first; default first), space (eps, x0; "
                             "default eps), history (mixed, raw; default mixed); options not given take the "
                             "solver's default; bare flag: the defaults")


def accel_plan(args):
    """The :class:`jdiff.accel.plan.AccelPlan` of ``--teleport`` / ``--dualfast`` (None: neither)."""
    from .accel.plan import DEFAULT_TOL, AccelPlan, dualfast_plan, parse_teleport

    teleport = parse_teleport(args.teleport)
    if args.teleport_tol is not None and teleport != "auto":
        raise ValueError("--teleport-tol applies to --teleport auto only")
    plan = AccelPlan(teleport=teleport, tol=DEFAULT_TOL if args.teleport_tol is None else args.teleport_tol,
                     **dualfast_plan(args.dualfast))
    return plan if plan.active else None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jdiff")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    from .grids import GRIDS
    from .schedules import SCHEDULES
    from .solvers import SOLVERS
    from .testbeds import BUILTIN

    p = Parser(prog="jdiff", description="Diffusion sampling in JAX.")
    p.add_argument("--version", action="version", version=f"jdiff {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("sample", help="sample an analytic testbed with one solver")
    s.add_argument("--testbed", default="mix2d", help=f"one of {', '.join(BUILTIN)} or SPEC.json")
    s.add_argument("--schedule", default="vp_discrete", help=f"one of {', '.join(SCHEDULES)}")
    s.add_argument("--solver", default=DEFAULT_SOLVER, help=f"one of {', '.join(SOLVERS)}")
    s.add_argument("--nfe", type=int, default=10, help="model-evaluation budget")
    s.add_argument("--steps", type=int, default=None, help="number of steps (overrides --nfe)")
    s.add_argument("--grid", default="logsnr", help=f"one of {', '.join(GRIDS)}")
    s.add_argument("--final", default="zero", choices=["zero", "t_min"],
                   help="grid end: t = 0 (clean data) or the schedule's t_min")
    s.add_argument("--denoise-to-zero", action="store_true",
                   help="one more model call returning the x0 prediction (needs --final t_min)")
    s.add_argument("--check-finite", action="store_true",
                   help="name the first step that produced NaN or inf")
    s.add_argument("--n", type=int, default=1000, help="number of samples")
    s.add_argument("--noise", default=None, help="FILE.npy of standard-normal noise, shape (n, dim)")
    s.add_argument("--seed", type=int, default=0, help="seed of the noise and of stochastic solvers")
    s.add_argument("--prng", default="threefry2x32", choices=["threefry2x32", "threefry_xla"],
                   help="key of stochastic solvers: jax.random.key or jdiff.prng.key (same Threefry "
                        "cipher, other stream, about 2x cheaper draws on CPU)")
    add_accel_args(s)
    s.add_argument("--labels", default=None,
                   help="comma list of class labels, cycled over the samples (labelled testbeds: classes2d, "
                        "classes16d or a spec with 'labels'); the null class n_classes is unconditional")
    s.add_argument("--cfg", type=float, default=None, metavar="W",
                   help="classifier-free guidance scale w (0: conditional; diffusers' guidance_scale = 1 + w)")
    s.add_argument("--classifier-guidance", type=float, default=None, metavar="S",
                   help="exact classifier guidance of the unconditional model, scale s (1: conditional)")
    s.add_argument("--out", default="samples.npy", help="output .npy of shape (n, dim)")
    s.set_defaults(func=_cmd_sample)

    b = sub.add_parser("bench", help="benchmarks")
    bsub = b.add_subparsers(dest="bench", required=True)
    st = bsub.add_parser("steps", help="solver error vs NFE against a reference ODE solve")
    st.add_argument("--testbed", action="append", default=None,
                    help=f"built-in name ({', '.join(BUILTIN)}) or SPEC.json; repeatable or comma list "
                         "(default mix2d,mix16d)")
    st.add_argument("--noise", default=None, help="FILE.npy of standard-normal noise, shape (n, dim)")
    st.add_argument("--schedule", default="vp_discrete", help=f"one of {', '.join(SCHEDULES)}")
    st.add_argument("--solvers", default="default",
                    help="comma list of solver names (see jdiff sample --help), all, or default "
                         "(ddpm,ddim,heun,dpmpp_2m,dpmpp_3m,unipc_bh2)")
    st.add_argument("--nfe", default="5,6,8,10,15,20,50", help="comma list of NFE budgets")
    st.add_argument("--grid", default="logsnr", help=f"comma list of {', '.join(GRIDS)}, or all")
    st.add_argument("--final", default="zero", choices=["zero", "t_min"],
                    help="grid end: t = 0 (clean data) or the schedule's t_min")
    st.add_argument("--n", type=int, default=1000, help="samples per testbed (without --noise)")
    st.add_argument("--seed", type=int, default=0, help="seed of the noise and of stochastic solvers")
    add_accel_args(st)
    st.add_argument("--out", default="bench_out", help="output directory")
    st.add_argument("--quiet", action="store_true", help="no progress bar")
    st.set_defaults(func=_cmd_bench_steps)

    gd = bsub.add_parser("guidance", help="guided sampling on labelled mixtures: accuracy, sliced Wasserstein "
                                          "to exact class samples, diversity")
    gd.add_argument("--testbed", action="append", default=None,
                    help="labelled built-in (classes2d, classes16d) or SPEC.json with 'labels'; repeatable "
                         "or comma list (default classes2d,classes16d)")
    gd.add_argument("--methods", default="cfg,classifier", help="comma list of cfg, classifier")
    gd.add_argument("--scales", default="0,1,2,4", help="comma list: cfg w (0 = conditional), classifier s "
                                                       "(1 = conditional)")
    gd.add_argument("--solvers", default="dpmpp_2m", help="comma list of solver names (see jdiff sample --help)")
    gd.add_argument("--nfe", default="5,10,20,50", help="comma list of NFE budgets")
    gd.add_argument("--grid", default="logsnr", help=f"one of {', '.join(GRIDS)}")
    gd.add_argument("--schedule", default="vp_discrete", help=f"one of {', '.join(SCHEDULES)}")
    gd.add_argument("--final", default="zero", choices=["zero", "t_min"],
                    help="grid end: t = 0 (clean data) or the schedule's t_min")
    gd.add_argument("--n-per-class", type=int, default=500, help="samples per class")
    gd.add_argument("--seed", type=int, default=0, help="seed of the noise and the exact samples")
    gd.add_argument("--out", default="bench_guidance", help="output directory")
    gd.add_argument("--quiet", action="store_true", help="no progress bar")
    gd.set_defaults(func=_cmd_bench_guidance)

    rs = bsub.add_parser("restore", help="restoration methods against the exact Gaussian-mixture posterior")
    rs.add_argument("--testbed", action="append", default=None,
                    help=f"built-in name ({', '.join(BUILTIN)}) or SPEC.json; repeatable or comma list (default mix16d)")
    rs.add_argument("--operator", action="append", default=None,
                    help="mask:FRACTION, matrix:FILE.npy or identity; repeatable (default mask:0.5)")
    rs.add_argument("--sigma-y", default="0,0.1", help="comma list of measurement noise levels (data scale)")
    rs.add_argument("--methods", default="all", help="comma list of restoration methods, or all")
    rs.add_argument("--nfe", default="10,20,50,100", help="comma list of NFE budgets per sample")
    rs.add_argument("--schedule", default="vp_linear", help=f"one of {', '.join(SCHEDULES)}")
    rs.add_argument("--n-measurements", type=int, default=8, help="measurements (true x drawn from the prior)")
    rs.add_argument("--n-per-measurement", type=int, default=200, help="samples per measurement")
    rs.add_argument("--noise", default=None,
                    help="FILE.npy of standard-normal initial draws, shape (n-measurements * n-per-measurement, dim); "
                         "replaces each method's initial draw (not SMC's: its record says noise null)")
    rs.add_argument("--seed", type=int, default=0, help="seed of the measurements, operator and samplers")
    rs.add_argument("--out", default="bench_restore", help="output directory")
    rs.add_argument("--quiet", action="store_true", help="no progress bar")
    rs.set_defaults(func=_cmd_bench_restore)

    dc = bsub.add_parser("discrete", help="absorbing-state (text) diffusion against an exact discrete testbed: "
                                          "sampler TV vs steps, exact bound vs T")
    dc.add_argument("--testbed", default="k3l4v5",
                    help="built-in (k3l4v5, k4l5v6) or SPEC.json {\"weights\": [K], \"probs\": [K][L][V]}")
    dc.add_argument("--steps", default="1,2,4,8,16,64", help="comma list of sampler step counts (NFE)")
    dc.add_argument("--T", default="1,2,4,8,16,64,256,1024", help="comma list of diffusion step counts for the bound")
    dc.add_argument("--schedules", default="linear,cosine", help="comma list of linear, cosine")
    dc.add_argument("--n", type=int, default=20000, help="samples per sampler run (and exact samples for the floor)")
    dc.add_argument("--mc", type=int, default=0,
                    help="Monte-Carlo draws for the bound (0: exact enumeration when small enough)")
    dc.add_argument("--seed", type=int, default=0, help="seed of the samplers and exact samples")
    dc.add_argument("--out", default="bench_discrete", help="output directory")
    dc.add_argument("--quiet", action="store_true", help="no progress bar")
    dc.set_defaults(func=_cmd_bench_discrete)

    t = sub.add_parser("train", help="train a diffusion model (resumes from the work directory)")
    t.add_argument("--workdir", required=True, help="run directory: config.json, checkpoints/, metrics.jsonl")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_run_config_args(t)
    t.set_defaults(func=_cmd_train)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(args.func, args)


def run_command(func, *a, prog: str = "jdiff") -> int:
    """The CLI's one error path: bad input (``ValueError``; ``OSError`` such as a missing file or
    a permission) is one line ``PROG: error: ...`` and status 2; a training run stopped by a
    signal (:class:`jdiff.training.TrainingInterrupted`) one line and status 130 / 143; Ctrl-C
    elsewhere one line and status 130."""
    from .training import TrainingInterrupted

    try:
        return func(*a)
    except (ValueError, OSError) as e:
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    except MemoryError as e:
        print(f"{prog}: error: out of memory ({' '.join(str(e).split())[:200]}); use fewer samples or a "
              "smaller batch", file=sys.stderr)
        return 2
    except TrainingInterrupted as err:  # before the catch-all below, which would re-raise it
        saved = f"checkpoint saved at step {err.step}" if err.saved else "no checkpoint"
        resume = getattr(err, "resume", None) or "run the same command again"
        print(f"{prog}: interrupted ({signal_name(err.signum)}); {saved}; resume with: {resume}",
              file=sys.stderr)
        return err.exit_code
    except Exception as e:  # noqa: BLE001 - XLA's allocation failure is a plain runtime error
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(f"{prog}: error: out of device memory ({' '.join(str(e).split())[:200]}); use fewer "
              "samples or a smaller batch", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
