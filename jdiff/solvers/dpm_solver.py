"""DPM-Solver (noise form) and DPM-Solver++ (data form) multistep, with SDE-DPM-Solver++.

Lu et al. 2022 (DPM-Solver, arXiv 2206.00927) and 2022b (DPM-Solver++, arXiv 2211.01095); the
formulas below are those of the official code and of diffusers' ``DPMSolverMultistepScheduler``,
rewritten with the phi functions of exponential integrators so that small steps do not cancel:

    phi_1(z) = expm1(z) / z,  phi_2(z) = (phi_1(z) - 1) / z,  phi_3(z) = (phi_2(z) - 1/2) / z.

A step goes from t (alpha_t, sigma_t, lam_t) to s with ``h = lam_s - lam_t > 0``. With model outputs
``m0`` (now), ``m1``, ``m2`` (the two previous evaluations, at log-SNR ``lam_1``, ``lam_2``),
``r0 = (lam_t - lam_1) / h``, ``r1 = (lam_1 - lam_2) / h``:

    order 1:   D0 = m0
    order 2:   D1 = (m0 - m1) / r0
    order 3:   D1_0 = (m0 - m1) / r0,  D1_1 = (m1 - m2) / r1,
               D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1),  D2 = (D1_0 - D1_1) / (r0 + r1)

Data form (DPM-Solver++, m = x0 prediction), with eta = 0 for the ODE and eta = 1 for
SDE-DPM-Solver++ (diffusers ``sde-dpmsolver++``, k-diffusion ``dpmpp_2m_sde``/``3m_sde``) and
``g = (1 + eta) h``:

    x_s = (sigma_s / sigma_t) e^{-eta h} x_t
          + alpha_s g [phi_1(-g) D0 + c2 D1 + phi_3(-g) D2]
          + sigma_s sqrt(-expm1(-2 eta h)) z

Noise form (DPM-Solver, m = eps prediction):

    x_s = (alpha_s / alpha_t) x_t - sigma_s h [phi_1(h) D0 + c2 D1 + phi_3(h) D2]

where the second-order coefficient ``c2`` is ``phi_2`` (``solver_type="heun"``, also used by
order 3) or ``phi_1 / 2`` (``"midpoint"``, diffusers' default for order 2).

**Third order: a factor of 2.** With the history above, ``D1 = h m'(lam_t) + O(h^3)`` and
``D2 = h^2 m''(lam_t) / 2 + O(h^3)``, while the exponential-integrator expansion of the step needs
``h^2 phi_2 m' + h^3 phi_3 m''`` (``h^{k} phi_k(h) = int_0^h e^{h-u} u^{k-1}/(k-1)! du``), i.e. the
D2 term must be ``2 phi_3 D2``. The official DPM-Solver code, diffusers'
``multistep_dpm_solver_third_order_update`` and k-diffusion's ``sample_dpmpp_3m_sde`` use
``phi_3 D2`` (their singlestep third-order update does carry the 2, as
``D2 = 2 (D1_1 - D1_0) / (r0 - r1)``). With ``phi_3 D2`` a model output that is exactly
quadratic in lambda is not integrated exactly (error 2.4e-2 on a test step, against 1e-17 with
``2 phi_3 D2``), and the measured order on a Gaussian testbed is about 2.1-2.6 instead of 3
(``tests/test_dpm_solvers.py``). jdiff uses ``2 phi_3 D2`` by default; ``reference_d2=True``
reproduces the published coefficient step for step (for parity with those implementations). Multistep solvers
start with lower orders (1, then 2) while the history fills, and with ``lower_order_final``
(diffusers' rule, on when there are fewer than ``lower_order_final_below`` = 15 steps) use order 1
on the last step and at most order 2 on the one before. A final step that lands on sigma = 0
returns the data prediction (the limit of the order-1 step, diffusers' ``final_sigmas_type="zero"``).
One model evaluation per step: NFE = number of steps.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from .base import (Evaluation, MultistepState, Solver, init_multistep, multistep_order, ring_read,
                   ring_write, step_key)

_SERIES = 0.5  # below |z| < 0.5 use the Taylor series (9 terms: truncation < 1e-11 relative);
# above it the closed forms lose at most ~25 ulp to cancellation (phi_3 at |z| = 0.5, float32)


def _phi_series(z, k: int, terms: int = 9):
    """sum_{j < terms} z^j / (j + k)!  (Horner)."""
    out = jnp.zeros_like(z) + 1.0 / math.factorial(terms - 1 + k)
    for j in range(terms - 2, -1, -1):
        out = out * z + 1.0 / math.factorial(j + k)
    return out


def phi_1(z):
    """``expm1(z) / z`` (1 at z = 0)."""
    zero = z == 0
    zs = jnp.where(zero, 1.0, z)
    return jnp.where(zero, 1.0, jnp.expm1(zs) / zs)


def phi_2(z):
    """``(expm1(z) - z) / z^2``, by series for small |z|."""
    small = jnp.abs(z) < _SERIES
    zs = jnp.where(small, 1.0, z)
    return jnp.where(small, _phi_series(z, 2), (jnp.expm1(zs) - zs) / zs**2)


def phi_3(z):
    """``(expm1(z) - z - z^2 / 2) / z^3``, by series for small |z|."""
    small = jnp.abs(z) < _SERIES
    zs = jnp.where(small, 1.0, z)
    return jnp.where(small, _phi_series(z, 3), (jnp.expm1(zs) - zs - zs**2 / 2) / zs**3)


def check_order_and_type(order, solver_type: str) -> None:
    """``ValueError`` unless ``order`` is 1-3 and ``solver_type`` is midpoint or heun."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")


