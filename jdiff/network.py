"""Bind a raw network to a schedule: what it is fed, what it predicts, and the sampling seam.

A *network* is a pure function ``net_apply(params, x, c_noise, y, train, key) -> out`` (use
:func:`flax_net` to make one from a Flax Linen module). A *parameterization* says how its output
relates to the diffusion ``x_t = alpha_t x_0 + sigma_t eps``:

=================  =====================================================  ==================
parameterization   model output                                           sampling prediction
=================  =====================================================  ==================
``eps``            ``F(x_t, c(t))`` predicts eps                           ``eps``
``x0``             ``F(x_t, c(t))`` predicts x_0                           ``x0``
``v``              ``F(x_t, c(t))`` predicts ``v = alpha eps - sigma x0``  ``v``
``edm``            ``D = c_skip x_hat + c_out F(c_in x_hat, log(s)/4)``    ``x0``
=================  =====================================================  ==================

with ``x_hat = x_t / alpha_t`` and ``s = sigma_t / alpha_t`` (EDM preconditioning, Karras et al.
2022, Table 1, written for any schedule through the scaled variable). The noise conditioning
``c(t)`` fed to the network is ``1000 t`` on VP schedules (DDPM's timestep range, where sinusoidal
embeddings are meaningful) and ``log(sigma) / 4`` on sigma-time (VE/EDM) schedules.

The one seam between training and sampling is :func:`make_model_fn`: it returns the
``model_fn(x, t, args)`` that :func:`jdiff.sample` takes (as a ``jax.tree_util.Partial`` over the
parameters, so new parameters do not recompile the sampler), and the losses call the very same
function, so a model trained with a parameterization is sampled with the matching prediction
type (:func:`sampling_prediction`).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from .prediction import edm_scalings

PARAMETERIZATIONS = ("eps", "x0", "v", "edm")


def check_parameterization(kind: str) -> str:
    if kind not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {kind!r}; valid: {', '.join(PARAMETERIZATIONS)}")
    return kind


def sampling_prediction(parameterization: str) -> str:
    """Prediction type of :func:`make_model_fn`'s output, for ``jdiff.sample(..., prediction=)``."""
    return "x0" if check_parameterization(parameterization) == "edm" else parameterization


def noise_conditioning(schedule, t):
    """Scalar the network is conditioned on: ``1000 t`` (VP) or ``log(sigma) / 4`` (VE/EDM)."""
    t = jnp.asarray(t)
    if getattr(schedule, "kind", "vp") == "sigma":
        return 0.25 * jnp.log(schedule.sigma(t))
    return 1000.0 * t


@dataclasses.dataclass(frozen=True)
class FlaxNet:
    """``net_apply(params, x, c_noise, y=None, train=False, key=None)`` for a Flax Linen module.

    The module is called as ``module.apply(params, x, c_noise[, y=y][, train=train],
    rngs={'dropout': key})``; ``y`` and ``train`` are passed only when its ``__call__`` accepts
    them (the MLP takes neither, the UNet both). A label for a module without ``y`` is an error.
    Instances compare equal when their modules do, so jitted samplers are not recompiled for a
    re-created wrapper.
    """

    module: Any

    def __call__(self, params, x, c_noise, y=None, train=False, key=None):
        call_params = inspect.signature(type(self.module).__call__).parameters
        kwargs: dict[str, Any] = {}
        if y is not None:
            if "y" not in call_params:
                raise ValueError(f"{type(self.module).__name__} is not class-conditional but labels were given")
            kwargs["y"] = y
        if "train" in call_params:
            kwargs["train"] = train
        rngs = {"dropout": key} if (train and key is not None) else {}
        return self.module.apply(params, x, c_noise, rngs=rngs, **kwargs)


def flax_net(module) -> FlaxNet:
    """The network function of a Flax Linen module (see :class:`FlaxNet`)."""
    return FlaxNet(module)


def apply_parameterized(net_apply, params, schedule, parameterization, x, t, y=None, train=False, key=None):
    """Model output (of type :func:`sampling_prediction`) at ``x_t``, time ``t`` (scalar or (B,)).

    The time and the noise conditioning stay in at least float32 when ``x`` is bfloat16 (mixed
    precision): the network sees the same ``c_noise`` in training as in float32 sampling; only
    the image-shaped scalings are cast to ``x.dtype``."""
    t = jnp.asarray(t, jnp.promote_types(x.dtype, jnp.float32))
    if check_parameterization(parameterization) != "edm":
        return net_apply(params, x, noise_conditioning(schedule, t), y, train, key)
    bshape = t.shape + (1,) * (x.ndim - t.ndim)
    alpha = schedule.alpha(t).reshape(bshape).astype(x.dtype)
    s = schedule.sigma_hat(t)
    c_skip, c_out, c_in, c_noise = edm_scalings(s, getattr(schedule, "sigma_data", 0.5))
    c_skip, c_out, c_in = (c.reshape(bshape).astype(x.dtype) for c in (c_skip, c_out, c_in))
    x_hat = x / alpha
    out = net_apply(params, c_in * x_hat, c_noise, y, train, key)
    return c_skip * x_hat + c_out * out.astype(x.dtype)


def labels_from_args(args, default=None):
    """Class labels carried by ``args``: ``args["y"]`` of a mapping that has it, ``args`` itself
    if it is an integer array, else ``default``."""
    if args is None:
        return default
    if isinstance(args, dict) or hasattr(args, "keys"):
        return args["y"] if "y" in args else default
    if hasattr(args, "dtype") and jnp.issubdtype(args.dtype, jnp.integer):
        return args
    return default


@dataclasses.dataclass(frozen=True)
class _ParameterizedModel:
    """Hashable ``(params, schedule, y, x, t, args) -> output``: the static part of a model
    function."""

    net_apply: Callable
    parameterization: str

    def __call__(self, params, schedule, y, x, t, args=None):
        y = labels_from_args(args, y)
        return apply_parameterized(self.net_apply, params, schedule, self.parameterization, x, t, y)


def make_model_fn(net_apply, params, schedule, parameterization: str = "eps", y=None):
    """``model_fn(x, t, args)`` for :func:`jdiff.sample`: a ``Partial`` over ``params``, schedule
    and default labels ``y``.

    Pass ``prediction=sampling_prediction(parameterization)`` to ``sample``. Labels for a
    class-conditional network come from ``args`` (``args={"y": labels}`` or an int array of
    shape (batch,); the null class gives the unconditional model), else from ``y``.
    Parameters, schedule tables and labels are traced leaves, so sampling with new parameters or
    labels reuses the compiled sampler.
    """
    check_parameterization(parameterization)
    return jax.tree_util.Partial(_ParameterizedModel(net_apply, parameterization), params, schedule, y)
