"""Time grids: pure functions returning the ``n_steps + 1`` times a sampler visits.

A grid runs from large to small time and always has ``n_steps + 1`` entries, so a sampler takes
exactly ``n_steps`` steps. The final policy decides where the last step lands:

* ``final="zero"``: ``n_steps`` grid points from ``t_max`` to ``t_min``, then ``t = 0`` (clean
  data, ``sigma = 0``). This is the convention of diffusers (``final_sigmas_type="zero"``,
  ``set_alpha_to_one=True``), k-diffusion and EDM (``t_N = 0``).
* ``final="t_min"``: ``n_steps + 1`` grid points from ``t_max`` to ``t_min`` (the official
  DPM-Solver convention, ending at ``eps``). Combine with ``denoise_to_zero`` in
  :func:`jdiff.sample` to finish with one extra denoising evaluation.

Spacings of the continuous grids (Lu et al. 2022, Karras et al. 2022):

* ``uniform_t``: uniform in t (DPM-Solver ``time_uniform``).
* ``logsnr``: uniform in log-SNR lambda (DPM-Solver ``logSNR``).
* ``quadratic``: uniform in sqrt(t) (DPM-Solver ``time_quadratic``).
* ``karras``: uniform in ``sigma_hat ** (1 / rho)``, rho = 7 (EDM).

Spacings of PyTorch's discrete schedulers (need a :class:`~jdiff.schedules.VPDiscrete`
schedule), reproducing diffusers' ``timestep_spacing`` exactly. They give ``n_steps`` timesteps
and then the final time: 0 for ``final="zero"`` (diffusers ``final_sigmas_type="zero"``) or t_min
= timestep 0 for ``final="t_min"`` (diffusers ``"sigma_min"``):

* ``linspace``: ``round(linspace(0, N - 1, n))`` reversed.
* ``leading``: ``arange(n) * (N // n)`` reversed (+ ``steps_offset``).
* ``trailing``: ``round(arange(N, 0, -N / n)) - 1``.
* ``linspace_dpm``: ``round(linspace(0, N - 1, n + 1))`` reversed without its last entry: the
  ``linspace`` of diffusers' DPM-Solver (multistep and singlestep), UniPC and DEIS schedulers,
  which differs from DDIM's.

The time before each grid point is read from the array; it is never derived as ``t - N // n``
(diffusers' DDIM does that and leaves the ``linspace`` grid; diffusers issues 9261, 14357).

Grids are built on the host in float64 and returned as NumPy arrays; pass them (or any array of
your own, as a traced value) to :func:`jdiff.sample`.
"""

from __future__ import annotations

import jax
import numpy as np

from .schedules import VPDiscrete

CONTINUOUS_GRIDS = ("uniform_t", "logsnr", "quadratic", "karras")
DISCRETE_GRIDS = ("linspace", "leading", "trailing", "linspace_dpm")
GRIDS = CONTINUOUS_GRIDS + DISCRETE_GRIDS
FINALS = ("zero", "t_min")


def _f64(fn, *args):
    with jax.enable_x64(True):
        return np.array(fn(*args), dtype=np.float64)


def _continuous_points(schedule, name: str, n: int, t_max: float, t_min: float, rho: float):
    """``n`` points from t_max to t_min (inclusive) with the given spacing."""
    if n == 1:
        return np.array([t_max], dtype=np.float64)
    u = np.linspace(0.0, 1.0, n)
    if name == "uniform_t":
        t = t_max + u * (t_min - t_max)
    elif name == "quadratic":
        t = (np.sqrt(t_max) + u * (np.sqrt(t_min) - np.sqrt(t_max))) ** 2
    else:
        lam_max, lam_min = _f64(schedule.log_snr, np.array([t_min, t_max]))
        if name == "logsnr":
            lam = lam_min + u * (lam_max - lam_min)
        else:  # karras
            s_max, s_min = np.exp(-lam_min), np.exp(-lam_max)
            s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            lam = -np.log(s)
        t = _f64(schedule.t_of_log_snr, lam)
    t[0], t[-1] = t_max, t_min  # exact end points despite round trips
    return t


