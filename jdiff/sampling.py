"""The sampling driver: any solver over any grid as one compiled program.

    x_0 = sample(model_fn, schedule, solver, grid, x_T, key=None, args=None)

``model_fn(x, t, args)`` is the model: ``x`` of shape (batch, ...), scalar ``t``, and ``args`` a
traced pytree of whatever the model is conditioned on (class labels, guidance scales, a
measurement), as diffrax passes ``args`` to its vector fields. A new ``args`` value never
recompiles. Everything else is split by :func:`jdiff.statics.partition`: the arrays inside
``model_fn`` (a ``jax.tree_util.Partial(apply_fn, params)``, a ``flax.struct`` dataclass) are
traced; solvers and hooks are frozen dataclasses compared by value, so re-creating them does not
recompile either. A plain closure is compared by identity (build it once) and its captured arrays
become constants (a warning says so).

Steps ``start .. stop - 1`` of the grid run in one ``lax.scan`` (:func:`scan_steps`, the scan
core shared with other state types); when ``stop`` is the end of the grid the final step is
traced separately with the static flag ``to_zero`` (so Heun can skip its corrector at sigma = 0
without a ``lax.cond``), and ``denoise_to_zero`` adds one model evaluation returning the data
prediction at the last grid time (DPM-Solver's option of that name).

Mid-grid starts and split runs: ``sample(..., stop=k, return_state=True)`` returns the state
after step k - 1; ``sample(..., start=k, state=that_state)`` continues bit-identically (multistep
histories, lower-order final steps and key streams all refer to the full grid).
``sample(..., start=k)`` without a state starts fresh at ``grid[k]`` (warm-up from there), as
teleportation does.

Randomness: the one ``key`` is split into independent streams, ``fold_in(key, 0)`` for the
solver's noise, ``fold_in(key, 1)`` for the model (``model_key=True`` calls
``model_fn(x, t, args, key)``, one key per step and model call) and ``fold_in(key, 2)`` for hooks.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .grids import check_grid
from .hooks import HookContext, as_hooks, has_post_step, transforms_x0
from .prediction import check_prediction, to_x0_eps
from .solvers.base import Evaluation, Solver, grid_coeffs
from .statics import check_no_captured_arrays, combine, partition

SOLVER_STREAM, MODEL_STREAM, HOOK_STREAM = 0, 1, 2


class SampleState(NamedTuple):
    """What :func:`sample` carries between steps: the solver's state, each hook's state, and an
    empty array of the caller's dtype (a resumed bfloat16 run returns bfloat16, as unsplit)."""

    solver: Any
    hooks: tuple
    like: Any  # shape (0,), dtype of x_T


def key_streams(key):
    """``(solver, model, hooks)`` keys: independent streams ``fold_in(key, 0 | 1 | 2)``."""
    return tuple(jax.random.fold_in(key, s) for s in (SOLVER_STREAM, MODEL_STREAM, HOOK_STREAM))


def make_denoise(model_fn, prediction: str, args=None, hooks=(), hook_states=(), model_key=None,
                 hook_key=None):
    """``denoise(x, t, alpha, sigma) -> (x0, eps)`` from ``model_fn(x, t, args)`` of type
    ``prediction``, with the hooks' x0 transforms applied in order (eps then recomputed as
    ``(x - alpha x0) / sigma``, unless they all returned their input array itself: a hook at its
    identity setting leaves the solver's results bit-identical).

    ``model_key`` / ``hook_key``: keys of one step; the j-th model call of the step gets
    ``fold_in(key, j)`` (``model_key=None``: the model takes no key).
    """
    calls = [0]
    x0_hooks = [(h, s) for h, s in zip(hooks, hook_states) if transforms_x0(h)]
    model_outputs = []  # this step's raw model outputs, for the post-step hooks

    def call(x, t, j):
        if model_key is None:
            return model_fn(x, t, args)
        return model_fn(x, t, args, jax.random.fold_in(model_key, j))

    def denoise(x, t, alpha, sigma):
        j = calls[0]
        calls[0] += 1
        x0, eps = to_x0_eps(call(x, t, j), x, alpha, sigma, prediction)
        model_outputs.append(Evaluation(x0, eps))
        if x0_hooks:
            def model_x0(x_):
                return to_x0_eps(call(x_, t, j), x_, alpha, sigma, prediction)[0]

            x0_model = x0
            for m, (h, s) in enumerate(x0_hooks):
                k = None if hook_key is None else jax.random.fold_in(jax.random.fold_in(hook_key, j), m)
                x0 = h.x0(x0, x, t, alpha, sigma, args, HookContext(s, k, model_x0))
            if x0 is not x0_model:  # a hook that returns its input keeps the model's own eps
                eps = (x - alpha * x0) / sigma
        return x0, eps

    denoise.model_outputs = model_outputs
    return denoise


