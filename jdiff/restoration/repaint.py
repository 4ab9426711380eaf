"""RePaint (Lugmayr et al. 2022): inpainting by replacing the known region, with resampling.

After every solver step onto the grid point s the known entries (the mask of a
:class:`~jdiff.restoration.operators.Mask`) are replaced by a draw of the noised measurement
``q(x_s | y) = N(alpha_s y, sigma_s^2 I)``, the unknown ones keep the solver's result (paper
Algorithm 1; the official code injects the same draw before the next model call, which is the
same thing); at the grid's end (t = 0) the known entries therefore equal y exactly. Resampling
walks the path of :func:`jdiff.paths.repaint_path` (the official ``get_schedule_jump``: jump
length j, ``resamplings`` r) on :func:`jdiff.paths.sample_path`: at every j-th step the sample
jumps j steps back by the forward process and is denoised again, r - 1 times. NFE = the number of
down moves of the path times the solver's evaluations per step (:func:`repaint_nfe`); the paper's
T = 250, j = r = 10 make about 2500.

**Solvers.** The injection is a post-step hook (:class:`RePaintInject`) and the jumps restart the
solver, so any jdiff solver can carry RePaint; DDPM ancestral sampling is the paper's (default).
Multistep solvers lose their history at every jump (they warm up again); two-call solvers (Heun,
DPM-Solver++ 2S) see the injection only between steps.

**Noisy measurements** (an extension; RePaint assumes y exact): with ``sigma_y > 0`` the known
entries get ``alpha_s y + sqrt(max(sigma_s^2 - alpha_s^2 sigma_y^2, 0)) z``, whose total noise
(measurement noise included) is ``sigma_s`` while ``sigma_s >= alpha_s sigma_y``; they end at the
noisy y (RePaint does not denoise observed entries). With ``sigma_y = 0`` this is RePaint.

Like the other replacement methods RePaint is not an exact posterior sampler (see
:mod:`jdiff.restoration.projection`); resampling reduces the disharmony between the regions.

Measurement in ``args``: :func:`jdiff.restoration.projection.restoration_args`. Mask operators
only (a clear ``ValueError`` otherwise).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..grids import check_grid
from ..hooks import Hook
from ..paths import path_nfe, repaint_path, sample_path
from ..prediction import check_prediction
from ..solvers import Solver, ddpm
from .operators import Mask
from .projection import (MEASUREMENT, Plan, _budget, _check_key, _grid, _initial_noise, _pixel,
                         _resolve_solver, check_z, read_measurement, restoration_args)


def _require_mask(op):
    if not isinstance(op, Mask):
        name = getattr(op, "name", type(op).__name__)
        raise ValueError(f"RePaint inpaints: it needs a Mask operator, got {name!r} "
                         f"({type(op).__name__})")
    return op


@dataclasses.dataclass(frozen=True)
class RePaintInject(Hook):
    """RePaint's injection of the noised known region after every step (module docstring);
    reads ``args`` built by :func:`~jdiff.restoration.projection.restoration_args` with a
    :class:`~jdiff.restoration.operators.Mask`."""

    def post_step(self, state, outputs, grid, i, args, ctx):  # noqa: ARG002
        x = state.x
        op, y, sy = read_measurement(args, x.dtype)
        a, sg = grid.alpha[i + 1], grid.sigma[i + 1]
        sy = _pixel(sy, x.ndim)
        z = jax.random.normal(ctx.key, x.shape, x.dtype)
        known = a * y + jnp.sqrt(jnp.maximum(sg * sg - (a * sy) ** 2, 0.0)) * z
        return state._replace(x=jnp.where(op.mask, known, x).astype(x.dtype)), ctx.state


def _check_int(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def repaint_sample(model_fn, schedule, mask_op, y, grid, key, *, sigma_y=0.0, jump_length: int = 10,
                   resamplings: int = 10, solver: Solver | None = None, x_T=None,
                   prediction: str = "eps", args=None, z=None):
    """RePaint along :func:`jdiff.paths.repaint_path` of ``grid`` (module docstring).

    Args:
      model_fn, schedule, prediction: the model (sees ``args`` =
        :func:`~jdiff.restoration.projection.restoration_args`), its schedule and prediction type.
      mask_op, y, sigma_y: a :class:`Mask`, the measurements (B, *in_shape), one sample per row,
        zeros at missing entries, and their noise std (0 for RePaint proper).
      grid: descending times ending at t = 0 (the known region then ends exactly at y).
      key: PRNG key: ``split(key)[0]`` draws x_T (unless given), ``split(key)[1]`` runs
        :func:`jdiff.paths.sample_path` (solver, jump and hook streams).
      jump_length, resamplings: RePaint's j and r (r = 1: no resampling).
      solver: default DDPM ancestral (the paper's); any jdiff solver.
      x_T: initial sample at ``grid[0]`` (default: prior noise).
      z: standard-normal draws (B, *in_shape) in place of ``split(key)[0]``'s: x_T =
        ``init_noise(schedule, grid[0], z)`` (not with ``x_T``).

    Returns the samples (B, *in_shape). NFE: :func:`repaint_nfe`.
    """
    _require_mask(mask_op)
    check_prediction(prediction)
    solver = ddpm() if solver is None else _resolve_solver(solver)
    rargs = restoration_args(mask_op, y, sigma_y, args)
    y = rargs[MEASUREMENT]
    key = _check_key(key, "repaint")
    check_grid(grid)
    grid = np.asarray(grid)
    path = repaint_path(grid.shape[0] - 1, _check_int(jump_length, "jump_length"),
                        _check_int(resamplings, "resamplings"))
    k_init, k_run = jax.random.split(key)
    shape = tuple(y.shape)
    dtype = jnp.promote_types(y.dtype, jnp.float32)
    z = check_z(z, shape, dtype, "repaint", x_T)
    if x_T is None:
        x_T = _initial_noise(schedule, grid, k_init, shape, dtype, z)
    elif tuple(jnp.shape(x_T)) != shape:
        raise ValueError(f"x_T must have shape {shape}, got {tuple(jnp.shape(x_T))}")
    return sample_path(model_fn, schedule, solver, grid, path, x_T, k_run, args=rargs,
                       prediction=prediction, hooks=(RePaintInject(),))


def repaint_nfe(grid, jump_length: int = 10, resamplings: int = 10, solver: Solver | None = None) -> int:
    """Exact number of model evaluations of :func:`repaint_sample`."""
    g = np.asarray(grid)
    solver = ddpm() if solver is None else _resolve_solver(solver)
    path = repaint_path(g.shape[0] - 1, _check_int(jump_length, "jump_length"),
                        _check_int(resamplings, "resamplings"))
    return path_nfe(solver, g, path)


def auto_schedule(nfe: int) -> tuple[int, int, int]:
    """``(n_steps, jump_length, resamplings)`` for a budget when they are not given: r =
    min(10, max(1, nfe // 10)) resamplings, the jump length the paper's fraction of the steps
    (10 of 250, at least 1), and the most steps whose path fits the budget (one call a step)."""
    nfe = _budget(nfe)
    r = min(10, max(1, nfe // 10))
    for n in range(nfe, 0, -1):
        j = max(1, round(n * 10 / 250))
        if _downs(n, j, r) <= nfe:
            return n, j, r
    return 1, 1, 1


def _downs(n, j, r):
    return n + (r - 1) * j * len(range(0, n - j, j))


def _plan_repaint(schedule, nfe, solver=None, jump_length=None, resamplings=None, grid="logsnr"):
    nfe = _budget(nfe)
    solver = ddpm() if solver is None else _resolve_solver(solver)
    per_step = solver.nfe(2, False) // 2
    calls = max(1, nfe // per_step)  # the path's down moves the budget allows
    if jump_length is None and resamplings is None:
        n, j, r = auto_schedule(calls)
    else:
        j = 10 if jump_length is None else _check_int(jump_length, "jump_length")
        r = 10 if resamplings is None else _check_int(resamplings, "resamplings")
        lo, hi = 1, calls
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if _downs(mid, j, r) <= calls else (lo, mid - 1)
        n = lo
    g = _grid(schedule, n, grid)
    path = repaint_path(n, j, r)
    return Plan(g, path, path_nfe(solver, g, path), solver.name), j, r


def restore_repaint(model_fn, schedule, op, y, sigma_y, nfe, key, *, prediction="eps", solver=None,
                    jump_length=None, resamplings=None, grid="logsnr", args=None, x_T=None, z=None,
                    return_plan=False):
    """RePaint within an NFE budget (mask operators only). ``jump_length`` / ``resamplings``
    default to :func:`auto_schedule` of the budget (both None) or to the paper's 10; the step
    count is the largest whose path fits the budget. ``solver``: default DDPM. ``z``: standard-normal
    draws (B, *op.in_shape) in place of the key's initial draw (:func:`repaint_sample`)."""
    _require_mask(op)
    p, j, r = _plan_repaint(schedule, nfe, solver, jump_length, resamplings, grid)
    x = repaint_sample(model_fn, schedule, op, y, p.grid, key, sigma_y=sigma_y, jump_length=j,
                       resamplings=r, solver=solver, x_T=x_T, prediction=prediction, args=args, z=z)
    return (x, p) if return_plan else x


METHODS = {"repaint": restore_repaint}


def plan(method: str, schedule, nfe: int, solver=None, **options) -> Plan:
    """The :class:`~jdiff.restoration.projection.Plan` of ``METHODS[method]`` for a budget."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    kw = {k: v for k, v in options.items() if k in ("jump_length", "resamplings", "grid")}
    return _plan_repaint(schedule, nfe, solver, **kw)[0]


def nfe_of(method: str, schedule, nfe: int, solver=None, **options) -> int:
    """The realised number of model evaluations of ``METHODS[method]`` for a budget ``nfe``."""
    return plan(method, schedule, nfe, solver, **options).nfe


__all__ = ["RePaintInject", "repaint_sample", "repaint_nfe", "auto_schedule", "restore_repaint",
           "METHODS", "plan", "nfe_of"]