def push(state: MultistepState, m, lam, i):
    """Store output ``m`` of step ``i`` (evaluated at log-SNR ``lam``); return the new buffers and
    the outputs and log-SNRs of steps i - order + 1, ..., i (oldest first, ``m`` last)."""
    hist = ring_write(state.hist, m, i)
    hist_lam = ring_write(state.hist_lam, lam, i)
    k = hist.shape[0]
    ms = [ring_read(hist, i - j) for j in range(k - 1, 0, -1)] + [m]
    lams = [ring_read(hist_lam, i - j) for j in range(k - 1, 0, -1)] + [lam]
    return hist, hist_lam, ms, lams


def differences(hist, hist_lam, lam_t, h, k):
    """(D1, D2) of the module docstring; terms of unused orders are zero (selected, not multiplied).

    ``hist``, ``hist_lam``: sequences (lists or arrays) of the last 1-3 model outputs and their
    log-SNRs, oldest first: ``hist[-1] = m0``, ``hist[-2] = m1``, ``hist[-3] = m2``.
    """
    m0 = hist[-1]
    if len(hist) < 2:
        return None, None
    m1 = hist[-2]
    r0 = (lam_t - hist_lam[-2]) / h
    d1_0 = (m0 - m1) / r0
    if len(hist) < 3:
        return jnp.where(k >= 2, d1_0, 0.0), None
    m2 = hist[-3]
    r1 = (hist_lam[-2] - hist_lam[-3]) / h
    d1_1 = (m1 - m2) / r1
    d1 = jnp.where(k >= 3, d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1), jnp.where(k >= 2, d1_0, 0.0))
    d2 = jnp.where(k >= 3, (d1_0 - d1_1) / (r0 + r1), 0.0)
    return d1, d2