def scan_steps(step_fn, carry, start: int, stop: int, track_finite: bool = False, runtime_zero=0):
    """The scan core: ``carry = step_fn(carry, i)`` for ``i = start .. stop - 1`` in one loop (any
    carry type: continuous samples, integer tokens). With ``track_finite`` it also returns, per
    step, whether ``carry``'s floating leaves are all finite.

    ``lax.scan`` in general. XLA inlines a loop it knows runs once, and then fuses that step with
    the code after it (the final step), which changed results by an ulp: a run split one step
    before its final step was not bit-identical to the unsplit run. A one-step segment therefore
    runs as a ``lax.while_loop`` whose bounds are offset by ``runtime_zero``, an int32 zero that
    XLA cannot see through (computed from a runtime input, e.g. ``(grid[0] * 0).astype(int32)``:
    a float product with 0 is not folded). Reverse-mode differentiation through such a segment
    is not available (forward mode is).
    """

    def finite(c):
        ok = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(c)
              if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.floating)]
        return jnp.all(jnp.stack(ok)) if ok else jnp.asarray(True)

    if stop - start != 1:
        def body(c, i):
            c = step_fn(c, i)
            return c, (finite(c) if track_finite else None)

        return lax.scan(body, carry, jnp.arange(start, stop, dtype=jnp.int32))

    def loop_body(val):
        i, c, _ = val
        c = step_fn(c, i)
        return i + 1, c, finite(c) if track_finite else jnp.asarray(True)

    first = jnp.int32(start) + runtime_zero
    _, carry, ok = lax.while_loop(lambda val: val[0] < first + 1, loop_body,
                                  (first, carry, jnp.asarray(True)))
    return carry, (ok[None] if track_finite else None)


def stream_keys(key):
    """Solver, model, x0-hook and post-step-hook keys (:func:`key_streams`)."""
    k_solver, k_model, k_hooks = key_streams(key)
    return k_solver, k_model, jax.random.fold_in(k_hooks, 0), jax.random.fold_in(k_hooks, 1)


class Stepper(NamedTuple):
    """One solver step with the model, hooks and keys of a sample call: ``stepper(state, i, k,
    to_zero)`` runs step ``i`` of the grid with the keys of position ``k`` (``k = i`` in
    :func:`sample`; the path position in :func:`jdiff.paths.sample_path`)."""

    solver: Solver
    model_fn: Any
    prediction: str
    args: Any
    hooks: tuple
    grid: Any  # GridCoeffs
    k_model: Any  # None: the model takes no key
    k_x0_hooks: Any
    k_post_hooks: Any

    def __call__(self, st: SampleState, i, k, to_zero: bool) -> SampleState:
        hooks, g = self.hooks, self.grid
        denoise = make_denoise(self.model_fn, self.prediction, self.args, hooks, st.hooks,
                               None if self.k_model is None else jax.random.fold_in(self.k_model, k),
                               jax.random.fold_in(self.k_x0_hooks, k) if hooks else None)
        s, outputs = self.solver.step(denoise, st.solver, g, i, to_zero)
        hs = list(st.hooks)
        for m, h in enumerate(hooks):
            if has_post_step(h):
                ctx = HookContext(hs[m], jax.random.fold_in(jax.random.fold_in(self.k_post_hooks, k), m),
                                  model_outputs=tuple(denoise.model_outputs))
                s, hs[m] = h.post_step(s, outputs, g, i, self.args, ctx)
        return st._replace(solver=s, hooks=tuple(hs))


class _Config(NamedTuple):
    """The static part of a sample call (hashable)."""

    model: Any
    hooks: Any
    solver: Solver
    prediction: str
    final_zero: bool
    denoise_to_zero: bool
    track_finite: bool
    start: int
    stop: int
    model_key: bool
    return_state: bool


