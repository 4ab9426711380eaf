"""Sampler hooks: traced transforms of the data prediction and of the state after each step.

A hook is a frozen dataclass (compared and hashed by its configuration, so re-creating one does
not recompile :func:`jdiff.sample`) or a pytree such as a ``flax.struct`` dataclass whose array
fields are traced. Data that changes per call (a measurement ``y``, an operator's mask) belongs in
``args``, which every hook method receives::

    class Hook:
        def init(self, x_T, grid, args) -> hook_state                       # default: ()
        def x0(self, x0, x, t, alpha, sigma, args, ctx) -> x0               # default: x0
        def post_step(self, state, outputs, grid, i, args, ctx) -> (state, hook_state)

``x0`` maps every data prediction before the solver uses it; the sampler then recomputes
``eps = (x - alpha x0) / sigma`` so both stay consistent (DPM-Solver's ``correcting_x0_fn``,
DDNM's range-null projection, dynamic thresholding). ``ctx`` is a :class:`HookContext`: the
hook's state (read-only here), a PRNG key from the hooks' own stream, and ``model_x0``, the
function ``x -> x0`` of the model at this time before any hook, to differentiate through the
model (``jax.vjp(ctx.model_x0, x)``: DPS and other gradient guidance; XLA removes the unused
first evaluation, so that costs one forward and one backward pass).

``post_step`` sees the solver state after step ``i`` (``grid.t[i] -> grid.t[i + 1]``) and the
step's model outputs (a tuple of :class:`jdiff.solvers.Evaluation`, one per model call, as the
solver used them; ``ctx.model_outputs`` the same before any hook) and returns the state to
continue from and the hook's new state: projections after a step (RePaint, DDNM's time travel),
caches of earlier model outputs (DualFast). The hook state is carried
through the sampling scan; it must keep a fixed shape.

Several hooks compose in order (``hooks=(a, b)``: ``b.x0(a.x0(x0))``, ``a.post_step`` first),
as optax's ``chain`` does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple


class HookContext(NamedTuple):
    """What a hook method sees beyond its arguments (see the module docstring)."""

    state: Any  # the hook's own state
    key: Any  # a key of the hooks' stream, distinct per step (and per model call in ``x0``)
    model_x0: Callable | None = None  # x -> x0 of the model at this time (``x0`` only)
    # ``post_step`` only: the step's model outputs before any hook, one Evaluation(x0, eps) per
    # model call (``outputs`` holds them as the solver used them, after the x0 hooks)
    model_outputs: tuple = ()


@dataclasses.dataclass(frozen=True)
class Hook:
    """Base class of sampler hooks: every method defaults to the identity."""

    def init(self, x_T, grid, args):  # noqa: ARG002
        return ()

    def x0(self, x0, x, t, alpha, sigma, args, ctx: HookContext):  # noqa: ARG002
        return x0

    def post_step(self, state, outputs, grid, i, args, ctx: HookContext):  # noqa: ARG002
        return state, ctx.state


def transforms_x0(hook: Hook) -> bool:
    """Whether ``hook`` overrides :meth:`Hook.x0` (otherwise eps is not recomputed)."""
    return type(hook).x0 is not Hook.x0


def has_post_step(hook: Hook) -> bool:
    return type(hook).post_step is not Hook.post_step


@dataclasses.dataclass(frozen=True)
class CorrectX0(Hook):
    """The hook of a plain ``fn(x0, x, t, alpha, sigma, args) -> x0`` (``sample(correct_x0=fn)``).

    ``fn`` should compare by value (a frozen dataclass such as
    :class:`jdiff.thresholding.DynamicThresholding`, or a module-level function); a new closure
    compiles a new program."""

    fn: Callable = None

    def x0(self, x0, x, t, alpha, sigma, args, ctx):  # noqa: ARG002
        return self.fn(x0, x, t, alpha, sigma, args)


def as_hooks(correct_x0=None, hooks=()) -> tuple:
    """The tuple of hooks ``sample`` runs: ``correct_x0`` first, then ``hooks`` in order."""
    if isinstance(hooks, Hook):
        hooks = (hooks,)
    hooks = tuple(hooks)
    for h in hooks:
        if not isinstance(h, Hook):
            raise ValueError(f"hooks must be jdiff.hooks.Hook instances, got {type(h).__name__}")
    if correct_x0 is not None:
        if not callable(correct_x0):
            raise ValueError(f"correct_x0 must be callable, got {type(correct_x0).__name__}")
        hooks = (correct_x0 if isinstance(correct_x0, Hook) else CorrectX0(correct_x0),) + hooks
    return hooks


__all__ = ["Hook", "HookContext", "CorrectX0", "as_hooks", "transforms_x0", "has_post_step"]
