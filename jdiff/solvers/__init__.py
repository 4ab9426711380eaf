"""Samplers. Every solver is a :class:`~jdiff.solvers.base.Solver` usable with :func:`jdiff.sample`.

Canonical names (used by the CLI and :func:`get_solver`): ``ddpm, ddim, euler, euler_ancestral,
heun``, DPM-Solver (noise form) ``dpm_solver_1/2/3`` (multistep) and ``dpm_solver_1/2/3_single``,
DPM-Solver++ ``dpmpp_2m, dpmpp_2m_heun, dpmpp_3m, dpmpp_2s, dpmpp_2m_sde, dpmpp_3m_sde``, UniPC
``unipc_bh1, unipc_bh2`` (UniC after any one-call predictor: :func:`unic`), DEIS ``deis_1/2/3``,
``ipndm`` and k-diffusion's linear multistep ``lms``.
"""

from __future__ import annotations

from .base import Evaluation, GridCoeffs, MultistepState, Solver, State, grid_coeffs
from .first_order import DDIM, Euler, EulerAncestral, ddim, ddpm, euler, euler_ancestral
from .dpm_solver import (DPMSolverMultistep, dpm_solver, dpm_solver_multistep, dpmpp_2m, dpmpp_2m_heun, dpmpp_2m_sde,
                         dpmpp_3m, dpmpp_3m_sde)
from .dpm_solver_single import DPMpp2S, DPMSolverSinglestep, dpm_solver_singlestep, dpmpp_2s
from .deis_ipndm import DEIS, DEIS_IPNDM_SOLVERS, IPNDM, deis, ipndm
from .heun import Heun, heun
from .lms import LMS, LMS_SOLVERS, lms
from .unipc import UNIPC_SOLVERS, UniC, UniPC, unic, unipc

SOLVERS = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "heun": heun,
    "dpm_solver_1": lambda: dpm_solver(1),
    "dpm_solver_2": lambda: dpm_solver(2),
    "dpm_solver_3": lambda: dpm_solver(3),
    "dpm_solver_1_single": lambda: dpm_solver_singlestep(1, name="dpm_solver_1_single"),
    "dpm_solver_2_single": lambda: dpm_solver_singlestep(2, name="dpm_solver_2_single"),
    "dpm_solver_3_single": lambda: dpm_solver_singlestep(3, name="dpm_solver_3_single"),
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_2m_heun": dpmpp_2m_heun,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_2s": dpmpp_2s,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    **UNIPC_SOLVERS,
    **DEIS_IPNDM_SOLVERS,
    **LMS_SOLVERS,
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


__all__ = ["Solver", "State", "MultistepState", "Evaluation", "GridCoeffs", "DDIM", "Euler",
           "EulerAncestral", "Heun", "DPMSolverMultistep", "DPMSolverSinglestep", "DPMpp2S", "UniPC",
           "UniC", "DEIS", "IPNDM", "LMS", "deis", "ipndm", "grid_coeffs", "SOLVERS", "get_solver", "steps_for_nfe",
           "ddim", "ddpm", "euler", "euler_ancestral", "heun", "dpm_solver", "dpm_solver_multistep",
           "dpm_solver_singlestep", "dpmpp_2m", "dpmpp_2m_heun", "dpmpp_3m", "dpmpp_2s",
           "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc", "unic", "lms"]
