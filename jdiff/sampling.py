"""The sampling driver: any solver over any grid as one compiled program.

    x_0 = sample(model_fn, schedule, solver, grid, x_T, key=None)

The first ``n_steps - 1`` steps run in one ``lax.scan``; the final step is traced separately with
the static flag ``to_zero`` (so Heun can skip its corrector at sigma = 0 without a ``lax.cond``),
and ``denoise_to_zero`` adds one model evaluation that returns the data prediction at the last
grid time (DPM-Solver's option of that name).

``model_fn(x, t)`` is any callable; pass a ``jax.tree_util.Partial`` (e.g.
``Partial(apply_fn, params)``) to have its arrays traced instead of baked into the program as
constants. A plain callable is a static argument: build it once and reuse it, or each new closure
compiles anew.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .grids import check_grid
from .prediction import check_prediction, to_x0_eps
from .solvers.base import Solver, grid_coeffs


def make_denoise(model_fn, prediction: str, correct_x0=None):
    """``denoise(x, t, alpha, sigma) -> (x0, eps)`` from a model function of type ``prediction``.

    ``correct_x0`` (e.g. :func:`jdiff.thresholding.dynamic_thresholding`) maps the data prediction
    before use; eps is then recomputed as ``(x - alpha x0) / sigma`` so both stay consistent.
    """

    def denoise(x, t, alpha, sigma):
        x0, eps = to_x0_eps(model_fn(x, t), x, alpha, sigma, prediction)
        if correct_x0 is not None:
            x0 = correct_x0(x0)
            eps = (x - alpha * x0) / sigma
        return x0, eps

    return denoise


@partial(
    jax.jit,
    static_argnames=("static_model", "solver", "prediction", "final_zero", "denoise_to_zero",
                     "track_finite", "correct_x0"),
)
def _sample(dyn_model, schedule, grid, x_T, key, *, static_model, solver, prediction, final_zero,
            denoise_to_zero, track_finite, correct_x0):
    model_fn = static_model if static_model is not None else dyn_model
    # the state and the schedule's coefficients in at least float32: in bfloat16 the log-SNR step
    # sizes h of a 200-step grid would be off by up to 35%, scrambling multistep ratios
    out_dtype = x_T.dtype
    dtype = jnp.promote_types(out_dtype, jnp.float32)
    x_T = x_T.astype(dtype)
    g = grid_coeffs(schedule, grid, dtype)
    denoise = make_denoise(model_fn, prediction, correct_x0)
    n = grid.shape[0] - 1

    def body(state, i):
        state = solver.step(denoise, state, g, i, False)
        return state, (jnp.all(jnp.isfinite(state.x)) if track_finite else None)

    state = solver.init(x_T, g, key)
    state, flags = lax.scan(body, state, jnp.arange(n - 1))
    state = solver.step(denoise, state, g, n - 1, final_zero)
    x = state.x
    extra = [jnp.all(jnp.isfinite(x))]
    if denoise_to_zero:
        x, _ = denoise(x, g.t[n], g.alpha[n], g.sigma[n])
        extra.append(jnp.all(jnp.isfinite(x)))
    x = x.astype(out_dtype)
    if not track_finite:
        return x, None
    return x, jnp.concatenate([flags, jnp.stack(extra)])


def _check_denoise_to_zero(denoise_to_zero: bool, final_zero: bool) -> None:
    if denoise_to_zero and final_zero:
        raise ValueError("denoise_to_zero needs a grid ending at t_min > 0: this grid ends at t = 0, "
                         "where the last step already returns the data prediction")


def _is_concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def sample(
    model_fn,
    schedule,
    solver: Solver,
    grid,
    x_T,
    key=None,
    *,
    prediction: str = "eps",
    final_zero: bool | None = None,
    denoise_to_zero: bool = False,
    check_finite: bool = False,
    correct_x0=None,
):
    """Run ``solver`` from ``x_T`` at ``grid[0]`` down to ``grid[-1]`` as one jitted program.

    Args:
      model_fn: ``model_fn(x, t) -> prediction`` for x of shape (batch, ...) and scalar t.
      schedule: a :mod:`jdiff.schedules` schedule.
      solver: a :class:`~jdiff.solvers.base.Solver` (e.g. ``jdiff.solvers.get_solver("heun")``).
      grid: descending times of shape (n_steps + 1,), e.g. from :func:`jdiff.grids.make_grid`.
      x_T: initial sample at ``grid[0]``, already scaled (see :func:`init_noise`).
      key: PRNG key; required by stochastic solvers. The same key gives the same samples.
      prediction: what ``model_fn`` predicts: ``eps``, ``x0``, ``v`` or ``score``.
      final_zero: whether the grid ends at t = 0; inferred when the grid is concrete.
      denoise_to_zero: finish with one more model call returning its x0 prediction (+1 NFE); for
        grids ending at t_min > 0 (the call at t = 0 of a grid ending there is an error).
      check_finite: after sampling, raise ``ValueError`` naming the first step that produced a
        non-finite value (needs concrete inputs; not for use inside ``jax.jit``).
      correct_x0: optional ``x0 -> x0`` map applied to every data prediction (static; e.g.
        :func:`jdiff.thresholding.dynamic_thresholding`), DPM-Solver's ``correcting_x0_fn``.

    Returns:
      The final sample, same shape and dtype as ``x_T``. The solver runs in at least float32
      (a bfloat16 ``x_T`` is promoted, the result cast back).
    """
    check_prediction(prediction)
    if not isinstance(solver, Solver):
        raise ValueError(f"solver must be a jdiff Solver, got {type(solver).__name__}")
    x_T = jnp.asarray(x_T)
    if x_T.ndim < 1 or not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise ValueError(f"x_T must be a floating array of shape (batch, ...), got {x_T.shape} {x_T.dtype}")
    if _is_concrete(grid):
        check_grid(grid)
        inferred = float(np.asarray(grid)[-1]) == 0.0
        if final_zero is None:
            final_zero = inferred
        elif final_zero != inferred:
            raise ValueError(f"final_zero={final_zero} but the grid ends at t={float(np.asarray(grid)[-1])}")
    elif final_zero is None:
        raise ValueError("pass final_zero=True/False when the grid is traced")
    _check_denoise_to_zero(denoise_to_zero, final_zero)
    grid = jnp.asarray(grid)
    n_steps = grid.shape[0] - 1
    if n_steps < solver.min_steps:
        raise ValueError(f"solver {solver.name!r} needs at least {solver.min_steps} steps, got {n_steps}")
    if solver.stochastic and key is None:
        raise ValueError(f"solver {solver.name!r} is stochastic: pass a PRNG key")
    if key is None:
        key = jax.random.key(0)
    if check_finite and not bool(jnp.all(jnp.isfinite(x_T))):
        raise ValueError("non-finite values in x_T (before step 0)")

    is_partial = isinstance(model_fn, jax.tree_util.Partial)
    x, flags = _sample(
        model_fn if is_partial else None,
        schedule,
        grid,
        x_T,
        key,
        static_model=None if is_partial else model_fn,
        solver=solver,
        prediction=prediction,
        final_zero=bool(final_zero),
        denoise_to_zero=bool(denoise_to_zero),
        track_finite=bool(check_finite),
        correct_x0=correct_x0,
    )
    if check_finite:
        ok = np.asarray(flags)
        if not ok.all():
            k = int(np.argmin(ok))
            g = np.asarray(grid)
            where = (f"step {k} (t={g[k]:.6g} -> {g[k + 1]:.6g})" if k < n_steps
                     else f"the final denoising call at t={g[-1]:.6g}")
            raise ValueError(f"non-finite values first appeared at {where} of solver {solver.name!r}")
    return x


def nfe(solver: Solver, grid, denoise_to_zero: bool = False) -> int:
    """Exact number of model evaluations of ``sample`` with this solver and concrete grid."""
    g = np.asarray(grid)
    final_zero = float(g[-1]) == 0.0
    _check_denoise_to_zero(denoise_to_zero, final_zero)
    return solver.nfe(g.shape[0] - 1, final_zero) + int(denoise_to_zero)


def init_noise(schedule, t_start, z):
    """Scale standard-normal ``z`` to the prior at ``t_start``: ``prior_std(t_start) * z``."""
    return jnp.asarray(schedule.prior_std(jnp.asarray(t_start, jnp.float32)), z.dtype) * z