@partial(jax.jit, static_argnames=("cfg",))
def _sample(model_arrays, hook_arrays, schedule, grid, x_T, key, args, state, *, cfg: _Config):
    model_fn = combine(model_arrays, cfg.model)
    hooks = combine(hook_arrays, cfg.hooks)
    solver = cfg.solver
    n = grid.shape[0] - 1
    # the state and the schedule's coefficients in at least float32: in bfloat16 the log-SNR step
    # sizes h of a 200-step grid would be off by up to 35%, scrambling multistep ratios
    out_dtype = x_T.dtype if state is None else state.like.dtype
    dtype = jnp.promote_types(out_dtype, jnp.float32)
    g = grid_coeffs(schedule, grid, dtype)
    k_solver, k_model, k_x0_hooks, k_post_hooks = stream_keys(key)
    if state is None:
        x_T = x_T.astype(dtype)
        state = SampleState(solver.init(x_T, g, k_solver, cfg.start),
                            tuple(h.init(x_T, g, args) for h in hooks), jnp.zeros((0,), out_dtype))

    stepper = Stepper(solver, model_fn, cfg.prediction, args, hooks, g, k_model if cfg.model_key else None,
                      k_x0_hooks, k_post_hooks)

    def run_step(st: SampleState, i, to_zero: bool):
        return stepper(st, i, i, to_zero)

    to_end = cfg.stop == n
    last_scanned = cfg.stop - 1 if to_end else cfg.stop
    state, flags = scan_steps(lambda st, i: run_step(st, i, False), state, cfg.start, last_scanned,
                              cfg.track_finite, (grid[0] * 0).astype(jnp.int32))
    extra = []
    if to_end:
        state = run_step(state, n - 1, cfg.final_zero)
        extra.append(jnp.all(jnp.isfinite(state.solver.x)))
    x = state.solver.x
    if cfg.denoise_to_zero:
        denoise = make_denoise(model_fn, cfg.prediction, args, hooks, state.hooks,
                               jax.random.fold_in(k_model, n) if cfg.model_key else None,
                               jax.random.fold_in(k_x0_hooks, n) if hooks else None)
        x, _ = denoise(x, g.t[n], g.alpha[n], g.sigma[n])
        extra.append(jnp.all(jnp.isfinite(x)))
    x = x.astype(out_dtype)
    if not cfg.return_state:  # no state outputs: XLA need not keep the final buffers
        state = None
    if not cfg.track_finite:
        return x, state, None
    flags = jnp.concatenate([flags, jnp.stack(extra)]) if extra else flags
    return x, state, flags


def _check_denoise_to_zero(denoise_to_zero: bool, final_zero: bool) -> None:
    if denoise_to_zero and final_zero:
        raise ValueError("denoise_to_zero needs a grid ending at t_min > 0: this grid ends at t = 0, "
                         "where the last step already returns the data prediction")


def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def check_model_signature(model_fn, model_key: bool = False, static=None) -> None:
    """``ValueError`` unless ``model_fn`` can be called as ``model_fn(x, t, args[, key])``
    (cached per static part of ``model_fn``, ``static`` if the caller has it: ``inspect.signature``
    is slow)."""
    if static is None:
        _, static = partition(model_fn)
    try:
        hash(static)
    except TypeError:
        _check_signature(model_fn, model_key)
        return
    if (static, model_key) not in _SIGNATURES_OK:
        _check_signature(model_fn, model_key)
        if len(_SIGNATURES_OK) < 1024:
            _SIGNATURES_OK.add((static, model_key))


_SIGNATURES_OK: set = set()


def _check_signature(model_fn, model_key: bool) -> None:
    if not callable(model_fn):
        raise ValueError(f"model_fn must be callable, got {type(model_fn).__name__}")
    try:
        sig = inspect.signature(model_fn)
    except (TypeError, ValueError):  # builtins and the like: nothing to check
        return
    call = (None, None, None, None) if model_key else (None, None, None)
    try:
        sig.bind(*call)
    except TypeError:
        want = "model_fn(x, t, args, key)" if model_key else "model_fn(x, t, args)"
        raise ValueError(f"model_fn must be callable as {want}; its signature is {sig} "
                         "(add an args parameter, e.g. def model_fn(x, t, args=None))") from None


