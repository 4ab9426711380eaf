"""Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Algorithm 1).

In the scaled variables ``x_hat = x / alpha`` and ``sigma_hat = sigma / alpha`` the PF-ODE is
``d x_hat / d sigma_hat = eps(x, t)``. One step from t to s:

    x_hat' = x_hat + (sigma_hat_s - sigma_hat_t) eps(x_t, t)                 (Euler predictor)
    x_hat_s = x_hat + (sigma_hat_s - sigma_hat_t) (eps(x_t, t) + eps(x', s)) / 2   (trapezoid)

A final step that lands on sigma = 0 keeps the Euler predictor only (as EDM does), so N steps
ending at zero cost ``2 N - 1`` model evaluations, and ``2 N`` otherwise.
"""

from __future__ import annotations

import dataclasses

from .base import Evaluation, Solver, State


@dataclasses.dataclass(frozen=True)
class Heun(Solver):
    """EDM Heun (module docstring): second order, two model calls per step."""

    label: str | None = None
    order = 2
    min_steps = 2

    def nfe(self, n_steps: int, final_zero: bool) -> int:
        return 2 * n_steps - (1 if final_zero else 0)

    def step(self, denoise, state, grid, i, to_zero=False):
        t, a_t, s_t = grid.t[i], grid.alpha[i], grid.sigma[i]
        x0, eps = denoise(state.x, t, a_t, s_t)
        dh = grid.sigma_hat[i + 1] - grid.sigma_hat[i]
        x_hat = state.x / a_t
        x_pred = grid.alpha[i + 1] * (x_hat + dh * eps)
        if to_zero:
            return State(x=x_pred, key=state.key), (Evaluation(x0, eps),)
        x0_2, eps2 = denoise(x_pred, grid.t[i + 1], grid.alpha[i + 1], grid.sigma[i + 1])
        x = grid.alpha[i + 1] * (x_hat + dh * 0.5 * (eps + eps2))
        return State(x=x, key=state.key), (Evaluation(x0, eps), Evaluation(x0_2, eps2))


def heun() -> Heun:
    return Heun()