@dataclasses.dataclass(frozen=True)
class DPMSolverMultistep(Solver):
    """DPM-Solver(++) multistep of ``order`` 1-3 (module docstring); see :func:`dpm_solver_multistep`."""

    solver_order: int = 2
    predict_x0: bool = True
    solver_type: str = "midpoint"
    eta: float = 0.0
    s_noise: float = 1.0
    reference_d2: bool = False
    lower_order_final: bool = True
    lower_order_final_below: int = 15
    label: str | None = None

    def __post_init__(self):
        check_order_and_type(self.solver_order, self.solver_type)
        if self.eta != 0.0 and not self.predict_x0:
            raise ValueError("the SDE variant (eta > 0) is defined for the data form (predict_x0=True)")

    @property
    def order(self) -> int:
        return self.solver_order

    def default_name(self) -> str:
        return (("dpmpp" if self.predict_x0 else "dpm_solver") + f"_{self.solver_order}m"
                + ("_sde" if self.eta else ""))

    def init(self, x_T, grid, key=None, start=0):
        return init_multistep(self.solver_order, x_T, grid, key, start)

    def step(self, denoise, state, grid, i, to_zero=False):
        order, eta, predict_x0 = self.solver_order, self.eta, self.predict_x0
        n = grid.t.shape[0] - 1
        t, a_t, s_t, lam_t = grid.t[i], grid.alpha[i], grid.sigma[i], grid.lam[i]
        a_s, s_s, lam_s = grid.alpha[i + 1], grid.sigma[i + 1], grid.lam[i + 1]
        x0, eps = denoise(state.x, t, a_t, s_t)
        out = (Evaluation(x0, eps),)
        hist, hist_lam, ms, lams = push(state, x0 if predict_x0 else eps, lam_t, i)
        if to_zero:  # sigma_s = 0: the order-1 step's limit is the data prediction
            return state._replace(x=a_s * x0, hist=hist, hist_lam=hist_lam), out
        h = lam_s - lam_t
        k = multistep_order(order, i, state.start, n, self.lower_order_final,
                            self.lower_order_final_below)
        d1, d2 = differences(ms, lams, lam_t, h, k)
        g = (1.0 + eta) * h
        z = -g if predict_x0 else h
        c1 = phi_1(z)
        c2 = phi_2(z) if self.solver_type == "heun" else 0.5 * phi_1(z)
        if order == 3:
            c2 = jnp.where(k >= 3, phi_2(z), c2)
        update = c1 * ms[-1]
        if d1 is not None:
            update = update + c2 * d1
        if d2 is not None:
            update = update + (1.0 if self.reference_d2 else 2.0) * phi_3(z) * d2
        if predict_x0:
            x = (s_s / s_t) * jnp.exp(-eta * h) * state.x + a_s * g * update
            if eta != 0.0:
                noise = jax.random.normal(step_key(state, i), state.x.shape, state.x.dtype)
                x = x + self.s_noise * s_s * jnp.sqrt(-jnp.expm1(-2.0 * eta * h)) * noise
        else:
            x = (a_s / a_t) * state.x - s_s * h * update
        return state._replace(x=x, hist=hist, hist_lam=hist_lam), out


def dpm_solver_multistep(
    order: int = 2,
    *,
    predict_x0: bool = True,
    solver_type: str = "midpoint",
    eta: float = 0.0,
    s_noise: float = 1.0,
    reference_d2: bool = False,
    lower_order_final: bool = True,
    lower_order_final_below: int = 15,
    name: str | None = None,
) -> DPMSolverMultistep:
    """DPM-Solver(++) multistep of ``order`` 1-3 (see module docstring).

    Args:
      order: 1, 2 or 3.
      predict_x0: True for DPM-Solver++ (data form), False for DPM-Solver (noise form).
      solver_type: ``"midpoint"`` or ``"heun"``: the second-order coefficient (order 2 only).
      eta: 0 for the ODE solver; 1 for SDE-DPM-Solver++ (data form only; needs a key).
      s_noise: scale of the injected noise (k-diffusion's ``s_noise``; 1 is the exact SDE
        solver, 0 keeps only its deterministic part, as diffusers with ``variance_noise=0``).
      reference_d2: use the published third-order D2 coefficient ``phi_3`` (official DPM-Solver,
        diffusers, k-diffusion) instead of the Taylor-correct ``2 phi_3`` (module docstring).
      lower_order_final, lower_order_final_below: diffusers' final-order rule.
    """
    return DPMSolverMultistep(order, predict_x0, solver_type, float(eta), float(s_noise),
                              reference_d2, lower_order_final, lower_order_final_below, name)


def dpmpp_2m(**kw) -> Solver:
    return dpm_solver_multistep(2, predict_x0=True, solver_type="midpoint", name="dpmpp_2m", **kw)


def dpmpp_2m_heun(**kw) -> Solver:
    return dpm_solver_multistep(2, predict_x0=True, solver_type="heun", name="dpmpp_2m_heun", **kw)


def dpmpp_3m(**kw) -> Solver:
    return dpm_solver_multistep(3, predict_x0=True, name="dpmpp_3m", **kw)


def dpmpp_2m_sde(**kw) -> Solver:
    return dpm_solver_multistep(2, predict_x0=True, solver_type="midpoint", eta=1.0,
                                name="dpmpp_2m_sde", **kw)


def dpmpp_3m_sde(**kw) -> Solver:
    return dpm_solver_multistep(3, predict_x0=True, eta=1.0, name="dpmpp_3m_sde", **kw)


def dpm_solver(order: int, **kw) -> Solver:
    """DPM-Solver (noise form) multistep: ``dpm_solver_1``, ``dpm_solver_2``, ``dpm_solver_3``."""
    return dpm_solver_multistep(order, predict_x0=False, name=f"dpm_solver_{order}", **kw)
