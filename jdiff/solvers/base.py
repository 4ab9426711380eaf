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
from jax import lax


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


# ---- fixed-size ring buffers for multistep history ------------------------------------------
#
# Multistep solvers keep the last K model outputs in an array ``buf`` of shape (K, *x.shape).
# Output j (the one evaluated at step j) lives in slot ``j % K``: step i overwrites slot i % K
# (the output of step i - K, no longer needed) and reads step i - j from slot (i - j) % K. Inside
# ``lax.scan`` the write is an in-place ``dynamic_update_slice`` of the carried buffer, where
# shifting the whole stack (``jnp.roll`` / ``concatenate``) copied all K slots every step
# (measured ~35 us instead of ~140 us per step for K = 3 at 1024 x 64 float32 on 2 CPU cores,
# ``benchmarks/speed.py``). Slots never written keep their initial value (zeros); callers give
# them zero weight.


def _slot(i, size: int):
    """``i mod size`` (non-negative) for a Python int or a traced integer ``i``."""
    if size == 1:
        return 0
    return i % size


def ring_write(buf, value, i):
    """``buf`` with slot ``i % K`` set to ``value`` (K = ``buf.shape[0]``)."""
    value = jnp.asarray(value, buf.dtype)
    return lax.dynamic_update_index_in_dim(buf, value, _slot(i, buf.shape[0]), 0)


def ring_read(buf, i):
    """Slot ``i % K`` of ``buf``: the entry written at step ``i`` (if still held)."""
    return lax.dynamic_index_in_dim(buf, _slot(i, buf.shape[0]), 0, keepdims=False)


def ring_push_combine(hist, value, i, coeffs):
    """Store ``value`` (step ``i``) in the ring buffer ``hist`` of K slots and return
    ``(hist, sum_{j<K} coeffs[j] value_{i-j})``, ``coeffs[0]`` multiplying ``value`` itself.

    The sum is unrolled over the K static slots (on CPU about half the cost of
    ``jnp.tensordot``). Slots of steps before 0 hold zeros and must get weight 0.
    """
    value = value.astype(hist.dtype)
    coeffs = jnp.asarray(coeffs).astype(hist.dtype)
    hist = ring_write(hist, value, i)
    total = coeffs[0] * value
    for j in range(1, hist.shape[0]):
        total = total + coeffs[j] * ring_read(hist, i - j)
    return hist, total


def lagrange_basis(nodes):
    """Monomial coefficients of the Lagrange basis polynomials of distinct ``nodes`` (scalars).

    Returns, for each k, ``(p_k, d_k)`` with ``L_k(x) = sum_j p_k[j] x^j / d_k``:
    ``p_k`` the coefficients (lowest degree first) of ``prod_{m != k} (x - x_m)`` and
    ``d_k = prod_{m != k} (x_k - x_m)``, so ``L_k(x_m) = [k == m]``. Pure scalar arithmetic
    (static unrolled loops), no linear solve.
    """
    out = []
    for k, xk in enumerate(nodes):
        poly, denom = [1.0], 1.0
        for m, xm in enumerate(nodes):
            if m == k:
                continue
            # multiply by (x - xm): new[j] = old[j - 1] - xm old[j]
            poly = [(poly[j - 1] if j > 0 else 0.0) - (xm * poly[j] if j < len(poly) else 0.0)
                    for j in range(len(poly) + 1)]
            denom = denom * (xk - xm)
        out.append((poly, denom))
    return out
