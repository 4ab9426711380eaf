"""Multistep exponential-integrator samplers: DEIS (tAB, log-rho) and iPNDM.

Both integrate the probability-flow ODE in the scaled variables of Karras et al. (2022)

    x_hat = x / alpha,   rho = sigma_hat = sigma / alpha = exp(-lambda),   d x_hat / d rho = eps

with one model call per step, keeping the last few ``eps`` in a fixed-size ring buffer ``hist`` of
shape ``(order, *x.shape)`` (``hist[j % order]`` holds the ``eps`` of step j; see
:func:`jdiff.solvers.base.ring_write`). The order used at step ``i``
is chosen with ``jnp.where``/indexing from the static step count ``n`` and the traced ``i``, so the
scan body has no ``lax.cond``. Notation: a step goes from ``s0 = t_i`` to ``t = t_{i+1}``;
``s1 = t_{i-1}``, ``s2 = t_{i-2}`` are earlier (noisier) grid points whose ``eps`` are in ``hist``.

DEIS tAB (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator",
ICLR, arXiv 2204.13902, "tAB-DEIS" with the log-rho time change), implemented here as diffusers'
``DEISMultistepScheduler`` with ``algorithm_type="deis"``, ``solver_type="logrho"`` (diffusers
0.42.1, ``schedulers/scheduling_deis_multistep.py``). ``eps`` is interpolated by the Lagrange
polynomial in ``log rho`` through the last ``k`` points and integrated exactly against ``d rho``:

    x_hat_t = x_hat_s0 + sum_{j<k} c_j eps_{s_j},
    c_j = int_{rho_s0}^{rho_t} l_j(log rho) d rho,
    l_j(L) = prod_{m != j} (L - log rho_{s_m}) / (log rho_{s_j} - log rho_{s_m})

* k = 1: ``c_0 = rho_t - rho_s0``, the DDIM step (diffusers' ``deis_first_order_update``,
  ``x_t = alpha_t / alpha_s0 x - sigma_t (e^h - 1) eps``, is the same step).
* k = 2, 3: diffusers writes ``c_j = F_j(rho_t) - F_j(rho_s0)`` with the antiderivatives
  ``ind_fn(t, b, c) = t (log t - log c - 1) / (log b - log c)`` (k = 2) and the quadratic analogue
  (k = 3). Those differences cancel catastrophically in float32 when steps are small (terms of
  size ``rho log(rho)^2 / h^2`` for a result of size ``rho h``) and are ``0 * inf`` at
  ``rho_t = 0``. jdiff evaluates the SAME integrals (identical coefficients in exact arithmetic;
  the tests check them against quadrature and diffusers' formulas in float64) in a
  cancellation-free form: substitute
  ``u = log rho - log rho_s0`` so the nodes are ``u_0 = 0``, ``u_1 = lambda_s0 - lambda_s1``,
  ``u_2 = lambda_s0 - lambda_s2`` (both > 0), ``h = lambda_t - lambda_s0`` and

      J_m = int_{rho_s0}^{rho_t} u^m d rho = rho_s0 int_0^{-h} u^m e^u du
      J_0 = rho_t - rho_s0,   J_1 = -h rho_t - J_0,   J_2 = h^2 rho_t - 2 J_1

  (for ``h < 1`` from the Taylor series ``rho_s0 sum_q (-h)^(q+m+1) / ((q+m+1) q!)``, which
  has no cancellation; at ``rho_t = 0``, ``h = inf``: ``J = (-rho_s0, rho_s0, -2 rho_s0)``, the
  limits, so a final step to sigma = 0 is finite). Then

      k = 2:  c_0 = J_0 - J_1 / u_1,                      c_1 = J_1 / u_1
      k = 3:  c_0 = (J_2 - (u_1 + u_2) J_1 + u_1 u_2 J_0) / (u_1 u_2),
              c_1 = (J_2 - u_2 J_1) / (u_1 (u_1 - u_2)),
              c_2 = (J_2 - u_1 J_1) / (u_2 (u_2 - u_1)).

  Orders follow diffusers' ``step``: warm-up ``k = min(order, i + 1)``; with
  ``lower_order_final=True`` (diffusers' default) and fewer than 15 steps, the last step is
  first order and the one before at most second order, i.e. ``k = min(order, i + 1, n - i)``.
  diffusers' ``model_outputs`` are ``(x - alpha x0) / sigma`` for ``x0 = (x - sigma eps) /
  alpha``, i.e. ``eps`` itself, which is what ``hist`` stores.

  diffusers' DEIS grid ends at timestep 0 (``sigma_last = sigma_hat(t = 1 / N)``, there is no
  ``final_sigmas_type`` option); in jdiff that is a grid ending at ``t_min`` (see the tests), where
  jdiff reproduces diffusers exactly. On a grid ending at t = 0 (jdiff's default) the last step
  is first order (DDIM, ``euler_at_zero=True``), as diffusers' ``DPMSolverMultistepScheduler``
  does for ``final_sigmas_type="zero"`` and k-diffusion's ``sample_dpmpp_2m`` for
  ``sigma_next == 0``: that step is infinitely long in lambda, and extrapolating eps polynomially
  in log rho to rho = 0 is badly conditioned (measured on trailing grids with 15-20 steps:
  order-3 extrapolation gave 3-6x the error of the DDIM last step on mix16d/mix2d). With
  ``euler_at_zero=False`` the formulas above are used with their finite limits at rho_t = 0.
  Below 15 steps ``lower_order_final`` already makes that step first order, so both agree.

iPNDM ("improved PNDM", introduced in the same DEIS paper, arXiv 2204.13902: PNDM's pseudo
linear multistep method (Liu et al. 2022) without its Runge-Kutta warm-up, which is replaced by
lower-order multistep steps; code: zju-pi/diff-sampler
``diff-solvers-main/solvers.py::ipndm_sampler``, copied by ComfyUI as
``k_diffusion.sampling.sample_ipndm``) is the explicit Adams-Bashforth method with the CONSTANT
(equal-step) coefficients applied to ``d x_hat / d rho = eps``:

    x_hat_{i+1} = x_hat_i + (rho_{i+1} - rho_i) sum_j b^(k)_j eps_{i-j},   k = min(max_order, i + 1)
    b^(1) = (1),  b^(2) = (3, -1) / 2,  b^(3) = (23, -16, 5) / 12,  b^(4) = (55, -59, 37, -9) / 24

(in diff-sampler's EDM variables ``x_hat = x`` and ``d_cur = (x - D(x)) / sigma = eps``).
diff-sampler's grids end at sigma_min; ComfyUI's copy takes a step to sigma = 0 as
``x = denoised``, i.e. an Euler step, which is jdiff's default (``euler_at_zero=True``; with
``False`` the AB step is used there too). The coefficients are those of AB on a uniform grid in
rho; on a non-uniform grid (any usual diffusion grid) frozen AB coefficients are only
second-order consistent (per step, ``int phi' G - (int phi')(mean G) = O(h^3)`` for
``rho = phi(s)`` with uniform s), and the first (Euler) warm-up step already has an O(h^2) local
error, so the global order is 2 (measured 2.1-2.2 on logsnr grids; tests/test_deis_ipndm.py).
``order=2`` below is that honest value, not the AB4 order of the formula.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from .base import Evaluation, Solver, init_multistep, multistep_order, ring_push_combine

__all__ = ["DEIS_IPNDM_SOLVERS", "DEIS", "IPNDM", "deis", "ipndm", "deis_coefficients",
           "deis_step_order"]

_SERIES_TERMS = 16  # Taylor terms of the moments for h < 1: truncation < 1 / (17 * 16!) ~ 3e-15
_LOF_MAX_STEPS = 15  # diffusers applies lower_order_final only for fewer than 15 steps


def _moments(rho_s0, rho_t, h):
    """``J_m = int_{rho_s0}^{rho_t} (log rho - log rho_s0)^m d rho``, m = 0, 1, 2 (module doc).

    ``h = lambda_t - lambda_s0 >= 0`` (``inf`` when ``rho_t = 0``)."""
    zero = rho_t == 0
    # closed form, with h * rho_t -> 0 at rho_t = 0 (h = inf)
    h_fin = jnp.where(zero, 0.0, h)
    hr = h_fin * rho_t
    j0 = rho_t - rho_s0
    j1 = -hr - j0
    j2 = h_fin * hr - 2.0 * j1
    # Taylor series for small h (no cancellation): rho_s0 sum_q (-h)^(q+m+1) / ((q+m+1) q!)
    hs = jnp.minimum(h_fin, 1.0)
    s1 = jnp.zeros_like(hs)
    s2 = jnp.zeros_like(hs)
    p = hs * hs  # h^(q+2) at q = 0, sign handled below
    for q in range(_SERIES_TERMS):
        sign = 1.0 if q % 2 == 0 else -1.0
        s1 = s1 + p * (sign / ((q + 2) * math.factorial(q)))
        s2 = s2 - p * hs * (sign / ((q + 3) * math.factorial(q)))
        p = p * hs
    small = (h_fin < 1.0) & ~zero
    j1 = jnp.where(small, rho_s0 * s1, j1)
    j2 = jnp.where(small, rho_s0 * s2, j2)
    return j0, j1, j2


def deis_coefficients(rho_t, rho_s0, lam_t, lam_s0, lam_s1, lam_s2, k, max_order: int):
    """DEIS (log-rho) weights ``c_j`` of ``eps_{s_j}``, shape ``(max_order,)``, for order ``k``.

    ``x_hat_t = x_hat_s0 + sum_j c_j eps_{s_j}``. ``k`` may be traced; nodes that order ``k`` does
    not use get weight 0 (and may hold any value, e.g. duplicates during warm-up).
    """
    h = lam_t - lam_s0
    j0, j1, j2 = _moments(rho_s0, rho_t, h)
    one = jnp.ones_like(j0)
    zero = jnp.zeros_like(j0)
    u1 = lam_s0 - lam_s1
    u2 = lam_s0 - lam_s2
    # guard the denominators of the orders not selected (warm-up nodes may coincide)
    u1 = jnp.where(k >= 2, u1, one)
    u2 = jnp.where(k >= 3, u2, 2.0 * one)
    c1 = jnp.stack([j0, zero, zero])
    c2 = jnp.stack([j0 - j1 / u1, j1 / u1, zero])
    c3 = jnp.stack([
        (j2 - (u1 + u2) * j1 + u1 * u2 * j0) / (u1 * u2),
        (j2 - u2 * j1) / (u1 * (u1 - u2)),
        (j2 - u1 * j1) / (u2 * (u2 - u1)),
    ])
    c = jnp.where(k >= 3, c3, jnp.where(k >= 2, c2, c1))
    return c[:max_order]


def deis_step_order(i, n: int, order: int, lower_order_final: bool = True, start=0):
    """Order diffusers' ``DEISMultistepScheduler.step`` uses at step ``i`` of ``n``."""
    return multistep_order(order, i, start, n, lower_order_final, _LOF_MAX_STEPS)


