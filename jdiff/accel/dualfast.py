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

Measured (``benchmarks/results/accelerators.md``, ``digits_accelerators/``): the default lowers
the error of DDIM, DPM-Solver++(2M) and UniPC at low NFE on learned models and leaves an exact
model's about unchanged, but it is harmful with iPNDM and DPM-Solver++(3M), whose own
extrapolation compounds with it; x0-space mixing against the first output diverges.

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
    for the rule and the options.
    """

    # defaults: the lowest mean error over DDIM / DPM-Solver++(2M) / UniPC at NFE 5, 6 and 10 on a
    # learned mix16d MLP, among 48 option sets (benchmarks/results/accelerators.md)
    scale: Any = 0.25  # a pytree leaf: traced when an array
    ramp: str = struct.field(pytree_node=False, default="time")
    reference: str = struct.field(pytree_node=False, default="first")
    space: str = struct.field(pytree_node=False, default="eps")

    def __post_init__(self):
        if self.ramp not in RAMPS:
            raise ValueError(f"unknown DualFast ramp {self.ramp!r}; valid: {', '.join(RAMPS)}")
        if self.reference not in REFERENCES:
            raise ValueError(f"unknown DualFast reference {self.reference!r}; valid: {', '.join(REFERENCES)}")
        if self.space not in SPACES:
            raise ValueError(f"unknown DualFast space {self.space!r}; valid: {', '.join(SPACES)}")
        if isinstance(self.scale, (int, float)) and not self.scale >= 0:
            raise ValueError(f"DualFast scale must be >= 0 (an extrapolation away from the noisier "
                             f"output), got {self.scale}")

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
        return state, st._replace(ref=ref.astype(st.ref.dtype), have=jnp.ones((), bool),
                                  step=(jnp.asarray(i) + 1).astype(jnp.int32))


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


__all__ = ["DualFast", "DualFastState", "self_guidance", "REFERENCES", "SPACES", "RAMPS"]
