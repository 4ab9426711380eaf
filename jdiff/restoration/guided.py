"""Gradient-guided zero-shot restoration: DPS and PiGDM, as faithful samplers and as
model-function transforms usable with any jdiff solver.

Notation: ``x_t = alpha_t x0 + sigma_t eps``; a step goes from t to s < t; ``x0_hat(x_t)`` and
``eps_hat(x_t)`` are the model's predictions, ``J = d x0_hat / d x_t``; the measurement is
``y = A x + sigma_y n``. Both methods are *approximations* of the posterior score
``grad log p_t(x_t | y)``; neither samples the exact posterior (the benchmark measures by how
much; :mod:`jdiff.restoration.smc` is the asymptotically exact reference).

**DPS** (Chung et al., ICLR 2023; official code ``DPS2022/diffusion-posterior-sampling``,
``condition_methods.py::PosteriorSampling``): a DDPM ancestral step, then a gradient step on
the *norm* (not its square) of the residual, per sample::

    x'_s = DDPM step from (x_t, x0_hat, eps_hat)               (posterior "fixed small" variance)
    x_s  = x'_s - zeta * grad_{x_t} || y - A x0_hat(x_t) ||_2     (one forward + one backward)

The correction is applied at every step, the last one (to t = 0) included. ``clip`` (e.g.
``(-1, 1)`` for images) clips x0_hat before both uses, as the official code does (the gradient
is then zero where x0_hat saturates); the default is no clipping (vector data). Measurement
noise does not enter the update (sigma_y is absorbed in zeta). The correction per step is
independent of the step size, so DPS's total guidance grows with the number of steps: zeta is
tied to the step count (the official code: 1000 DDPM steps, zeta 0.3-1.0; :data:`DPS_DEFAULTS`
records the value chosen here for the vector testbeds).

*As a transform* (:func:`dps_guidance`): the DDIM-eta step is linear in the score,
``x_s = (alpha_s / alpha_t) x_t + k_i * score + c z``, with the step coefficient
``k_i = sigma_t (alpha_s sigma_t / alpha_t - sqrt(sigma_s^2 - c^2))`` (eta = 1:
``k_i = (alpha_s / alpha_t)(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2)``). So DPS's correction
is the score term ``-(zeta / k_i) grad_{x_t} ||y - A x0_hat||``, i.e. ``eps~ = eps +
sigma_t (zeta / k_i) grad``, with ``k_i`` read from the step of ``grid`` containing t. With
``ddim(eta)`` on the same grid and the same ``eta`` this is DPS *exactly* (``ddpm`` + ``eta=1``
is the official sampler, tested to float rounding). With any other solver it is a *re-scaling*:
the same score term handed to that solver's own update (multistep histories, predictor-corrector
pairs, ...), which approximately keeps DPS's per-step displacement: use ``eta=0`` for ODE solvers
(their first-order coefficient is DDIM's) and ``eta=1`` for SDE solvers.

**PiGDM** (Song, Vahdat, Mardani, Kautz, ICLR 2023; no official code; reference implementations
NVlabs/RED-diff ``algos/pgdm.py`` and probabilists/azula ``guidance/pgdm.py``). The guidance
vector (the paper's, with the r_t^2 term)::

    g = J^T A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat),   r_t^2 = sigma_t^2 / (alpha_t^2 + sigma_t^2)

(``r_t^2 = 1 - alphabar_t`` on VP schedules) is ``grad_{x_t} log N(y; A x0_hat(x_t), r_t^2 A A^T
+ sigma_y^2 I)`` with the covariance held fixed. It is computed with the operator's SVD
``A = U diag(s) V^T`` (never a dense matrix): ``A^T (r^2 A A^T + sigma_y^2)^{-1} r =
V(s / (r^2 s^2 + sigma_y^2) * U^T r)``, one VJP through the model. At ``sigma_y = 0`` this is
``(1 / r_t^2) J^T (A^+ y - A^+ A x0_hat)``, the reference codes' pseudo-inverse form up to their
factor ``1 / r_t^2``. The step is the reference's DDIM-eta form (RED-diff and azula agree)::

    c1 = eta sigma_s sqrt(1 - (alpha_t sigma_s / (alpha_s sigma_t))^2),  c2 = sqrt(sigma_s^2 - c1^2)
    x_s = alpha_s x0_hat + c1 z + c2 eps_hat + w alpha_s alpha_t r_t^2 g

which at sigma_y = 0 is exactly ``w alpha_s alpha_t J^T (A^+ y - A^+ A x0_hat)`` of both codes
(RED-diff's default ``awd=True``: the model's eps is kept). ``awd=False`` (RED-diff's option)
also moves eps consistently.

*As a transform* (:func:`pigdm_guidance`): score guidance ``score~ = score + lambda_t g``, i.e.
``eps~ = eps - sigma_t lambda_t g`` and ``x0~ = x0_hat + (sigma_t^2 / alpha_t) lambda_t g``, with a
weight of t alone, so it is a consistent approximate posterior score for *every* solver (its
samples converge as the steps grow, to a biased limit: the PiGDM likelihood is an approximation).
Two weightings:

* ``weighting="paper"`` (default): ``lambda_t = w``, the paper's approximation
  ``grad log p_t(x_t | y) ~ grad log p_t(x_t) + g``;
* ``weighting="reference"``: ``lambda_t = w alpha_t^2 / (alpha_t^2 + sigma_t^2)`` (alphabar_t on
  VP), the weight whose x0 shift is the reference step's ``w alpha_t r_t^2 g``: with
  ``ddim(eta)`` this is exactly the reference step with RED-diff's ``awd=False`` (tested).

On mix16d (mask 50% and an 8 x 16 matrix, sigma_y 0 and 0.1) the paper weighting has 30-45%
lower mean error and sliced Wasserstein than the reference weighting under every solver tried
(ddpm, ddim, dpmpp_2m, unipc_bh2), SDE solvers (ddpm) beating ODE ones. The reference's own step
with ``awd=True`` (the default of :func:`pigdm_sample`) adds the shift ``alpha_s w alpha_t r_t^2
g`` at every step *without* the matching eps change: that is not the discretisation of any score,
its guidance grows with the number of steps (as DPS's does), and it exists only as a sampler.

**Valid method x solver combinations** (tests/test_restoration_guided.py):

* :func:`dps_guidance` with *every* solver (a score term of x_t and t). Exactly DPS under
  ``ddim(eta)`` with the same ``eta`` on the same grid (``ddpm``: the official sampler; ``ddim``
  with ``eta=0``: the ODE step followed by ``-zeta grad``; both tested); under other solvers
  (dpmpp_2m, unipc_bh2, heun, dpmpp_2s, euler_ancestral, dpmpp_2m_sde: tested) a re-scaling. Its
  strength is tied to ``grid`` (pass the grid the solver runs on).
* :func:`pigdm_guidance` with *every* solver (a score term with a weight of t alone; same solvers
  tested). Exactly RED-diff's ``awd=False`` step under ``ddim(eta)`` with
  ``weighting="reference"``. The reference's default ``awd=True`` step is not a score: only
  :func:`pigdm_sample` runs it.
* The transforms are model functions, so they also compose with hooks (``correct_x0``, x0 hooks,
  post-step hooks) and with other model transforms; those compositions are not tested here.
* SMC (:mod:`jdiff.restoration.smc`) runs its own DDPM kernel only: its closed-form proposal and
  weights need the Gaussian transition density of that kernel (ODE and multistep solvers have
  none in x_t alone).

**Arguments in ``args``** (the convention of :mod:`jdiff.restoration`): the transforms read
``args["measurement"]`` (y, batch as x), ``args["operator"]`` and ``args["sigma_y"]`` (scalar
or (batch,)); :func:`measurement_args` builds and checks that dict. The model receives the same
``args`` (unconditional models ignore them). A new y, operator (same type and shapes) or
sigma_y never recompiles.

**Restoration entry points** (called by ``jdiff bench restore``)::

    restore_dps(model_fn, schedule, op, y, sigma_y, nfe, key, *, prediction="eps", solver=None, **options)
    restore_pigdm(...same...)

return one sample per row of y, shape (B, *op.in_shape). ``solver=None`` runs the faithful
sampler (:func:`dps_sample`: ``nfe`` DDPM steps; :func:`pigdm_sample`: ``nfe`` DDIM-eta steps);
a solver (name or :class:`~jdiff.solvers.Solver`) runs :func:`jdiff.sample` with the transform on
``steps_for_nfe(solver, nfe)`` steps. Grids: ``make_grid(schedule, grid, steps, "zero")``,
``grid="logsnr"`` by default. ``return_info=True`` also returns a dict with the realised
``nfe`` (model forward evaluations per returned sample), ``vjp`` (backward passes per sample:
each guided evaluation is one forward and one backward pass, about 2-3x the cost of a plain
one), ``steps``, ``solver`` and the ``grid``.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..grids import check_grid, make_grid
from ..guidance.common import broadcast_scale, check_scale
from ..guidance.gradient import _guided_output
from ..prediction import check_prediction, to_x0_eps
from ..sampling import check_model_signature, init_noise, sample
from ..solvers import DDIM, Solver, get_solver, steps_for_nfe
from ..solvers.base import grid_coeffs
from ..statics import check_no_captured_arrays, combine, partition
from .operators import LinearOperator, check_sigma_y
from .projection import RESERVED_KEYS, Plan as _Plan, check_z, restoration_args

__all__ = [
    "measurement_args", "read_measurement_args", "dps_gradient", "dps_residual_norm",
    "pigdm_vector", "pigdm_r2", "dps_guidance", "pigdm_guidance", "dps_sample", "pigdm_sample",
    "restore_dps", "restore_pigdm", "ddim_score_coefficient", "METHODS", "DPS_DEFAULTS",
    "PIGDM_DEFAULTS", "PIGDM_WEIGHTINGS", "compiled_programs", "Plan", "plan", "nfe_of",
    "RESERVED_KEYS",
]

# Defaults. zeta: the official configs use 0.3-1.0 with 1000 DDPM steps on [-1, 1] images. On
# mix16d (mask 50% and an 8 x 16 Gaussian matrix, sigma_y 0 and 0.1, logsnr grids of 20 and 100
# DDPM steps, 4 measurements x 256 samples) a sweep over zeta in {0.03, 0.1, 0.3, 1, 3} gave the
# lowest sliced Wasserstein at zeta = 1 (mask; 0.08 at 100 steps, 0.18 at 20) and 0.3-1 (matrix;
# 0.16-0.19 at 100 steps); zeta = 3 overshoots (sw 0.3-0.9), zeta <= 0.1 barely guides.
DPS_DEFAULTS = {"zeta": 1.0, "grid": "logsnr", "clip": None}
# PiGDM: w = 1 (RED-diff's grad_term_weight); eta = 1: on the same sweep eta = 1 was as good as or
# better than RED-diff's config value eta = 0 (sw 0.07-0.10 vs 0.08-0.14 at 100 steps); pass
# eta=0.0 to match RED-diff.
PIGDM_DEFAULTS = {"w": 1.0, "eta": 1.0, "grid": "logsnr", "awd": True, "weighting": "paper"}
PIGDM_WEIGHTINGS = ("paper", "reference")


# ---------------------------------------------------------------------------------------------
# args and checks
# ---------------------------------------------------------------------------------------------
def _is_tracer(a) -> bool:
    return isinstance(a, jax.core.Tracer)


def _check_operator(op, what: str):
    if not isinstance(op, LinearOperator):
        raise ValueError(f"{what}: operator must be a jdiff.restoration operator, got {type(op).__name__}")
    return op


def _check_y(op: LinearOperator, y, what: str):
    """y as a floating array of shape (B, *op.out_shape); a single unbatched y is an error."""
    _check_operator(op, what)
    arr = jnp.asarray(y)
    if arr.ndim != len(op.out_shape) + 1 or tuple(arr.shape[1:]) != tuple(op.out_shape):
        raise ValueError(f"{what}: y must have shape (batch, {', '.join(map(str, op.out_shape))}) "
                         f"for operator {op.name!r}, got {tuple(arr.shape)}")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    if not _is_tracer(arr) and not bool(jnp.all(jnp.isfinite(arr))):
        raise ValueError(f"{what}: y has non-finite values")
    return arr


def _check_sigma_y(sigma_y, batch: int, dtype, what: str):
    try:
        check_sigma_y(sigma_y)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    sig = jnp.asarray(sigma_y, dtype)
    if sig.ndim == 1 and sig.shape[0] != batch:
        raise ValueError(f"{what}: sigma_y has shape {sig.shape}, the batch is {batch}")
    return sig


# one dict for every restoration method: projection.restoration_args builds and checks it
measurement_args = restoration_args


def read_measurement_args(args, batch: int | None = None):
    """``(y, op, sigma_y)`` from ``args`` (see :func:`measurement_args`); ValueError if absent."""
    if args is None or not hasattr(args, "keys") or "measurement" not in args or "operator" not in args:
        raise ValueError("restoration guidance needs args={'measurement': y, 'operator': op, "
                         "'sigma_y': s} (see jdiff.restoration.measurement_args)")
    y, op = args["measurement"], args["operator"]
    _check_operator(op, "restoration guidance")
    sig = args["sigma_y"] if "sigma_y" in args else jnp.zeros((), jnp.asarray(y).dtype)
    if batch is not None and y.shape[0] != batch:
        raise ValueError(f"restoration guidance: the measurement has batch {y.shape[0]}, the "
                         f"sample has batch {batch}")
    return y, op, sig


def _nonneg(value, what: str, name: str):
    """``check_scale`` plus >= 0 for concrete values: ``(static_float | None, traced | None)``."""
    try:
        static, traced = check_scale(value, what)
    except ValueError as e:
        raise ValueError(str(e).replace("scale", name)) from None
    if static is not None and static < 0:
        raise ValueError(f"{what}: {name} must be a finite number >= 0, got {value!r}")
    if traced is not None and not _is_tracer(traced) and bool(jnp.any(traced < 0)):
        raise ValueError(f"{what}: {name} must be >= 0, got {np.asarray(traced)}")
    return static, traced


def _check_eta(eta, what: str) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float, np.integer, np.floating)):
        raise ValueError(f"{what}: eta must be a number in [0, 1], got {eta!r}")
    eta = float(eta)
    if not (0.0 <= eta <= 1.0):
        raise ValueError(f"{what}: eta must be in [0, 1], got {eta}")
    return eta


def _check_clip(clip, what: str):
    if clip is None:
        return None
    try:
        lo, hi = (float(v) for v in clip)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: clip must be None or a pair (low, high), got {clip!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{what}: clip must be a finite pair with low < high, got {clip!r}")
    return (lo, hi)


def _col(v, x):
    """A scalar or (batch,) value shaped to broadcast against x (batch, ...)."""
    v = jnp.asarray(v, x.dtype)
    return v.reshape((-1,) + (1,) * (x.ndim - 1)) if v.ndim == 1 else v


# ---------------------------------------------------------------------------------------------
# DPS: the residual norm and its gradient through the model
# ---------------------------------------------------------------------------------------------
def dps_residual_norm(op: LinearOperator, y, x0):
    """``||y - A x0||_2`` per sample, shape (B,): the norm, not its square. Its gradient at a
    zero residual is 0 (the subgradient torch returns), not NaN."""
    r = (y - op.A(x0)).reshape(x0.shape[0], -1)
    ss = jnp.sum(r * r, axis=1)
    pos = ss > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, ss, 1.0)), 0.0)


def _model_x0_eps(model_fn, x, t, args, alpha, sigma, prediction, key=()):
    out = model_fn(x, t, args, *key)
    x0, eps = to_x0_eps(out, x, alpha, sigma, prediction)
    return out, x0, eps


def _dps_grad(model_fn, op, y, x, t, args, alpha, sigma, prediction, clip, key=()):
    """``(grad_x sum_b ||y_b - A x0_hat_b||, out, x0, eps, norm)``: one forward, one backward."""

    def loss(x_):
        out, x0, eps = _model_x0_eps(model_fn, x_, t, args, alpha, sigma, prediction, key)
        if clip is not None:
            x0 = jnp.clip(x0, clip[0], clip[1])
        n = dps_residual_norm(op, y, x0)
        return jnp.sum(n), (out, x0, n)

    grad, (out, x0, n) = jax.grad(loss, has_aux=True)(x)
    x0 = jax.lax.stop_gradient(x0)
    out = jax.lax.stop_gradient(out)
    eps = (x - alpha * x0) / sigma if clip is not None else to_x0_eps(out, x, alpha, sigma, prediction)[1]
    return grad, out, x0, eps, n


def dps_gradient(model_fn, schedule, op, y, x, t, *, prediction: str = "eps", clip=None, args=None):
    """DPS's gradient ``grad_{x_t} ||y - A x0_hat(x_t)||_2`` per sample (not squared), through
    ``model_fn``, with ``x0_hat``, and the norms: ``(grad (B, ...), x0_hat, norm (B,))``."""
    check_prediction(prediction)
    clip = _check_clip(clip, "dps")
    y = _check_y(op, y, "dps")
    x = jnp.asarray(x)
    t = jnp.asarray(t, x.dtype)
    alpha, sigma = schedule.alpha(t).astype(x.dtype), schedule.sigma(t).astype(x.dtype)
    grad, _, x0, _, n = _dps_grad(model_fn, op, y, x, t, args, alpha, sigma, prediction, clip)
    return grad, x0, n


# ---------------------------------------------------------------------------------------------
# PiGDM: the guidance vector
# ---------------------------------------------------------------------------------------------
def pigdm_r2(alpha, sigma):
    """``r_t^2 = sigma^2 / (alpha^2 + sigma^2)`` (PiGDM's variance of x0 | x_t for unit-variance
    data; ``1 - alphabar_t`` on VP schedules)."""
    return sigma * sigma / (alpha * alpha + sigma * sigma)


def _pigdm_weighted_residual(op: LinearOperator, y, sigma_y, x0, r2):
    """``A^T (r2 A A^T + sigma_y^2 I)^{-1} (y - A x0)`` (B, *in_shape), by the SVD of A."""
    dtype = x0.dtype
    s = op.singular_values(dtype)  # (n,)
    res = op.Ut(y.astype(dtype)) - s * op.Vt(x0)  # U^T (y - A x0) on the range; 0 elsewhere
    sig2 = jnp.square(jnp.asarray(sigma_y, dtype))
    if sig2.ndim == 1:
        sig2 = sig2[:, None]
    denom = r2 * s * s + sig2
    pos = (s > 0) & (denom > 0)
    coef = jnp.where(pos, s / jnp.where(pos, denom, 1.0), 0.0)
    return op.V(coef * res)


def _pigdm_vjp(model_fn, op, y, sigma_y, x, t, args, alpha, sigma, prediction, key=()):
    def f(x_):
        out, x0, eps = _model_x0_eps(model_fn, x_, t, args, alpha, sigma, prediction, key)
        return x0, (out, eps)

    x0, vjp_fn, (out, eps) = jax.vjp(f, x, has_aux=True)
    r2 = pigdm_r2(alpha, sigma)
    v = _pigdm_weighted_residual(op, y, sigma_y, x0, r2)
    (g,) = vjp_fn(v.astype(x0.dtype))
    return g, out, x0, eps, r2


def pigdm_vector(model_fn, schedule, op, y, sigma_y, x, t, *, prediction: str = "eps", args=None):
    """PiGDM's guidance vector ``g = J^T A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A x0_hat)``
    (module docstring) with ``x0_hat``: ``(g (B, ...), x0_hat)``."""
    check_prediction(prediction)
    y = _check_y(op, y, "pigdm")
    x = jnp.asarray(x)
    sig = _check_sigma_y(sigma_y, y.shape[0], x.dtype, "pigdm")
    t = jnp.asarray(t, x.dtype)
    alpha, sigma = schedule.alpha(t).astype(x.dtype), schedule.sigma(t).astype(x.dtype)
    g, _, x0, _, _ = _pigdm_vjp(model_fn, op, y, sig, x, t, args, alpha, sigma, prediction)
    return g, x0


# ---------------------------------------------------------------------------------------------
# The DDIM-eta step and its score coefficient
# ---------------------------------------------------------------------------------------------
def _ddim_coeffs(a_t, s_t, a_s, s_s, eta: float):
    """``(c, b)``: noise std and eps coefficient of the DDIM-eta step (jdiff's DDIM)."""
    r = a_t / a_s * s_s
    c2 = eta**2 * s_s**2 * jnp.maximum(s_t**2 - r**2, 0.0) / s_t**2
    return jnp.sqrt(c2), jnp.sqrt(jnp.maximum(s_s**2 - c2, 0.0))


def ddim_score_coefficient(a_t, s_t, a_s, s_s, eta: float):
    """``k``: the DDIM-eta step ``t -> s`` is ``x_s = (a_s / a_t) x_t + k * score + c z``,
    ``k = s_t (a_s s_t / a_t - sqrt(s_s^2 - c^2))``."""
    _, b = _ddim_coeffs(a_t, s_t, a_s, s_s, eta)
    return s_t * (a_s * s_t / a_t - b)


def _step_index(grid_t, t):
    """Index i of the grid step ``grid[i] -> grid[i + 1]`` containing t (grid descending)."""
    n = grid_t.shape[0] - 1
    i = jnp.sum(grid_t[1:] >= t).astype(jnp.int32)
    return jnp.clip(i, 0, n - 1)


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _DPSGuided:
    prediction: str
    static_zeta: float | None
    eta: float

    def __call__(self, model_fn, schedule, grid, zeta, x, t, args=None, *key):
        if self.static_zeta == 0.0:
            return model_fn(x, t, args, *key)
        if self.static_zeta is not None:
            zeta = self.static_zeta
        y, op, _ = read_measurement_args(args, x.shape[0])
        dtype = x.dtype
        alpha, sigma = schedule.alpha(t).astype(dtype), schedule.sigma(t).astype(dtype)
        grad, out, _, _, _ = _dps_grad(model_fn, op, y, x, t, args, alpha, sigma, self.prediction,
                                       None, key)
        g = grid_coeffs(schedule, grid, dtype)
        i = _step_index(g.t, jnp.asarray(t, dtype))
        k = ddim_score_coefficient(g.alpha[i], g.sigma[i], g.alpha[i + 1], g.sigma[i + 1], self.eta)
        scale = broadcast_scale(zeta, x) / k
        # score~ = score - (zeta / k) grad, i.e. eps~ = eps + sigma (zeta / k) grad
        return _guided_output(out, x, alpha, sigma, -grad, scale, self.prediction)


def dps_guidance(model_fn, schedule, zeta, grid, *, prediction: str = "eps", eta: float = 1.0):
    """``model_fn`` with DPS's correction as a score term (module docstring): exactly DPS under
    ``ddim(eta)`` on ``grid``, a re-scaling of it under other solvers.

    Args:
      model_fn: ``model_fn(x, t, args[, key])`` predicting ``prediction``.
      schedule: the model's schedule.
      zeta: DPS's step size (number >= 0, static; or a traced () / (batch,) array).
      grid: the sampling grid (the step coefficient of the step containing t is read from it);
        an array, traced (a new grid of the same length does not recompile).
      prediction: what ``model_fn`` predicts; the result predicts the same.
      eta: the DDIM eta whose step coefficient converts the correction (1: ddpm; 0: ODE solvers).
    Reads y and the operator from ``args`` (:func:`measurement_args`).
    """
    check_prediction(prediction)
    static, traced = _nonneg(zeta, "dps_guidance", "zeta")
    eta = _check_eta(eta, "dps_guidance")
    if not _is_tracer(grid):
        check_grid(grid)
    grid = jnp.asarray(grid)
    return jax.tree_util.Partial(_DPSGuided(prediction, static, eta), model_fn, schedule, grid, traced)


@dataclasses.dataclass(frozen=True)
class _PiGDMGuided:
    prediction: str
    static_w: float | None
    weighting: str = "paper"

    def __call__(self, model_fn, schedule, w, x, t, args=None, *key):
        if self.static_w == 0.0:
            return model_fn(x, t, args, *key)
        if self.static_w is not None:
            w = self.static_w
        y, op, sig = read_measurement_args(args, x.shape[0])
        dtype = x.dtype
        alpha, sigma = schedule.alpha(t).astype(dtype), schedule.sigma(t).astype(dtype)
        g, out, _, _, _ = _pigdm_vjp(model_fn, op, y, sig, x, t, args, alpha, sigma, self.prediction, key)
        lam = broadcast_scale(w, x)
        if self.weighting == "reference":
            lam = lam * alpha * alpha / (alpha * alpha + sigma * sigma)
        return _guided_output(out, x, alpha, sigma, g, lam, self.prediction)


def pigdm_guidance(model_fn, schedule, w=1.0, *, prediction: str = "eps", weighting: str = "paper"):
    """``model_fn`` guided by PiGDM: ``score~ = score + lambda_t g`` (module docstring); valid with
    every solver. ``w``: number >= 0 (static) or a traced () / (batch,) array; ``weighting``:
    ``"paper"`` (``lambda_t = w``) or ``"reference"`` (``lambda_t = w alpha_t^2 / (alpha_t^2 +
    sigma_t^2)``: with ``ddim(eta)``, RED-diff's step with ``awd=False``). Reads y, the operator
    and sigma_y from ``args`` (:func:`measurement_args`)."""
    check_prediction(prediction)
    if weighting not in PIGDM_WEIGHTINGS:
        raise ValueError(f"pigdm_guidance: unknown weighting {weighting!r}; "
                         f"valid: {', '.join(PIGDM_WEIGHTINGS)}")
    static, traced = _nonneg(w, "pigdm_guidance", "w")
    return jax.tree_util.Partial(_PiGDMGuided(prediction, static, weighting), model_fn, schedule, traced)


# ---------------------------------------------------------------------------------------------
# Faithful samplers (one jitted program each)
# ---------------------------------------------------------------------------------------------
class _Cfg(NamedTuple):
    model: Any
    prediction: str
    method: str  # "dps" | "pigdm"
    clip: Any


def _as_scalar_or_batch(v, batch, dtype, what):
    v = jnp.asarray(v, dtype)
    if v.ndim > 1 or (v.ndim == 1 and v.shape[0] != batch):
        raise ValueError(f"{what} must be a scalar or of shape ({batch},), got {v.shape}")
    return v


@partial(jax.jit, static_argnames=("cfg",))
def _run(model_arrays, schedule, grid, x_T, key, op, y, sigma_y, weight, eta, awd, model_args, *,
         cfg: _Cfg):
    model_fn = combine(model_arrays, cfg.model)
    dtype = jnp.promote_types(x_T.dtype, jnp.float32)
    g = grid_coeffs(schedule, grid, dtype)
    n = grid.shape[0] - 1
    k_solver = jax.random.fold_in(key, 0)  # as jdiff.sample's solver stream
    x = x_T.astype(dtype)
    y = y.astype(dtype)
    wcol = _col(weight, x)

    def step(x, i):
        t, a_t, s_t = g.t[i], g.alpha[i], g.sigma[i]
        a_s, s_s = g.alpha[i + 1], g.sigma[i + 1]
        c, b = _ddim_coeffs(a_t, s_t, a_s, s_s, eta)
        z = jax.random.normal(jax.random.fold_in(k_solver, i), x.shape, x.dtype)
        if cfg.method == "dps":
            grad, _, x0, eps, _ = _dps_grad(model_fn, op, y, x, t, model_args, a_t, s_t,
                                            cfg.prediction, cfg.clip)
            x_s = a_s * x0 + b * eps + c * z - wcol * grad
        else:  # pigdm, the reference's DDIM-eta form
            gv, _, x0, eps, r2 = _pigdm_vjp(model_fn, op, y, sigma_y, x, t, model_args, a_t, s_t,
                                            cfg.prediction)
            shift = wcol * a_t * r2 * gv  # the shift of x0_hat
            # awd = 0: eps moved consistently with x0 (eps~ = eps - sigma lambda g)
            x_s = a_s * (x0 + shift) + b * eps + c * z - (1.0 - awd) * b * (a_t / s_t) * shift
        return x_s, None

    x, _ = jax.lax.scan(step, x, jnp.arange(n, dtype=jnp.int32))
    return x.astype(x_T.dtype)


def _prepare_run(what, model_fn, schedule, op, y, grid, key, x_T, prediction, sigma_y=0.0):
    check_prediction(prediction)
    _check_operator(op, what)
    y = _check_y(op, y, what)
    B = y.shape[0]
    model_arrays, model_static = partition(model_fn)
    check_model_signature(model_fn, False, model_static)
    check_no_captured_arrays(model_static, "model_fn")
    if not _is_tracer(grid):
        check_grid(grid)
        if float(np.asarray(grid)[-1]) != 0.0:
            raise ValueError(f"{what}: the grid must end at t = 0 (make_grid(..., final='zero'))")
    grid = jnp.asarray(grid)
    if key is None:
        raise ValueError(f"{what}: pass a PRNG key")
    if x_T is None:
        z = jax.random.normal(jax.random.fold_in(key, 7), (B,) + tuple(op.in_shape), y.dtype)
        x_T = init_noise(schedule, grid[0], z)
    x_T = jnp.asarray(x_T)
    if tuple(x_T.shape) != (B,) + tuple(op.in_shape):
        raise ValueError(f"{what}: x_T must have shape {(B,) + tuple(op.in_shape)}, got {tuple(x_T.shape)}")
    sig = _check_sigma_y(sigma_y, B, y.dtype, what)
    return model_arrays, model_static, y, grid, x_T, sig


def dps_sample(model_fn, schedule, op, y, grid, key, *, zeta=DPS_DEFAULTS["zeta"], prediction: str = "eps",
               x_T=None, clip=None, model_args=None):
    """The official DPS sampler (module docstring) as one jitted program: on ``grid`` (descending,
    ending at t = 0), DDPM ancestral steps each followed by ``- zeta grad ||y - A x0_hat||``.

    Args:
      model_fn: ``model_fn(x, t, args)`` predicting ``prediction``.
      schedule: the model's schedule.
      op, y: the operator and measurements (B, *op.out_shape): one sample per row.
      grid: e.g. ``make_grid(schedule, "logsnr", n, "zero")``; n steps = n forward + n backward.
      key: PRNG key (initial noise, unless ``x_T`` is given, and step noise).
      zeta: step size, number >= 0 or a (B,) array (traced: a new value does not recompile).
      x_T: initial sample (B, *op.in_shape); default ``init_noise`` of a draw from ``key``.
      clip: None or ``(low, high)`` clipping of x0_hat (the official code clips to [-1, 1]).
      model_args: ``args`` passed to the model (default None).
    Returns: x0 samples (B, *op.in_shape).
    """
    _nonneg(zeta, "dps", "zeta")
    clip = _check_clip(clip, "dps")
    arrays, static, y, grid, x_T, sig = _prepare_run("dps", model_fn, schedule, op, y, grid, key,
                                                     x_T, prediction)
    zeta = _as_scalar_or_batch(zeta, y.shape[0], jnp.promote_types(x_T.dtype, jnp.float32), "dps: zeta")
    cfg = _Cfg(static, prediction, "dps", clip)
    one = jnp.ones((), zeta.dtype)
    return _run(arrays, schedule, grid, x_T, key, op, y, sig, zeta, one, one, model_args, cfg=cfg)


def pigdm_sample(model_fn, schedule, op, y, sigma_y, grid, key, *, w=PIGDM_DEFAULTS["w"],
                 eta: float = PIGDM_DEFAULTS["eta"], awd: bool = True, prediction: str = "eps",
                 x_T=None, model_args=None):
    """PiGDM in the reference's DDIM-eta form (module docstring) as one jitted program.

    Args: as :func:`dps_sample`, plus ``sigma_y`` (scalar or (B,), traced), ``w`` (the guidance
    weight, RED-diff's ``grad_term_weight``), ``eta`` in [0, 1] (DDIM stochasticity) and ``awd``
    (True: the model's eps is kept, RED-diff's default; False: eps moved consistently, equal to
    ``jdiff.sample(pigdm_guidance(...), ddim(eta))``).
    Returns: x0 samples (B, *op.in_shape).
    """
    _nonneg(w, "pigdm", "w")
    eta = _check_eta(eta, "pigdm")
    arrays, static, y, grid, x_T, sig = _prepare_run("pigdm", model_fn, schedule, op, y, grid, key,
                                                     x_T, prediction, sigma_y)
    dtype = jnp.promote_types(x_T.dtype, jnp.float32)
    w = _as_scalar_or_batch(w, y.shape[0], dtype, "pigdm: w")
    cfg = _Cfg(static, prediction, "pigdm", None)
    return _run(arrays, schedule, grid, x_T, key, op, y, sig, w, jnp.asarray(eta, dtype),
                jnp.asarray(float(bool(awd)), dtype), model_args, cfg=cfg)


def compiled_programs() -> int:
    """Number of programs the faithful DPS/PiGDM samplers have compiled in this process."""
    return _run._cache_size()


# ---------------------------------------------------------------------------------------------
# Restoration entry points
# ---------------------------------------------------------------------------------------------
def _check_nfe(nfe, what: str) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ValueError(f"{what}: nfe must be a positive integer, got {nfe!r}")
    return int(nfe)


def _solver(solver, what: str):
    if solver is None or isinstance(solver, Solver):
        return solver
    if isinstance(solver, str):
        return get_solver(solver)
    raise ValueError(f"{what}: solver must be None, a solver name or a jdiff Solver, "
                     f"got {type(solver).__name__}")


def _unknown(options: dict, allowed, what: str):
    bad = sorted(set(options) - set(allowed))
    if bad:
        raise ValueError(f"{what}: unknown option(s) {bad}; valid: {', '.join(sorted(allowed))}")


def _solver_eta(solver: Solver) -> float:
    """The DDIM eta whose step coefficient best describes ``solver``'s (for DPS's conversion)."""
    if isinstance(solver, DDIM):
        return float(solver.eta)
    return 1.0 if solver.stochastic else 0.0


def _split_key(key, what):
    if key is None:
        raise ValueError(f"{what}: pass a PRNG key")
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    return jax.random.fold_in(key, 11), jax.random.fold_in(key, 12)


# the budget plan shared by every restoration method (path: always None here)
Plan = _Plan


_OPTIONS = {"dps": ("zeta", "grid", "clip", "args", "x_T", "z"),
            "pigdm": ("w", "eta", "awd", "grid", "init", "weighting", "args", "x_T", "z")}
_FAITHFUL_ONLY = {"dps": ("clip",), "pigdm": ("eta", "awd", "init")}
_TRANSFORM_ONLY = {"dps": (), "pigdm": ("weighting",)}


def plan(method: str, schedule, nfe: int, solver=None, **options) -> Plan:
    """The :class:`Plan` of ``METHODS[method]`` for a budget of ``nfe`` model evaluations:
    ``solver=None``: ``nfe`` steps of the method's own sampler; a solver: ``steps_for_nfe``
    steps of it. Grid: ``make_grid(schedule, options.get("grid", "logsnr"), steps, "zero")``."""
    if method not in _OPTIONS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(_OPTIONS)}")
    what = f"restore_{method}"
    _unknown(options, _OPTIONS[method], what)
    nfe = _check_nfe(nfe, what)
    solver = _solver(solver, what)
    grid_name = options.get("grid", "logsnr")
    if solver is None:
        bad = [k for k in _TRANSFORM_ONLY[method] if k in options]
        if bad:
            raise ValueError(f"{what}: {', '.join(bad)} applies to the transform (with a solver) only")
        if options.get("init", "noise") not in ("noise", "pinv"):
            raise ValueError(f"{what}: init must be 'noise' or 'pinv', got {options['init']!r}")
        eta = _check_eta(options.get("eta", PIGDM_DEFAULTS["eta"]), what)
        name = "dps_ddpm" if method == "dps" else f"pigdm_ddim_eta{eta:g}"
        return Plan(make_grid(schedule, grid_name, nfe, "zero"), None, nfe, name)
    bad = [k for k in _FAITHFUL_ONLY[method] if k in options]
    if bad:
        raise ValueError(f"{what}: {', '.join(bad)} applies to the method's own sampler (solver=None) only")
    steps = steps_for_nfe(solver, nfe, True)
    return Plan(make_grid(schedule, grid_name, steps, "zero"), None, solver.nfe(steps, True), solver.name)