def discrete_timesteps(num_train_timesteps: int, n: int, spacing: str, steps_offset: int = 0):
    """Integer timesteps of diffusers' ``set_timesteps`` for DDIM/DDPM/Euler (descending)."""
    N = num_train_timesteps
    if spacing == "linspace":
        ts = np.linspace(0, N - 1, n).round()[::-1]
    elif spacing == "leading":
        ts = (np.arange(0, n) * (N // n)).round()[::-1] + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(N, 0, -N / n)) - 1
    elif spacing == "linspace_dpm":
        ts = np.linspace(0, N - 1, n + 1).round()[::-1][:-1]
    else:
        raise ValueError(f"unknown discrete spacing {spacing!r}; valid: {', '.join(DISCRETE_GRIDS)}")
    return ts.astype(np.int64)


def make_grid(
    schedule,
    name: str,
    n_steps: int,
    final: str = "zero",
    *,
    t_max: float | None = None,
    t_min: float | None = None,
    rho: float = 7.0,
) -> np.ndarray:
    """The ``n_steps + 1`` times of a sampling grid (float64, descending).

    Args:
      schedule: a :mod:`jdiff.schedules` schedule.
      name: one of :data:`GRIDS`.
      n_steps: number of solver steps (static; at least 1).
      final: ``"zero"`` or ``"t_min"`` (see module docstring).
      t_max, t_min: override the schedule's time range (continuous grids only).
      rho: Karras exponent.
    """
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; valid: {', '.join(GRIDS)}")
    if final not in FINALS:
        raise ValueError(f"unknown final policy {final!r}; valid: {', '.join(FINALS)}")
    if not isinstance(n_steps, (int, np.integer)) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    t_max = float(schedule.t_max if t_max is None else t_max)
    t_min = float(schedule.t_min if t_min is None else t_min)
    if not t_max > t_min > 0:
        raise ValueError(f"need t_max > t_min > 0, got t_max={t_max}, t_min={t_min}")
    if t_max > float(schedule.t_max) * (1.0 + 1e-12):
        # beyond it VP schedules clamp (zero-length steps) or are undefined (cosine at t = 1)
        raise ValueError(f"t_max={t_max} is beyond the schedule's range (its t_max is {schedule.t_max})")

    if name in DISCRETE_GRIDS:
        if not isinstance(schedule, VPDiscrete):
            raise ValueError(
                f"grid {name!r} is a discrete-timestep spacing and needs a vp_discrete schedule, "
                f"not {schedule.name!r}; use one of {', '.join(CONTINUOUS_GRIDS)}"
            )
        N = schedule.num_train_timesteps
        if n_steps > N:
            raise ValueError(f"grid {name!r} has at most {N} steps, asked for {n_steps}")
        ts = discrete_timesteps(N, n_steps, name)
        if np.any(np.diff(ts) >= 0):
            raise ValueError(f"grid {name!r} with {n_steps} steps repeats a timestep (rounding of "
                             f"{N} training timesteps); use fewer steps or another spacing")
        if final == "t_min" and ts[-1] == 0:
            raise ValueError(
                f"grid {name!r} with {n_steps} steps already ends at t_min (timestep 0); ending "
                "there again would add a zero-length step (diffusers PR 6477): use final='zero'"
            )
        return np.concatenate([(ts + 1.0) / N, [0.0 if final == "zero" else 1.0 / N]])

    if final == "zero":
        pts = _continuous_points(schedule, name, n_steps, t_max, t_min, rho)
        return np.concatenate([pts, [0.0]])
    return _continuous_points(schedule, name, n_steps + 1, t_max, t_min, rho)


def check_grid(grid) -> None:
    """Raise ``ValueError`` unless a concrete grid is 1-D, finite, >= 0 and strictly decreasing."""
    g = np.asarray(grid)
    if g.ndim != 1 or g.shape[0] < 2:
        raise ValueError(f"a grid needs at least 2 times in a 1-D array, got shape {g.shape}")
    if not np.all(np.isfinite(g)) or np.any(g < 0):
        raise ValueError("grid times must be finite and >= 0")
    if np.any(np.diff(g) >= 0):
        raise ValueError("grid times must be strictly decreasing (from noise to data)")


__all__ = ["GRIDS", "CONTINUOUS_GRIDS", "DISCRETE_GRIDS", "make_grid", "discrete_timesteps",
           "check_grid"]