@dataclasses.dataclass(frozen=True)
class DEIS(Solver):
    """DEIS tAB multistep sampler of order 1-3 in log-rho (diffusers' ``DEISMultistepScheduler``).

    ``DEIS(1)`` is DDIM. ``lower_order_final`` mirrors diffusers (first order on the last step and
    at most second on the one before, for fewer than 15 steps). ``euler_at_zero``: a final step
    that lands on sigma = 0 is first order (see the module docstring).
    """

    solver_order: int = 3
    lower_order_final: bool = True
    euler_at_zero: bool = True
    label: str | None = None

    def __post_init__(self):
        if self.solver_order not in (1, 2, 3):
            raise ValueError(f"DEIS order must be 1, 2 or 3, got {self.solver_order!r}")

    @property
    def order(self) -> int:
        return self.solver_order

    def default_name(self) -> str:
        return f"deis_{self.solver_order}"

    def init(self, x_T, grid, key=None, start=0):
        return init_multistep(self.solver_order, x_T, grid, key, start)

    def step(self, denoise, state, grid, i, to_zero=False):
        order = self.solver_order
        n = grid.t.shape[0] - 1
        a_s0 = grid.alpha[i]
        x0, eps = denoise(state.x, grid.t[i], a_s0, grid.sigma[i])
        if to_zero and self.euler_at_zero:
            k = 1
        else:
            k = deis_step_order(i, n, order, self.lower_order_final, state.start)
        im1 = jnp.maximum(i - 1, 0)
        im2 = jnp.maximum(i - 2, 0)
        c = deis_coefficients(grid.sigma_hat[i + 1], grid.sigma_hat[i], grid.lam[i + 1],
                              grid.lam[i], grid.lam[im1], grid.lam[im2], k, order)
        hist, comb = ring_push_combine(state.hist, eps, i, c)
        x_hat = state.x / a_s0 + comb
        return state._replace(x=grid.alpha[i + 1] * x_hat, hist=hist), (Evaluation(x0, eps),)


