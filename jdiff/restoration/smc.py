"""An asymptotically exact posterior sampler for linear inverse problems: sequential Monte Carlo
over particles (MCGdiff-style twisted SMC; Cardoso, Janati, Le Corff, Moulines 2023, "Monte Carlo
guided diffusion for Bayesian linear inverse problems", ICLR 2024).

Unlike DPS and PiGDM (:mod:`jdiff.restoration.guided`), whose samples are biased for every
budget, this sampler's error goes to zero with compute: as the number of particles N grows, its
weighted particle set converges to the posterior of the model's own DDPM chain,
``p_chain(x_0 | y) ∝ p_chain(x_0) p(y | x_0)``, and as the number of steps grows ``p_chain``
converges to the model's data distribution. With an exact model (the Gaussian-mixture testbeds)
it is therefore a reference for the approximate methods.

**Why this construction** (rather than TDS, Wu et al. 2023): for a *linear-Gaussian* measurement
the twisting potentials below are Gaussian in the operator's spectral coordinates, so the
locally optimal proposal and its weights are closed-form: no gradient through the model (one
forward pass per particle and step, where TDS needs a forward and a backward pass), and the
noiseless case ``sigma_y = 0`` is handled exactly (TDS's final reweighting by ``p(y | x_0)``
needs ``sigma_y > 0``). The price: its potentials ignore the prior (they treat ``x_0 | x_t`` as
``N(x_t / alpha_t, sigma_t^2 / alpha_t^2)``), so weights degenerate more than with TDS's
model-based twist, and it applies to linear-Gaussian measurements only.

**The algorithm.** Spectral coordinates ``z = V^T x`` of ``A = U diag(s) V^T``; on the observed
coordinates (``s_i > 0``) the measurement reads ``ybar_i = (U^T y)_i / s_i = z_{0,i} +
(sigma_y / s_i) n_i``; coordinates with ``s_i = 0`` and the part of y outside the range of A
carry no information about x. Potentials (MCGdiff's for the noiseless case; for the noisy case
the measurement noise is added to their variance instead of MCGdiff's time embedding)::

    g_t(x_t) = prod_{s_i > 0} N(alpha_t ybar_i; z_{t,i}, sigma_t^2 + alpha_t^2 sigma_y^2 / s_i^2)

so ``g_0(x_0) ∝ p(y | x_0)``: the final target is the exact posterior of the chain, whatever
the intermediate potentials are (they only steer the particles). The chain's kernel is DDPM's
(jdiff's ``ddpm``: ``N(m, c^2 I)`` with ``m = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat``),
isotropic, hence diagonal in z as well; the final step to t = 0 (where DDPM's variance is 0)
uses ``N(x0_hat, r^2 I)`` with ``r^2 = sigma_t^2 / (alpha_t^2 + sigma_t^2)`` of its start (about
the spread of ``x_0 | x_t`` lost by the deterministic final step; ``sigma = 0.01`` at the end of
vp_discrete grids), so the noiseless constraint can be met exactly. Each step t -> s is a fully
adapted auxiliary particle filter step:

1. weights: ``log w += log L_s(x_t) - log g_t(x_t)`` with the predictive
   ``L_s(x_t) = ∫ p(x_s | x_t) g_s(x_s) dx_s = prod_i N(alpha_s ybar_i; m_i, c^2 + var_s,i)``
   (the first step's ``- log g_T`` cancels the initial weights ``g_T(x_T)`` and is skipped);
2. resampling (systematic) when the effective sample size ``ESS = 1 / sum W^2`` falls below
   ``ess_threshold * N`` (1.0: every step);
3. proposal ``q(x_s | x_t) ∝ p(x_s | x_t) g_s(x_s)``: on observed coordinates the product of two
   Gaussians, elsewhere the model's kernel.

The final weighted set ``(x_0^k, W^k)`` targets ``p_chain(x_0 | y)``; at ``sigma_y = 0`` every
particle satisfies ``A x = y`` to float precision (its observed coordinates are ``ybar``).

**Cost and accuracy**: one model forward evaluation per particle and step: NFE per returned
sample = steps x particles. Measured on mix16d (mask 50% and an 8 x 16 matrix, sigma_y 0 and 0.1,
4 measurements x 256 rows, one particle per row): with N = 64 particles and 100 steps the sliced
Wasserstein to exact posterior samples is within 1.2x of the exact-vs-exact floor (0.013-0.017
vs 0.011-0.015), where DPS and PiGDM reach 0.07-0.19 at 100 steps; N = 16: 0.018-0.024.
:func:`restore_smc` reads its ``nfe`` argument as the number of steps (model evaluations per
particle) and reports the realised ``nfe = steps * particles`` with ``return_info=True``.

API: :func:`smc_sample` -> :class:`SMCResult` (particles (B, N, ...), normalised log weights
(B, N), ESS per step); :func:`smc_draw` draws one particle per row; :func:`smc_mean` the weighted
mean; :func:`restore_smc` the common restoration entry point. All batched over measurements
(B rows, N particles each: the model sees batches of B * N), keyed, one jitted program per
configuration (a new y, operator of the same type and shapes, sigma_y or grid of the same length
reuses it).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..grids import check_grid, make_grid
from ..prediction import check_prediction, to_x0_eps
from ..sampling import check_model_signature, init_noise
from ..solvers.base import grid_coeffs
from ..statics import check_no_captured_arrays, combine, partition
from .guided import Plan, _check_nfe, _check_sigma_y, _check_y, _ddim_coeffs, _split_key, pigdm_r2

__all__ = ["SMCResult", "smc_sample", "smc_draw", "smc_mean", "restore_smc", "SMC_DEFAULTS",
           "METHODS", "compiled_programs", "plan", "nfe_of"]

SMC_DEFAULTS = {"particles": 64, "ess_threshold": 0.5, "grid": "logsnr"}
_LOG_2PI = math.log(2 * math.pi)


class SMCResult(NamedTuple):
    """Output of :func:`smc_sample`."""

    particles: jnp.ndarray  # (B, N, *in_shape): the final particles x_0
    log_weights: jnp.ndarray  # (B, N): normalised log weights (logsumexp = 0 per row)
    ess: jnp.ndarray  # (n_steps, B): effective sample size after each step's reweighting
    resampled: jnp.ndarray  # (n_steps, B) bool: whether the step resampled
    final_ess: jnp.ndarray  # (B,): ESS of the final weighted set


class _Cfg(NamedTuple):
    model: Any
    prediction: str
    particles: int
    ess_threshold: float
    reweight: bool  # False only for diagnostics (the unweighted proposal chain; biased)


def _log_normal(a, m, var):
    return -0.5 * (jnp.square(a - m) / var + _LOG_2PI + jnp.log(var))


def _systematic(u, W):
    """Systematic resampling per row: ancestor indices (B, N) from normalised weights W (B, N)
    and one uniform offset u (B, 1) per row."""
    B, N = W.shape
    u = (u + jnp.arange(N, dtype=W.dtype)[None]) / N
    cdf = jnp.cumsum(W, axis=1)
    cdf = cdf / cdf[:, -1:]
    idx = jax.vmap(lambda c, v: jnp.searchsorted(c, v, side="left"))(cdf, u)
    return jnp.minimum(idx, N - 1).astype(jnp.int32)


@partial(jax.jit, static_argnames=("cfg",))
def _smc(model_arrays, schedule, grid, key, op, y, sigma_y, model_args, *, cfg: _Cfg):
    model_fn = combine(model_arrays, cfg.model)
    dtype = jnp.promote_types(y.dtype, jnp.float32)
    g = grid_coeffs(schedule, grid, dtype)
    n_steps = grid.shape[0] - 1
    B, N = y.shape[0], cfg.particles
    in_shape = tuple(op.in_shape)
    y = y.astype(dtype)

    s = op.singular_values(dtype)  # (n,)
    obs = s > 0
    s_safe = jnp.where(obs, s, 1.0)
    ybar = jnp.where(obs, op.Ut(y) / s_safe, 0.0)[:, None, :]  # (B, 1, n)
    sig2 = jnp.square(jnp.asarray(sigma_y, dtype))
    sig2 = sig2.reshape(-1, 1, 1) if sig2.ndim == 1 else sig2
    noise_var = sig2 / jnp.square(s_safe)  # (B|1, 1, n): measurement variance of ybar

    def pot_var(a, sg):  # variance of the potential g_t per coordinate (1 where unobserved)
        return jnp.where(obs, sg * sg + a * a * noise_var, 1.0)

    def log_pot(a, var, z):  # sum over observed coordinates of log N(a ybar; z, var)
        return jnp.sum(jnp.where(obs, _log_normal(a * ybar, z, var), 0.0), axis=-1)

    def spectral(x):  # (B, N, *in) -> (B, N, n)
        return op.Vt(x.reshape((B * N,) + in_shape)).reshape(B, N, -1)

    k_init, k_steps = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
    z0 = jax.random.normal(k_init, (B, N) + in_shape, dtype)
    x = init_noise(schedule, grid[0], z0)
    logw = jnp.zeros((B, N), dtype)

    def step(carry, i):
        x, logw = carry
        t, a_t, s_t = g.t[i], g.alpha[i], g.sigma[i]
        a_s, s_s = g.alpha[i + 1], g.sigma[i + 1]
        xf = x.reshape((B * N,) + in_shape)
        x0, eps = to_x0_eps(model_fn(xf, t, model_args), xf, a_t, s_t, cfg.prediction)
        c, b = _ddim_coeffs(a_t, s_t, a_s, s_s, 1.0)
        v = jnp.where(s_s > 0, c * c, pigdm_r2(a_t, s_t))  # kernel variance (final: r_t^2)
        mz = op.Vt(a_s * x0 + b * eps).reshape(B, N, -1)  # kernel mean, spectral
        var_s = pot_var(a_s, s_s)
        if cfg.reweight:
            log_l = log_pot(a_s, v + var_s, mz)
            log_g = log_pot(a_t, pot_var(a_t, s_t), spectral(x))
            logw = logw + log_l - jnp.where(i > 0, log_g, 0.0)
        W = jax.nn.softmax(logw, axis=1)
        ess = 1.0 / jnp.sum(W * W, axis=1)
        k_res, k_prop = jax.random.split(jax.random.fold_in(k_steps, i))
        resample = ess < cfg.ess_threshold * N
        u = jax.random.uniform(k_res, (B, 1), dtype)
        anc = jnp.where(resample[:, None], _systematic(u, W), jnp.arange(N, dtype=jnp.int32)[None])
        mz = jnp.take_along_axis(mz, anc[:, :, None], axis=1)
        logw = jnp.where(resample[:, None], 0.0, logw)
        # proposal: p(x_s | x_t) g_s(x_s), Gaussian product on observed coordinates
        tot = v + var_s
        mean = jnp.where(obs, (var_s * mz + v * a_s * ybar) / tot, mz)
        var = jnp.where(obs, v * var_s / tot, v)
        zs = mean + jnp.sqrt(var) * jax.random.normal(k_prop, mean.shape, dtype)
        x_s = op.V(zs.reshape(B * N, -1)).reshape((B, N) + in_shape)
        return (x_s, logw), (ess, resample)

    (x, logw), (ess, resampled) = jax.lax.scan(step, (x, logw), jnp.arange(n_steps, dtype=jnp.int32))
    logw = logw - jax.nn.logsumexp(logw, axis=1, keepdims=True)
    W = jnp.exp(logw)
    return SMCResult(x, logw, ess, resampled, 1.0 / jnp.sum(W * W, axis=1))


def _check_particles(particles, what: str) -> int:
    if isinstance(particles, bool) or not isinstance(particles, (int, np.integer)) or particles < 1:
        raise ValueError(f"{what}: particles must be a positive integer, got {particles!r}")
    return int(particles)


def _check_threshold(thr, what: str) -> float:
    try:
        thr = float(thr)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: ess_threshold must be a number in [0, 1], got {thr!r}") from None
    if not (0.0 <= thr <= 1.0):
        raise ValueError(f"{what}: ess_threshold must be in [0, 1], got {thr}")
    return thr


def smc_sample(model_fn, schedule, op, y, sigma_y, grid, key, *, particles: int = SMC_DEFAULTS["particles"],
               prediction: str = "eps", ess_threshold: float = SMC_DEFAULTS["ess_threshold"],
               model_args=None, reweight: bool = True) -> SMCResult:
    """Twisted SMC for ``y = A x + sigma_y n`` (module docstring) as one jitted program.

    Args:
      model_fn: ``model_fn(x, t, args)`` predicting ``prediction`` (called on B * N samples).
      schedule: the model's schedule.
      op, y: operator and measurements (B, *op.out_shape): one particle system per row.
      sigma_y: measurement noise std (scalar or (B,), >= 0; traced).
      grid: descending times ending at 0 (e.g. ``make_grid(schedule, "logsnr", n, "zero")``).
      key: PRNG key.
      particles: N per measurement (static).
      ess_threshold: resample when ESS < ess_threshold * N (1: every step, 0: never).
      model_args: ``args`` passed to the model (default None; it sees B * N rows, so nothing
        per row).
      reweight: False drops the weights (the bare proposal chain: *biased*, for diagnostics).
    Returns: :class:`SMCResult`.
    """
    what = "smc"
    check_prediction(prediction)
    N = _check_particles(particles, what)
    thr = _check_threshold(ess_threshold, what)
    y = _check_y(op, y, what)
    sig = _check_sigma_y(sigma_y, y.shape[0], y.dtype, what)
    model_arrays, model_static = partition(model_fn)
    check_model_signature(model_fn, False, model_static)
    check_no_captured_arrays(model_static, "model_fn")
    check_grid(grid)
    if float(np.asarray(grid)[-1]) != 0.0:
        raise ValueError(f"{what}: the grid must end at t = 0 (make_grid(..., final='zero'))")
    if key is None:
        raise ValueError(f"{what}: pass a PRNG key")
    cfg = _Cfg(model_static, prediction, N, thr, bool(reweight))
    return _smc(model_arrays, schedule, jnp.asarray(grid), key, op, y, sig, model_args, cfg=cfg)


def smc_draw(result: SMCResult, key):
    """One particle per row drawn from the final weighted set: (B, *in_shape)."""
    idx = jax.random.categorical(key, result.log_weights, axis=1)  # (B,)
    return jnp.take_along_axis(result.particles, idx.reshape((-1, 1) + (1,) * (result.particles.ndim - 2)),
                               axis=1)[:, 0]


def smc_mean(result: SMCResult):
    """The weighted particle mean per row: an estimate of E[x | y], (B, *in_shape)."""
    W = jnp.exp(result.log_weights).reshape(result.log_weights.shape + (1,) * (result.particles.ndim - 2))
    return jnp.sum(W * result.particles, axis=1)


def plan(schedule, nfe: int, solver=None, **options) -> Plan:
    """The :class:`~jdiff.restoration.guided.Plan` of :func:`restore_smc` for ``nfe`` steps:
    realised ``nfe = steps * particles`` model evaluations per returned sample."""
    what = "restore_smc"
    bad = sorted(set(options) - {"particles", "ess_threshold", "grid"})
    if bad:
        raise ValueError(f"{what}: unknown option(s) {bad}; valid: ess_threshold, grid, particles")
    name = getattr(solver, "name", solver)
    if solver is not None and name != "ddpm":
        raise ValueError(f"{what}: SMC runs its own DDPM kernel (its proposal is closed-form only for "
                         f"that Gaussian kernel); solver must be None or 'ddpm', got {name!r}")
    steps = _check_nfe(nfe, what)
    N = _check_particles(options.get("particles", SMC_DEFAULTS["particles"]), what)
    _check_threshold(options.get("ess_threshold", SMC_DEFAULTS["ess_threshold"]), what)
    grid = make_grid(schedule, options.get("grid", SMC_DEFAULTS["grid"]), steps, "zero")
    return Plan(grid, None, steps * N, "smc_ddpm")


def nfe_of(schedule, nfe: int, solver=None, **options) -> int:
    """Realised model evaluations per returned sample of :func:`restore_smc` (steps x particles)."""
    return plan(schedule, nfe, solver, **options).nfe


def restore_smc(model_fn, schedule, op, y, sigma_y, nfe, key, *, prediction: str = "eps", solver=None,
                return_info: bool = False, **options):
    """SMC restoration: one sample per row of ``y`` (drawn from its final weighted particle set),
    (B, *op.in_shape).

    ``nfe``: the number of DDPM steps, i.e. model evaluations *per particle*; the realised NFE per
    returned sample is ``nfe * particles`` (``info["nfe"]``, :func:`nfe_of`). ``solver`` must be
    None or ``"ddpm"`` (the closed-form proposal needs the DDPM Gaussian kernel). Options:
    ``particles`` (default 64), ``ess_threshold`` (0.5), ``grid`` (``"logsnr"``); the common option
    ``z`` is refused (ValueError) unless None: the particles' initial draw is the key's. ``return_info``:
    also return ``{"nfe", "steps", "particles", "ess_mean", "ess_min", "final_ess",
    "resample_fraction", ...}`` (ESS as fractions of N, averaged over rows)."""
    if options.get("z") is not None:
        raise ValueError("restore_smc: z is not supported (SMC draws B * particles initial particles from "
                         "its key; a (B, *in_shape) z cannot seed them)")
    options = {k: v for k, v in options.items() if k != "z"}
    p = plan(schedule, nfe, solver, **options)
    N = int(options.get("particles", SMC_DEFAULTS["particles"]))
    k_run, k_draw = _split_key(key, "restore_smc")
    res = smc_sample(model_fn, schedule, op, y, sigma_y, p.grid, k_run, particles=N, prediction=prediction,
                     ess_threshold=options.get("ess_threshold", SMC_DEFAULTS["ess_threshold"]))
    x = smc_draw(res, k_draw)
    if not return_info:
        return x
    ess = np.asarray(res.ess) / N
    info = {"method": "smc", "solver": p.solver, "steps": p.grid.shape[0] - 1, "particles": N, "nfe": p.nfe,
            "vjp": 0, "grid": p.grid, "ess_mean": float(ess.mean()), "ess_min": float(ess.min()),
            "final_ess": float(np.mean(np.asarray(res.final_ess)) / N),
            "resample_fraction": float(np.mean(np.asarray(res.resampled)))}
    return x, info


def compiled_programs() -> int:
    """Number of SMC programs compiled in this process."""
    return _smc._cache_size()


METHODS = {"smc": restore_smc}
