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

import jax.numpy as jnp


def dynamic_threshold(x0, ratio: float = 0.995, max_value: float = float("inf")):
    """Threshold a batch ``x0`` of shape (batch, ...) as described in the module docstring."""
    flat = jnp.abs(x0.reshape(x0.shape[0], -1))
    s = jnp.quantile(flat, ratio, axis=1)
    s = jnp.clip(s, 1.0, max_value).reshape((-1,) + (1,) * (x0.ndim - 1)).astype(x0.dtype)
    return jnp.clip(x0, -s, s) / s


def dynamic_thresholding(ratio: float = 0.995, max_value: float = float("inf")):
    """The ``correct_x0`` function for :func:`jdiff.sample` (validated arguments)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio is a quantile in [0, 1], got {ratio!r}")
    if max_value < 1.0:
        raise ValueError(f"max_value must be >= 1, got {max_value!r}")

    def correct(x0):
        return dynamic_threshold(x0, ratio, max_value)

    return correct