def deis(order: int = 3, lower_order_final: bool = True, euler_at_zero: bool = True,
         name: str | None = None) -> DEIS:
    """DEIS of ``order`` 1-3 (:class:`DEIS`)."""
    return DEIS(order, lower_order_final, euler_at_zero, name)


_AB = np.asarray(  # NumPy, not a JAX array: cast to the grid dtype inside the step
    [
        [1.0, 0.0, 0.0, 0.0],
        [3.0 / 2.0, -1.0 / 2.0, 0.0, 0.0],
        [23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0, 0.0],
        [55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0],
    ]
)


@dataclasses.dataclass(frozen=True)
class IPNDM(Solver):
    """iPNDM: constant-coefficient Adams-Bashforth (orders 1..``max_order`` <= 4) in (x/alpha, rho).

    ``euler_at_zero``: a final step that lands on sigma = 0 is an Euler step (ComfyUI's
    ``sample_ipndm``), otherwise the AB step of the current order. ``order`` is 2 (module
    docstring: frozen AB coefficients on non-uniform grids).
    """

    max_order: int = 4
    euler_at_zero: bool = True
    label: str | None = None

    def __post_init__(self):
        if self.max_order not in (1, 2, 3, 4):
            raise ValueError(f"iPNDM max_order must be 1..4, got {self.max_order!r}")

    @property
    def order(self) -> int:
        return min(self.max_order, 2)

    def default_name(self) -> str:
        return "ipndm" if self.max_order == 4 else f"ipndm_{self.max_order}"

    def init(self, x_T, grid, key=None, start=0):
        return init_multistep(self.max_order, x_T, grid, key, start)

    def step(self, denoise, state, grid, i, to_zero=False):
        table = _AB[:self.max_order, :self.max_order]
        a_s0 = grid.alpha[i]
        x0, eps = denoise(state.x, grid.t[i], a_s0, grid.sigma[i])
        if to_zero and self.euler_at_zero:
            k = 1
        else:
            k = multistep_order(self.max_order, i, state.start, grid.t.shape[0] - 1)
        b = jnp.asarray(table, grid.sigma_hat.dtype)[k - 1]
        d_rho = grid.sigma_hat[i + 1] - grid.sigma_hat[i]
        hist, comb = ring_push_combine(state.hist, eps, i, b)
        x_hat = state.x / a_s0 + d_rho * comb
        return state._replace(x=grid.alpha[i + 1] * x_hat, hist=hist), (Evaluation(x0, eps),)


def ipndm(max_order: int = 4, euler_at_zero: bool = True, name: str | None = None) -> IPNDM:
    """iPNDM (:class:`IPNDM`)."""
    return IPNDM(max_order, euler_at_zero, name)


def _deis_1() -> Solver:
    return deis(1)


def _deis_2() -> Solver:
    return deis(2)


def _deis_3() -> Solver:
    return deis(3)


DEIS_IPNDM_SOLVERS = {"deis_1": _deis_1, "deis_2": _deis_2, "deis_3": _deis_3, "ipndm": ipndm}
