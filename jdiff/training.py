"""Training: state pytree, optax optimiser, EMA, data-parallel jitted step, resumable loop.

* :class:`TrainState` is a pytree ``(step, params, opt_state, ema_params, key)``. The key is the
  run's base key; step ``s`` uses ``fold_in(key, s)``, so randomness depends only on the step and a
  resumed run draws exactly what an uninterrupted one would.
* :func:`make_optimizer`: ``optax.chain(clip_by_global_norm, adamw)`` with a linear warm-up to the
  peak learning rate (then constant, or cosine decay when ``decay_steps`` is given).
* :func:`make_train_step`: one jitted step ``(state, batch) -> (state, metrics)``: loss and
  gradient, optimiser update, EMA ``ema <- ema + (1 - d)(params - ema)``. Optional mixed
  precision: parameters are kept in float32 and cast to ``compute_dtype`` (e.g. bfloat16) for the
  forward pass, so gradients and the optimiser state stay float32.
* Data parallelism with ``jax.sharding``: :func:`data_mesh` builds a one-axis ``Mesh`` over all
  devices (all hosts after ``jax.distributed.initialize()``), :func:`shard_batch` assembles the
  global batch from each process's slice, parameters are replicated. The loss is a mean over
  the global batch, so the step computes the same update as on one device (up to reduction order).
* :class:`Checkpointer`: orbax ``CheckpointManager`` (save every k steps, keep the last N, atomic
  finalisation) with a fingerprint of the state stored beside it; :meth:`Checkpointer.restore_latest`
  walks back from the newest step and skips any checkpoint that fails to load or whose
  fingerprint does not match (a truncated or corrupted directory), using the previous good one.
* :func:`fit`: the loop, with metrics as JSON lines and a rich progress bar (plain periodic lines
  when stdout is not a terminal). With :func:`stop_on_signals`, SIGINT / SIGTERM end the loop
  after the current step with a checkpoint at that step (:class:`TrainingInterrupted`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .xla_options import CPU_CONV_EIGEN  # noqa: F401  (re-exported as training.CPU_CONV_EIGEN)

log = logging.getLogger(__name__)


@struct.dataclass
class TrainState:
    """Everything a training run needs to continue: a pytree of arrays."""

    step: jnp.ndarray  # () int32: number of optimiser updates applied
    params: Any
    opt_state: Any
    ema_params: Any
    key: jnp.ndarray  # (2,) uint32 base key (raw, so checkpoints hold plain arrays)


def create_train_state(params, optimizer: optax.GradientTransformation, seed: int = 0) -> TrainState:
    """Fresh state: step 0, optimiser initialised, EMA equal to the parameters.

    The parameters are copied, so donating the state to a jitted step leaves ``params`` usable."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=jax.tree_util.tree_map(jnp.array, params),
        opt_state=optimizer.init(params),
        ema_params=jax.tree_util.tree_map(jnp.array, params),
        key=jax.random.key_data(jax.random.key(seed)),
    )


