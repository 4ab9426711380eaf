"""Gradient guidance as model-function transforms: a classifier on x_t, an objective on x0.

Both add a scaled gradient to the model's score, ``score~ = score + s grad_x G``, which in the
noise prediction (``eps = -sigma score``) reads

    eps~(x, t) = eps(x, t) - sigma_t s grad_x G(x, t),       x0~ = (x - sigma_t eps~) / alpha_t,

and the transform returns the prediction type of the model it wraps (Dhariwal & Nichol 2021,
"Diffusion Models Beat GANs on Image Synthesis", Sec. 4 and Algorithm 1 in eps form).

* :func:`classifier_guidance`: ``G = log p(c | x_t)``, any differentiable log-probability of the
  noisy sample and the time, labels from ``args``. With the exact classifier at ``s = 1`` the
  guided score is the exact class-conditional score (Bayes' rule).
* :func:`objective_guidance`: ``G = S(preview(x0(x_t)))``, any differentiable per-sample scalar
  of the model's *predicted clean image*; the gradient runs through the model (one forward and
  one backward pass per evaluation). BrainDiVE's update is the default (Luo et al. 2023, "Brain
  Diffusion for Visual Exploration", official code ``brain_guide_pipeline.py::cond_fn``): the
  objective sees the preview with residual noise
  ``z~ = f x0 + (1 - f) x / r`` with ``r = sqrt(alpha^2 + sigma^2)`` and ``f = sigma / r``
  (on VP schedules ``r = 1`` and ``f = sqrt(1 - alpha_bar)``, their ``fac``), and
  ``eps~ = eps - sigma s grad_x S``; ``preview="x0"`` uses ``x0`` itself. The objective is
  applied to the model's unguided prediction, and there is no per-step normalisation: the only
  time dependence is ``sigma``.

``scale`` is a Python number (static: 0 returns the model itself, bit for bit) or an array of
shape () or (batch,) (traced). ``log_prob`` and ``objective`` are compared by identity when they
are plain functions and by value when frozen dataclasses; carry their parameters (a classifier's
or an encoder's weights) as leaves of a ``jax.tree_util.Partial`` so they are traced.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..prediction import check_prediction, from_x0_eps, to_x0_eps
from .common import broadcast_scale, check_scale

PREVIEWS = ("braindive", "x0")


def _per_sample(value, batch: int, what: str):
    if value.shape != (batch,):
        raise ValueError(f"{what} must return one scalar per sample, shape ({batch},), got shape "
                         f"{value.shape}")
    return value


def _guided_output(out, x, alpha, sigma, grad, scale, prediction):
    """The model output ``out`` with ``eps -> eps - sigma * scale * grad``, same type."""
    x0, eps = to_x0_eps(out, x, alpha, sigma, prediction)
    eps = eps - sigma * broadcast_scale(scale, x) * grad.astype(x.dtype)
    x0 = (x - sigma * eps) / alpha
    return from_x0_eps(x0, eps, alpha, sigma, prediction).astype(out.dtype)


@dataclasses.dataclass(frozen=True)
class _ClassifierGuided:
    prediction: str
    static_scale: float | None

    def __call__(self, model_fn, schedule, log_prob, scale, x, t, args=None, *key):
        if self.static_scale == 0.0:
            return model_fn(x, t, args, *key)
        if self.static_scale is not None:
            scale = self.static_scale
        out = model_fn(x, t, args, *key)
        alpha, sigma = schedule.alpha(t).astype(x.dtype), schedule.sigma(t).astype(x.dtype)

        def total(x_):
            return jnp.sum(_per_sample(log_prob(x_, t, args), x.shape[0], "log_prob"))

        grad = jax.grad(total)(x)
        return _guided_output(out, x, alpha, sigma, grad, scale, self.prediction)


def classifier_guidance(model_fn, schedule, log_prob, scale, *, prediction: str = "eps"):
    """``model_fn`` guided by ``scale * grad_x log_prob(x, t, args)`` (module docstring).

    Args:
      model_fn: ``model_fn(x, t, args[, key])`` predicting ``prediction``.
      schedule: the schedule the model was trained with (``alpha(t)``, ``sigma(t)``).
      log_prob: ``log_prob(x, t, args) -> (batch,)`` log p(c | x_t) of the labels in ``args``.
      scale: the guidance scale ``s`` (1: Bayes' rule with an exact classifier).
      prediction: what ``model_fn`` predicts; the result predicts the same.
    """
    check_prediction(prediction)
    if not callable(log_prob):
        raise ValueError(f"log_prob must be callable as log_prob(x, t, args), got {type(log_prob).__name__}")
    static_scale, scale = check_scale(scale, "classifier guidance")
    return jax.tree_util.Partial(_ClassifierGuided(prediction, static_scale), model_fn, schedule,
                                 log_prob, scale)


def preview_image(x0, x, alpha, sigma, preview: str = "braindive"):
    """What the objective sees: ``x0``, or BrainDiVE's ``f x0 + (1 - f) x / r`` (module docstring)."""
    if preview == "x0":
        return x0
    r = jnp.sqrt(alpha * alpha + sigma * sigma)
    f = sigma / r
    return f * x0 + (1.0 - f) * x / r


@dataclasses.dataclass(frozen=True)
class _ObjectiveGuided:
    prediction: str
    static_scale: float | None
    preview: str

    def __call__(self, model_fn, schedule, objective, scale, x, t, args=None, *key):
        if self.static_scale == 0.0:
            return model_fn(x, t, args, *key)
        if self.static_scale is not None:
            scale = self.static_scale
        alpha, sigma = schedule.alpha(t).astype(x.dtype), schedule.sigma(t).astype(x.dtype)

        def score(x_):
            out = model_fn(x_, t, args, *key)
            x0 = to_x0_eps(out, x_, alpha, sigma, self.prediction)[0]
            value = objective(preview_image(x0, x_, alpha, sigma, self.preview), args)
            return jnp.sum(_per_sample(jnp.asarray(value), x.shape[0], "objective")), out

        grad, out = jax.grad(score, has_aux=True)(x)
        return _guided_output(out, x, alpha, sigma, grad, scale, self.prediction)


def objective_guidance(model_fn, schedule, objective, scale, *, prediction: str = "eps",
                       preview: str = "braindive"):
    """``model_fn`` guided to increase ``objective`` of its predicted clean image.

    Args:
      model_fn: ``model_fn(x, t, args[, key])`` predicting ``prediction``.
      schedule: the model's schedule.
      objective: ``objective(images, args) -> (batch,)``, differentiable (e.g. a brain region's
        mean predicted response, :func:`jdiff.guidance.brain.roi_objective`).
      scale: ``s`` (BrainDiVE's ``clip_guidance_scale`` gamma).
      prediction: what ``model_fn`` predicts; the result predicts the same.
      preview: ``"braindive"`` (the preview with residual noise) or ``"x0"``.
    """
    check_prediction(prediction)
    if preview not in PREVIEWS:
        raise ValueError(f"unknown preview {preview!r}; valid: {', '.join(PREVIEWS)}")
    if not callable(objective):
        raise ValueError(f"objective must be callable as objective(images, args), got {type(objective).__name__}")
    static_scale, scale = check_scale(scale, "objective guidance")
    return jax.tree_util.Partial(_ObjectiveGuided(prediction, static_scale, preview), model_fn, schedule,
                                 objective, scale)


__all__ = ["classifier_guidance", "objective_guidance", "preview_image", "PREVIEWS"]
