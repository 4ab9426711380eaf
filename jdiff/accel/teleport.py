"""Analytical teleportation: skip the early steps of a sampler with the closed-form Gaussian flow.

Wang & Vastola, "The Unreasonable Effectiveness of Gaussian Score Approximation for Diffusion
Models and its Applications" (TMLR 2024, arXiv 2412.09726), Sec. 4 and the official
``benchmark/edm_analytical_massprod_O2.py``: at high noise a trained model's score is close to the
score of the Gaussian ``N(mu, Sigma)`` with the data's mean and covariance, whose probability-flow
ODE has a closed-form solution (:func:`jdiff.accel.gaussian_flow`). Teleportation maps ``x_T``
with that solution straight to a later grid point ``grid[k]`` and runs the unchanged solver from
there: the first ``k`` steps cost no model evaluation. ::

    stats = GaussianStats.from_dataset(train)                      # or from_data / from_mixture
    x_k, k = teleport(stats, schedule, grid, x_T, skip=0.2)        # 20% of the grid's steps
    x_0 = jdiff.sample(model_fn, schedule, solver, grid, x_k, key, start=k)

or in one call :func:`sample_teleported` (also ``skip="auto"`` and a multistep history taken from
the closed-form solution). ``start=k`` makes the solver start at ``grid[k]`` with a fresh
warm-up; the result equals the solver started there from the exact state whenever the data are
exactly Gaussian (tested). Teleporting to a *time* instead of a grid index:
:func:`time_at_fraction` / :func:`t_of_sigma` give the time, :func:`tail_grid` the grid that
starts there (a logsnr or karras grid's tail is itself a grid of that spacing, so skipping k of N
steps equals teleporting to ``grid[k]`` and running N - k steps of a fresh grid from there).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..grids import CONTINUOUS_GRIDS, check_grid, make_grid
from ..prediction import check_prediction, to_x0_eps
from ..sampling import check_model_signature, sample
from ..statics import check_no_captured_arrays, combine, partition
from .gaussian import GaussianStats, gaussian_denoiser, gaussian_flow, gaussian_x0_eps

HISTORIES = ("fresh", "closed_form", "auto")


def _concrete_grid(grid) -> np.ndarray:
    if isinstance(grid, jax.core.Tracer):
        raise ValueError("teleportation needs a concrete grid (a NumPy array), not a traced one")
    g = np.asarray(grid, np.float64)
    check_grid(g)
    return g


def skip_index(grid, skip) -> int:
    """Grid index to teleport to: ``skip`` an int (that index) or a float in [0, 1) (that fraction
    of the grid's steps, rounded half up: ``floor(skip * n_steps + 1/2)``).

    At least one step must remain: ``ValueError`` for a negative skip, a fraction outside
    [0, 1), or an index past ``n_steps - 1``."""
    g = _concrete_grid(grid)
    n = g.shape[0] - 1
    if isinstance(skip, (bool, np.bool_)):
        raise ValueError(f"skip must be a grid index (int) or a fraction of the grid (float in [0, 1)), "
                         f"got {skip!r}")
    if isinstance(skip, (int, np.integer)):
        k = int(skip)
        what = f"skip index {k}"
    elif isinstance(skip, (float, np.floating)):
        f = float(skip)
        if not (math.isfinite(f) and 0.0 <= f < 1.0):
            raise ValueError(f"skip fraction must be a float in [0, 1), got {skip!r}")
        k = int(math.floor(f * n + 0.5))
        what = f"skip fraction {f} (index {k})"
    else:
        raise ValueError(f"skip must be a grid index (int) or a fraction of the grid (float in [0, 1)), "
                         f"got {skip!r}")
    if not 0 <= k <= n - 1:
        raise ValueError(f"{what} is outside [0, {n - 1}]: the {n}-step grid must keep at least one step")
    return k


def teleport(stats: GaussianStats, schedule, grid, x_T, skip):
    """``(x_start, k)``: ``x_T`` (batch, ...) at ``grid[0]`` mapped by the closed-form Gaussian
    PF-ODE solution to ``grid[k]``, ``k = skip_index(grid, skip)``. Continue with
    ``jdiff.sample(model_fn, schedule, solver, grid, x_start, key, start=k)``. ``k = 0`` returns
    ``x_T`` itself."""
    g = _concrete_grid(grid)
    k = skip_index(g, skip)
    if k == 0:
        return x_T, 0
    return gaussian_flow(stats, schedule, x_T, g[0], g[k]), k


# --- times and tail grids ----------------------------------------------------------------------

def t_of_sigma(schedule, sigma) -> float:
    """Time at which ``sigma_t / alpha_t`` (the EDM / k-diffusion sigma) equals ``sigma``."""
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    with jax.enable_x64(True):
        return float(schedule.t_of_log_snr(jnp.float64(-math.log(sigma))))


def time_at_fraction(schedule, fraction: float, spacing: str = "logsnr", *, t_max=None, t_min=None,
                     rho: float = 7.0) -> float:
    """The time a fraction ``fraction`` in [0, 1) of the way from ``t_max`` to ``t_min`` in the
    coordinate of a continuous grid spacing (``logsnr``: log-SNR; ``karras``:
    ``sigma_hat^(1/rho)``; ``uniform_t``: t; ``quadratic``: sqrt(t); :mod:`jdiff.grids`). Index k of
    an N-step grid of that spacing is the time at ``fraction = k / (N - 1)`` for ``final="zero"``
    (N points from t_max to t_min, then 0) and ``k / N`` for ``final="t_min"``."""
    if spacing not in CONTINUOUS_GRIDS:
        raise ValueError(f"unknown spacing {spacing!r}; valid: {', '.join(CONTINUOUS_GRIDS)}")
    f = float(fraction)
    if not (math.isfinite(f) and 0.0 <= f < 1.0):
        raise ValueError(f"fraction must be a float in [0, 1), got {fraction!r}")
    t_hi = float(schedule.t_max if t_max is None else t_max)
    t_lo = float(schedule.t_min if t_min is None else t_min)
    if not t_hi > t_lo > 0:
        raise ValueError(f"need t_max > t_min > 0, got t_max={t_hi}, t_min={t_lo}")
    if f == 0.0:
        return t_hi
    if spacing == "uniform_t":
        return t_hi + f * (t_lo - t_hi)
    if spacing == "quadratic":
        return (math.sqrt(t_hi) + f * (math.sqrt(t_lo) - math.sqrt(t_hi))) ** 2
    with jax.enable_x64(True):
        lam_hi, lam_lo = (float(schedule.log_snr(jnp.float64(t))) for t in (t_hi, t_lo))
        if spacing == "logsnr":
            lam = lam_hi + f * (lam_lo - lam_hi)
        else:
            s_hi, s_lo = math.exp(-lam_hi), math.exp(-lam_lo)
            lam = -rho * math.log(s_hi ** (1 / rho) + f * (s_lo ** (1 / rho) - s_hi ** (1 / rho)))
        return float(schedule.t_of_log_snr(jnp.float64(lam)))


def tail_grid(schedule, name: str, n_steps: int, t_start: float, final: str = "zero", **grid_kwargs):
    """An ``n_steps`` grid of spacing ``name`` starting at ``t_start`` (teleport there first):
    :func:`jdiff.grids.make_grid` with ``t_max = t_start``."""
    return make_grid(schedule, name, n_steps, final, t_max=float(t_start), **grid_kwargs)


# --- auto: where does the Gaussian stop agreeing with the model? --------------------------------

PROBE_SPACES = ("x0", "eps")


@partial(jax.jit, static_argnames=("model_static", "prediction", "space"))
def _probe_rms(model_arrays, stats, schedule, probe, t0, tk, args, *, model_static, prediction, space):
    """RMS of (model - Gaussian) x0 or eps predictions at the Gaussian flow of ``probe`` from t0
    to tk."""
    model_fn = combine(model_arrays, model_static)
    x = gaussian_flow(stats, schedule, probe, t0, tk)  # (P, ...)
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    a, s = schedule.alpha(tk).astype(x.dtype), schedule.sigma(tk).astype(x.dtype)
    model_out = to_x0_eps(model_fn(x, tk.astype(x.dtype), args), x, a, s, prediction)
    gauss_out = gaussian_x0_eps(stats, schedule, x, tk)
    j = PROBE_SPACES.index(space)
    return jnp.sqrt(jnp.mean((model_out[j] - gauss_out[j]) ** 2))


def probe_errors(model_fn, stats: GaussianStats, schedule, grid, probe_x, indices, *, args=None,
                 prediction: str = "eps", space: str = "x0"):
    """Disagreement of model and Gaussian denoiser at ``grid[k]`` for each k in ``indices``, on
    the probe samples pushed from ``grid[0]`` along the Gaussian flow (one model call per index;
    :func:`auto_skip`, :func:`auto_fraction`): ``space="x0"``:
    ``rms(x0_model - x0_gauss) / stats.data_std()``; ``space="eps"``: ``rms(eps_model -
    eps_gauss)`` (eps has unit scale; the x0 difference times ``alpha / sigma``, which keeps an
    eps-network's error at high noise from being amplified by ``sigma / alpha``)."""
    check_prediction(prediction)
    check_model_signature(model_fn)
    if space not in PROBE_SPACES:
        raise ValueError(f"unknown probe space {space!r}; valid: {', '.join(PROBE_SPACES)}")
    g = _concrete_grid(grid)
    model_arrays, model_static = partition(model_fn)
    check_no_captured_arrays(model_static, "model_fn")
    probe = jnp.asarray(probe_x)
    if probe.ndim < 2 or math.prod(probe.shape[1:]) != stats.dim:
        raise ValueError(f"probe_x must have shape (n_probe, ...) with {stats.dim} entries per sample, "
                         f"got {probe.shape}")
    scale = max(stats.data_std(), np.finfo(np.float32).tiny) if space == "x0" else 1.0
    t0 = jnp.asarray(g[0], jnp.float32)
    out = []
    for k in indices:
        e = _probe_rms(model_arrays, stats, schedule, probe, t0, jnp.asarray(g[k], jnp.float32), args,
                       model_static=model_static, prediction=prediction, space=space)
        out.append(float(e) / scale)
    return out


def auto_skip(model_fn, stats: GaussianStats, schedule, grid, probe_x, tol: float, *, args=None,
              prediction: str = "eps", max_skip: int | None = None):
    """``(k, calls)``: the largest grid index k such that, at every grid point ``grid[1..k]``, the
    Gaussian denoiser agrees with the model within ``tol``, and the number of model calls spent.

    Agreement at ``grid[j]``: the probe samples ``probe_x`` (n_probe, ...), standard-normal noise
    scaled as x_T at ``grid[0]``, are moved there along the closed-form Gaussian flow, and
    ``rms(x0_model - x0_gauss) / sqrt(trace(Sigma) / D) <= tol`` (x0 predictions, error relative to
    the data's per-dimension standard deviation). The grid points are tested in order j = 1, 2, ...
    and the search stops at the first failure (or at ``max_skip``, default ``n_steps - 1``), so
    ``calls = min(k + 1, max_skip)``, each a model call on the probe batch: count them in the NFE.
    """
    tol = float(tol)
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    g = _concrete_grid(grid)
    n = g.shape[0] - 1
    max_skip = n - 1 if max_skip is None else max_skip
    if isinstance(max_skip, bool) or not isinstance(max_skip, (int, np.integer)) or not 0 <= max_skip <= n - 1:
        raise ValueError(f"max_skip must be an integer in [0, {n - 1}], got {max_skip!r}")
    k = calls = 0
    for j in range(1, int(max_skip) + 1):
        (err,) = probe_errors(model_fn, stats, schedule, g, probe_x, [j], args=args, prediction=prediction)
        calls += 1
        if not err <= tol:  # also stops on NaN
            break
        k = j
    return k, calls


class AutoSkip(NamedTuple):
    """Result of :func:`auto_fraction`: teleport over ``fraction`` of the spacing's coordinate
    (to time ``t``), found with ``calls`` model calls on ``n_probe`` probe samples."""

    fraction: float
    t: float
    calls: int
    n_probe: int

    def nfe_per_sample(self, n_samples: int) -> float:
        """The probe's cost in model evaluations per sample of a run of ``n_samples`` samples
        that it serves (one call on ``n_probe`` samples costs ``n_probe / n_samples`` of one NFE)."""
        return self.calls * self.n_probe / n_samples


def auto_fraction(model_fn, stats: GaussianStats, schedule, probe_x, tol: float, *, spacing: str = "logsnr",
                  resolution: int = 20, max_fraction: float = 0.9, args=None, prediction: str = "eps",
                  space: str = "eps"):
    """The largest teleport fraction ``j / resolution`` (of the way from ``t_max`` to ``t_min`` in
    ``spacing``'s coordinate, :func:`time_at_fraction`) at which the model and the Gaussian
    denoiser agree within ``tol`` on the probe samples (:func:`probe_errors`), by bisection on
    ``j`` (the disagreement grows as the noise falls), so about ``log2(resolution)`` model calls.

    Independent of the step budget: find it once per model, then sample any NFE from
    :func:`tail_grid` at ``t``. ``probe_x``: standard-normal noise scaled as x_T at ``t_max``.
    ``space``: where the disagreement is measured (:func:`probe_errors`).
    """
    tol = float(tol)
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
    if not 0 < max_fraction < 1:
        raise ValueError(f"max_fraction must be in (0, 1), got {max_fraction!r}")
    top = max(1, int(math.floor(max_fraction * resolution)))
    ladder = np.array([time_at_fraction(schedule, j / resolution, spacing) for j in range(top + 1)] + [0.0])
    lo, hi, calls = 0, top, 0  # invariant: fraction lo / resolution is accepted
    while lo < hi:
        mid = (lo + hi + 1) // 2
        (err,) = probe_errors(model_fn, stats, schedule, ladder, probe_x, [mid], args=args, prediction=prediction,
                              space=space)
        calls += 1
        if err <= tol:
            lo = mid
        else:
            hi = mid - 1
    return AutoSkip(lo / resolution, float(ladder[lo]), calls, int(jnp.shape(probe_x)[0]))


# --- multistep history from the closed form ------------------------------------------------------

def supports_closed_form_history(solver, grid, x_T) -> bool:
    """Whether ``solver`` keeps a multistep history that :func:`closed_form_state` can fill."""
    from ..solvers.base import GridCoeffs, MultistepState
    from ..solvers.unipc import UniPCState

    g = np.asarray(grid, np.float64)
    coeffs = GridCoeffs(*(jnp.zeros(g.shape, jnp.float32) for _ in range(5)))
    shape = jax.eval_shape(lambda x: solver.init(x, coeffs, jax.random.key(0), 0),
                           jax.ShapeDtypeStruct(jnp.shape(x_T), jnp.float32))
    return isinstance(shape, (MultistepState, UniPCState))


def closed_form_state(stats: GaussianStats, schedule, solver, grid, x_T, k: int, key=None,
                      history_steps: int = 3, hooks=(), args=None):
    """A :class:`jdiff.SampleState` at ``grid[k]`` whose multistep history comes from the
    closed-form Gaussian solution: the solver runs steps ``k - h .. k - 1`` (``h = min(k,
    history_steps)``) on the Gaussian denoiser from the exact Gaussian state at ``grid[k - h]``
    (no model calls), then its sample (and UniPC's corrected previous sample) is replaced by the
    exact closed-form state. Resume with
    ``jdiff.sample(model_fn, ..., None, key, start=k, state=state)``: the first real steps use the
    full order instead of a warm-up. Solvers with a :class:`~jdiff.solvers.MultistepState` or
    UniPC's state only (``ValueError`` otherwise). ``hooks`` (and the ``args`` they see) run on
    the Gaussian steps too, so their state is ready for the model's steps (DualFast's reference
    is then the Gaussian denoiser's output at the previous grid point); resume with the same
    hooks."""
    g = _concrete_grid(grid)
    k = int(k)
    if not 1 <= k <= g.shape[0] - 2:
        raise ValueError(f"k must be in [1, {g.shape[0] - 2}] for a closed-form history, got {k}")
    if isinstance(history_steps, bool) or not isinstance(history_steps, (int, np.integer)) or history_steps < 1:
        raise ValueError(f"history_steps must be a positive integer, got {history_steps!r}")
    from ..solvers.base import MultistepState
    from ..solvers.unipc import UniPCState

    h = min(k, int(history_steps))
    x_T = jnp.asarray(x_T)
    exact = {j: gaussian_flow(stats, schedule, x_T, g[0], g[j]) for j in (k - h, k - 1, k)}
    gauss = gaussian_denoiser(stats, schedule, "x0")
    _, st = sample(gauss, schedule, solver, g, exact[k - h], key, prediction="x0", start=k - h, stop=k,
                   return_state=True, hooks=hooks, args=args)
    s = st.solver
    if not isinstance(s, (MultistepState, UniPCState)):
        raise ValueError(f"history='closed_form' needs a multistep solver (DPM-Solver(++) multistep, "
                         f"DEIS, iPNDM, UniPC); {solver.name!r} has state {type(s).__name__}")
    repl = {"x": exact[k].astype(s.x.dtype)}
    if isinstance(s, UniPCState):
        repl["x_prev"] = exact[k - 1].astype(s.x.dtype)
    return st._replace(solver=s._replace(**repl))


class TeleportInfo(NamedTuple):
    """What :func:`sample_teleported` did: the grid index and time it teleported to, the NFE of
    the solver run, and the model calls of the ``auto`` probe (total NFE = nfe + probe_calls)."""

    skip_index: int
    t_start: float
    nfe: int
    probe_calls: int


def sample_teleported(model_fn, schedule, solver, grid, x_T, stats: GaussianStats, skip, key=None, *,
                      tol: float | None = None, probe=16, history: str = "auto", history_steps: int = 3,
                      return_info: bool = False, **sample_kwargs):
    """Teleport ``x_T`` to ``grid[k]`` and run ``solver`` from there with :func:`jdiff.sample`.

    ``skip``: a grid index, a fraction in [0, 1) (:func:`skip_index`) or ``"auto"``
    (:func:`auto_skip` with ``tol``; ``probe`` is the number of leading samples of ``x_T`` used
    as probes, or an array of probe samples). ``history``: ``"fresh"`` (the solver warms up from
    ``grid[k]``), ``"closed_form"`` (:func:`closed_form_state`) or ``"auto"`` (closed form for
    the solvers that keep a multistep history, else fresh). Other keyword arguments go to
    :func:`jdiff.sample` (``args``, ``prediction``, ``denoise_to_zero``, ...; not ``start`` or
    ``state``). Returns the samples, or ``(samples, TeleportInfo)`` with ``return_info``.
    """
    for bad in ("start", "state", "stop"):
        if bad in sample_kwargs:
            raise ValueError(f"sample_teleported sets {bad!r} itself; do not pass it")
    if history not in HISTORIES:
        raise ValueError(f"unknown history {history!r}; valid: {', '.join(HISTORIES)}")
    g = _concrete_grid(grid)
    n = g.shape[0] - 1
    probe_calls = 0
    if isinstance(skip, str):
        if skip != "auto":
            raise ValueError(f"skip must be an int, a float in [0, 1) or 'auto', got {skip!r}")
        if tol is None:
            raise ValueError("skip='auto' needs tol (relative RMS agreement of model and Gaussian)")
        if isinstance(probe, (int, np.integer)) and not isinstance(probe, bool):
            if probe < 1:
                raise ValueError(f"probe must be a positive number of samples or an array, got {probe}")
            probe_x = jnp.asarray(x_T)[:int(probe)]
        else:
            probe_x = probe
        k, probe_calls = auto_skip(model_fn, stats, schedule, g, probe_x, tol,
                                   args=sample_kwargs.get("args"),
                                   prediction=sample_kwargs.get("prediction", "eps"),
                                   max_skip=max(0, n - solver.min_steps))
    else:
        if tol is not None:
            raise ValueError("tol applies to skip='auto' only")
        k = skip_index(g, skip)
    if n - k < solver.min_steps:
        raise ValueError(f"skipping {k} of {n} steps leaves {n - k}; solver {solver.name!r} needs "
                         f"at least {solver.min_steps}")
    if history == "auto":
        history = "closed_form" if supports_closed_form_history(solver, g, x_T) else "fresh"
    if history == "closed_form" and k > 0:
        from ..hooks import as_hooks

        hooks = as_hooks(sample_kwargs.get("correct_x0"), sample_kwargs.get("hooks", ()))
        state = closed_form_state(stats, schedule, solver, g, x_T, k, key, history_steps, hooks=hooks,
                                  args=sample_kwargs.get("args"))
        out = sample(model_fn, schedule, solver, g, None, key, start=k, state=state, **sample_kwargs)
    else:
        x_start, k = teleport(stats, schedule, g, x_T, k)
        out = sample(model_fn, schedule, solver, g, x_start, key, start=k, **sample_kwargs)
    if not return_info:
        return out
    final_zero = float(g[-1]) == 0.0
    nfe = solver.nfe(n - k, final_zero) + int(bool(sample_kwargs.get("denoise_to_zero", False)))
    return out, TeleportInfo(skip_index=k, t_start=float(g[k]), nfe=nfe, probe_calls=probe_calls)


__all__ = ["supports_closed_form_history", "AutoSkip", "auto_fraction", "skip_index", "teleport", "t_of_sigma", "time_at_fraction", "tail_grid", "probe_errors",
           "auto_skip", "closed_form_state", "TeleportInfo", "sample_teleported", "HISTORIES"]
