"""Accelerator settings as the command line and the step-count benchmark take them.

``--teleport FRACTION|auto`` teleports ``x_T`` over (at most) that fraction of the grid
spacing's coordinate (log-SNR for the ``logsnr`` grid) and spends the whole step budget on the
rest, on the grid that continues the spacing (:func:`teleport_grid`) with the multistep history
from the closed-form solution where the solver keeps one, so a teleported run has the same NFE
as a plain one; ``auto`` finds the fraction with :func:`jdiff.accel.auto_fraction` (its probe
calls are reported per sample). ``--dualfast [k=v,...]`` adds the :class:`jdiff.accel.DualFast`
hook (``scale``, ``ramp``, ``reference``, ``space``, ``history``): options not given come from the
solver's measured default (:meth:`DualFast.for_solver`: off for iPNDM and DPM-Solver++(3M), which
the class defaults harm), so resolve it per solver with :meth:`AccelPlan.hooks_for`
(:func:`dualfast_plan` gives the plan's arguments).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from ..grids import CONTINUOUS_GRIDS
from .dualfast import DualFast
from .gaussian import GaussianStats
from .teleport import auto_fraction

DEFAULT_TOL = 0.1  # auto: relative RMS disagreement of model and Gaussian x0 predictions
DEFAULT_PROBE = 16


def parse_teleport(value: str | None):
    """``None``, ``"auto"`` or a fraction in [0, 1) from ``--teleport``."""
    if value is None:
        return None
    if value == "auto":
        return "auto"
    try:
        f = float(value)
    except ValueError:
        raise ValueError(f"--teleport must be a fraction in [0, 1) or 'auto', got {value!r}") from None
    if not (math.isfinite(f) and 0 <= f < 1):
        raise ValueError(f"--teleport must be a fraction in [0, 1) or 'auto', got {value!r}")
    return f


def parse_dualfast(value: str | None) -> DualFast | None:
    """``None`` or a :class:`DualFast` from ``--dualfast`` (``""``: defaults; else ``k=v,...``)."""
    if value is None:
        return None
    kwargs: dict[str, Any] = {}
    fields = {f.name for f in dataclasses.fields(DualFast)}
    for item in filter(None, (v.strip() for v in value.split(","))):
        k, sep, v = item.partition("=")
        if not sep or k not in fields:
            raise ValueError(f"--dualfast takes k=v options among {', '.join(sorted(fields))}, got {item!r}")
        if k == "scale":
            try:
                kwargs[k] = float(v)
            except ValueError:
                raise ValueError(f"--dualfast scale must be a number, got {v!r}") from None
        else:
            kwargs[k] = v
    return DualFast(**kwargs)


def dualfast_plan(value: str | None) -> dict:
    """The :class:`AccelPlan` arguments of ``--dualfast``: ``dualfast`` (:func:`parse_dualfast`)
    and ``dualfast_given`` (the option names given; the others are per solver)."""
    df = parse_dualfast(value)
    if df is None:
        return {"dualfast": None, "dualfast_given": None}
    given = tuple(item.partition("=")[0] for item in filter(None, (v.strip() for v in value.split(","))))
    return {"dualfast": df, "dualfast_given": given}


@dataclasses.dataclass(frozen=True)
class AccelPlan:
    """What to do before and around a solver run (``teleport``: None, a fraction or ``"auto"``)."""

    teleport: Any = None
    tol: float = DEFAULT_TOL
    probe: int = DEFAULT_PROBE
    dualfast: DualFast | None = None
    history: str = "auto"  # multistep history after a teleport (jdiff.accel.sample_teleported)
    # None: ``dualfast`` as given, for every solver; a tuple of option names: only those were given,
    # the others are the solver's default (DualFast.for_solver; see hooks_for)
    dualfast_given: tuple | None = None

    def __post_init__(self):
        if not (self.tol > 0):
            raise ValueError(f"teleport tolerance must be positive, got {self.tol}")
        if self.probe < 1:
            raise ValueError(f"teleport probe size must be at least 1, got {self.probe}")

    @property
    def active(self) -> bool:
        return self.teleport is not None or self.dualfast is not None

    def check_grid(self, grid_name: str) -> None:
        if self.teleport is not None and grid_name not in CONTINUOUS_GRIDS:
            raise ValueError(f"teleportation needs a continuous grid ({', '.join(CONTINUOUS_GRIDS)}), "
                             f"got {grid_name!r}")

    def dualfast_for(self, solver) -> DualFast | None:
        """The DualFast hook for ``solver`` (None: none, or the solver's default is off)."""
        if self.dualfast is None:
            return None
        if self.dualfast_given is None:
            return self.dualfast
        df = DualFast.for_solver(solver, **{k: getattr(self.dualfast, k) for k in self.dualfast_given})
        return None if df.is_identity else df

    def hooks_for(self, solver) -> tuple:
        """The hooks to run with ``solver``: the options given, the rest the solver's default."""
        df = self.dualfast_for(solver)
        return () if df is None else (df,)

    def describe(self, solver=None) -> dict:
        """Record fields; with ``solver``, the DualFast options resolved for it (None: off)."""
        df = self.dualfast if solver is None else self.dualfast_for(solver)
        out = {"teleport": self.teleport, "teleport_tol": self.tol if self.teleport == "auto" else None,
               "teleport_history": self.history if self.teleport is not None else None,
               "dualfast": None if df is None else dataclasses.asdict(df)}
        if self.dualfast is not None and self.dualfast_given is not None:
            out["dualfast_per_solver"] = True
        return out


def resolve_fraction(plan: AccelPlan, model_fn, stats: GaussianStats, schedule, grid_name: str, x_T_max,
                     prediction: str = "eps"):
    """``(fraction, probe_calls, n_probe)`` of ``plan.teleport`` (``auto``: probe the model on the
    first ``plan.probe`` samples of ``x_T_max``, noise at the schedule's ``t_max``)."""
    if plan.teleport != "auto":
        return float(plan.teleport or 0.0), 0, 0
    probe = jnp.asarray(x_T_max)[:plan.probe]
    found = auto_fraction(model_fn, stats, schedule, probe, plan.tol, spacing=grid_name, prediction=prediction)
    return found.fraction, found.calls, found.n_probe


def teleport_grid(schedule, grid_name: str, n_steps: int, final: str, fraction: float):
    """``(grid, k)``: a grid of ``grid_name`` with ``n_steps + k`` steps whose point ``k`` lies at
    most ``fraction`` of the way down in the spacing's coordinate (as close as the integer k
    allows), so that teleporting to ``grid[k]`` leaves ``n_steps`` steps with the spacing of the
    whole grid. (Point k of an N-step grid sits at ``k / (N - 1)`` for ``final="zero"``, at
    ``k / N`` for ``"t_min"``.)"""
    from ..grids import make_grid

    denom = n_steps - 1 if final == "zero" else n_steps
    k = int(math.floor(fraction * denom / (1.0 - fraction) + 1e-9)) if fraction > 0 and denom > 0 else 0
    return make_grid(schedule, grid_name, n_steps + k, final), k


def grid_fraction(grid, k: int, final: str) -> float:
    """How far down point ``k`` of a :func:`teleport_grid` lies in its spacing's coordinate (the
    teleport fraction realised, at most the one asked for)."""
    n = len(grid) - 1
    denom = n - 1 if final == "zero" else n
    return k / denom if denom > 0 else 0.0


def teleported_sample(plan: AccelPlan, model_fn, stats: GaussianStats, schedule, solver, grid_name: str,
                      n_steps: int, final: str, x_T_max, fraction: float, key=None, **sample_kwargs):
    """``(x, grid, info)``: ``solver`` for ``n_steps`` steps after teleporting ``x_T_max`` (noise
    at ``t_max``) over ``fraction`` (:func:`teleport_grid`), with the multistep history from the
    closed form where the solver keeps one (:func:`jdiff.accel.sample_teleported`,
    ``history="auto"``) and the plan's hooks."""
    from .teleport import sample_teleported

    grid, k = teleport_grid(schedule, grid_name, n_steps, final, fraction)
    x, info = sample_teleported(model_fn, schedule, solver, grid, x_T_max, stats, k, key, history=plan.history,
                                hooks=plan.hooks_for(solver), return_info=True, **sample_kwargs)
    return x, grid, info


__all__ = ["AccelPlan", "parse_teleport", "parse_dualfast", "dualfast_plan", "resolve_fraction", "teleport_grid",
           "grid_fraction", "teleported_sample",
           "DEFAULT_TOL", "DEFAULT_PROBE"]
