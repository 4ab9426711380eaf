"""Helpers shared by the benchmark scripts.

* timing: :func:`timeit`, :func:`interleaved_rounds`, :func:`call_medians`, :func:`in_scan_per_step`;
* summaries: :func:`summary` (median, quartiles, min, max, n);
* the run record: :class:`Run` (the exact command, :func:`machine_info`, load average, and the CPU
  time other processes took meanwhile, from :class:`CpuMeter`);
* command line and output: :func:`parser` (with ``--quick``), :func:`out_prefix`,
  :func:`md_table`, :func:`md_header`, :func:`write_results` (``PREFIX.json`` with
  :func:`json_default`, and ``PREFIX.md``), :func:`report` (write, then print);
* the MLP setup of the sampler-speed studies (``sampler_speed.py``, ``prng_speed.py``,
  ``step_micro.py``): :func:`add_mlp_args`, :func:`make_mlp`, :class:`ignore_args`, the stand-in
  model :func:`trivial_apply`, :func:`micro_md`.
* teleportation: :func:`extended_tail` (a tail grid with earlier points for a closed-form history).

Nothing here imports jdiff at module level: ``compile_time.py`` runs child processes against
other revisions of the library with this module.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import resource
import shlex
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


# ----------------------------------------------------------------------------- timing


def block(x):
    return jax.block_until_ready(x)


def timeit(fn, sync=block):
    """Wall time of ``sync(fn())`` in seconds."""
    t0 = time.perf_counter()
    sync(fn())
    return time.perf_counter() - t0


def summary(xs):
    """``median``, quartiles ``q1`` / ``q3`` (linear interpolation, as ``numpy.quantile``),
    ``min``, ``max`` and ``n`` of a list of numbers."""
    xs = sorted(xs)
    if len(xs) == 1:
        q1 = med = q3 = xs[0]
    else:
        q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return {"median": med, "q1": q1, "q3": q3, "min": xs[0], "max": xs[-1], "n": len(xs)}


def interleaved_rounds(calls, rounds, seed=0, sync=block, after_round=None):
    """``{key: [seconds, one per round]}``: every round times each ``calls[key](r)`` once
    (``sync`` applied to its result inside the timing), in an order reshuffled in place each
    round with ``random.Random(seed + r)``, so that slow phases of a shared machine hit all
    programs alike. ``after_round(r, times)`` is called after each round (progress lines)."""
    times = {k: [] for k in calls}
    order = list(calls)
    for r in range(rounds):
        random.Random(seed + r).shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            sync(calls[k](r))
            times[k].append(time.perf_counter() - t0)
        if after_round is not None:
            after_round(r, times)
    return times


def call_medians(progs, reps):
    """Median wall time of each ``f(*args)`` of ``progs = {label: (f, args)}``, a jitted program
    called on its own (dispatch included): one warm-up call each, then ``reps`` rounds calling
    every program once, in a fixed order."""
    for f, a in progs.values():
        block(f(*a))
    ts = {k: [] for k in progs}
    for _ in range(reps):
        for k, (f, a) in progs.items():
            ts[k].append(timeit(lambda f=f, a=a: f(*a)))
    return {k: statistics.median(v) for k, v in ts.items()}


def in_scan_per_step(x, h0, variants, reps, n=50):
    """Median time per step of an ``n``-step ``lax.scan`` for each ``variants[name]``.

    The body makes ``m = 0.5 x + 0.01`` from the carried ``x``, calls
    ``(h, comb) = update(h, m, i)`` on the carried history ``h`` (initially ``h0``) and carries
    ``0.9 x + 0.1 comb`` on: the step of a solver without its model call. One warm-up call each,
    then ``reps`` rounds timing every variant once.
    """

    def scan(update):
        def run(x, h):
            def body(carry, i):
                x, h = carry
                m = 0.5 * x + 0.01
                h, comb = update(h, m, i)
                return (0.9 * x + 0.1 * comb, h), None

            return lax.scan(body, (x, h), jnp.arange(n))[0]

        return jax.jit(run)

    fs = {k: scan(v) for k, v in variants.items()}
    for f in fs.values():
        block(f(x, h0))
    ts = {k: [] for k in fs}
    for _ in range(reps):
        for k, f in fs.items():
            ts[k].append(timeit(lambda f=f: f(x, h0)) / n)
    return {k: statistics.median(v) for k, v in ts.items()}


# ----------------------------------------------------------------------------- machine, run record


def cpu_name():
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpus_available():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def machine_info():
    return {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu_name(),
        "os_cpu_count": os.cpu_count(), "cpus_available": cpus_available(),
        "jax": jax.__version__, "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()], "numpy": np.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def loadavg():
    return [round(v, 2) for v in os.getloadavg()]


class CpuMeter:
    """Share of the machine's CPU time that other processes used since construction (Linux
    /proc/stat, minus this process's and its children's CPU time); None where unknown."""

    def __init__(self):
        self.t0 = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            busy = (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait
        except (OSError, ValueError, IndexError):
            return None
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        own_s = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
        return busy, own_s, time.perf_counter()

    def share(self):
        t1 = self._read()
        if self.t0 is None or t1 is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self.t0, t1, strict=True))
        return max(0.0, (busy - own) / (wall * (os.cpu_count() or 1))) if wall > 0 else None


def command_line(script, argv=None):
    """The shell command that reruns ``script`` with ``argv`` (default ``sys.argv[1:]``) from the
    repository root: ``taskset`` when the CPU affinity is restricted, ``XLA_FLAGS`` when set."""
    args = sys.argv[1:] if argv is None else list(argv)
    cmd = shlex.join(["python", os.path.relpath(os.path.abspath(script), ROOT)] + args)
    if os.environ.get("XLA_FLAGS"):
        cmd = f"XLA_FLAGS={shlex.quote(os.environ['XLA_FLAGS'])} " + cmd
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cpus and len(cpus) < (os.cpu_count() or 1):
        cmd = f"taskset -c {','.join(map(str, cpus))} " + cmd
    return cmd


class Run:
    """The record of one benchmark run: ``run = Run(__file__, argv)`` first, then
    ``res = run.finish(results)``: ``command``, ``machine``, ``loadavg_before``, the results,
    ``wall_s``, ``loadavg_after`` and ``foreign_cpu_share`` (see :class:`CpuMeter`)."""

    def __init__(self, script, argv=None):
        self.t0 = time.perf_counter()
        self.meter = CpuMeter()
        self.head = {"command": command_line(script, argv), "machine": machine_info(),
                     "loadavg_before": loadavg()}

    def elapsed(self):
        return time.perf_counter() - self.t0

    def finish(self, results):
        return {**self.head, **results, "wall_s": self.elapsed(), "loadavg_after": loadavg(),
                "foreign_cpu_share": self.meter.share()}


# ----------------------------------------------------------------------------- output


def json_default(o):
    """JSON for NumPy / JAX scalars and arrays and dtypes; ``str(o)`` for anything else."""
    if isinstance(o, (np.generic, np.ndarray, jax.Array)):
        return np.asarray(o).tolist()
    return str(o)


def md_table(header, rows):
    """Markdown table lines from a header and rows of cells (any values, printed with str)."""
    return (["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def md_header(title, res, timed=True):
    """Title, command, machine, load and foreign-CPU lines of a report from a :class:`Run`
    record; for a report of timings (``timed``) a warning line when other processes took more
    than 10% of the machine."""
    m = res["machine"]
    fs = res.get("foreign_cpu_share")
    L = [f"# {title}", "",
         f"Command: `{res['command']}` (wall time {res['wall_s']:.0f} s)  ",
         f"Machine: {m['cpu']}, {m['cpus_available']} CPUs available (os.cpu_count() = "
         f"{m['os_cpu_count']}), {m['platform']}, Python {m['python']}  ",
         f"JAX {m['jax']}, backend `{m['jax_backend']}`, jax.devices() = {m['jax_devices']}, "
         f"XLA_FLAGS=`{m['xla_flags']}`  ",
         f"Load average (1/5/15 min) before / after: {res['loadavg_before']} / "
         f"{res['loadavg_after']}; CPU used by other processes during the run: "
         + ("unknown" if fs is None else f"{100 * fs:.0f}% of the machine")]
    if timed and fs is not None and fs > 0.1:
        L += ["", f"**WARNING: other processes used {100 * fs:.0f}% of the machine's CPU during "
              "this run: its timings are contaminated.**"]
    return L + [""]


def write_results(prefix, res, md_lines):
    """Write ``PREFIX.json`` (``res``) and ``PREFIX.md`` (the lines); return their paths."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    js, md = Path(f"{prefix}.json"), Path(f"{prefix}.md")
    js.write_text(json.dumps(res, indent=1, default=json_default) + "\n")
    md.write_text("\n".join(md_lines).rstrip("\n") + "\n")
    print(f"wrote {js} and {md}", flush=True)
    return js, md