def _prepare(model_fn, schedule, solver, grid, x_T, key=None, *, args=None, prediction="eps",
             final_zero=None, denoise_to_zero=False, check_finite=False, correct_x0=None, hooks=(),
             start=0, stop=None, state=None, model_key=False, return_state=False):
    """Validate the arguments of :func:`sample`; return the jitted function's arguments and its
    static configuration."""
    check_prediction(prediction)
    if not isinstance(solver, Solver):
        raise ValueError(f"solver must be a jdiff Solver, got {type(solver).__name__}")
    model_arrays, model_static = partition(model_fn)
    check_model_signature(model_fn, model_key, model_static)
    hooks = as_hooks(correct_x0, hooks)
    if state is None:
        x_T = jnp.asarray(x_T)
        if x_T.ndim < 1 or not jnp.issubdtype(x_T.dtype, jnp.floating):
            raise ValueError(f"x_T must be a floating array of shape (batch, ...), got {x_T.shape} {x_T.dtype}")
    else:
        if not isinstance(state, SampleState):
            raise ValueError("state must be the SampleState returned by sample(..., return_state=True)")
        if x_T is not None:
            raise ValueError("pass either x_T or state (to resume), not both")
    if _is_concrete(grid):
        check_grid(grid)
        inferred = float(np.asarray(grid)[-1]) == 0.0
        if final_zero is None:
            final_zero = inferred
        elif final_zero != inferred:
            raise ValueError(f"final_zero={final_zero} but the grid ends at t={float(np.asarray(grid)[-1])}")
    elif final_zero is None:
        raise ValueError("pass final_zero=True/False when the grid is traced")
    grid = jnp.asarray(grid)
    n_steps = grid.shape[0] - 1
    stop = n_steps if stop is None else stop
    if not (isinstance(start, (int, np.integer)) and isinstance(stop, (int, np.integer))
            and 0 <= start < stop <= n_steps):
        raise ValueError(f"need integers 0 <= start < stop <= {n_steps} (the grid's steps), "
                         f"got start={start!r}, stop={stop!r}")
    if denoise_to_zero and stop != n_steps:
        raise ValueError("denoise_to_zero applies at the end of the grid; stop is before it")
    _check_denoise_to_zero(denoise_to_zero, bool(final_zero))
    if n_steps < solver.min_steps:
        raise ValueError(f"solver {solver.name!r} needs at least {solver.min_steps} steps, got {n_steps}")
    if solver.stochastic and key is None:
        raise ValueError(f"solver {solver.name!r} is stochastic: pass a PRNG key")
    if model_key and key is None:
        raise ValueError("model_key=True: pass a PRNG key")
    if key is None:
        key = jax.random.key(0)
    if check_finite and state is None and not bool(jnp.all(jnp.isfinite(x_T))):
        raise ValueError("non-finite values in x_T (before step 0)")
    check_no_captured_arrays(model_static, "model_fn")
    hook_arrays, hook_static = partition(hooks)
    check_no_captured_arrays(hook_static, "hook")
    cfg = _Config(model=model_static, hooks=hook_static, solver=solver, prediction=prediction,
                  final_zero=bool(final_zero), denoise_to_zero=bool(denoise_to_zero),
                  track_finite=bool(check_finite), start=int(start), stop=int(stop),
                  model_key=bool(model_key), return_state=bool(return_state))
    return (model_arrays, hook_arrays, schedule, grid, x_T if state is None else None, key, args,
            state), cfg