def nfe_of(method: str, schedule, nfe: int, solver=None, **options) -> int:
    """The realised number of model evaluations per sample of ``METHODS[method]`` for ``nfe``."""
    return plan(method, schedule, nfe, solver, **options).nfe


def _restore(method, model_fn, schedule, op, y, sigma_y, nfe, key, prediction, solver, return_info,
             options):
    what = f"restore_{method}"
    p = plan(method, schedule, nfe, solver, **options)
    solver = _solver(solver, what)
    rargs = measurement_args(op, y, sigma_y, options.get("args"))
    y = rargs["measurement"]
    k_init, k_run = _split_key(key, what)
    shape = (y.shape[0],) + tuple(op.in_shape)
    x_T = options.get("x_T")
    z = check_z(options.get("z"), shape, y.dtype, what, x_T)
    if z is None:
        z = jax.random.normal(k_init, shape, y.dtype)
    if x_T is None:
        x_T = init_noise(schedule, p.grid[0], z)
        if options.get("init", "noise") == "pinv":  # RED-diff: x_T = alpha_T A^+ y + sigma_T z
            t0 = jnp.asarray(p.grid[0], jnp.float32)
            x_T = schedule.alpha(t0).astype(y.dtype) * op.pinv(y) + schedule.sigma(t0).astype(y.dtype) * z
    model_args = {k: v for k, v in rargs.items() if k not in RESERVED_KEYS} or None
    info = {"method": method, "solver": p.solver, "steps": p.grid.shape[0] - 1, "nfe": p.nfe, "vjp": p.nfe,
            "grid": p.grid}
    if method == "dps":
        zeta = options.get("zeta", DPS_DEFAULTS["zeta"])
        _nonneg(zeta, what, "zeta")
        info["zeta"] = zeta
        if solver is None:
            x = dps_sample(model_fn, schedule, op, y, p.grid, k_run, zeta=zeta, prediction=prediction,
                           x_T=x_T, clip=options.get("clip"), model_args=model_args)
        else:  # zeta traced: a new value does not recompile
            guided = dps_guidance(model_fn, schedule, jnp.asarray(zeta, jnp.float32), p.grid,
                                  prediction=prediction, eta=_solver_eta(solver))
    else:
        w = options.get("w", PIGDM_DEFAULTS["w"])
        _nonneg(w, what, "w")
        info["w"] = w
        if solver is None:
            x = pigdm_sample(model_fn, schedule, op, y, rargs["sigma_y"], p.grid, k_run, w=w,
                             eta=options.get("eta", PIGDM_DEFAULTS["eta"]),
                             awd=options.get("awd", PIGDM_DEFAULTS["awd"]), prediction=prediction,
                             x_T=x_T, model_args=model_args)
        else:
            weighting = options.get("weighting", PIGDM_DEFAULTS["weighting"])
            info["weighting"] = weighting
            guided = pigdm_guidance(model_fn, schedule, jnp.asarray(w, jnp.float32), prediction=prediction,
                                    weighting=weighting)
    if solver is not None:
        x = sample(guided, schedule, solver, p.grid, x_T, k_run, args=rargs, prediction=prediction)
    return (x, info) if return_info else x


