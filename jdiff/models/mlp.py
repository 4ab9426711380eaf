"""A small MLP denoiser for low-dimensional data (Flax Linen), used through its pure ``apply``.

    model = MLP(features=512, depth=4, time_embedding_dim=128)
    params = model.init(jax.random.key(0), jnp.zeros((1, dim)), 0.5)
    out = model.apply(params, x, t)                       # x: (batch, dim), t: () or (batch,)
    model_fn = make_model_fn(flax_net(model), params, schedule)  # jdiff.network; params traced

Architecture (``depth`` hidden layers of width ``features``, SiLU activations)::

    temb = SiLU(Dense_features(sinusoidal(time_scale * t)))     # (features,) or (batch, features)
    temb = temb + Embed_{K+1, features}(y)                       # if num_classes = K (class-conditional)
    h    = Dense_features(x) + temb                              # hidden layer 1
    h    = Dense_features(SiLU(h))                               # hidden layers 2 .. depth
    out  = Dense_dim(SiLU(h))                                    # (batch, dim), same dim as x

A scalar ``t`` (what :func:`jdiff.sample` passes) embeds once and broadcasts over the batch, so
the time branch costs O(features * time_embedding_dim), not O(batch * ...). ``time_scale``
(default 1000) maps jdiff's continuous time ``t`` in [0, 1] to the DDPM timestep range, where
the sinusoidal frequencies (``max_period`` 10000, as in DDPM/diffusers) are meaningful.

With ``num_classes = K`` the labels ``y`` are integers in ``[0, K]``, ``K`` being the null class
of classifier-free guidance (``y=None`` means the null class), as in :class:`jdiff.models.UNet`;
an unconditional MLP (``num_classes=None``, the default: same parameters as before) rejects ``y``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp


def sinusoidal_embedding(t, dim: int, max_period: float = 10000.0):
    """``[cos(t f_k), sin(t f_k)]`` with ``f_k = max_period ** (-k / (dim // 2))``.

    Args:
      t: array of any shape ``S`` (float).
      dim: embedding size; an odd ``dim`` gets one trailing zero.

    Returns:
      Array of shape ``S + (dim,)`` in the dtype of ``t``.
    """
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=t.dtype) / half)
    args = t[..., None] * freqs
    emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros(emb.shape[:-1] + (1,), emb.dtype)], axis=-1)
    return emb


class MLP(nn.Module):
    """MLP denoiser ``(x, t) -> out`` with ``out.shape == x.shape``.

    Attributes:
      features: width of every hidden layer.
      depth: number of hidden layers (>= 1).
      time_embedding_dim: size of the sinusoidal time embedding.
      time_scale: ``t`` is multiplied by this before embedding (1000: t in [0, 1] -> timesteps).
      max_period: longest period of the sinusoidal embedding.

    Call shapes:
      x: (batch, dim) floating.
      t: scalar or (batch,); cast to ``x.dtype``.
      returns: (batch, dim) in ``x.dtype`` (parameters are float32).
    """

    features: int = 256
    depth: int = 3
    time_embedding_dim: int = 64
    time_scale: float = 1000.0
    max_period: float = 10000.0
    num_classes: int | None = None

    @nn.compact
    def __call__(self, x, t, y=None):
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        if x.ndim != 2:
            raise ValueError(f"x must have shape (batch, dim), got {x.shape}")
        t = jnp.asarray(t, x.dtype)
        if not (t.ndim == 0 or t.shape == x.shape[:1]):
            raise ValueError(f"t must be a scalar or of shape ({x.shape[0]},), got {t.shape}")
        emb = sinusoidal_embedding(t * self.time_scale, self.time_embedding_dim, self.max_period)
        temb = nn.silu(nn.Dense(self.features, name="time_dense")(emb))
        if self.num_classes is not None:
            if y is None:
                y = jnp.full((x.shape[0],), self.num_classes, jnp.int32)  # the null class
            y = jnp.broadcast_to(jnp.asarray(y), (x.shape[0],))
            if not jnp.issubdtype(y.dtype, jnp.integer):
                raise ValueError(f"y must be integer class labels, got {y.dtype}")
            temb = temb + nn.Embed(self.num_classes + 1, self.features, name="label_embed")(y)
        elif y is not None:
            raise ValueError("y was given but the MLP is unconditional (num_classes=None)")
        h = nn.Dense(self.features, name="dense_in")(x) + temb
        for k in range(1, self.depth):
            h = nn.Dense(self.features, name=f"dense_{k}")(nn.silu(h))
        return nn.Dense(x.shape[-1], name="dense_out")(nn.silu(h)).astype(x.dtype)


__all__ = ["MLP", "sinusoidal_embedding"]
