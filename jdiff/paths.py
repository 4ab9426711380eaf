"""Non-monotone time: a sampler that walks a path of grid indices, jumping back to more noise.

RePaint (Lugmayr et al. 2022, Alg. 1) alternates denoising steps with jumps back in time: from
``x_{t_i}`` it draws ``x_{t_j}`` (``t_j > t_i``) from the forward process

    q(x_{t_j} | x_{t_i}) = N((alpha_j / alpha_i) x_{t_i}, (sigma_j^2 - (alpha_j / alpha_i)^2 sigma_i^2) I)

and denoises again. :func:`sample_path` runs any solver along a ``path`` of indices into the grid
(e.g. ``[0, 1, 2, 1, 2, 3, ...]``) as one compiled program: a move ``i -> i + 1`` is one solver
step, a move ``i -> j < i`` is the forward jump above. After a jump the solver restarts at
``grid[j]`` (``solver.init(x, grid, key, start=j)``: multistep histories warm up again), since
its history belongs to the trajectory it left; hooks restart too (``hook.init``). Keys: the solver's key and the jump's noise are
drawn per path position (a grid step visited twice gets fresh noise); model and hook keys as in
:func:`jdiff.sample`, indexed by path position. :func:`repaint_path` builds RePaint's
jump schedule.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .grids import check_grid
from .hooks import as_hooks
from .prediction import check_prediction
from .sampling import SampleState, Stepper, stream_keys, check_model_signature
from .solvers.base import Solver, grid_coeffs
from .statics import check_no_captured_arrays, combine, partition

JUMP_STREAM = 3  # fold_in(key, 3): the forward jumps' noise, beside the solver/model/hook streams


def repaint_path(n_steps: int, jump_length: int = 10, resamplings: int = 10) -> np.ndarray:
    """RePaint's time path (``get_schedule_jump`` of the official code) as grid indices, 0 the
    noisiest point and ``n_steps`` the end of the grid.

    RePaint's timestep ``t`` (``n_steps - 1`` down to 0, then the final step) is index
    ``n_steps - 1 - t``. Walking down, at ``t = 0, L, 2 L, ...`` with ``t < n_steps - L``
    (``L = jump_length``) the path goes back ``L`` steps and walks down again, ``resamplings - 1``
    times at each such point. RePaint goes back one forward step at a time; one jump of ``L``
    steps has the same distribution (the forward process is Markov) and draws once.
    """
    if n_steps < 1 or jump_length < 1 or resamplings < 1:
        raise ValueError("need n_steps, jump_length, resamplings >= 1")
    jumps = {n_steps - 1 - t: resamplings - 1 for t in range(0, n_steps - jump_length, jump_length)}
    path = [0]
    for i in range(1, n_steps + 1):
        path.append(i)
        for _ in range(jumps.get(i, 0)):
            path.extend(range(i - jump_length, i + 1))
    return np.asarray(path, np.int32)


def forward_jump(x, alpha_i, sigma_i, alpha_j, sigma_j, z):
    """A draw of ``x_{t_j}`` given ``x_{t_i}`` (t_j > t_i) from the forward process (module doc)."""
    r = alpha_j / alpha_i
    return r * x + jnp.sqrt(jnp.maximum(sigma_j**2 - (r * sigma_i) ** 2, 0.0)) * z


def check_path(path, n_steps: int) -> np.ndarray:
    p = np.asarray(path)
    if p.ndim != 1 or p.shape[0] < 2 or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"path must be a 1-D integer array of at least 2 grid indices, got {p.shape} {p.dtype}")
    if p.min() < 0 or p.max() > n_steps:
        raise ValueError(f"path indices must lie in [0, {n_steps}] (the grid's points)")
    d = np.diff(p)
    if np.any(d == 0) or np.any(d > 1):
        k = int(np.argmax((d == 0) | (d > 1)))
        raise ValueError(f"path move {k} goes {p[k]} -> {p[k + 1]}: moves go one step down the grid "
                         "(i -> i + 1) or back to more noise (i -> j < i)")
    if np.any(p[:-1] == n_steps):
        raise ValueError(f"path visits the grid's end {n_steps} before its last entry")
    return p.astype(np.int32)


@partial(jax.jit, static_argnames=("model_static", "hook_static", "solver", "prediction",
                                   "final_zero", "model_key"))
def _sample_path(model_arrays, hook_arrays, schedule, grid, moves, x_T, key, args, *, model_static,
                 hook_static, solver, prediction, final_zero, model_key):
    model_fn = combine(model_arrays, model_static)
    hooks = combine(hook_arrays, hook_static)
    out_dtype = x_T.dtype
    dtype = jnp.promote_types(out_dtype, jnp.float32)
    g = grid_coeffs(schedule, grid, dtype)
    k_solver, k_model, k_x0_hooks, k_post_hooks = stream_keys(key)
    k_jump = jax.random.fold_in(key, JUMP_STREAM)
    x_T = x_T.astype(dtype)
    start = moves[0, 1]  # the grid index of the path's first point
    state = SampleState(solver.init(x_T, g, k_solver, start), tuple(h.init(x_T, g, args) for h in hooks),
                        jnp.zeros((0,), out_dtype))
    stepper = Stepper(solver, model_fn, prediction, args, hooks, g, k_model if model_key else None,
                      k_x0_hooks, k_post_hooks)

    def down(st: SampleState, k, i, to_zero):
        st = st._replace(solver=st.solver._replace(key=jax.random.fold_in(k_solver, k)))
        return stepper(st, i, k, to_zero)

    def up(st: SampleState, k, i, j):
        x = st.solver.x
        z = jax.random.normal(jax.random.fold_in(k_jump, k), x.shape, x.dtype)
        x = forward_jump(x, g.alpha[i], g.sigma[i], g.alpha[j], g.sigma[j], z)
        # the solver's history and the hooks' states belong to the trajectory left: restart both
        return SampleState(solver.init(x, g, st.solver.key, j),
                           tuple(h.init(x, g, args) for h in hooks), st.like)

    def move(st, kij):
        k, i, j = kij[0], kij[1], kij[2]
        return lax.cond(j == i + 1, lambda s: down(s, k, i, False), lambda s: up(s, k, i, j), st), None

    last = moves.shape[0] - 1
    state, _ = lax.scan(move, state, moves[:last])
    if final_zero is None:  # the last move does not end the grid: as any other
        state, _ = move(state, moves[last])
    else:  # the grid's final step, traced apart with its static to_zero (as in sample)
        state = down(state, moves[last, 0], moves[last, 1], final_zero)
    return state.solver.x.astype(out_dtype)


def sample_path(model_fn, schedule, solver: Solver, grid, path, x_T, key=None, *, args=None,
                prediction: str = "eps", correct_x0=None, hooks=(), model_key: bool = False):
    """Run ``solver`` along ``path`` (grid indices; module docstring) from ``x_T`` at
    ``grid[path[0]]``; returns the sample at ``grid[path[-1]]``.

    Same model, hook and key conventions as :func:`jdiff.sample`; ``key`` is required (jumps
    draw noise). NFE = the number of down moves times the solver's evaluations per step.
    """
    check_prediction(prediction)
    if not isinstance(solver, Solver):
        raise ValueError(f"solver must be a jdiff Solver, got {type(solver).__name__}")
    model_arrays, model_static = partition(model_fn)
    check_model_signature(model_fn, model_key, model_static)
    if key is None:
        raise ValueError("sample_path draws the jumps' noise: pass a PRNG key")
    check_grid(grid)
    g = np.asarray(grid)
    n = g.shape[0] - 1
    p = check_path(path, n)
    x_T = jnp.asarray(x_T)
    if x_T.ndim < 1 or not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise ValueError(f"x_T must be a floating array of shape (batch, ...), got {x_T.shape} {x_T.dtype}")
    moves = np.stack([np.arange(p.shape[0] - 1), p[:-1], p[1:]], axis=1).astype(np.int32)
    # the grid's final step (onto t = 0 for Heun and the data-prediction limits) is traced apart
    final_zero = (bool(g[-1] == 0.0) if (p[-1] == n and p[-2] == n - 1) else None)
    check_no_captured_arrays(model_static, "model_fn")
    hook_arrays, hook_static = partition(as_hooks(correct_x0, hooks))
    return _sample_path(model_arrays, hook_arrays, schedule, jnp.asarray(grid), moves, x_T, key,
                        args, model_static=model_static, hook_static=hook_static, solver=solver,
                        prediction=prediction, final_zero=final_zero, model_key=bool(model_key))


def path_nfe(solver: Solver, grid, path) -> int:
    """Exact number of model evaluations of :func:`sample_path`."""
    g = np.asarray(grid)
    n = g.shape[0] - 1
    p = check_path(path, n)
    downs = int(np.sum(np.diff(p) == 1))
    per_step = solver.nfe(2, False) // 2
    last_to_zero = p[-1] == n and g[-1] == 0.0
    return downs * per_step - (per_step - solver.nfe(1, True) if last_to_zero else 0)


__all__ = ["sample_path", "repaint_path", "forward_jump", "path_nfe", "check_path", "JUMP_STREAM"]
