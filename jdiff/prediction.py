"""Prediction types and conversions between them.

With ``x_t = alpha x_0 + sigma eps`` a network may predict

* ``eps``:   the noise, ``eps``;
* ``x0``:    the data, ``x_0`` (a denoiser ``D(x, t)``);
* ``v``:     ``v = alpha eps - sigma x_0`` (Salimans & Ho 2022, "Progressive Distillation",
  Sec. 4 and Appendix D, for VP schedules). The same definition is used for every schedule
  (VE / EDM: ``alpha = 1``, ``v = eps - sigma x_0``); the conversion below inverts it exactly for
  any ``(alpha, sigma)``;
* ``score``: ``grad log p_t(x) = -eps / sigma``.

:func:`to_x0_eps` turns any of them into the pair ``(x0, eps)`` that solvers consume. It never
divides by sigma except for ``x0 -> eps`` (solvers never evaluate a model at sigma = 0).

EDM preconditioning (Karras et al. 2022, Table 1) is in :func:`edm_scalings`; the one place that
applies it to a network is :func:`jdiff.network.apply_parameterized`.
"""

from __future__ import annotations

import jax.numpy as jnp

PREDICTIONS = ("eps", "x0", "v", "score")


def check_prediction(kind: str) -> str:
    if kind not in PREDICTIONS:
        raise ValueError(f"unknown prediction type {kind!r}; valid: {', '.join(PREDICTIONS)}")
    return kind


def to_x0_eps(pred, x, alpha, sigma, kind: str):
    """``(x0, eps)`` from a model output ``pred`` of type ``kind`` at ``x = alpha x0 + sigma eps``.

    For ``v``: ``(x, v)`` is the rotation-and-scaling ``[[alpha, sigma], [-sigma, alpha]]`` of
    ``(x0, eps)``, whose inverse gives

        x0 = (alpha x - sigma v) / (alpha^2 + sigma^2),
        eps = (sigma x + alpha v) / (alpha^2 + sigma^2)

    for any schedule. On VP schedules ``alpha^2 + sigma^2 = 1`` and these are the usual
    ``alpha x - sigma v`` and ``sigma x + alpha v`` (diffusers' ``v_prediction``); on VE / EDM
    (``alpha = 1``) the factor is ``1 / (1 + sigma^2)``, which the VP-only formulas would miss
    (they are wrong by up to a factor ``1 + sigma^2``, e.g. 6400 at sigma = 80).
    """
    pred = pred.astype(x.dtype)
    if kind == "eps":
        return (x - sigma * pred) / alpha, pred
    if kind == "x0":
        return pred, (x - alpha * pred) / sigma
    if kind == "v":
        inv = 1.0 / (alpha * alpha + sigma * sigma)
        return (alpha * x - sigma * pred) * inv, (sigma * x + alpha * pred) * inv
    if kind == "score":
        eps = -sigma * pred
        return (x - sigma * eps) / alpha, eps
    raise ValueError(f"unknown prediction type {kind!r}; valid: {', '.join(PREDICTIONS)}")


def from_x0_eps(x0, eps, alpha, sigma, kind: str):
    """Inverse of :func:`to_x0_eps`: express ``(x0, eps)`` as a prediction of type ``kind``."""
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "v":
        return alpha * eps - sigma * x0
    if kind == "score":
        return -eps / sigma
    raise ValueError(f"unknown prediction type {kind!r}; valid: {', '.join(PREDICTIONS)}")


def edm_scalings(sigma, sigma_data: float = 0.5):
    """EDM preconditioning ``(c_skip, c_out, c_in, c_noise)`` at noise level ``sigma``.

    ``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``,
    ``c_in = 1 / sqrt(s^2 + sd^2)``, ``c_noise = log(s) / 4`` (Karras et al. 2022, Table 1).
    """
    s2 = sigma**2 + sigma_data**2
    return (
        sigma_data**2 / s2,
        sigma * sigma_data / jnp.sqrt(s2),
        1.0 / jnp.sqrt(s2),
        0.25 * jnp.log(sigma),
    )
