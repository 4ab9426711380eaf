"""The solver protocol: frozen dataclasses of options with pure ``init`` / ``step`` methods.

A solver is an instance of a subclass of :class:`Solver`, in the spirit of optax's
``GradientTransformation`` and diffrax's solvers::

    state = solver.init(x_T, grid, key, start=0)            # fixed-shape pytree; state.x is the sample
    state, outputs = solver.step(denoise, state, grid, i, to_zero)   # grid.t[i] -> grid.t[i + 1]

``grid`` is a :class:`GridCoeffs` (times with their alpha, sigma, sigma_hat, log-SNR) of the
*full* grid; ``i`` the step index (traced inside the sampling scan); ``to_zero`` a static flag,
True only for a final step that lands on sigma = 0 (Heun skips its corrector there, ...).
``denoise(x, t, alpha, sigma)`` calls the model once and returns ``(x0, eps)``. ``outputs`` is a
tuple of :class:`Evaluation`, one per model call of the step in call order, so that a wrapper can
cache them (DualFast, UniC).

``start``: the grid index the run starts at. Order rules are computed on the full grid: the
multistep warm-up counts the outputs available since ``start`` (``min(order, i - start + 1)``),
lower-order final steps count from the end of the full grid. A run split at step k and resumed
from the returned state is bit-identical to the unsplit run (tested).

Value semantics: solvers are frozen dataclasses, so two solvers with the same options compare and
hash equal and :func:`jdiff.sample` (which takes the solver as a static argument) does not
recompile for a re-created one. Static metadata: ``name``, ``order`` (the global convergence
order measured on smooth problems, see each solver's docstring), ``stochastic``, ``min_steps`` and
``nfe(n_steps, final_zero)``, the exact number of model evaluations.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

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


class Evaluation(NamedTuple):
    """One model call as a solver used it: the data and noise predictions at (x, t)."""

    x0: jnp.ndarray
    eps: jnp.ndarray


class State(NamedTuple):
    """State of one-step solvers: the sample and the solver's PRNG key (unused by ODE solvers)."""

    x: jnp.ndarray
    key: Any


class MultistepState(NamedTuple):
    """State of multistep solvers: sample, key, ring buffers of model outputs and the start index.

    ``hist[j % K]`` is the output of step j and ``hist_lam[j % K]`` the log-SNR where it was
    evaluated (:func:`ring_write`); unwritten slots hold zeros and ``lam[start] - 1``. ``start``
    (int32) is the grid index the run started at, for the warm-up orders.
    """

    x: jnp.ndarray
    key: Any
    hist: jnp.ndarray  # (K, *x.shape)
    hist_lam: jnp.ndarray  # (K,)
    start: jnp.ndarray  # () int32


def default_key(key):
    """``key``, or a fixed key for deterministic solvers that never draw from it."""
    return jax.random.key(0) if key is None else key


def init_multistep(slots: int, x_T, grid, key, start=0) -> MultistepState:
    """A :class:`MultistepState` with ``slots`` empty history slots."""
    return MultistepState(
        x=x_T,
        key=default_key(key),
        hist=jnp.zeros((slots,) + x_T.shape, x_T.dtype),
        hist_lam=jnp.full((slots,), grid.lam[start] - 1.0, grid.lam.dtype),
        start=jnp.asarray(start, jnp.int32),
    )


def multistep_order(order: int, i, start, n: int, lower_order_final: bool = False,
                    below: int | None = None):
    """Order of step ``i`` of a multistep solver on a grid of ``n`` steps, run from ``start``.

    ``min(order, i - start + 1)`` (warm-up: only the outputs since ``start`` exist) and, with
    ``lower_order_final`` (when ``below`` is None or ``n < below``), ``min(., n - i)``: order 1
    on the last step, at most 2 on the one before (the diffusers rule; DPM-Solver and DEIS use
    ``below = 15``, UniPC none).
    """
    k = jnp.minimum(order, i - start + 1)
    if lower_order_final and (below is None or n < below):
        k = jnp.minimum(k, n - i)
    return k


def step_key(state, i):
    """Per-step key of the solver's stream: ``fold_in(state.key, i)``."""
    return jax.random.fold_in(state.key, i)


@dataclasses.dataclass(frozen=True)
class Solver:
    """Base class of every solver (see the module docstring). Subclasses are frozen dataclasses
    whose fields are the solver's options; override ``init``, ``step`` and the metadata."""

    order = 1  # global convergence order on smooth problems
    min_steps = 1

    @property
    def stochastic(self) -> bool:
        """Whether the solver draws noise: solvers with an ``eta`` option do when it is nonzero."""
        return getattr(self, "eta", 0.0) != 0.0

    @property
    def name(self) -> str:
        label = getattr(self, "label", None)
        return label if label else self.default_name()

    def default_name(self) -> str:
        return type(self).__name__.lower()

    def init(self, x_T, grid: GridCoeffs, key=None, start=0):
        """State before step ``start`` (one-step solvers: just the sample and the key)."""
        del grid, start
        return State(x=x_T, key=default_key(key))

    def step(self, denoise, state, grid: GridCoeffs, i, to_zero: bool = False):
        raise NotImplementedError

    def nfe(self, n_steps: int, final_zero: bool) -> int:
        """Exact number of model evaluations of ``n_steps`` steps (default: one per step)."""
        del final_zero
        return n_steps


# ---- fixed-size ring buffers for multistep history ------------------------------------------
#
# Multistep solvers keep the last K model outputs in an array ``buf`` of shape (K, *x.shape).
# Output j (the one evaluated at step j) lives in slot ``j % K``: step i overwrites slot i % K
# (the output of step i - K, no longer needed) and reads step i - j from slot (i - j) % K. Inside
# ``lax.scan`` the write is an in-place ``dynamic_update_slice`` of the carried buffer, where
# shifting the whole stack (``jnp.roll`` / ``concatenate``) copied all K slots every step
# (``benchmarks/step_micro.py``). Slots never written keep their initial value (zeros); callers give
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
    ``jnp.tensordot``). Slots of steps before the start hold zeros and must get weight 0.
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
