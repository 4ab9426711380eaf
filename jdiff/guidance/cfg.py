"""Classifier-free guidance as a model-function transform.

    guided = classifier_free(model_fn, scale=2.0, null_label=10)
    x = jdiff.sample(guided, schedule, solver, grid, x_T, args={"y": labels}, prediction=...)

Convention (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", Eq. 6): ``w = scale`` and

    m~(x, t) = (1 + w) m(x, t, c) - w m(x, t, null) = m(x, t, c) + w (m(x, t, c) - m(x, t, null)),

so ``w = 0`` is the purely conditional model and ``w = -1`` the unconditional one. diffusers'
``guidance_scale`` is ``1 + w`` (its "no guidance" value 1 is our 0). The weights sum to one, so
the combination is the same whether ``m`` predicts eps, x0, v or the score: it is applied to the
model's own output, and the transform returns the same prediction type.

Options:

* ``interval=(lo, hi)``: guide only where ``lo < sigma / alpha <= hi`` (the EDM noise level;
  Kynkaanniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample and
  Distribution Quality in Diffusion Models"); elsewhere ``w = 0``. Needs ``schedule``.
* ``rescale=phi``: Lin et al. 2024 ("Common Diffusion Noise Schedules and Sample Steps Are
  Flawed", Eq. 15-16, diffusers' ``guidance_rescale``): ``m_r = m~ std(m_c) / std(m~)`` with the
  std over each sample's elements, and ``phi m_r + (1 - phi) m~``.
* ``batched``: evaluate the conditional and unconditional branches in one model call on a batch
  of twice the size (one launch on an accelerator). This needs the labels in ``args`` (a mapping
  with ``"y"`` or an integer array); the leaves of ``args`` whose leading axis is the batch are
  repeated for the second half. Otherwise two calls are made.

Labels come from ``args`` as for :func:`jdiff.network.make_model_fn` models: ``args["y"]`` of a
mapping, or ``args`` itself when it is an integer array. The unconditional branch replaces them by
``null_label`` (the class a network was trained with under label dropout; ``n_classes`` for a
labelled :class:`jdiff.testbeds.GaussianMixture`).

``scale`` may be a Python number (static: at 0 the transform *is* the model, bit for bit) or an
array of shape () or (batch,) (traced: a new value reuses the compiled sampler).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..network import labels_from_args
from .common import broadcast_scale, check_scale, replace_labels


@dataclasses.dataclass(frozen=True)
class _ClassifierFree:
    """The static part of :func:`classifier_free` (compared by value)."""

    null_label: int
    static_scale: float | None  # a Python scale; None: traced (the Partial's ``scale`` leaf)
    interval: tuple | None
    rescale: float
    batched: bool

    def __call__(self, model_fn, schedule, scale, x, t, args=None, *key):
        if self.static_scale is not None:
            if self.static_scale == 0.0:
                return model_fn(x, t, args, *key)
            scale = jnp.asarray(self.static_scale, x.dtype)
        w = broadcast_scale(scale, x)
        if self.interval is not None:
            level = schedule.sigma(t) / schedule.alpha(t)
            lo, hi = self.interval
            w = jnp.where((level > lo) & (level <= hi), w, jnp.zeros_like(w))
        y = labels_from_args(args)
        if self.batched and y is not None:
            cond, uncond = _both_branches(model_fn, x, t, args, y, self.null_label, key)
        else:
            cond = model_fn(x, t, args, *key)
            uncond = model_fn(x, t, replace_labels(args, self.null_label, x.shape[0]), *key)
        guided = cond + w.astype(cond.dtype) * (cond - uncond)
        if self.rescale:
            axes = tuple(range(1, x.ndim))
            ratio = jnp.std(cond, axis=axes, keepdims=True) / jnp.std(guided, axis=axes, keepdims=True)
            guided = self.rescale * guided * ratio + (1.0 - self.rescale) * guided
        return guided


def _both_branches(model_fn, x, t, args, y, null_label, key):
    """Conditional and unconditional outputs from one call on the doubled batch."""
    b = x.shape[0]
    y = jnp.broadcast_to(jnp.asarray(y), (b,))
    y2 = jnp.concatenate([y, jnp.full((b,), null_label, y.dtype)])

    def repeat(leaf):
        leaf = jnp.asarray(leaf)
        return jnp.concatenate([leaf, leaf]) if leaf.ndim and leaf.shape[0] == b else leaf

    if isinstance(args, dict) or hasattr(args, "keys"):
        args2 = {k: (y2 if k == "y" else jax.tree_util.tree_map(repeat, v)) for k, v in args.items()}
    else:  # args is the label array itself
        args2 = y2
    t2 = jnp.concatenate([t, t]) if jnp.ndim(t) else t
    out = model_fn(jnp.concatenate([x, x]), t2, args2, *key)
    return out[:b], out[b:]


def classifier_free(model_fn, scale, *, null_label: int, schedule=None, interval=None,
                    rescale: float = 0.0, batched: bool = True):
    """``model_fn(x, t, args)`` guided by classifier-free guidance (see the module docstring).

    Args:
      model_fn: the class-conditional model ``model_fn(x, t, args[, key])``; labels in ``args``.
      scale: ``w`` (0: conditional, no guidance); a number or an array of shape () or (batch,).
      null_label: the label of the unconditional model.
      schedule: needed for ``interval`` only.
      interval: ``(lo, hi)`` in ``sigma / alpha``: guide only there.
      rescale: ``phi`` in [0, 1] of the guidance rescale (0: off).
      batched: both branches in one model call when ``args`` carries the labels.

    Returns a ``jax.tree_util.Partial`` (the wrapped model's arrays and an array ``scale`` stay
    traced) predicting the same type as ``model_fn``. Its cost is two model evaluations per call.
    """
    static_scale, scale = check_scale(scale, "classifier-free guidance")
    if not isinstance(null_label, (int,)) or isinstance(null_label, bool) or null_label < 0:
        raise ValueError(f"null_label must be a non-negative integer, got {null_label!r}")
    if interval is not None:
        if schedule is None:
            raise ValueError("a guidance interval needs the schedule (schedule=...)")
        try:
            lo, hi = (float(v) for v in interval)
        except (TypeError, ValueError):
            raise ValueError(f"interval must be a pair (lo, hi) of noise levels sigma/alpha, got {interval!r}") from None
        if not (0 <= lo < hi):
            raise ValueError(f"interval needs 0 <= lo < hi, got ({lo}, {hi})")
        interval = (lo, hi)
    rescale = float(rescale)
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"rescale must be in [0, 1], got {rescale}")
    rule = _ClassifierFree(int(null_label), static_scale, interval, rescale, bool(batched))
    return jax.tree_util.Partial(rule, model_fn, schedule, scale)


__all__ = ["classifier_free"]
