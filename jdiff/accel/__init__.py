"""Training-free sampling accelerators that compose with every solver.

* :mod:`jdiff.accel.gaussian`: Gaussian statistics of data (:class:`GaussianStats`), the Gaussian
  (Wiener) denoiser as a model function and the closed-form Gaussian probability-flow solution
  (Wang & Vastola, "The Unreasonable Effectiveness of Gaussian Score Approximation for Diffusion
  Models and its Applications", TMLR 2024).
* :mod:`jdiff.accel.teleport`: analytical teleportation (skip the first steps of any solver with
  that solution), with an automatic skip point.
* :mod:`jdiff.accel.dualfast`: DualFast's approximation-error correction as a sampler hook (no
  extra model call), and Self-Guidance (one extra call) as its ablation.

    from jdiff import accel
    stats = accel.GaussianStats.from_data(train_x)          # (N, ...) in model range
    x_k, k = accel.teleport(stats, schedule, grid, x_T, skip=0.2)
    x_0 = jdiff.sample(model_fn, schedule, solver, grid, x_k, key, start=k)
"""

from . import plan
from .dualfast import DualFast, self_guidance
from .gaussian import (GaussianModel, GaussianStats, gaussian_denoiser, gaussian_flow, gaussian_flow_x0,
                       gaussian_x0_eps)
from .teleport import (AutoSkip, supports_closed_form_history, TeleportInfo, auto_fraction, auto_skip, closed_form_state, probe_errors, sample_teleported, skip_index,
                       t_of_sigma, tail_grid, teleport, time_at_fraction)

__all__ = ["DualFast", "self_guidance", "GaussianStats", "GaussianModel", "gaussian_denoiser", "gaussian_flow", "gaussian_flow_x0",
           "gaussian_x0_eps", "skip_index", "teleport", "t_of_sigma", "time_at_fraction", "tail_grid",
           "probe_errors", "auto_skip", "auto_fraction", "AutoSkip", "supports_closed_form_history", "closed_form_state", "TeleportInfo", "sample_teleported"]
