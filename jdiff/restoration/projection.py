"""Zero-shot restoration by projection: DDNM, DDNM+ (Wang et al. 2023) and DDRM (Kawar et al. 2022).

All three restore ``x`` from ``y = A x + sigma_y n`` with an unconditional model and a linear
operator of :mod:`jdiff.restoration.operators` (its pseudo-inverse and its SVD
``A = U diag(s) V^T`` in factored form). ``sigma_y`` is in the data's own scale: the official codes
take it for [0, 1] images and double it for [-1, 1] data; we do not.

**The measurement travels in ``args``.** Every method here, and the hooks, read the measurement,
the operator and sigma_y from the sampler's traced ``args``, a dict built by
:func:`restoration_args`::

    args = {"measurement": y, "operator": op, "sigma_y": sigma_y, **model_args}

(keys :data:`MEASUREMENT`, :data:`OPERATOR`, :data:`SIGMA_Y`). The key names do not collide with
the class labels a network model reads from ``args["y"]`` (:func:`jdiff.network.labels_from_args`),
so class labels may ride along in the same dict; a model that ignores ``args`` (an unlabelled
exact testbed) ignores them all. Since the operator is a pytree with traced arrays, a new ``y``,
``sigma_y`` or operator of the same configuration (another random mask of the same shape) reuses
the compiled program.

**DDNM, noiseless** (range-null-space decomposition): the hook :class:`DDNM` maps every data
prediction to ``x0 - A^+(A x0 - y) = A^+ y + (I - A^+ A) x0``. It is a plain x0 transform, so it
is valid with *every* jdiff solver (the solver integrates with the projected data prediction and
the noise prediction recomputed from it, as with DPM-Solver's ``correcting_x0_fn``). Consistency:
with a grid ending at t = 0, the output satisfies ``A x = y`` to float precision when the
solver's final step returns a combination, with weights summing to one, of projected data
predictions. Every jdiff solver tried does, by itself, to float32 rounding (at most 1.2e-7 on
mix16d with a mask: DDIM, DDPM, Euler, Heun, DPM-Solver(2) noise form, DPM-Solver(3) singlestep,
DPM-Solver++(2M, 2S, 3M-SDE), UniPC-bh2, DEIS-3, iPNDM, LMS; the tests check DDIM,
DPM-Solver++(2M) and UniPC-bh2). The hook also projects the *final* sample once more
(``final_projection=True``, default), which makes it exact for any solver.

**DDNM's own sampler** (:func:`ddnm_sample`, the official ``ddnm_diffusion``): a DDIM-style step
whose noise is a fraction ``eta`` of the target noise level (not DDIM's eta),

    x_s = alpha_s x0_hat + sigma_s (eta z + sqrt(1 - eta^2) eps_model),

with the *model's* eps (not the one recomputed from x0_hat), ``eta = 0.85`` by default. It runs as
the post-step hook :class:`DDNMStep` over :func:`jdiff.sample` with DDIM as the carrier solver
(whose own update is discarded), so only a one-call solver makes sense there; ``ddnm_sample``
fixes it. Time travel (``travel_length`` l, ``travel_repeat`` r, the official
``get_schedule_jump``, equal to RePaint's schedule) runs on :func:`jdiff.paths.sample_path`: the
jump back draws ``x_{t+l}`` from the forward process ``q(x_{t+l} | x_t)`` (the paper's
Algorithm; the official code instead renoises the last unprojected x0 prediction).

**DDNM+** (noisy y; the SVD form of the official ``Lambda``/``Lambda_noise``, paper eqs 17/19):
per spectral coordinate i, with the next grid point's ``a = alpha_s``, ``sg = sigma_s`` and
``thr_i = a sigma_y / s_i``,

    lambda_i = 1 if sg >= thr_i else s_i sg sqrt(1 - eta^2) / (a sigma_y)
    x0_hat   = x0 - V(lambda * V^T A^+(A x0 - y))
    x_s      = a x0_hat + V(d1 * z + d2 * V^T eps_model)
    (d1, d2) = (sqrt(sg^2 - thr_i^2), 0)            if sg > thr_i      ("before": y is cleaner)
               (sg eta, 0)                           if sg < thr_i      ("after")
               (sg eta, sg sqrt(1 - eta^2))          if s_i = 0 (or sg = thr_i, or sigma_y = 0)

so the total noise on each coordinate (injected measurement noise included) has variance sg^2.
At ``sigma_y = 0`` this is exactly DDNM. The simplified ``ddnm_plus_core`` code path of the
official repository has three bugs (alpha-bar squared, DDIM noise times gamma_t, no noise in y);
we follow the SVD path. **As a hook** (:class:`DDNMPlus`) only the lambda part transfers to other
solvers: it is an x0 transform, evaluated at the *evaluation* time t (a hook does not know the
solver's next time), ``lambda_i = min(1, s_i sigma_t / (alpha_t sigma_y))`` (the eta = 0 rule:
under an ODE solver there is no fresh-noise term, and this lambda keeps the injected measurement
noise at the current noise level). The added noise (d1, d2) belongs to the DDIM-eta step and has
no meaning for other solvers; :func:`ddnm_plus_sample` is the full update.

**DDRM** (:func:`ddrm_sample`, the official ``efficient_generalized_steps``), on the VE scale
``x_ve = x / alpha``, ``sigma_hat = sigma / alpha``, in spectral coordinates
``xbar = V^T x_ve``, ``ybar = U^T y / s`` (s > 0); step t -> s (``sn = sigma_hat_s``), with the
model's ``x0bar = V^T x0``, ``ebar = V^T eps`` and fresh ``z``:

    s_i = 0 or s_i sn = sigma_y (missing): x0bar + sqrt(1 - eta^2) sn ebar + eta sn z
    s_i sn < sigma_y  ("after"):           x0bar + sqrt(1 - eta^2) sn s_i (ybar - x0bar) / sigma_y + eta sn z
    s_i sn > sigma_y  ("before"):          (1 - eta_b) x0bar + eta_b ybar
                                            + sqrt(sn^2 - eta_b^2 sigma_y^2 / s_i^2) z
    x_s = alpha_s V xbar_s

Initialisation at ``sigma_hat_T``: ``ybar + sqrt(sigma_hat_T^2 - sigma_y^2 / s^2) z`` where
``s sigma_hat_T > sigma_y``, ``sigma_hat_T z`` elsewhere, and ``x_T = alpha_T V xbar_T`` (the
official code divides by sigma_hat_T instead of multiplying by alpha_T: the same up to a factor
``1 / sqrt(1 - alpha_bar_T)``, 1.00002 on DDPM's schedule, but wrong on other schedules).
Defaults ``eta = 0.85``, ``eta_b = 1``. DDRM has its own sampler only (its update is not an x0
transform: the "before" coordinates take the measurement with their own noise level). One
jitted ``lax.scan`` program, everything but the configuration traced.

**What they converge to.** None of these is an exact posterior sampler: the model's data
prediction is ``E[x0 | x_t]`` for the *unconditional* x_t, in which the measured coordinates carry
noise the posterior process would not have (exact only when the measured and unmeasured
coordinates are independent under the prior). Under an ODE solver the DDNM hook keeps the
measured coordinates at ``alpha_t y + sigma_t eps_T`` along the whole path and its error does not
shrink with NFE (mix16d, half the entries masked, 1000 samples per measurement: RMS error of the
sample mean to the exact posterior mean 0.39 at NFE 10, 50, 100 and 400 with DPM-Solver++(2M),
no better than y plus the prior mean, 0.46); the samplers that renoise (DDNM's own with
eta = 0.85, DDRM, RePaint's resampling) keep improving with NFE (DDNM 0.37, 0.27, 0.21, 0.07;
DDRM 0.38, 0.32, 0.30, 0.18; RePaint 0.38, 0.32, 0.28, 0.21 at NFE 10, 50, 100, 400). Prefer
the methods' own samplers; ``jdiff bench restore`` measures them against the exact
Gaussian-mixture posterior. What holds exactly: DDNM's noiseless outputs are consistent,
``A x = y`` (DDRM's final step returns the model's unprojected data prediction, as the official
code does: consistent only approximately).

Randomness: ``key`` gives every draw (initial noise from ``split(key)[0]``, the sampler from
``split(key)[1]``, see each function), so the same key gives the same samples; the common option
``z`` (standard-normal draws (B, *op.in_shape), :func:`check_z`) replaces the initial draw. Batched: one sample
per row of ``y``; repeat rows for several samples of one measurement.

Entry points for ``jdiff bench restore``: :func:`restore_ddnm`, :func:`restore_ddnm_plus`,
:func:`restore_ddrm` with the common signature
``restore(model_fn, schedule, op, y, sigma_y, nfe, key, *, prediction="eps", solver=None,
**options)``, :data:`METHODS`, and :func:`nfe_of` (the realised NFE of a budget).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax import lax

from ..grids import check_grid, make_grid
from ..hooks import Hook
from ..paths import path_nfe, repaint_path, sample_path
from ..prediction import check_prediction, from_x0_eps, to_x0_eps
from ..sampling import check_model_signature, init_noise, nfe as sample_nfe, sample
from ..solvers import Solver, ddim, get_solver, steps_for_nfe
from ..solvers.base import grid_coeffs
from ..statics import check_no_captured_arrays, combine, partition
from .operators import LinearOperator, check_sigma_y

MEASUREMENT = "measurement"
OPERATOR = "operator"
SIGMA_Y = "sigma_y"
RESERVED_KEYS = (MEASUREMENT, OPERATOR, SIGMA_Y)


# ---------------------------------------------------------------------------------------------
# The measurement in args
# ---------------------------------------------------------------------------------------------
def restoration_args(op, y, sigma_y=0.0, args=None) -> dict:
    """The ``args`` dict the restoration methods and hooks read (module docstring).

    ``op``: a :class:`~jdiff.restoration.operators.LinearOperator`; ``y``: (B, *op.out_shape);
    ``sigma_y``: a number >= 0 or a (B,) vector of them, in the data's scale; ``args``: None or a
    dict of further model arguments (e.g. ``{"y": labels}`` for a class-conditional network),
    merged in. ``ValueError`` (one line) for a wrong operator, y shape, sigma_y or args."""
    if not isinstance(op, LinearOperator):
        raise ValueError(f"operator must be a jdiff.restoration operator (LinearOperator), got "
                         f"{type(op).__name__}")
    y = op._check_y(y)
    check_sigma_y(sigma_y)
    sig = jnp.asarray(sigma_y, y.dtype)
    if sig.ndim == 1 and sig.shape[0] != y.shape[0]:
        raise ValueError(f"sigma_y has shape {sig.shape}; the batch of y is {y.shape[0]}")
    if args is None:
        extra = {}
    elif isinstance(args, Mapping):
        clash = [k for k in RESERVED_KEYS if k in args]
        if clash:
            raise ValueError(f"args may not contain the restoration keys {clash} (they are set "
                             "from op, y, sigma_y)")
        extra = dict(args)
    else:
        raise ValueError("args of a restoration method must be None or a dict of model arguments "
                         f"(e.g. {{'y': labels}}), got {type(args).__name__}")
    return {**extra, MEASUREMENT: y, OPERATOR: op, SIGMA_Y: sig}


def read_measurement(args, dtype):
    """``(op, y, sigma_y)`` from restoration ``args``; sigma_y as a (B, 1) column (or scalar)."""
    if not isinstance(args, Mapping) or any(k not in args for k in RESERVED_KEYS):
        raise ValueError("restoration hooks read the measurement from args: pass "
                         "args=restoration_args(op, y, sigma_y) to jdiff.sample")
    op = args[OPERATOR]
    y = jnp.asarray(args[MEASUREMENT]).astype(dtype)
    sy = jnp.asarray(args[SIGMA_Y]).astype(dtype)
    if sy.ndim == 1:
        sy = sy[:, None]
    return op, y, sy


def _pixel(v, ndim: int):
    """A scalar or (B, 1) column broadcast against arrays of ``ndim`` dimensions."""
    return v if v.ndim == 0 else v.reshape((v.shape[0],) + (1,) * (ndim - 1))


def _check_unit(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def _check_key(key, what: str):
    if key is None:
        raise ValueError(f"{what} draws noise: pass a PRNG key")
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    return key


# ---------------------------------------------------------------------------------------------
# DDNM as x0 hooks (any solver)
# ---------------------------------------------------------------------------------------------
def project(op, x0, y):
    """DDNM's range-null projection ``x0 - A^+(A x0 - y)`` (``A x = y`` afterwards when y is in
    the range of A)."""
    return x0 - op.pinv(op.A(x0) - y)


@dataclasses.dataclass(frozen=True)
class DDNM(Hook):
    """Noiseless DDNM as an x0 hook: ``x0 <- x0 - A^+(A x0 - y)`` for every data prediction, valid
    with every solver; ``final_projection`` also projects the final sample at t = 0 (see the
    module docstring). Reads ``args`` built by :func:`restoration_args`."""

    final_projection: bool = True

    def x0(self, x0, x, t, alpha, sigma, args, ctx):  # noqa: ARG002
        op, y, _ = read_measurement(args, x0.dtype)
        return project(op, x0, y)

    def post_step(self, state, outputs, grid, i, args, ctx):  # noqa: ARG002
        if not self.final_projection:
            return state, ctx.state
        x = state.x
        op, y, _ = read_measurement(args, x.dtype)
        last = grid.sigma[i + 1] == 0
        # projecting a sample that is already consistent changes it by rounding only
        return state._replace(x=jnp.where(last, project(op, x, y), x)), ctx.state


def _lambda(s, sg, a, sy, c):
    """DDNM+'s per-coordinate lambda (s: (n,), sg, a scalars, sy scalar or (B, 1), c the factor
    sqrt(1 - eta^2)): 1 where ``sg >= a sy / s`` (and where sy = 0), else ``s sg c / (a sy)``."""
    a_sy = a * sy
    after = (sy > 0) & (s > 0) & (s * sg < a_sy)
    return jnp.where(after, s * sg * c / jnp.where(after, a_sy, 1), 1.0)


@dataclasses.dataclass(frozen=True)
class DDNMPlus(Hook):
    """The lambda part of DDNM+ as an x0 hook (any solver): ``x0 <- x0 - V(lambda * V^T A^+(A x0
    - y))`` with ``lambda_i = min(1, s_i sigma_t / (alpha_t sigma_y))`` at the evaluation time
    (``lambda = 1``, i.e. :class:`DDNM`, at sigma_y = 0). The noise part of DDNM+ needs the DDIM
    step of :func:`ddnm_plus_sample`."""

    def x0(self, x0, x, t, alpha, sigma, args, ctx):  # noqa: ARG002
        op, y, sy = read_measurement(args, x0.dtype)
        s = op.singular_values(x0.dtype)
        res = op.Vt(op.pinv(op.A(x0) - y))
        lam = _lambda(s, sigma, alpha, sy, 1.0)
        return x0 - op.V(lam * res)


@dataclasses.dataclass(frozen=True)
class _Projected:
    prediction: str
    plus: bool

    def __call__(self, model_fn, schedule, x, t, args=None, *key):
        out = model_fn(x, t, args, *key)
        alpha, sigma = schedule.alpha(t).astype(x.dtype), schedule.sigma(t).astype(x.dtype)
        x0, _ = to_x0_eps(out, x, alpha, sigma, self.prediction)
        hook = DDNMPlus() if self.plus else DDNM()
        x0 = hook.x0(x0, x, t, alpha, sigma, args, None)
        eps = (x - alpha * x0) / sigma
        return from_x0_eps(x0, eps, alpha, sigma, self.prediction).astype(out.dtype)


def ddnm_projection(model_fn, schedule, *, prediction: str = "eps", plus: bool = False):
    """DDNM's projection as a model-function transform: a model of the same prediction type
    whose data prediction is :class:`DDNM`'s (``plus=True``: :class:`DDNMPlus`'s), for pipelines
    that take a model rather than hooks. Same maths as the hooks (without DDNM's final
    projection of the sample); reads the measurement from ``args``
    (:func:`restoration_args`); ``model_fn(x, t, args[, key])``."""
    check_prediction(prediction)
    return jax.tree_util.Partial(_Projected(prediction, bool(plus)), model_fn, schedule)


# ---------------------------------------------------------------------------------------------
# DDNM's own sampler
# ---------------------------------------------------------------------------------------------
def ddnm_update(op, x0, eps, y, sigma_y, a, sg, eta, z, plus: bool = True):
    """One step of DDNM (``plus=False``) or DDNM+ (module docstring) onto the grid point with
    ``(alpha, sigma) = (a, sg)``, from the model's ``x0`` and ``eps`` (B, *in_shape), measurement
    ``y``, ``sigma_y`` (scalar or (B, 1)), ``eta`` and standard-normal spectral noise ``z``
    (B, n). Returns ``x_s``."""
    dtype = x0.dtype
    s = op.singular_values(dtype)
    c = jnp.sqrt(jnp.maximum(1.0 - eta * eta, 0.0)).astype(dtype)
    res = op.Vt(op.pinv(op.A(x0) - y))  # spectral residual: where(s > 0, x0bar - ybar, 0)
    if not plus:
        x0_hat = x0 - op.V(res)
        return a * x0_hat + sg * c * eps + op.V(sg * eta * z)
    pos = s > 0
    a_sy = a * sigma_y
    noisy = sigma_y > 0
    after = noisy & pos & (s * sg < a_sy)
    before = noisy & pos & (s * sg > a_sy)
    lam = _lambda(s, sg, a, sigma_y, c)
    thr = a_sy / jnp.where(pos, s, 1)
    d1 = jnp.where(before, jnp.sqrt(jnp.maximum(sg * sg - thr * thr, 0.0)), sg * eta)
    d2 = jnp.where(before | after, 0.0, sg * c)
    x0_hat = x0 - op.V(lam * res)
    return a * x0_hat + op.V(d1 * z + d2 * op.Vt(eps))


@struct.dataclass
class DDNMStep(Hook):
    """The official DDNM / DDNM+ update as a post-step hook: from the step's raw model outputs it
    recomputes the new sample with :func:`ddnm_update` and replaces the carrier solver's result.
    Use with a one-call, one-step solver (DDIM; :func:`ddnm_sample` does). ``eta`` is traced
    (a new value does not recompile); ``plus`` is static."""

    eta: Any = 0.85
    plus: bool = struct.field(pytree_node=False, default=True)

    def post_step(self, state, outputs, grid, i, args, ctx):  # noqa: ARG002
        x0, eps = ctx.model_outputs[0]
        dtype = state.x.dtype
        op, y, sy = read_measurement(args, dtype)
        z = jax.random.normal(ctx.key, (x0.shape[0], op.dim_in), dtype)
        x = ddnm_update(op, x0.astype(dtype), eps.astype(dtype), y, sy, grid.alpha[i + 1],
                        grid.sigma[i + 1], jnp.asarray(self.eta, dtype), z, self.plus)
        return state._replace(x=x.astype(dtype)), ctx.state


def _travel_path(n_steps: int, travel_length: int, travel_repeat: int):
    for v, name in ((travel_length, "travel_length"), (travel_repeat, "travel_repeat")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if travel_repeat == 1:
        return None  # no time travel
    return repaint_path(n_steps, int(travel_length), int(travel_repeat))


def _initial_noise(schedule, grid, key, shape, dtype, z=None):
    z = jax.random.normal(key, shape, dtype) if z is None else z
    return init_noise(schedule, np.asarray(grid)[0], z)


def check_z(z, shape, dtype, what: str, x_T=None):
    """The restoration methods' common option ``z``: standard-normal draws of ``shape`` (B,
    *op.in_shape) used in place of the key's initial draw (None: the key draws). One clear
    ValueError for a wrong shape, a non-array or ``z`` together with ``x_T``."""
    if z is None:
        return None
    if x_T is not None:
        raise ValueError(f"{what}: pass x_T or z, not both")
    try:
        z = jnp.asarray(z)
    except TypeError:
        raise ValueError(f"{what}: z must be an array of standard-normal draws, got {type(z).__name__}") from None
    if tuple(z.shape) != tuple(shape):
        raise ValueError(f"{what}: z must have shape {tuple(shape)} (B, *op.in_shape), got {tuple(z.shape)}")
    return z.astype(dtype)


def ddnm_sample(model_fn, schedule, op, y, grid, key, *, sigma_y=0.0, eta: float = 0.85,
                travel_length: int = 1, travel_repeat: int = 1, x_T=None, prediction: str = "eps",
                args=None, plus: bool = False, z=None):
    """DDNM's own sampler (official ``ddnm_diffusion``; ``plus=True``: ``ddnm_plus_diffusion``,
    SVD form), one compiled program per configuration.

    Args:
      model_fn, schedule, prediction: the model (``model_fn(x, t, args)``), its schedule and
        prediction type; the model sees ``args`` = :func:`restoration_args`.
      op, y, sigma_y: operator, measurements (B, *op.out_shape) (one sample per row) and their
        noise std (data scale; plain DDNM ignores it and projects onto the noisy y).
      grid: descending times (end at t = 0 for a clean final sample); one model call per step.
      key: PRNG key: ``split(key)[0]`` draws x_T (unless given), ``split(key)[1]`` runs the
        sampler (:func:`jdiff.sample`'s streams with the :class:`DDNMStep` hook).
      eta: the fraction of fresh noise, in [0, 1] (default 0.85).
      travel_length, travel_repeat: time travel (official defaults 1, 1: off); with
        ``travel_repeat > 1`` the path of :func:`jdiff.paths.repaint_path` runs on
        :func:`jdiff.paths.sample_path`.
      x_T: initial sample at ``grid[0]`` (default: prior noise).
      z: standard-normal draws (B, *op.in_shape) in place of ``split(key)[0]``'s: x_T =
        ``init_noise(schedule, grid[0], z)`` (not with ``x_T``).

    Returns the samples (B, *op.in_shape) at the end of the grid. NFE: :func:`ddnm_nfe`.
    """
    eta = _check_unit(eta, "eta")
    check_prediction(prediction)
    rargs = restoration_args(op, y, sigma_y, args)
    y = rargs[MEASUREMENT]
    key = _check_key(key, "ddnm")
    check_grid(grid)
    grid = np.asarray(grid)
    n = grid.shape[0] - 1
    path = _travel_path(n, travel_length, travel_repeat)
    k_init, k_run = jax.random.split(key)
    shape = (y.shape[0],) + tuple(op.in_shape)
    dtype = jnp.promote_types(y.dtype, jnp.float32)
    z = check_z(z, shape, dtype, "ddnm", x_T)
    if x_T is None:
        x_T = _initial_noise(schedule, grid, k_init, shape, dtype, z)
    else:
        x_T = jnp.asarray(x_T)
        if tuple(x_T.shape) != shape:
            raise ValueError(f"x_T must have shape {shape}, got {tuple(x_T.shape)}")
    hook = DDNMStep(eta=jnp.asarray(eta, jnp.result_type(float)), plus=bool(plus))
    if path is None:
        return sample(model_fn, schedule, ddim(), grid, x_T, k_run, args=rargs,
                      prediction=prediction, hooks=(hook,))
    return sample_path(model_fn, schedule, ddim(), grid, path, x_T, k_run, args=rargs,
                       prediction=prediction, hooks=(hook,))


def ddnm_plus_sample(model_fn, schedule, op, y, grid, key, *, sigma_y=0.0, eta: float = 0.85,
                     travel_length: int = 1, travel_repeat: int = 1, x_T=None,
                     prediction: str = "eps", args=None, z=None):
    """DDNM+ (noisy y, SVD form): :func:`ddnm_sample` with ``plus=True``; equal to DDNM at
    ``sigma_y = 0``."""
    return ddnm_sample(model_fn, schedule, op, y, grid, key, sigma_y=sigma_y, eta=eta,
                       travel_length=travel_length, travel_repeat=travel_repeat, x_T=x_T,
                       prediction=prediction, args=args, plus=True, z=z)


def ddnm_nfe(grid, travel_length: int = 1, travel_repeat: int = 1) -> int:
    """Exact number of model evaluations of :func:`ddnm_sample` on ``grid``."""
    g = np.asarray(grid)
    path = _travel_path(g.shape[0] - 1, travel_length, travel_repeat)
    return g.shape[0] - 1 if path is None else path_nfe(ddim(), g, path)


# ---------------------------------------------------------------------------------------------
# DDRM
# ---------------------------------------------------------------------------------------------
DDRM_INIT_STREAM, DDRM_STEP_STREAM = 0, 1


@partial(jax.jit, static_argnames=("model_static", "prediction"))
def _ddrm(model_arrays, schedule, grid, key, rargs, eta, eta_b, z, *, model_static, prediction):
    model_fn = combine(model_arrays, model_static)
    op = rargs[OPERATOR]
    y = rargs[MEASUREMENT]
    dtype = jnp.promote_types(y.dtype, jnp.float32)
    y = y.astype(dtype)
    sy = jnp.asarray(rargs[SIGMA_Y]).astype(dtype)
    sy = sy[:, None] if sy.ndim == 1 else sy
    eta = eta.astype(dtype)
    eta_b = eta_b.astype(dtype)
    g = grid_coeffs(schedule, grid, dtype)
    sh = g.sigma_hat  # VE noise levels, 0 at t = 0
    B, n = y.shape[0], op.dim_in
    s = op.singular_values(dtype)
    pos = s > 0
    s_safe = jnp.where(pos, s, 1)
    Uty = op.Ut(y)  # zero where s = 0
    ybar = jnp.where(pos, Uty / s_safe, 0)
    sy_safe = jnp.where(sy > 0, sy, 1)
    c = jnp.sqrt(jnp.maximum(1.0 - eta * eta, 0.0))

    # initialisation at sigma_hat_T: p(x_T | y); z (B, n) standard normal, drawn outside
    sT = sh[0]
    large = pos & (s * sT > sy)
    inv_sig = jnp.where(large, sy / s_safe, 0)
    xbar = jnp.where(large, ybar, 0) + jnp.sqrt(jnp.maximum(sT * sT - inv_sig * inv_sig, 0.0)) * z
    x = g.alpha[0] * op.V(xbar)
    k_steps = jax.random.fold_in(key, DDRM_STEP_STREAM)

    def step(x, i):
        pred = model_fn(x, g.t[i], rargs)
        x0, eps = to_x0_eps(pred, x, g.alpha[i], g.sigma[i], prediction)
        xb0, eb = op.Vt(x0), op.Vt(eps)
        sn = sh[i + 1]
        z = jax.random.normal(jax.random.fold_in(k_steps, i), (B, n), dtype)
        before = pos & (s * sn > sy)
        after = pos & (s * sn < sy)
        missing = xb0 + c * sn * eb + eta * sn * z
        aft = xb0 + c * sn * (Uty - s * xb0) / sy_safe + eta * sn * z
        bef = (eta_b * ybar + (1 - eta_b) * xb0
               + jnp.sqrt(jnp.maximum(sn * sn - (eta_b * sy / s_safe) ** 2, 0.0)) * z)
        xbn = jnp.where(before, bef, jnp.where(after, aft, missing))
        return (g.alpha[i + 1] * op.V(xbn)).astype(dtype), None

    x, _ = lax.scan(step, x, jnp.arange(grid.shape[0] - 1, dtype=jnp.int32))
    return x


def ddrm_sample(model_fn, schedule, op, y, grid, key, *, sigma_y=0.0, eta: float = 0.85,
                eta_b: float = 1.0, prediction: str = "eps", args=None, z=None):
    """DDRM (module docstring) as one jitted ``lax.scan`` program.

    ``model_fn`` (sees ``args`` = :func:`restoration_args`), ``schedule``, ``prediction``: the
    model; ``op``, ``y`` (B, *op.out_shape), ``sigma_y`` (data scale): the measurement;
    ``grid``: descending times, one model call per step (end at t = 0 for a clean sample);
    ``eta``, ``eta_b`` in [0, 1] (traced: new values do not recompile). Randomness: the
    initial spectral noise from ``fold_in(key, 0)``, step i's from ``fold_in(fold_in(key, 1), i)``
    (standard normal of shape (B, n) in the operator's spectral coordinates; ``z`` (B,
    *op.in_shape), flattened to (B, n), replaces the initial one). Returns the samples
    (B, *op.in_shape) at the end of the grid; NFE = ``len(grid) - 1``.
    """
    eta = _check_unit(eta, "eta")
    eta_b = _check_unit(eta_b, "eta_b")
    check_prediction(prediction)
    rargs = restoration_args(op, y, sigma_y, args)
    key = _check_key(key, "ddrm")
    check_grid(grid)
    model_arrays, model_static = partition(model_fn)
    check_model_signature(model_fn, False, model_static)
    check_no_captured_arrays(model_static, "model_fn")
    dtype = jnp.promote_types(rargs[MEASUREMENT].dtype, jnp.float32)
    B = rargs[MEASUREMENT].shape[0]
    z = check_z(z, (B,) + tuple(op.in_shape), dtype, "ddrm")
    # drawn outside the program either way, so that the key's draw given as z is the same program
    z = (jax.random.normal(jax.random.fold_in(key, DDRM_INIT_STREAM), (B, op.dim_in), dtype) if z is None
         else z.reshape(B, op.dim_in))
    return _ddrm(model_arrays, schedule, jnp.asarray(grid, dtype), key, rargs,
                 jnp.asarray(eta, dtype), jnp.asarray(eta_b, dtype), z, model_static=model_static,
                 prediction=prediction)


def ddrm_compiled_programs() -> int:
    """Number of DDRM programs compiled in this process."""
    return _ddrm._cache_size()


# ---------------------------------------------------------------------------------------------
# Entry points for jdiff bench restore
# ---------------------------------------------------------------------------------------------
class Plan(NamedTuple):
    """How a restoration method spends an NFE budget."""

    grid: np.ndarray
    path: np.ndarray | None  # time-travel / resampling path (None: straight down the grid)
    nfe: int  # the realised number of model evaluations (<= the budget)
    solver: str  # the solver, or the method's own sampler


def _resolve_solver(solver):
    if solver is None or isinstance(solver, Solver):
        return solver
    if isinstance(solver, str):
        return get_solver(solver)
    raise ValueError(f"solver must be None, a solver name or a jdiff Solver, got {type(solver).__name__}")


def _budget(nfe) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    return int(nfe)


def _grid(schedule, n_steps: int, spacing: str):
    return make_grid(schedule, spacing, n_steps, "zero")


def travel_steps(nfe: int, travel_length: int, travel_repeat: int) -> int:
    """Largest step count whose time-travel path (:func:`jdiff.paths.repaint_path`) makes at most
    ``nfe`` one-call steps (1 if none does)."""
    def downs(n):
        jumps = len(range(0, n - travel_length, travel_length))
        return n + (travel_repeat - 1) * travel_length * jumps

    lo, hi = 1, max(1, nfe)
    while lo < hi:  # downs is non-decreasing in n
        mid = (lo + hi + 1) // 2
        if downs(mid) <= nfe:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _plan_ddnm(schedule, nfe, solver, travel_length=1, travel_repeat=1, grid="logsnr"):
    nfe = _budget(nfe)
    solver = _resolve_solver(solver)
    _travel_path(1, travel_length, travel_repeat)  # validates
    if solver is not None and travel_repeat == 1:
        g = _grid(schedule, steps_for_nfe(solver, nfe), grid)
        return Plan(g, None, sample_nfe(solver, g), solver.name)
    carrier = ddim() if solver is None else solver
    per_step = carrier.nfe(2, False) // 2
    calls = max(1, nfe // per_step)
    n = travel_steps(calls, travel_length, travel_repeat) if travel_repeat > 1 else calls
    g = _grid(schedule, n, grid)
    path = _travel_path(n, travel_length, travel_repeat)
    realised = g.shape[0] - 1 if path is None else path_nfe(carrier, g, path)
    return Plan(g, path, realised, "ddnm" if solver is None else solver.name)


def _restore_ddnm(plus, model_fn, schedule, op, y, sigma_y, nfe, key, *, prediction="eps",
                  solver=None, eta=0.85, travel_length=1, travel_repeat=1, grid="logsnr",
                  args=None, x_T=None, z=None, return_plan=False):
    plan = _plan_ddnm(schedule, nfe, solver, travel_length, travel_repeat, grid)
    solver = _resolve_solver(solver)
    if solver is None:
        x = ddnm_sample(model_fn, schedule, op, y, plan.grid, key, sigma_y=sigma_y, eta=eta,
                        travel_length=travel_length, travel_repeat=travel_repeat, x_T=x_T,
                        prediction=prediction, args=args, plus=plus, z=z)
    else:
        rargs = restoration_args(op, y, sigma_y, args)
        k_init, k_run = jax.random.split(_check_key(key, "ddnm"))
        shape = (rargs[MEASUREMENT].shape[0],) + tuple(op.in_shape)
        dtype = jnp.promote_types(rargs[MEASUREMENT].dtype, jnp.float32)
        z = check_z(z, shape, dtype, "ddnm", x_T)
        if x_T is None:
            x_T = _initial_noise(schedule, plan.grid, k_init, shape, dtype, z)
        hook = DDNMPlus() if plus else DDNM()
        if plan.path is None:
            x = sample(model_fn, schedule, solver, plan.grid, x_T, k_run, args=rargs,
                       prediction=prediction, hooks=(hook,))
        else:  # time travel with another solver: the hook on the path (the solver restarts)
            x = sample_path(model_fn, schedule, solver, plan.grid, plan.path, x_T, k_run,
                            args=rargs, prediction=prediction, hooks=(hook,))
    return (x, plan) if return_plan else x


def restore_ddnm(model_fn, schedule, op, y, sigma_y, nfe, key, *, prediction="eps", solver=None,
                 **options):
    """DDNM within an NFE budget. ``solver=None``: DDNM's own sampler (:func:`ddnm_sample`,
    options ``eta``, ``travel_length``, ``travel_repeat``); a solver (name or instance): the
    :class:`DDNM` hook with that solver (with time travel: on
    :func:`jdiff.paths.sample_path`, the solver restarting after every jump). Options: ``grid`` (spacing, default ``"logsnr"``, ending
    at t = 0), ``args`` (model arguments), ``x_T``, ``z`` (standard-normal draws (B,
    *op.in_shape) in place of the key's initial draw: x_T = ``init_noise(schedule, grid[0], z)``),
    ``return_plan`` (also return the :class:`Plan`). Returns the samples (B, *op.in_shape)."""
    return _restore_ddnm(False, model_fn, schedule, op, y, sigma_y, nfe, key,
                         prediction=prediction, solver=solver, **options)


def restore_ddnm_plus(model_fn, schedule, op, y, sigma_y, nfe, key, *, prediction="eps",
                      solver=None, **options):
    """DDNM+ within an NFE budget: ``solver=None`` runs :func:`ddnm_plus_sample`; a solver runs
    the :class:`DDNMPlus` hook (its lambda part only). Options as :func:`restore_ddnm`."""
    return _restore_ddnm(True, model_fn, schedule, op, y, sigma_y, nfe, key,
                         prediction=prediction, solver=solver, **options)


def _plan_ddrm(schedule, nfe, solver=None, grid="logsnr"):
    nfe = _budget(nfe)
    if solver not in (None, "ddrm"):
        raise ValueError("DDRM has its own sampler (its update is not a data-prediction "
                         f"transform): pass solver=None, got {solver!r}")
    return Plan(_grid(schedule, nfe, grid), None, nfe, "ddrm")


def restore_ddrm(model_fn, schedule, op, y, sigma_y, nfe, key, *, prediction="eps", solver=None,
                 eta=0.85, eta_b=1.0, grid="logsnr", args=None, z=None, return_plan=False):
    """DDRM within an NFE budget (``nfe`` steps of :func:`ddrm_sample` on a ``grid`` spacing
    ending at t = 0). ``solver`` must be None. ``z`` (B, *op.in_shape): the standard-normal
    vector of the spectral initialisation (flattened to (B, n)) in place of the key's."""
    plan = _plan_ddrm(schedule, nfe, solver, grid)
    x = ddrm_sample(model_fn, schedule, op, y, plan.grid, key, sigma_y=sigma_y, eta=eta,
                    eta_b=eta_b, prediction=prediction, args=args, z=z)
    return (x, plan) if return_plan else x


METHODS = {"ddnm": restore_ddnm, "ddnm_plus": restore_ddnm_plus, "ddrm": restore_ddrm}
_PLANS = {"ddnm": _plan_ddnm, "ddnm_plus": _plan_ddnm, "ddrm": _plan_ddrm}
_PLAN_OPTIONS = {"ddnm": ("travel_length", "travel_repeat", "grid"),
                 "ddnm_plus": ("travel_length", "travel_repeat", "grid"), "ddrm": ("grid",)}


def plan(method: str, schedule, nfe: int, solver=None, **options) -> Plan:
    """The :class:`Plan` (grid, path, realised NFE) of ``METHODS[method]`` for a budget;
    sampling options (``eta``, ``args``, ...) are accepted and ignored."""
    if method not in _PLANS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(_PLANS)}")
    kw = {k: v for k, v in options.items() if k in _PLAN_OPTIONS[method]}
    return _PLANS[method](schedule, nfe, solver, **kw)


def nfe_of(method: str, schedule, nfe: int, solver=None, **options) -> int:
    """The realised number of model evaluations of ``METHODS[method]`` for a budget ``nfe``."""
    return plan(method, schedule, nfe, solver, **options).nfe


__all__ = [
    "MEASUREMENT", "OPERATOR", "SIGMA_Y", "restoration_args", "read_measurement", "project",
    "DDNM", "DDNMPlus", "ddnm_projection", "DDNMStep", "ddnm_update", "ddnm_sample",
    "ddnm_plus_sample", "ddnm_nfe",
    "ddrm_sample", "ddrm_compiled_programs", "check_z", "Plan", "plan", "travel_steps", "restore_ddnm",
    "restore_ddnm_plus", "restore_ddrm", "METHODS", "nfe_of",
]
