"""Helpers shared by the guidance transforms: scales, labels in ``args``, checks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def check_scale(scale, what: str):
    """``(static_scale, traced_scale)``: a Python number stays static (``(float, None)``), an
    array is traced (``(None, array)``). ``ValueError`` for a non-finite concrete value or an
    array that is not a scalar or a vector of per-sample scales."""
    if isinstance(scale, bool):
        raise ValueError(f"{what}: scale must be a number or an array, got {scale!r}")
    if isinstance(scale, (int, float, np.integer, np.floating)):
        if not math.isfinite(float(scale)):
            raise ValueError(f"{what}: scale must be finite, got {scale}")
        return float(scale), None
    try:
        arr = jnp.asarray(scale)
    except TypeError:
        raise ValueError(f"{what}: scale must be a number or an array, got {type(scale).__name__}") from None
    if arr.ndim > 1 or not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise ValueError(f"{what}: scale must be a scalar or a (batch,) vector of numbers, "
                         f"got shape {arr.shape} {arr.dtype}")
    if not isinstance(arr, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(arr))):
        raise ValueError(f"{what}: scale must be finite, got {np.asarray(arr)}")
    return None, arr.astype(jnp.promote_types(arr.dtype, jnp.float32))


def broadcast_scale(scale, x):
    """``scale`` of shape () or (batch,) shaped to broadcast against ``x`` (batch, ...)."""
    scale = jnp.asarray(scale, x.dtype)
    if scale.ndim == 1:
        if scale.shape[0] != x.shape[0]:
            raise ValueError(f"per-sample guidance scales have shape {scale.shape}, the batch is {x.shape[0]}")
        return scale.reshape((-1,) + (1,) * (x.ndim - 1))
    return scale


def replace_labels(args, label, batch: int):
    """``args`` with its labels replaced by ``label`` for every sample (added when absent)."""
    y = jnp.full((batch,), label, jnp.int32)
    if args is None:
        return {"y": y}
    if isinstance(args, dict) or hasattr(args, "keys"):
        new = dict(args)
        new["y"] = y.astype(jnp.asarray(args["y"]).dtype) if "y" in args else y
        return new
    if hasattr(args, "dtype") and jnp.issubdtype(args.dtype, jnp.integer):
        return y.astype(args.dtype)
    raise ValueError("classifier-free guidance needs the labels in args: a mapping with 'y' or an "
                     f"integer array, got {type(args).__name__}")


def check_labels(y, n_classes: int, *, allow_null: bool = True, batch: int | None = None) -> np.ndarray:
    """Concrete labels as an int32 NumPy array, or ``ValueError`` naming the bad value.

    Valid labels are ``0 .. n_classes - 1``, plus the null class ``n_classes`` with
    ``allow_null``. ``batch``: the labels must be a scalar or of shape (batch,)."""
    arr = np.asarray(y)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"class labels must be integers, got dtype {arr.dtype}")
    if batch is not None and not (arr.ndim == 0 or arr.shape == (batch,)):
        raise ValueError(f"class labels must be a scalar or of shape ({batch},), got {arr.shape}")
    top = n_classes if allow_null else n_classes - 1
    bad = (arr < 0) | (arr > top)
    if np.any(bad):
        first = int(arr.reshape(-1)[np.argmax(bad.reshape(-1))])
        valid = f"0..{n_classes - 1}" + (f" or the null class {n_classes}" if allow_null else "")
        raise ValueError(f"class label {first} is out of range: valid labels are {valid}")
    return arr.astype(np.int32)


__all__ = ["check_scale", "broadcast_scale", "replace_labels", "check_labels"]
