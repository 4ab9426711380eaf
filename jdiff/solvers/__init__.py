"""Samplers. Every solver is a :class:`~jdiff.solvers.base.Solver` usable with :func:`jdiff.sample`.

Canonical names (used by the CLI and :func:`get_solver`): ``ddpm, ddim, euler, euler_ancestral,
heun``.
"""

from __future__ import annotations

from .base import GridCoeffs, Solver, State, grid_coeffs
from .first_order import ddim, ddpm, euler, euler_ancestral
from .heun import heun

SOLVERS = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
}


def get_solver(name: str) -> Solver:
    """Solver by canonical name. Raises ``ValueError`` listing the valid names."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r}; valid: {', '.join(SOLVERS)}")
    return SOLVERS[name]()


def steps_for_nfe(solver: Solver, nfe: int, final_zero: bool = True) -> int:
    """Largest step count whose NFE is at most ``nfe``; ``ValueError`` below the solver's minimum."""
    min_nfe = solver.nfe(solver.min_steps, final_zero)
    if not isinstance(nfe, int) or nfe < min_nfe:
        raise ValueError(f"solver {solver.name!r} needs NFE >= {min_nfe}, got {nfe!r}")
    n = solver.min_steps
    while solver.nfe(n + 1, final_zero) <= nfe:
        n += 1
    return n


__all__ = ["Solver", "State", "GridCoeffs", "grid_coeffs", "SOLVERS", "get_solver", "steps_for_nfe",
           "ddim", "ddpm", "euler", "euler_ancestral", "heun"]