def report(prefix, res, md_lines):
    """Write ``PREFIX.json`` / ``PREFIX.md`` when ``prefix`` is set (files first, so that nothing
    measured is lost to a printing error), then print the Markdown report."""
    if prefix:
        write_results(prefix, res, md_lines)
    print("\n" + "\n".join(md_lines), flush=True)
    return res


def parser(doc, quick_help):
    """The command-line parser of a study: described by the first line of its docstring,
    with ``--quick`` (a smoke run that writes nothing unless ``--out``)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=quick_help + "; writes nothing unless --out")
    return ap


def out_prefix(args, name):
    """``--out`` if given; else ``benchmarks/results/NAME`` for a full run, None for ``--quick``."""
    if args.out:
        return args.out
    return None if args.quick else str(RESULTS / name)


def ms(s):
    return f"{s * 1e3:.1f}" if s >= 0.1 else f"{s * 1e3:.2f}"


def us(s):
    return f"{s * 1e6:.0f}"


def pct(x):
    return f"{100 * x:+.1f}%"


def iqr_pct(s):
    return f"{pct(s['median'])} [{pct(s['q1'])}, {pct(s['q3'])}]"


# ----------------------------------------------------------------------------- MLP setup


def add_mlp_args(ap, micro_reps=False):
    """The model and output options of the sampler-speed studies (and ``--micro-reps``)."""
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--temb", type=int, default=128, help="time embedding dim")
    ap.add_argument("--out", default=None, help="output prefix: writes PREFIX.json and PREFIX.md "
                    "(default benchmarks/results/<study>; nothing for --quick)")
    if micro_reps:
        ap.add_argument("--micro-reps", type=int, default=200,
                        help="rounds of the separate calls (in-scan: max(5, this / 10))")


@dataclasses.dataclass(frozen=True)
class ignore_args:  # noqa: N801
    """``(params, x, t, args) -> apply(params, x, t)``: a jdiff model function over ``apply``
    that compares by value (``jdiff.sample`` passes ``args``)."""

    apply: object

    def __call__(self, params, x, t, args=None):
        return self.apply(params, x, t)


def trivial_apply(p, x, t):
    """The near-free stand-in model ``eps = p[0] x + p[1] t`` (one fused elementwise op)."""
    return p[0] * x + p[1] * t


def make_mlp(args):
    """The eps-prediction :class:`jdiff.models.MLP` of ``args`` at batch ``args.batch``:
    ``model``, ``params``, ``x`` (standard normal, float32), ``fn`` (the jdiff model function),
    ``jit`` (``jax.jit(model.apply)``), ``call()`` (one model call at t = 0.5), ``config``;
    and the stand-in model: ``t_params``, ``t_fn``, ``t_jit``."""
    from jdiff.models import MLP

    model = MLP(features=args.width, depth=args.depth, time_embedding_dim=args.temb)
    params = model.init(jax.random.key(0), jnp.zeros((1, args.dim)), 0.5)
    x = jax.random.normal(jax.random.key(1), (args.batch, args.dim), jnp.float32)
    model_jit = jax.jit(model.apply)
    t_mid = jax.device_put(jnp.float32(0.5))
    t_params = jnp.array([0.5, 0.1], jnp.float32)
    return SimpleNamespace(
        model=model, params=params, x=x, jit=model_jit,
        fn=jax.tree_util.Partial(ignore_args(model.apply), params),
        call=lambda: model_jit(params, x, t_mid),
        t_params=t_params, t_fn=jax.tree_util.Partial(ignore_args(trivial_apply), t_params),
        t_jit=jax.jit(trivial_apply),
        config={"batch": args.batch, "dim": args.dim, "width": args.width, "depth": args.depth,
                "temb": args.temb, "dtype": "float32", "prediction": "eps"})


def mlp_line(cfg):
    return (f"Model: `jdiff.models.MLP(features={cfg['width']}, depth={cfg['depth']}, "
            f"time_embedding_dim={cfg['temb']})`, data dim {cfg['dim']}, batch {cfg['batch']}, "
            "float32, eps-prediction.")


def micro_md(title, res):
    """Report head of a micro-benchmark study: header, model, and the table of ``res["micro"]``
    (seconds per label) in us and as a share of ``res["model_call_s"]``."""
    m, cfg = res["model_call_s"], res["config"]
    L = md_header(title, res) + [
        mlp_line(cfg), "",
        f"One model call: {ms(m)} ms (median). Separate calls include one dispatch each; "
        "`in-scan` rows are per step of a 50-step `lax.scan`.", ""]
    return L + md_table(["measurement", "us", "% of a model call"],
                        [[k, us(v), f"{100 * v / m:.2f}%"] for k, v in res["micro"].items()])


def cpu_per_wall(call, n=20):
    """Process CPU time / wall time over ``n`` blocked calls (after 3 warm-up calls): how many
    cores XLA:CPU actually got."""
    for _ in range(3):
        block(call())
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        block(call())
    return (time.process_time() - c0) / (time.perf_counter() - w0)


# ----------------------------------------------------------------------------- teleportation


def extended_tail(schedule, t_f, n_steps, history_steps, t_max=None):
    """The ``n_steps`` logsnr grid from ``t_f`` (:func:`jdiff.accel.tail_grid`, ending at 0) with up
    to ``history_steps`` earlier points of the same log-SNR spacing prepended (those inside
    ``[t_f, t_max]``, default the schedule's ``t_max``): ``(grid, k)``, ``grid[k] == t_f``. Start
    :func:`jdiff.accel.closed_form_state` at ``grid[0]`` and resume the solver at ``start=k`` for a
    multistep history taken from the closed-form Gaussian solution (``k == 0``: no room)."""
    import jdiff

    t_max = float(schedule.t_max if t_max is None else t_max)

    def lam_of(t):
        with jax.enable_x64(True):
            return float(schedule.log_snr(jnp.float64(t)))

    tail = jdiff.accel.tail_grid(schedule, "logsnr", n_steps, t_f)
    if n_steps < 2:
        return tail, 0
    lam0, lam1 = lam_of(tail[0]), lam_of(tail[1])
    dlam, lam_lo = lam1 - lam0, lam_of(t_max)
    pre = [lam0 - j * dlam for j in range(history_steps, 0, -1) if lam0 - j * dlam >= lam_lo - 1e-12]
    if not pre:
        return tail, 0
    with jax.enable_x64(True):
        t_pre = [min(float(schedule.t_of_log_snr(jnp.float64(lam))), t_max) for lam in pre]
    return np.concatenate([t_pre, tail]), len(pre)
