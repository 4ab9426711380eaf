"""Pixel-range conversions and downsampling.

Models see images as ``float32`` in ``[-1, 1]``; files and figures hold ``uint8`` in ``0..255``.
``to_model_range`` maps ``u -> (2u - 255) / 255 = u / 127.5 - 1`` and ``from_model_range`` maps back with clipping and
rounding, so ``from_model_range(to_model_range(u)) == u`` exactly for every ``uint8`` value. Both
accept NumPy arrays (and return NumPy) or JAX arrays (and return JAX, also under ``jit``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .dataset import ImageDataset


def _xp(x):
    """``jax.numpy`` for JAX arrays (including tracers), ``numpy`` otherwise."""
    return jnp if isinstance(x, jax.Array) else np


def to_model_range(images):
    """``uint8`` (or other integer) pixels in ``0..255`` -> ``float32`` in ``[-1, 1]``.

    Raises ``TypeError`` for floating-point input, which is almost always an image that was already
    converted (converting twice would silently squash it to about ``[-1, -0.98]``).
    """
    xp = _xp(images)
    images = xp.asarray(images)
    if not xp.issubdtype(images.dtype, xp.integer):
        raise TypeError(f"to_model_range expects integer pixels in 0..255 (uint8), got dtype {images.dtype}; "
                        "is the input already in model range?")
    # (2u - 255) is exact in float32, so this is one rounding: +-1 exactly at 0 and 255, and NumPy,
    # eager JAX and jit agree bit for bit (a division is not correctly rounded on every backend).
    return (images.astype(xp.float32) * xp.float32(2.0) - xp.float32(255.0)) * xp.float32(1.0 / 255.0)


def from_model_range(x):
    """Model-range values (nominally ``[-1, 1]``) -> ``uint8`` pixels: clip to ``[-1, 1]``, scale, round.

    Rounding is to nearest (ties to even). NaN input has no defined pixel value; check samples
    for finiteness first if that can happen.
    """
    xp = _xp(x)
    x = xp.asarray(x, dtype=xp.float32)
    return xp.round((xp.clip(x, -1.0, 1.0) + 1.0) * xp.float32(127.5)).astype(xp.uint8)


def downsample(images, factor: int):
    """Mean-pool NHWC images (or an :class:`ImageDataset`) by an integer ``factor`` in H and W.

    ``uint8`` input gives ``uint8`` output, the block mean rounded half up with exact integer
    arithmetic; floating-point input gives the plain mean in the same dtype. An ``ImageDataset`` is
    returned as a new data set with its name suffixed, e.g. CIFAR-10 at 16x16 is
    ``downsample(load_cifar10(path), 2)``. H and W must be divisible by ``factor``.
    """
    if isinstance(images, ImageDataset):
        h, w, _ = images.image_shape
        small = downsample(images.images, factor)
        return dataclasses.replace(images, images=small,
                                   name=f"{images.name}@{h // factor}x{w // factor}")
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"downsample: factor must be a positive integer, got {factor!r}")
    factor = int(factor)
    xp = _xp(images)
    images = xp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"downsample: expected NHWC images of shape (N, H, W, C), got shape {images.shape}")
    n, h, w, c = images.shape
    if h % factor or w % factor:
        raise ValueError(f"downsample: H={h} and W={w} must be divisible by factor={factor}")
    if factor == 1:
        return images
    blocks = images.reshape(n, h // factor, factor, w // factor, factor, c)
    if xp.issubdtype(images.dtype, xp.integer):
        if images.dtype != xp.uint8:
            raise ValueError(f"downsample: integer images must be uint8, got {images.dtype}")
        area = factor * factor
        total = blocks.astype(xp.int32).sum(axis=(2, 4))
        return ((total + area // 2) // area).astype(xp.uint8)
    return blocks.mean(axis=(2, 4)).astype(images.dtype)