def restore_dps(model_fn, schedule, op, y, sigma_y, nfe, key, *, prediction: str = "eps", solver=None,
                return_info: bool = False, **options):
    """DPS restoration: one sample per row of ``y`` (B, *op.out_shape) -> (B, *op.in_shape).

    ``solver=None``: :func:`dps_sample` with ``nfe`` DDPM steps. A solver (name or Solver):
    :func:`jdiff.sample` with :func:`dps_guidance` (``eta`` from the solver: its own for DDIM, 1
    for other stochastic solvers, 0 for ODE solvers) on ``steps_for_nfe(solver, nfe)`` steps.
    Options: ``zeta`` (default :data:`DPS_DEFAULTS`), ``grid`` (spacing, default ``"logsnr"``),
    ``clip`` (own sampler only), ``args`` (further model arguments, e.g. ``{"y": labels}``),
    ``x_T``, ``z`` (standard-normal draws (B, *op.in_shape) in place of the key's initial draw:
    x_T = ``init_noise(schedule, grid[0], z)``; not with ``x_T``). ``sigma_y`` is checked but
    not used (DPS absorbs it in zeta). ``return_info``: also
    return ``{"nfe", "vjp", "steps", "solver", "grid", "zeta", ...}`` (:func:`plan` gives the
    same without running)."""
    return _restore("dps", model_fn, schedule, op, y, sigma_y, nfe, key, prediction, solver, return_info,
                    options)


def restore_pigdm(model_fn, schedule, op, y, sigma_y, nfe, key, *, prediction: str = "eps", solver=None,
                  return_info: bool = False, **options):
    """PiGDM restoration: one sample per row of ``y`` -> (B, *op.in_shape).

    ``solver=None``: :func:`pigdm_sample` with ``nfe`` DDIM-eta steps. A solver: :func:`jdiff.sample`
    with :func:`pigdm_guidance` on ``steps_for_nfe(solver, nfe)`` steps. Options: ``w``, ``grid``,
    ``args``, ``x_T``, ``z`` (as :func:`restore_dps`; with ``init="pinv"`` the z of its
    ``sigma_T z``); own sampler only: ``eta``, ``awd``, ``init`` (``"noise"``, default, or
    ``"pinv"``: RED-diff's ``x_T = alpha_T A^+ y + sigma_T z``); transform only: ``weighting``.
    ``return_info`` as :func:`restore_dps`."""
    return _restore("pigdm", model_fn, schedule, op, y, sigma_y, nfe, key, prediction, solver, return_info,
                    options)


METHODS = {"dps": restore_dps, "pigdm": restore_pigdm}
