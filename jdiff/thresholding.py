"""Dynamic thresholding of data predictions (Saharia et al. 2022, Imagen, Sec. 2.3).

Per sample, ``s = quantile(|x0|, ratio)`` over all non-batch axes, clipped to ``[1, max_value]``;
then ``x0 <- clip(x0, -s, s) / s``. Imagen has no upper cap (``max_value = inf``, the default
here); DPM-Solver and diffusers cap ``s`` at ``max_value`` (diffusers' ``sample_max_value``,
default 1.0). With ``max_value = 1`` the threshold is always 1 and this is static clipping to
``[-1, 1]``, whatever ``ratio``. The quantile is ``jnp.quantile`` with ``ratio`` in [0, 1]
(linear interpolation, the semantics of ``torch.quantile``). Two JAX ports got this wrong:
diffusers' Flax DPM-Solver and ``dpm_solver_jax.py`` call ``jnp.percentile(.., 0.995)``, whose
``q`` is in [0, 100], and clip a (B,) threshold against a (B, C, H, W) array.

Use it through ``jdiff.sample(..., correct_x0=dynamic_thresholding(0.995))``: every solver
then sees the thresholded x0 and the matching ``eps = (x - alpha x0) / sigma``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


def dynamic_threshold(x0, ratio: float = 0.995, max_value: float = float("inf")):
    """Threshold a batch ``x0`` of shape (batch, ...) as described in the module docstring."""
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    s = jnp.quantile(flat, ratio, axis=1)
    s = jnp.clip(s, 1.0, max_value).reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
    return jnp.clip(x0, -s, s) / s


@dataclasses.dataclass(frozen=True)
class DynamicThresholding:
    """``correct_x0`` for :func:`jdiff.sample`: ``fn(x0, x, t, alpha, sigma, args) -> x0`` applying
    :func:`dynamic_threshold`. Compares by value: re-creating it does not recompile ``sample``."""

    ratio: float = 0.995
    max_value: float = float("inf")

    def __post_init__(self):
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio is a quantile in [0, 1], got {self.ratio!r}")
        if self.max_value < 1.0:
            raise ValueError(f"max_value must be >= 1, got {self.max_value!r}")

    def __call__(self, x0, x=None, t=None, alpha=None, sigma=None, args=None):  # noqa: ARG002
        return dynamic_threshold(x0, self.ratio, self.max_value)


def dynamic_thresholding(ratio: float = 0.995, max_value: float = float("inf")) -> DynamicThresholding:
    """The ``correct_x0`` of :func:`jdiff.sample` for Imagen's dynamic thresholding (validated)."""
    return DynamicThresholding(float(ratio), float(max_value))
