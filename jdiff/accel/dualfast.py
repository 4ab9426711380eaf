"""DualFast's approximation-error correction, and Self-Guidance as its one-extra-call ablation.

DualFast (Yu, Luo, Wang, Zhao, "DualFast: Dual-Speedup Framework for Fast Sampling of Diffusion
Models", arXiv:2506.13058) leaves the discretisation error to the base solver and corrects the
model's approximation error, which is smaller at higher noise, by extrapolating the current
model output away from an earlier, noisier one that is already cached (no extra model call)::

    m~_i = m_i + c_i (m_i - m_ref),        m = eps or x0 prediction,   m_ref at tau > t_i

then takes the unmodified solver step with ``m~_i`` wherever the solver uses its model output
(and stores it in the solver's history). The paper's exact rule could not be read (no official
code; see ``shared/reference/samplers.md`` section 1), so its details are options:

* ``reference``: ``"previous"`` (tau = t_{i-1}: the previous step's first model output) or
  ``"first"`` (tau = T: the run's first model output). The reference is the *raw* model output
  (before any hook), as in the rule.
* ``space``: mix ``"eps"`` or ``"x0"`` predictions (not equivalent: x_tau != x_t).
* ``ramp``: ``c_i`` as ``"constant"`` (``scale``), ``"step"`` (``scale * i / (N - 1)``, step
  index i of an N-step grid) or ``"time"`` (``scale * (1 - t_i / t_0)``). The first step of a run
  has no reference and is never mixed.
* ``history`` (multistep solvers): ``"mixed"`` (the solver stores the mixed output in its
  history, so its extrapolation over several outputs carries every step's correction) or
  ``"raw"`` (only the newest output is mixed; the history keeps the model's own outputs). No
  effect on one-step solvers.

Measured (``benchmarks/results/accelerators.md``, ``digits_accelerators/``): the default lowers
the error of DDIM, DPM-Solver++(2M) and UniPC at low NFE on learned models and leaves an exact
model's about unchanged; x0-space mixing against the first output diverges.

**Per solver** (:meth:`DualFast.for_solver`, ``SOLVER_DEFAULTS``): the class default is harmful
with iPNDM and DPM-Solver++(3M) (learned mix16d MLP, ``benchmarks/results/dualfast_multistep.md``,
rmse to the exact model's ODE solution at NFE 5 / 6 / 8 / 10 over plain: iPNDM 1.44 / 1.54 / 1.28 /
1.24, 3M 1.44 / 0.90 / 0.96 / 0.90). The rule: keep the default for a solver where it is no worse
than plain at any of those NFE (on half of the samples; the other half confirms), else the best
option set that is, else off (scale 0). Of 20 option sets (scale 0.05-0.4 x time ramp with first /
previous reference and mixed / raw history, constant ramp) none qualifies for these two:

* iPNDM is made worse by every set in every cell, most mildly by the smallest scale (0.05:
  1.03-1.08), and ``history="raw"`` does not help it (so its harm is not history double-counting);
* DPM-Solver++(3M) with ``history="raw"`` gains at NFE 6-10 (scale 0.25: 0.88 / 0.72 / 0.75, where
  the mixed history gives 0.90 / 0.96 / 0.90), but at NFE 5, where plain 3M itself fails (rmse
  3.2 against DDIM's 0.42), every set is worse (best 1.03); and on the exact mixture model (no
  approximation error) the same option raises 3M's error at every NFE (1.26-1.60), so the gain is
  not robust. (iPNDM is harmed on the exact model too: 1.15-1.23 with the class default.)

So both default to off; DDIM, DPM-Solver++(2M) and UniPC-bh2 keep the class default (geometric-mean
ratio 0.82 / 0.91 / 0.93). Solvers not measured get the class default unless their
``solver_order`` or ``max_order`` is 3 or more (DPM-Solver(++) order 3, DEIS-3, LMS, ...): off, as
for the two measured ones (a precaution, not a measurement).

In eps space the data prediction handed to the solver is
``x0~ = x0 - (sigma / alpha) c (eps - eps_ref)`` (the same as ``(x - sigma eps~) / alpha``
without dividing by a small alpha). ``scale`` may be a Python number (static: 0 is the base
solver bit for bit) or an array (traced: new values do not recompile).

Self-Guidance (Li et al., arXiv:2412.05827) has the same algebraic form but calls the network a
second time at the *same* x_t and a higher noise level,
``eps~ = eps(x_t, t) + w (eps(x_t, t) - eps(x_t, t + dt))``: :func:`self_guidance` wraps a model
function that way (2 model calls per evaluation: twice the NFE).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

from ..hooks import Hook
from ..prediction import check_prediction, to_x0_eps

REFERENCES = ("previous", "first")
SPACES = ("eps", "x0")
RAMPS = ("constant", "step", "time")
HISTORIES = ("mixed", "raw")


class DualFastState(NamedTuple):
    ref: jnp.ndarray  # the cached reference output (eps or x0), shape of x
    have: jnp.ndarray  # bool: a reference exists (false before the first step's end)
    step: jnp.ndarray  # int32: index of the step about to run (once a step has run)
    t0: jnp.ndarray  # the grid's first time ("time" ramp)
    last: jnp.ndarray  # N - 1 for an N-step grid ("step" ramp)


@struct.dataclass
class DualFast(Hook):
    """The DualFast correction as a sampler hook: ``jdiff.sample(..., hooks=DualFast(0.5))``.

    Works with every solver (it acts on each model output the solver receives; a solver with
    several calls per step mixes each of them with the same reference). See the module docstring
    for the rule and the options. The class defaults harm iPNDM and DPM-Solver++(3M): use
    :meth:`for_solver` for the measured per-solver default (off for those two).
    """

    # defaults: the lowest mean error over DDIM / DPM-Solver++(2M) / UniPC at NFE 5, 6 and 10 on a
    # learned mix16d MLP, among 48 option sets (benchmarks/results/accelerators.md); per solver:
    # for_solver (benchmarks/results/dualfast_multistep.md)
    scale: Any = 0.25  # a pytree leaf: traced when an array
    ramp: str = struct.field(pytree_node=False, default="time")
    reference: str = struct.field(pytree_node=False, default="first")
    space: str = struct.field(pytree_node=False, default="eps")
    history: str = struct.field(pytree_node=False, default="mixed")

    def __post_init__(self):
        if self.ramp not in RAMPS:
            raise ValueError(f"unknown DualFast ramp {self.ramp!r}; valid: {', '.join(RAMPS)}")
        if self.reference not in REFERENCES:
            raise ValueError(f"unknown DualFast reference {self.reference!r}; valid: {', '.join(REFERENCES)}")
        if self.space not in SPACES:
            raise ValueError(f"unknown DualFast space {self.space!r}; valid: {', '.join(SPACES)}")
        if self.history not in HISTORIES:
            raise ValueError(f"unknown DualFast history {self.history!r}; valid: {', '.join(HISTORIES)}")
        if isinstance(self.scale, (int, float)) and not self.scale >= 0:
            raise ValueError(f"DualFast scale must be >= 0 (an extrapolation away from the noisier "
                             f"output), got {self.scale}")

    @classmethod
    def for_solver(cls, solver, **overrides) -> "DualFast":
        """The per-solver default (module docstring, ``SOLVER_DEFAULTS``) for a solver or its name,
        with ``overrides`` on top (``for_solver("ipndm", scale=0.1)`` forces a scale). "Off" is
        ``scale=0.0``: static, the base solver bit for bit."""
        opts = solver_default(solver)
        return cls(**{**(opts if opts is not None else {"scale": 0.0}), **overrides})

    @property
    def is_identity(self) -> bool:
        return isinstance(self.scale, (int, float)) and self.scale == 0

    def init(self, x_T, grid, args):  # noqa: ARG002
        n = grid.t.shape[0] - 1
        return DualFastState(jnp.zeros_like(x_T), jnp.zeros((), bool), jnp.zeros((), jnp.int32),
                             grid.t[0], jnp.asarray(max(n - 1, 1), grid.t.dtype))

    def coefficient(self, state: DualFastState, t):
        """``c`` at time ``t`` (0 before a reference exists)."""
        scale = jnp.asarray(self.scale, t.dtype)
        if self.ramp == "constant":
            c = scale
        elif self.ramp == "step":
            c = scale * state.step.astype(t.dtype) / state.last
        else:
            c = scale * (1 - t / state.t0)
        return jnp.where(state.have, c, jnp.zeros_like(c))

    def x0(self, x0, x, t, alpha, sigma, args, ctx):  # noqa: ARG002
        if self.is_identity:
            return x0
        st = ctx.state
        c = self.coefficient(st, t).astype(x0.dtype)
        if self.space == "x0":
            return x0 + c * (x0 - st.ref)
        eps = (x - alpha * x0) / sigma
        return x0 - (sigma / alpha) * c * (eps - st.ref)

    def post_step(self, state, outputs, grid, i, args, ctx):  # noqa: ARG002
        st = ctx.state
        raw = ctx.model_outputs[0]  # the step's first model call, at t_i, before any hook
        m = raw.eps if self.space == "eps" else raw.x0
        ref = m if self.reference == "previous" else jnp.where(st.have, st.ref, m)
        if self.history == "raw" and not self.is_identity:
            state = _raw_history(state, outputs[0], raw, i)
        return state, st._replace(ref=ref.astype(st.ref.dtype), have=jnp.ones((), bool),
                                  step=(jnp.asarray(i) + 1).astype(jnp.int32))


# The measured per-solver defaults (module docstring; benchmarks/results/dualfast_multistep.md):
# {} = the class default, None = off (scale 0).
SOLVER_DEFAULTS = {"ddim": {}, "dpmpp_2m": {}, "unipc_bh2": {}, "dpmpp_3m": None, "ipndm": None}


def solver_default(solver) -> dict | None:
    """The DualFast options for ``solver`` (a solver or its name): a dict of field values (empty:
    the class defaults) or None (off). Unmeasured solvers: off when their ``solver_order`` or
    ``max_order`` is 3 or more, else the class default."""
    name = solver if isinstance(solver, str) else solver.name
    if name in SOLVER_DEFAULTS:
        opts = SOLVER_DEFAULTS[name]
        return None if opts is None else dict(opts)
    if isinstance(solver, str):
        from ..solvers import get_solver

        solver = get_solver(solver)
    depth = max(getattr(solver, "solver_order", 1), getattr(solver, "max_order", 1))
    return None if depth >= 3 else {}


def _raw_history(state, used, raw, i):
    """``state`` with the multistep history slot of step ``i`` holding the raw model output
    instead of the mixed one the solver stored (``history="raw"``).

    Every jdiff multistep solver keeps a ring buffer ``state.hist`` whose slot ``i % K`` holds the
    output of step ``i`` in the form it consumes (x0 or eps). The form is found by comparing the
    slot with the step's used output (the solver stored exactly one of them); a slot that matches
    neither (nothing stored this step, e.g. a final step to sigma = 0) is left alone. One-step
    solvers (no ``hist``) are returned unchanged.
    """
    hist = getattr(state, "hist", None)
    if not isinstance(hist, jax.Array) or hist.ndim != used.x0.ndim + 1:
        return state
    from ..solvers.base import ring_read, ring_write

    stored = ring_read(hist, i)
    is_x0 = jnp.all(stored == used.x0.astype(hist.dtype))
    is_eps = jnp.all(stored == used.eps.astype(hist.dtype))
    new = jnp.where(is_x0, raw.x0.astype(hist.dtype), jnp.where(is_eps, raw.eps.astype(hist.dtype), stored))
    return state._replace(hist=ring_write(hist, new, i))


@dataclasses.dataclass(frozen=True)
class _SelfGuided:
    """``model_fn(x, t, args)`` of Self-Guidance (eps prediction); see :func:`self_guidance`."""

    prediction: str
    delta: float

    def __call__(self, model_fn, schedule, scale, x, t, args):
        t_hi = jnp.minimum(t + self.delta, schedule.t_max)
        eps = _eps(model_fn, schedule, self.prediction, x, t, args)
        eps_hi = _eps(model_fn, schedule, self.prediction, x, t_hi, args)
        return eps + scale * (eps - eps_hi)


def _eps(model_fn, schedule, prediction, x, t, args):
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    return to_x0_eps(model_fn(x, t, args), x, alpha, sigma, prediction)[1]


def self_guidance(model_fn, schedule, scale, delta: float = 0.02, prediction: str = "eps"):
    """Self-Guidance: ``eps~ = eps(x, t) + scale (eps(x, t) - eps(x, t + delta))`` (2 model calls).

    Returns an eps-prediction ``model_fn(x, t, args)`` (a ``Partial``: ``scale`` and the wrapped
    model's arrays are traced). ``delta`` is in the schedule's time (``t + delta`` capped at the
    schedule's ``t_max``). Count its NFE as twice the solver's.
    """
    check_prediction(prediction)
    if not delta > 0:
        raise ValueError(f"self_guidance delta must be positive, got {delta}")
    return jax.tree_util.Partial(_SelfGuided(prediction, float(delta)), model_fn, schedule,
                                 jnp.asarray(scale, jnp.float32))


__all__ = ["DualFast", "DualFastState", "self_guidance", "solver_default", "SOLVER_DEFAULTS", "REFERENCES",
           "SPACES", "RAMPS", "HISTORIES"]