def learning_rate_schedule(peak: float, warmup_steps: int = 0, decay_steps: int | None = None,
                           end_fraction: float = 0.0) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``; then constant, or a cosine decay
    to ``end_fraction * peak`` reaching it ``decay_steps`` after the warm-up."""
    if peak <= 0:
        raise ValueError(f"learning rate must be positive, got {peak}")
    warm = optax.linear_schedule(0.0, peak, max(warmup_steps, 1))
    after = (optax.constant_schedule(peak) if decay_steps is None
             else optax.cosine_decay_schedule(peak, decay_steps, end_fraction))
    if warmup_steps <= 0:
        return after
    return optax.join_schedules([warm, after], [warmup_steps])


def make_optimizer(learning_rate: float | optax.Schedule = 2e-4, *, warmup_steps: int = 0,
                   decay_steps: int | None = None, weight_decay: float = 0.0, grad_clip: float | None = 1.0,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """AdamW with gradient clipping by global norm and a warm-up schedule (see
    :func:`learning_rate_schedule`); ``grad_clip=None`` disables clipping."""
    lr = learning_rate if callable(learning_rate) else learning_rate_schedule(learning_rate, warmup_steps, decay_steps)
    parts = [] if grad_clip is None else [optax.clip_by_global_norm(grad_clip)]
    parts.append(optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*parts)


def ema_update(ema, params, decay):
    """``ema + (1 - decay) (params - ema)`` leaf by leaf."""
    return jax.tree_util.tree_map(lambda e, p: e + (1.0 - decay) * (p - e).astype(e.dtype), ema, params)


def _cast_floats(tree, dtype):
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *, ema_decay: float = 0.9999,
                    ema_warmup: bool = False, compute_dtype=None) -> Callable:
    """Pure ``train_step(state, batch) -> (state, metrics)`` (not jitted; see :func:`jit_train_step`).

    Args:
      loss_fn: ``loss_fn(params, batch, key) -> (loss, metrics)`` (:func:`jdiff.losses.denoising_loss`).
      optimizer: an optax transformation.
      ema_decay: EMA decay ``d``; with ``ema_warmup`` the decay used at step ``s`` is
        ``min(d, (1 + s) / (10 + s))`` (as in many DDPM codebases), so early EMA tracks the weights.
      compute_dtype: e.g. ``jnp.bfloat16``: cast floating parameters and inputs for the forward pass.

    ``metrics``: the loss function's metrics plus ``grad_norm`` (global L2 norm before clipping).
    """

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)

        def objective(params):
            if compute_dtype is not None:
                params = _cast_floats(params, compute_dtype)
                b = dict(batch, x=batch["x"].astype(compute_dtype))
            else:
                b = batch
            return loss_fn(params, b, key)

        (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay
        if ema_warmup:
            s = state.step.astype(jnp.float32)
            decay = jnp.minimum(ema_decay, (1.0 + s) / (10.0 + s))
        ema = ema_update(state.ema_params, params, decay)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        return new_state, metrics

    return train_step


# ----------------------------------------------------------------------------------------------
# data parallelism


def initialize_distributed(**kwargs) -> None:
    """Multi-host start-up: ``jax.distributed.initialize(**kwargs)`` (call once per process, before
    any other JAX call; on TPU pods and SLURM/Open MPI clusters the arguments are auto-detected)."""
    jax.distributed.initialize(**kwargs)


def data_mesh(devices=None, axis: str = "data") -> Mesh:
    """One-axis mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (axis,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def replicate(tree, mesh: Mesh):
    """Place every leaf of ``tree`` on all devices of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch, mesh: Mesh):
    """Global batch sharded along its leading axis from this process's slice of it.

    Each process passes its own ``batch_size / process_count`` rows (see
    ``jdiff.data.BatchSampler.batch(step, process_index, process_count)``); on one process this
    is the whole batch. The global batch size must divide by the number of devices.
    """
    sharding = batch_sharding(mesh)
    n_dev = mesh.devices.size

    def put(a):
        a = np.asarray(a)
        global_rows = a.shape[0] * jax.process_count()
        if global_rows % n_dev:
            raise ValueError(f"global batch size {global_rows} is not divisible by {n_dev} devices")
        return jax.make_array_from_process_local_data(sharding, a, (global_rows,) + a.shape[1:])

    return jax.tree_util.tree_map(put, batch)


def jit_train_step(train_step: Callable, mesh: Mesh | None = None, donate: bool = True,
                   compiler_options: dict | None = None) -> Callable:
    """``jax.jit`` of a train step; with a mesh, state replicated and batch sharded on its axis.

    ``compiler_options`` are passed to XLA (e.g. :data:`CPU_CONV_EIGEN` on CPU)."""
    kwargs: dict[str, Any] = {"donate_argnums": (0,) if donate else ()}
    if compiler_options:
        kwargs["compiler_options"] = dict(compiler_options)
    if mesh is not None:
        rep, data = replicated(mesh), batch_sharding(mesh)
        kwargs.update(in_shardings=(rep, data), out_shardings=(rep, rep))
    return jax.jit(train_step, **kwargs)


# ----------------------------------------------------------------------------------------------
# checkpoints


def state_fingerprint(state) -> float:
    """A cheap checksum of a state: sum over leaves of ``sum(a) + 0.5 * sum(|a|)`` in float64."""
    total = 0.0
    for leaf in jax.tree_util.tree_leaves(state):
        a = np.asarray(jax.device_get(leaf), dtype=np.float64)
        total += float(a.sum() + 0.5 * np.abs(a).sum())
    return total


class Checkpointer:
    """Save/restore :class:`TrainState` with orbax's ``CheckpointManager``.

    Args:
      directory: where step directories live (created).
      save_every: save at steps that are multiples of this (and whenever ``force``).
      keep: number of most recent checkpoints kept (``None``: all).

    Each checkpoint holds the state (``StandardSave``) and a JSON item with the step, the state's
    :func:`state_fingerprint` and any user metadata (e.g. the run configuration).
    """

    def __init__(self, directory, save_every: int = 1000, keep: int | None = 3):
        import orbax.checkpoint as ocp

        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.save_every = save_every
        self.unusable: set[int] = set()  # steps restore_latest found broken
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=1, create=True,
                                                 enable_async_checkpointing=False),
            item_names=("state", "meta"),
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, state: TrainState, metadata: dict | None = None, force: bool = False,
             step: int | None = None) -> bool:
        """Save if ``step % save_every == 0`` (or ``force``); returns whether it saved.

        ``step`` (the host's count, equal to ``state.step``) avoids a device sync on the steps that
        are not saved."""
        if step is None:
            step = int(jax.device_get(state.step))
        if not force and step % self.save_every:
            return False
        if step in self.manager.all_steps():
            if step not in self.unusable:
                return False
            # the resumed run has redone a step whose checkpoint was broken: replace it
            self.manager.delete(step)
            self.unusable.discard(step)
        meta = {"step": step, "fingerprint": state_fingerprint(state), **(metadata or {})}
        ocp = self._ocp
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)))
        self.manager.wait_until_finished()
        return True

    def restore(self, step: int, like: TrainState):
        """State saved at ``step``, with the structure, dtypes and shardings of ``like``."""
        ocp = self._ocp
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 meta=ocp.args.JsonRestore()))
        state, meta = out["state"], out["meta"]
        if int(meta["step"]) != step or int(jax.device_get(state.step)) != step:
            raise ValueError(f"checkpoint {step}: step mismatch ({meta['step']}, {int(state.step)})")
        fp = state_fingerprint(state)
        if not math.isclose(fp, meta["fingerprint"], rel_tol=1e-9, abs_tol=1e-6):
            raise ValueError(f"checkpoint {step}: fingerprint {fp!r} != saved {meta['fingerprint']!r}")
        return state, meta

    def restore_latest(self, like: TrainState):
        """``(state, meta)`` of the newest checkpoint that loads and verifies, or ``None``.

        Broken checkpoints (missing or truncated files, fingerprint mismatch) are skipped with a
        warning, falling back to the previous good one, and remembered in ``unusable``: a later
        :meth:`save` of the same step replaces them (they are left on disk until then).
        """
        for step in reversed(self.all_steps()):
            try:
                return self.restore(step, like)
            except Exception as err:  # noqa: BLE001 - any failure means this checkpoint is unusable
                self.unusable.add(step)
                log.warning("checkpoint at step %d is unusable (%s: %s); trying an earlier one",
                            step, type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
        return None

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


# ----------------------------------------------------------------------------------------------
# the loop


@dataclasses.dataclass
class FitResult:
    state: TrainState
    history: list  # one dict per logged step
    resumed_from: int | None


class TrainingInterrupted(Exception):
    """Raised by :func:`fit` after a stop signal: the state at ``step`` is checkpointed.

    ``exit_code`` is the shell convention for a process ended by the signal (130 for SIGINT,
    143 for SIGTERM)."""

    def __init__(self, step: int, signum: int, saved: bool):
        self.step, self.signum, self.saved = step, signum, saved
        super().__init__(f"{signal.Signals(signum).name} at step {step}"
                         + ("; checkpoint saved" if saved else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals(signums=(signal.SIGINT, signal.SIGTERM)):
    """Turn the first of ``signums`` into a request to stop; yields ``() -> signum | None``.

    Pass the yielded function to :func:`fit` as ``stop``: the loop finishes the current step,
    saves a checkpoint and raises :class:`TrainingInterrupted`. The first signal restores the
    previous handlers, so a second one acts at once (Ctrl-C twice still kills a hung run).
    Outside the main thread (where Python cannot install handlers) nothing is installed.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    previous = {s: signal.getsignal(s) for s in signums}

    def handler(signum, frame):  # noqa: ARG001
        received.append(signum)
        for s, h in previous.items():
            signal.signal(s, h)

    for s in signums:
        signal.signal(s, handler)
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _to_float(v):
    return float(np.asarray(jax.device_get(v)))


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records after ``last_step`` from a JSON-lines metrics file (atomically): a run resumed
    from the checkpoint at ``last_step`` redoes those steps and logs them again."""
    if not path.exists():
        return
    keep = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut short by a crash
            if not (isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] > last_step):
                keep.append(json.dumps(rec) + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(keep), encoding="utf-8")
    os.replace(tmp, path)


class _PlainProgress:
    """Progress as plain lines (for logs of batch jobs: stdout is not a terminal): one line per
    logged step, at most one every ``min_interval`` seconds, plus the last. The time left is
    estimated from the steps since the first line (so compilation does not count)."""

    def __init__(self, total: int, min_interval: float = 10.0):
        self.total, self.min_interval = total, min_interval
        self.t0 = time.perf_counter()
        self.first: tuple[int, float] | None = None
        self.last = -math.inf

    def log(self, step: int, record: dict) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = (step, now)
        if step != self.total and now - self.last < self.min_interval:
            return
        self.last = now
        eta = ""
        if step > self.first[0] and step < self.total:
            rate = (step - self.first[0]) / (now - self.first[1])
            eta = f", ~{(self.total - step) / rate:.0f} s left"
        loss = record.get("loss")
        loss_text = f" loss {loss:.4f}" if loss is not None else ""
        print(f"train step {step}/{self.total}{loss_text} ({now - self.t0:.0f} s{eta})", flush=True)


def fit(state: TrainState, step_fn: Callable, batch_fn: Callable[[int], Any], num_steps: int, *,
        checkpointer: Checkpointer | None = None, metadata: dict | None = None, log_every: int = 50,
        metrics_file: str | Path | None = None, progress: bool = True, mesh: Mesh | None = None,
        callbacks: Iterable[Callable[[int, TrainState, dict], None]] = (),
        stop: Callable[[], int | None] | None = None) -> FitResult:
    """Run ``step_fn`` until ``state.step == num_steps``, resuming from the checkpointer if it has one.

    Args:
      state: the fresh state (also the template for restoring).
      step_fn: a jitted ``(state, batch) -> (state, metrics)`` (:func:`jit_train_step`).
      batch_fn: ``step -> batch``; must be a pure function of the step for exact resumption
        (``jdiff.data.BatchSampler.batch``). With ``mesh``, it returns this process's slice.
      num_steps: total number of steps of the run (not of this call).
      checkpointer: saves every ``save_every`` steps and at the end; restored from first.
      metadata: JSON-serialisable dict stored with every checkpoint.
      log_every: metrics are fetched from the device, appended to ``metrics_file`` (JSON lines:
        step, wall time in seconds since this call started, the scalar metrics; arrays such as
        per-example values are left out) and passed to ``callbacks``
        every ``log_every`` steps. A resumed run first drops the records after the checkpoint it
        resumed from (it redoes those steps), so the file holds each step once; the clock of
        its records restarts at 0.
      progress: show progress (only on process 0): a rich bar on a terminal, else a plain line
        per logged step (at most one every 10 s).
      stop: polled after every step (:func:`stop_on_signals`); a signal number ends the loop with
        a checkpoint at the current step and :class:`TrainingInterrupted`.
    """
    resumed_from = None
    if mesh is not None:
        state = replicate(state, mesh)
    if checkpointer is not None:
        restored = checkpointer.restore_latest(state)
        if restored is not None:
            state = restored[0]
            resumed_from = int(jax.device_get(state.step))
            log.info("resumed from step %d", resumed_from)
    start = int(jax.device_get(state.step))
    out = None
    if metrics_file is not None and jax.process_index() == 0:
        Path(metrics_file).parent.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(Path(metrics_file), start)
        out = open(metrics_file, "a", encoding="utf-8")
    history: list[dict] = []
    show = progress and jax.process_index() == 0
    plain = _PlainProgress(num_steps) if show and not sys.stdout.isatty() else None
    t0 = time.perf_counter()
    try:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                      TimeRemainingColumn(), disable=not show or plain is not None, transient=False) as bar:
            task = bar.add_task("train", total=num_steps, completed=start, info="")
            for step in range(start, num_steps):
                batch = batch_fn(step)
                if mesh is not None:
                    batch = shard_batch(batch, mesh)
                state, metrics = step_fn(state, batch)
                done = step + 1
                if done % log_every == 0 or done == num_steps:
                    record = {"step": done, "time": round(time.perf_counter() - t0, 4),
                              **{k: _to_float(v) for k, v in metrics.items() if np.ndim(v) == 0}}
                    history.append(record)
                    if out is not None:
                        out.write(json.dumps(record) + "\n")
                        out.flush()
                    for cb in callbacks:
                        cb(done, state, record)
                    bar.update(task, info=f"loss {record.get('loss', float('nan')):.4f}")
                    if plain is not None:
                        plain.log(done, record)
                if checkpointer is not None:
                    checkpointer.save(state, metadata, force=done == num_steps, step=done)
                bar.update(task, completed=done)
                signum = stop() if stop is not None else None
                if signum is not None and done < num_steps:
                    saved = checkpointer is not None
                    if saved:
                        checkpointer.save(state, metadata, force=True, step=done)
                    raise TrainingInterrupted(done, signum, saved)
    finally:
        if out is not None:
            out.close()
    return FitResult(state=state, history=history, resumed_from=resumed_from)
