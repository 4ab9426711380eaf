"""Singlestep DPM-Solver(++): grouped singlestep on the grid, and the 2S midpoint solver.

**Grouped singlestep** (diffusers ``DPMSolverSinglestepScheduler``; Lu et al. 2022, Alg. 1 with the
intermediate points placed on the grid). The n steps are split into groups of orders given by
diffusers' order list (e.g. order 3: ``[1, 2, 3] * k + ...``, the last step order 1 when the grid
ends at 0). A group of order k starts at grid point g with sample ``x_g`` and output ``m_g``; its
j-th step (j = 1..k) evaluates the model at ``x_{g+j-1}`` and updates *from the group start* to
``t_{g+j}`` with ``h = lam_{g+j} - lam_g`` (phi functions as in :mod:`.dpm_solver`):

    order 1: D0 = m_g                                    (the DDIM / DPM-Solver-1 step)
    order 2: r0 = (lam_{g+1} - lam_g) / h,  D1 = (m_{g+1} - m_g) / r0
    order 3: r0 = (lam_{g+2} - lam_g) / h,  r1 = (lam_{g+1} - lam_g) / h,
             D1_0 = (m_{g+1} - m_g) / r1,  D1_1 = (m_{g+2} - m_g) / r0,
             D1 = (r0 D1_0 - r1 D1_1) / (r0 - r1),  D2 = 2 (D1_1 - D1_0) / (r0 - r1)

    data form:  x = (sigma_s / sigma_g) x_g + alpha_s h [phi_1(-h) D0 + c D1' + phi_3(-h) D2']
    noise form: x = (alpha_s / alpha_g) x_g - sigma_s h [phi_1(h) D0 + c D1' + phi_3(h) D2']

with, for order 2, ``c D1' = phi_1/2 D1`` (midpoint) or ``phi_2 D1`` (heun), and for order 3
``c D1' = phi_2 D1_1`` without D2 (midpoint) or ``phi_2 D1 + phi_3 D2`` (heun). One model call per
step (NFE = n).

**2S midpoint** (DPM-Solver++(2S), Lu et al. 2022b Alg. 1; k-diffusion ``sample_dpmpp_2s_ancestral``
with eta = 0): each step from t to s first takes an order-1 step to ``lam_u = lam_t + r h``
(r = 1/2), evaluates the model there, then

    midpoint:  x_s = (sigma_s/sigma_t) x_t + alpha_s h phi_1(-h) [m_t + (m_u - m_t) / (2 r)]
    heun:      x_s = (sigma_s/sigma_t) x_t + alpha_s h [phi_1(-h) m_t + phi_2(-h) (m_u - m_t) / r]

(with r = 1/2 the midpoint form is k-diffusion's ``x_s = (sigma_s/sigma_t) x_t - alpha_s expm1(-h)
m_u``). Two model calls per step; a final step to sigma = 0 returns the data prediction (one
call), so NFE = 2n - 1 ending at 0 and 2n otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp

from .base import Evaluation, Solver, State, default_key, ring_read, ring_write
from .dpm_solver import check_order_and_type, phi_1, phi_2, phi_3


def singlestep_orders(n: int, order: int, lower_order_final: bool = True,
                      final_zero: bool = True) -> list:
    """diffusers' ``get_order_list``: the order of each of the n steps."""
    if order == 3:
        if lower_order_final:
            orders = ([1, 2, 3] * (n // 3 - 1) + [1, 2] + [1] if n % 3 == 0 else
                      [1, 2, 3] * (n // 3) + ([1] if n % 3 == 1 else [1, 2]))
        else:
            orders = [1, 2, 3] * (n // 3) + [1, 2][: n % 3]
    elif order == 2:
        if lower_order_final:
            orders = [1, 2] * (n // 2 - 1) + [1, 1] if n % 2 == 0 else [1, 2] * (n // 2) + [1]
        else:
            orders = [1, 2] * (n // 2) + [1][: n % 2]
    else:
        orders = [1] * n
    if final_zero:
        orders[-1] = 1
    return orders


class SinglestepState(NamedTuple):
    x: jnp.ndarray
    key: Any
    x_start: jnp.ndarray  # sample at the start of the current group
    # ring buffers (.base.ring_write / ring_read) of the outputs of a group: a group of order
    # <= ``order`` spans at most ``order`` steps, so hist[j % order] is the output of step j
    hist: jnp.ndarray  # (order, *x.shape)
    hist_lam: jnp.ndarray  # (order,) log-SNR of each
    start: jnp.ndarray  # () int32, grid index the run started at


@dataclasses.dataclass(frozen=True)
class DPMSolverSinglestep(Solver):
    """Grouped singlestep DPM-Solver(++) of ``order`` 1-3 (module docstring).

    The group structure is that of the full grid (diffusers' order list); a run started at grid
    index ``start`` without history treats ``start`` as a group start: step i uses order
    ``min(orders[i], i - start + 1)``.
    """

    solver_order: int = 2
    predict_x0: bool = False
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    label: str | None = None

    def __post_init__(self):
        check_order_and_type(self.solver_order, self.solver_type)

    @property
    def order(self) -> int:
        return self.solver_order

    def default_name(self) -> str:
        return ("dpmpp" if self.predict_x0 else "dpm_solver") + f"_{self.solver_order}_single"

    def init(self, x_T, grid, key=None, start=0):
        order = self.solver_order
        return SinglestepState(x=x_T, key=default_key(key), x_start=x_T,
                               hist=jnp.zeros((order,) + x_T.shape, x_T.dtype),
                               hist_lam=jnp.full((order,), grid.lam[start] - 1.0, grid.lam.dtype),
                               start=jnp.asarray(start, jnp.int32))

    def step(self, denoise, state, grid, i, to_zero=False):
        order, predict_x0, solver_type = self.solver_order, self.predict_x0, self.solver_type
        n = grid.t.shape[0] - 1
        # whether the grid ends at 0 changes only the last order, and that step is traced
        # separately with to_zero: build the list as if it did not
        orders = jnp.asarray(singlestep_orders(n, order, self.lower_order_final, False), jnp.int32)
        t, a_t, s_t, lam_t = grid.t[i], grid.alpha[i], grid.sigma[i], grid.lam[i]
        a_s, s_s, lam_s = grid.alpha[i + 1], grid.sigma[i + 1], grid.lam[i + 1]
        x0, eps = denoise(state.x, t, a_t, s_t)
        out = (Evaluation(x0, eps),)
        m = x0 if predict_x0 else eps
        hist = ring_write(state.hist, m, i)
        hist_lam = ring_write(state.hist_lam, lam_t, i)
        if to_zero:
            return state._replace(x=a_s * x0, x_start=state.x, hist=hist, hist_lam=hist_lam), out
        k = jnp.minimum(orders[i], i - state.start + 1)
        x_start = jnp.where(k == 1, state.x, state.x_start)
        g = i - k + 1  # the group started at grid point i - k + 1 (>= start)
        lam_g, m_g = ring_read(hist_lam, g), ring_read(hist, g)
        a_g, s_g = grid.alpha[g], grid.sigma[g]
        h = lam_s - lam_g
        z = -h if predict_x0 else h
        corr = 0.0
        if order >= 2:  # order 2 (group start m_g = output of step i - 1)
            r0_2 = (lam_t - lam_g) / h
            d1_2 = (m - m_g) / r0_2
            c2 = phi_2(z) if solver_type == "heun" else 0.5 * phi_1(z)
            corr = jnp.where(k == 2, c2 * d1_2, corr)
        if order == 3:  # order 3 (group start m_g = output of step i - 2, middle step i - 1)
            m_mid, lam_mid = ring_read(hist, i - 1), ring_read(hist_lam, i - 1)
            r0 = (lam_t - lam_g) / h
            r1 = (lam_mid - lam_g) / h
            d1_0 = (m_mid - m_g) / r1
            d1_1 = (m - m_g) / r0
            if solver_type == "heun":
                corr3 = phi_2(z) * (r0 * d1_0 - r1 * d1_1) / (r0 - r1) \
                    + phi_3(z) * 2.0 * (d1_1 - d1_0) / (r0 - r1)
            else:
                corr3 = phi_2(z) * d1_1
            corr = jnp.where(k == 3, corr3, corr)
        update = phi_1(z) * m_g + corr
        if predict_x0:
            x = (s_s / s_g) * x_start + a_s * h * update
        else:
            x = (a_s / a_g) * x_start - s_s * h * update
        return state._replace(x=x, x_start=x_start, hist=hist, hist_lam=hist_lam), out


def dpm_solver_singlestep(order: int = 2, *, predict_x0: bool = False, solver_type: str = "midpoint",
                          lower_order_final: bool = True, name: str | None = None) -> DPMSolverSinglestep:
    """Grouped singlestep DPM-Solver(++) of ``order`` 1-3 (:class:`DPMSolverSinglestep`)."""
    return DPMSolverSinglestep(order, predict_x0, solver_type, lower_order_final, name)


@dataclasses.dataclass(frozen=True)
class DPMpp2S(Solver):
    """DPM-Solver++(2S): two model calls per step (module docstring)."""

    solver_type: str = "midpoint"
    r: float = 0.5
    label: str | None = None
    order = 2

    def __post_init__(self):
        check_order_and_type(2, self.solver_type)

    def default_name(self) -> str:
        return "dpmpp_2s"

    def nfe(self, n_steps: int, final_zero: bool) -> int:
        return 2 * n_steps - (1 if final_zero else 0)

    def step(self, denoise, state, grid, i, to_zero=False):
        r = self.r
        t, a_t, s_t, lam_t = grid.t[i], grid.alpha[i], grid.sigma[i], grid.lam[i]
        a_s, s_s, lam_s = grid.alpha[i + 1], grid.sigma[i + 1], grid.lam[i + 1]
        x0, eps = denoise(state.x, t, a_t, s_t)
        if to_zero:
            return State(x=a_s * x0, key=state.key), (Evaluation(x0, eps),)
        h = lam_s - lam_t
        # intermediate point at lam_u = lam_t + r h, mapped back to time through the schedule
        lam_u = lam_t + r * h
        sch = grid.schedule
        t_u = sch.t_of_log_snr(lam_u).astype(state.x.dtype)
        a_u, s_u = sch.alpha(t_u).astype(state.x.dtype), sch.sigma(t_u).astype(state.x.dtype)
        x_u = (s_u / s_t) * state.x + a_u * (r * h) * phi_1(-r * h) * x0
        x0_u, eps_u = denoise(x_u, t_u, a_u, s_u)
        if self.solver_type == "midpoint":
            upd = phi_1(-h) * (x0 + (x0_u - x0) / (2.0 * r))
        else:
            upd = phi_1(-h) * x0 + phi_2(-h) * (x0_u - x0) / r
        x = (s_s / s_t) * state.x + a_s * h * upd
        return State(x=x, key=state.key), (Evaluation(x0, eps), Evaluation(x0_u, eps_u))


def dpmpp_2s(solver_type: str = "midpoint", r: float = 0.5, name: str | None = None) -> DPMpp2S:
    """DPM-Solver++(2S) (:class:`DPMpp2S`)."""
    return DPMpp2S(solver_type, float(r), name)


__all__ = ["singlestep_orders", "DPMSolverSinglestep", "DPMpp2S", "dpm_solver_singlestep", "dpmpp_2s"]