def sample(
    model_fn,
    schedule,
    solver: Solver,
    grid,
    x_T,
    key=None,
    *,
    args=None,
    prediction: str = "eps",
    final_zero: bool | None = None,
    denoise_to_zero: bool = False,
    check_finite: bool = False,
    correct_x0=None,
    hooks=(),
    start: int = 0,
    stop: int | None = None,
    state: SampleState | None = None,
    return_state: bool = False,
    model_key: bool = False,
):
    """Run ``solver`` from ``x_T`` at ``grid[start]`` to ``grid[stop]`` as one jitted program.

    Args:
      model_fn: ``model_fn(x, t, args) -> prediction`` for x of shape (batch, ...) and scalar t
        (``model_fn(x, t, args, key)`` with ``model_key=True``).
      schedule: a :mod:`jdiff.schedules` schedule.
      solver: a :class:`~jdiff.solvers.base.Solver` (e.g. ``jdiff.solvers.get_solver("heun")``).
      grid: descending times of shape (n_steps + 1,), e.g. from :func:`jdiff.grids.make_grid`.
      x_T: initial sample at ``grid[start]``, already scaled (see :func:`init_noise`); None when
        resuming from ``state``.
      key: PRNG key; required by stochastic solvers. The same key gives the same samples.
      args: traced pytree passed to ``model_fn`` and to hooks (labels, guidance scales, a
        measurement, ...). A new value does not recompile.
      prediction: what ``model_fn`` predicts: ``eps``, ``x0``, ``v`` or ``score``.
      final_zero: whether the grid ends at t = 0; inferred when the grid is concrete.
      denoise_to_zero: finish with one more model call returning its x0 prediction (+1 NFE); for
        grids ending at t_min > 0 (the call at t = 0 of a grid ending there is an error).
      check_finite: after sampling, raise ``ValueError`` naming the first step that produced a
        non-finite value (needs concrete inputs; not for use inside ``jax.jit``).
      correct_x0: optional ``fn(x0, x, t, alpha, sigma, args) -> x0`` applied to every data
        prediction (e.g. :func:`jdiff.thresholding.dynamic_thresholding`), DPM-Solver's
        ``correcting_x0_fn``; compared by value, so make it a frozen dataclass or a module-level
        function.
      hooks: a :class:`jdiff.hooks.Hook` or a tuple of them (x0 transforms with state,
        post-step hooks), applied after ``correct_x0``.
      start, stop: run steps ``start .. stop - 1`` of the grid (default: all).
      state: the :class:`SampleState` returned by an earlier call with ``return_state=True``, to
        resume from (``x_T`` must then be None).
      return_state: also return the :class:`SampleState` after the last step run.
      model_key: pass the model a key of its own stream (dropout, stochastic models).

    Returns:
      The sample at ``grid[stop]`` (after ``denoise_to_zero`` if set), same shape and dtype as
      ``x_T``; with ``return_state``, ``(x, state)``. The solver runs in at least float32 (a
      bfloat16 ``x_T`` is promoted, the result cast back).
    """
    dyn, cfg = _prepare(model_fn, schedule, solver, grid, x_T, key, args=args, prediction=prediction,
                        final_zero=final_zero, denoise_to_zero=denoise_to_zero,
                        check_finite=check_finite, correct_x0=correct_x0, hooks=hooks, start=start,
                        stop=stop, state=state, model_key=model_key,
                        return_state=return_state)
    x, out_state, flags = _sample(*dyn, cfg=cfg)
    if check_finite:
        ok = np.asarray(flags)
        if not ok.all():
            k = cfg.start + int(np.argmin(ok))
            g = np.asarray(dyn[3])
            n_steps = g.shape[0] - 1
            where = (f"step {k} (t={g[k]:.6g} -> {g[k + 1]:.6g})" if k < n_steps
                     else f"the final denoising call at t={g[-1]:.6g}")
            raise ValueError(f"non-finite values first appeared at {where} of solver {solver.name!r}")
    return (x, out_state) if return_state else x


def lower_sample(model_fn, schedule, solver, grid, x_T, key=None, **options):
    """The ``jax.stages.Lowered`` program :func:`sample` would run with these arguments (for
    inspection: ``.as_text()``, ``.compile().cost_analysis()``). Same arguments as ``sample``."""
    dyn, cfg = _prepare(model_fn, schedule, solver, grid, x_T, key, **options)
    return _sample.lower(*dyn, cfg=cfg)


def compiled_programs() -> int:
    """Number of programs the sampler has compiled in this process (its jit cache size)."""
    return _sample._cache_size()


def nfe(solver: Solver, grid, denoise_to_zero: bool = False) -> int:
    """Exact number of model evaluations of ``sample`` with this solver and concrete grid."""
    g = np.asarray(grid)
    final_zero = float(g[-1]) == 0.0
    _check_denoise_to_zero(denoise_to_zero, final_zero)
    return solver.nfe(g.shape[0] - 1, final_zero) + int(denoise_to_zero)


def init_noise(schedule, t_start, z):
    """Scale standard-normal ``z`` to the prior at ``t_start``: ``prior_std(t_start) * z``."""
    return jnp.asarray(schedule.prior_std(jnp.asarray(t_start, jnp.float32)), z.dtype) * z
