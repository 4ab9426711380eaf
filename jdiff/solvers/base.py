"""The solver interface: a NamedTuple of pure functions, in the spirit of optax.

A solver is::

    solver.init(x_T, grid, key) -> state            # fixed-shape pytree; state.x is the sample
    solver.step(denoise, state, grid, i, to_zero)   # one step from grid.t[i] to grid.t[i + 1]

``grid`` is a :class:`GridCoeffs` (times with their alpha, sigma, sigma_hat), ``i`` the step
index (traced inside the sampling scan), ``to_zero`` a static flag that is True only for a final
step that lands on sigma = 0 (solvers such as Heun skip work there). ``denoise(x, t, alpha,
sigma)`` calls the model once and returns ``(x0, eps)``.

Static metadata: ``order`` (nominal convergence order), ``stochastic``, ``min_steps`` and
``nfe(n_steps, final_zero)``, the exact number of model evaluations.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class GridCoeffs(NamedTuple):
    """Per-grid-point schedule values, all of shape (n_steps + 1,), and the schedule itself."""

    t: jnp.ndarray
    alpha: jnp.ndarray
    sigma: jnp.ndarray
    sigma_hat: jnp.ndarray  # sigma / alpha = exp(-log_snr)
    lam: jnp.ndarray  # log_snr = log alpha - log sigma (+inf at t = 0)
    schedule: Any = None  # the schedule, for solvers that evaluate off-grid times (2S, ...)


def grid_coeffs(schedule, grid, dtype) -> GridCoeffs:
    """Evaluate the schedule on the grid; t = 0 maps to (alpha, sigma, lam) = (1, 0, +inf)."""
    t = jnp.asarray(grid)
    zero = t == 0
    safe_t = jnp.where(zero, 1.0, t)
    alpha = jnp.where(zero, 1.0, schedule.alpha(safe_t))
    sigma = jnp.where(zero, 0.0, schedule.sigma(safe_t))
    lam = jnp.where(zero, jnp.inf, schedule.log_snr(safe_t))
    return GridCoeffs(
        t=t.astype(dtype),
        alpha=alpha.astype(dtype),
        sigma=sigma.astype(dtype),
        sigma_hat=(sigma / alpha).astype(dtype),
        lam=lam.astype(dtype),
        schedule=schedule,
    )


class State(NamedTuple):
    """State of one-step solvers: the sample and a PRNG key (unused by ODE solvers)."""

    x: jnp.ndarray
    key: Any


Denoise = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray], tuple]


class Solver(NamedTuple):
    name: str
    init: Callable
    step: Callable
    nfe: Callable[[int, bool], int]
    order: int
    stochastic: bool = False
    min_steps: int = 1


def init_plain(x_T, grid, key):  # noqa: ARG001
    """``init`` of solvers whose state is just the sample (and a key)."""
    if key is None:
        key = jax.random.key(0)
    return State(x=x_T, key=key)


def one_nfe_per_step(n_steps: int, final_zero: bool) -> int:  # noqa: ARG001
    return n_steps


def step_key(state, i):
    """Per-step key: ``fold_in(key, i)``, so the same key gives the same noise at each step."""
    return jax.random.fold_in(state.key, i)
