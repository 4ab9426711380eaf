"""A DDPM++-style UNet for images (Flax Linen), used through its pure ``apply``.

    cfg = unet_cifar10(num_classes=10)                      # a frozen UNetConfig
    model = UNet(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), 0.0)
    eps = model.apply(params, x, 1000.0 * t, y)             # x: (B, H, W, C) NHWC, t: () or (B,)
    eps = model.apply(params, x, c, y, train=True, rngs={"dropout": key})   # with dropout

``t`` is the raw noise-conditioning value: the network embeds exactly what it is given, so the
loss decides the scale (``1000 * t`` for a VP schedule, EDM's ``c_noise = log(sigma) / 4``, ...).
With ``num_classes = K`` the labels ``y`` are integers in ``[0, K]``: ``K`` is the null (no-label)
class that classifier-free guidance trains with label dropout and samples with; ``y=None`` means
the null class. An unconditional network (``num_classes=None``) rejects ``y``.

Architecture (``L = len(ch_mult)`` levels, ``R = num_res_blocks``; shapes for a (B, H, W, C) input;
``D = 4 * ch`` is the embedding width)::

    emb  = sinusoidal(t, ch) | fourier(t, ch)                        # (ch,) or (B, ch), float32
    temb = Dense_D(SiLU(Dense_D(emb)))                               # (D,) or (B, D), float32
    temb = temb + Embed_{K+1, D}(y)                                  # if num_classes = K
    h = Conv3x3_ch(x); skips = [h]                                   # (B, H, W, ch)
    for level i in 0..L-1 (resolution H / 2^i):
        R x { h = ResBlock(h -> ch * ch_mult[i]); h = Attn(h) if res in attn_resolutions;
              skips.append(h) }
        if i < L - 1: h = Down(h); skips.append(h)                   # (B, H/2^(i+1), ., .)
    h = ResBlock(h); h = Attn(h); h = ResBlock(h)                    # middle, always attention
    for level i in L-1..0:
        (R + 1) x { h = ResBlock(concat[h, skips.pop()] -> ch * ch_mult[i]);
                    h = Attn(h) if res in attn_resolutions }
        if i > 0: h = Up(h)
    out = Conv3x3_{out_channels}(SiLU(GroupNorm(h)))                 # (B, H, W, out_channels)

    ResBlock(x -> c_out):  h = Conv3x3(Resample(SiLU(GroupNorm(x)))) + Dense(SiLU(temb))
                           h = Conv3x3(Dropout(SiLU(GroupNorm(h))))          # zero-initialised
                           skip = Conv1x1(Resample(x)) if c_in != c_out or resampling else x
                           out = (skip + h) / sqrt(2) if skip_rescale else skip + h
    Attn(x):               multi-head self-attention over the H*W positions: qkv = Dense_{3C}(
                           GroupNorm(x)), softmax(q k^T / sqrt(C / heads)) v, Dense_C (zero-
                           initialised), added to x (and divided by sqrt(2) if skip_rescale)
    Down / Up:             ``resample="resblock"`` (DDPM++): a ResBlock whose Resample is 2x2
                           average pooling / 2x nearest upsampling (BigGAN-style); ``"conv"``
                           (DDPM): a stride-2 Conv3x3 / nearest 2x then Conv3x3.
    GroupNorm:             min(32, C // 4) groups, epsilon 1e-6 (as score_sde).

Sources (read, not copied): the DDPM++ / NCSN++ network of Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations" (score_sde ``models/ncsnpp.py``,
``layerspp.py``, config ``ddpmpp``: BigGAN-style resampling blocks, ``skip_rescale``, zero-
initialised (``init_scale=0``) last convolutions, Gaussian-Fourier features); Ho et al. 2020
(DDPM: layout, sinusoidal embedding, ``resample="conv"``); Karras et al. 2022 (EDM
``SongUNet``: attention after every block at an attention resolution); Dhariwal & Nichol 2021
(ADM: the class embedding added to the time embedding; Ho & Salimans 2022 for the null class).
Initialisation: Xavier-uniform weights and zero biases (score_sde ``default_init``), embeddings
N(0, 1).

Precision: ``config.dtype`` is the compute dtype of the convolutions, norms, attention and
dense layers (e.g. ``jnp.bfloat16``); parameters are ``config.param_dtype`` (float32 by default).
The noise embedding and its MLP always run in float32 (``1000 * t`` in bf16 would be rounded to
multiples of 4), group-norm statistics and the attention softmax are computed in float32, and the
output is cast back to ``x.dtype``.

Presets (exact parameter counts, in/out 3 channels for CIFAR-10 and 1 for digits; tested):

* :func:`unet_cifar10`: ch 128, ch_mult (2, 2, 2), 2 blocks, attention at 16x16, dropout 0.1,
  DDPM++ resampling blocks (EDM's DDPM++ CIFAR-10 layout with 2 instead of 4 blocks per level):
  35,652,611 parameters (35,658,243 with ``num_classes=10``, which adds an 11 x 512 label
  embedding). With ``ch_mult=(1, 2, 2, 2), resample="conv", skip_rescale=False`` it is the DDPM
  CIFAR-10 network of Ho et al. (35,746,307 parameters; the paper reports 35.7M).
* :func:`unet_digits`: 8x8x1 images, ch 32, ch_mult (1, 2), 2 blocks, attention at 4x4:
  1,065,889 parameters (1,067,297 with ``num_classes=10``).
* :func:`unet_tiny`: for tests; ch 8, ch_mult (1, 2), 1 block, attention at 4x4.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .mlp import sinusoidal_embedding

_EMBEDDINGS = ("positional", "fourier")
_RESAMPLE = ("resblock", "conv")

_default_init = nn.initializers.xavier_uniform()  # score_sde default_init(1.0): fan_avg uniform
_zero_init = nn.initializers.zeros  # score_sde default_init(0.0) (variance 1e-10): zero


@dataclasses.dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of :class:`UNet` (frozen: hashable and safe to share).

    The defaults are the :func:`unet_cifar10` preset.

    Attributes:
      ch: base channel count; level ``i`` has ``ch * ch_mult[i]`` channels.
      ch_mult: channel multiplier per resolution level (one level per entry; ``len - 1``
        downsamplings, so H and W must be divisible by ``2 ** (len(ch_mult) - 1)``).
      num_res_blocks: residual blocks per level on the way down (``+1`` on the way up).
      attn_resolutions: spatial sizes (height) at which self-attention follows every block.
      dropout: dropout rate inside the residual blocks (active only with ``train=True``).
      num_classes: number of real classes ``K`` (labels ``0..K-1``, null class ``K``); ``None``
        for an unconditional network.
      embedding: ``"positional"`` (sinusoidal, DDPM) or ``"fourier"`` (Gaussian Fourier
        features ``[sin(2 pi t w), cos(2 pi t w)]``, ``w ~ N(0, fourier_scale^2)`` fixed by
        ``fourier_seed``; not a parameter, so no optimiser or weight decay touches it).
      fourier_scale: standard deviation of the Fourier frequencies (score_sde: 16).
      fourier_seed: seed of the Fourier frequencies (a compile-time constant).
      max_period: longest period of the sinusoidal embedding (10000 as DDPM).
      skip_rescale: divide every residual sum by sqrt(2) (DDPM++).
      resample: ``"resblock"`` (DDPM++ / BigGAN resampling residual blocks) or ``"conv"``
        (DDPM stride-2 / nearest+conv layers).
      num_heads: attention heads (DDPM++ uses 1); must divide every attended channel count.
      in_channels: image channels of ``x``.
      out_channels: output channels; ``None`` means ``in_channels``.
      dtype: compute dtype (``jnp.float32`` or ``jnp.bfloat16``).
      param_dtype: parameter dtype (keep float32 for mixed precision).
    """

    ch: int = 128
    ch_mult: Tuple[int, ...] = (2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_classes: Optional[int] = None
    embedding: str = "positional"
    fourier_scale: float = 16.0
    fourier_seed: int = 0
    max_period: float = 10000.0
    skip_rescale: bool = True
    resample: str = "resblock"
    num_heads: int = 1
    in_channels: int = 3
    out_channels: Optional[int] = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        # tuples, so that a config built from lists stays hashable
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if self.ch < 1 or not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"ch and ch_mult must be positive, got {self.ch}, {self.ch_mult}")
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.embedding not in _EMBEDDINGS:
            raise ValueError(f"embedding must be one of {_EMBEDDINGS}, got {self.embedding!r}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {_RESAMPLE}, got {self.resample!r}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"num_classes must be None or >= 1, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.ch % 2:
            raise ValueError(f"ch must be even (it is also the noise-embedding size), got {self.ch}")
        for c in {self.ch * m for m in self.ch_mult}:
            num_groups(c)  # raises if GroupNorm cannot split c
            if c % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} does not divide {c} channels")

    @property
    def out_ch(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def emb_dim(self) -> int:
        return 4 * self.ch


def num_groups(channels: int) -> int:
    """GroupNorm groups for ``channels``: ``min(32, channels // 4)`` (score_sde's rule)."""
    g = min(32, channels // 4)
    if g < 1 or channels % g:
        raise ValueError(f"GroupNorm needs channels divisible by min(32, channels // 4); "
                         f"got {channels}")
    return g


def fourier_embedding(t, dim: int, scale: float = 16.0, seed: int = 0):
    """Gaussian Fourier features ``[sin(2 pi t w_k), cos(2 pi t w_k)]``, ``w ~ N(0, scale^2)``.

    The ``dim // 2`` frequencies are drawn from ``jax.random.key(seed)`` in float32 (a constant
    of the compiled program). Args: ``t`` of any shape ``S``; returns ``S + (dim,)``.
    """
    w = jax.random.normal(jax.random.key(seed), (dim // 2,), jnp.float32) * scale
    args = 2.0 * math.pi * t[..., None].astype(jnp.float32) * w
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def upsample_nearest(x):
    """(B, H, W, C) -> (B, 2H, 2W, C), each pixel repeated 2x2."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


def downsample_avg(x):
    """(B, H, W, C) -> (B, H/2, W/2, C), mean of each 2x2 block."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class _Norm(nn.Module):
    """GroupNorm with score_sde's group rule; statistics in float32 (Flax's reductions)."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, H, W, C) -> same
        return nn.GroupNorm(num_groups=num_groups(x.shape[-1]), epsilon=1e-6, dtype=self.dtype,
                            param_dtype=self.param_dtype, name="gn")(x)


class ResBlock(nn.Module):
    """DDPM++ residual block (BigGAN-style when ``up`` or ``down``); see the module docstring."""

    out_ch: int
    dropout: float = 0.0
    skip_rescale: bool = True
    up: bool = False
    down: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb, train: bool):
        # x: (B, H, W, C_in); temb: (D,) or (B, D) float32
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        c_in = x.shape[-1]
        h = nn.silu(_Norm(**kw, name="norm_0")(x))
        if self.up:
            h, x = upsample_nearest(h), upsample_nearest(x)          # (B, 2H, 2W, .)
        if self.down:
            h, x = downsample_avg(h), downsample_avg(x)              # (B, H/2, W/2, .)
        h = nn.Conv(self.out_ch, (3, 3), padding="SAME", kernel_init=_default_init, **kw,
                    name="conv_0")(h)                                 # (B, H', W', C_out)
        e = nn.Dense(self.out_ch, kernel_init=_default_init, **kw, name="temb_proj")(nn.silu(temb))
        h = h + e.reshape(e.shape[:-1] + (1, 1, self.out_ch))         # (B|1, 1, 1, C_out)
        h = nn.silu(_Norm(**kw, name="norm_1")(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), padding="SAME", kernel_init=_zero_init, **kw,
                    name="conv_1")(h)
        if c_in != self.out_ch or self.up or self.down:
            x = nn.Conv(self.out_ch, (1, 1), kernel_init=_default_init, **kw, name="skip")(x)
        out = x + h
        return out * (1.0 / math.sqrt(2.0)) if self.skip_rescale else out


class AttnBlock(nn.Module):
    """Self-attention over the H*W positions with a residual connection (DDPM++ AttnBlockpp)."""

    num_heads: int = 1
    skip_rescale: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        # x: (B, H, W, C)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, hh, ww, c = x.shape
        n, d = self.num_heads, c // self.num_heads
        qkv = nn.Dense(3 * c, kernel_init=_default_init, **kw, name="qkv")(_Norm(**kw, name="norm")(x))
        qkv = qkv.reshape(b, hh * ww, 3, n, d)                         # (B, T, 3, heads, d)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]             # (B, T, heads, d) each
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        w = jax.nn.softmax(logits * (1.0 / math.sqrt(d)), axis=-1).astype(v.dtype)  # (B, heads, T, T)
        o = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape(b, hh, ww, c)  # (B, H, W, C)
        o = nn.Dense(c, kernel_init=_zero_init, **kw, name="proj_out")(o)
        out = x + o
        return out * (1.0 / math.sqrt(2.0)) if self.skip_rescale else out


class UNet(nn.Module):
    """DDPM++-style UNet ``(x, t, y) -> out`` with ``out.shape[:-1] == x.shape[:-1]``.

    See the module docstring for the architecture, sources and precision rules.

    Call:
      x: (B, H, W, in_channels) floating, NHWC; H and W divisible by 2^(len(ch_mult) - 1).
      t: scalar or (B,) noise-conditioning value (embedded as given; float32).
      y: None or (B,) / scalar integer labels in [0, num_classes] (``num_classes`` = null);
        ``None`` means the null class. Must be ``None`` for an unconditional network.
      train: enables dropout; then pass ``rngs={"dropout": key}`` to ``apply``.
      returns: (B, H, W, out_channels) in ``x.dtype``.
    """

    config: UNetConfig

    @nn.compact
    def __call__(self, x, t, y=None, train: bool = False):
        cfg = self.config
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
            raise ValueError(f"x must have shape (batch, H, W, {cfg.in_channels}), got {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"x must be floating, got {x.dtype}")
        factor = 2 ** (len(cfg.ch_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"H and W must be divisible by {factor}, got {x.shape[1:3]}")
        batch = x.shape[0]
        t = jnp.asarray(t, jnp.float32)
        if not (t.ndim == 0 or t.shape == (batch,)):
            raise ValueError(f"t must be a scalar or of shape ({batch},), got {t.shape}")

        # noise / class embedding, float32: (ch,) -> (D,) for scalar t, (B, ch) -> (B, D) else
        if cfg.embedding == "positional":
            emb = sinusoidal_embedding(t, cfg.ch, cfg.max_period)
        else:
            emb = fourier_embedding(t, cfg.ch, cfg.fourier_scale, cfg.fourier_seed)
        temb = nn.Dense(cfg.emb_dim, kernel_init=_default_init, param_dtype=cfg.param_dtype,
                        name="time_dense_0")(emb)
        temb = nn.Dense(cfg.emb_dim, kernel_init=_default_init, param_dtype=cfg.param_dtype,
                        name="time_dense_1")(nn.silu(temb))
        if cfg.num_classes is not None:
            if y is None:
                y = jnp.full((batch,), cfg.num_classes, jnp.int32)    # the null class
            y = jnp.asarray(y)
            if not jnp.issubdtype(y.dtype, jnp.integer):
                raise ValueError(f"y must be integer class labels, got {y.dtype}")
            if not (y.ndim == 0 or y.shape == (batch,)):
                raise ValueError(f"y must be a scalar or of shape ({batch},), got {y.shape}")
            y = jnp.broadcast_to(y, (batch,))
            temb = temb + nn.Embed(cfg.num_classes + 1, cfg.emb_dim, param_dtype=cfg.param_dtype,
                                   embedding_init=nn.initializers.normal(1.0),
                                   name="label_embed")(y)             # (B, D)
        elif y is not None:
            raise ValueError("y was given but the network is unconditional (num_classes=None)")

        def res(name, c_out, up=False, down=False):
            return ResBlock(c_out, cfg.dropout, cfg.skip_rescale, up, down, **kw, name=name)

        def attn(name):
            return AttnBlock(cfg.num_heads, cfg.skip_rescale, **kw, name=name)

        def down(name, h):
            if cfg.resample == "resblock":
                return res(name, h.shape[-1], down=True)(h, temb, train)
            return nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), padding="SAME",  # pads (0, 1)
                           kernel_init=_default_init, **kw, name=name)(h)

        def up(name, h):
            if cfg.resample == "resblock":
                return res(name, h.shape[-1], up=True)(h, temb, train)
            return nn.Conv(h.shape[-1], (3, 3), padding="SAME", kernel_init=_default_init, **kw,
                           name=name)(upsample_nearest(h))

        levels = len(cfg.ch_mult)
        h = nn.Conv(cfg.ch, (3, 3), padding="SAME", kernel_init=_default_init, **kw,
                    name="conv_in")(x.astype(cfg.dtype))             # (B, H, W, ch)
        skips = [h]
        for i, mult in enumerate(cfg.ch_mult):                        # h: (B, H/2^i, W/2^i, .)
            for j in range(cfg.num_res_blocks):
                h = res(f"down_{i}_{j}", cfg.ch * mult)(h, temb, train)
                if h.shape[1] in cfg.attn_resolutions:
                    h = attn(f"down_{i}_attn_{j}")(h)
                skips.append(h)
            if i < levels - 1:
                h = down(f"down_{i}_resample", h)
                skips.append(h)

        h = res("mid_0", h.shape[-1])(h, temb, train)
        h = attn("mid_attn")(h)
        h = res("mid_1", h.shape[-1])(h, temb, train)

        for i in reversed(range(levels)):
            for j in range(cfg.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)        # (B, ., ., C_h + C_skip)
                h = res(f"up_{i}_{j}", cfg.ch * cfg.ch_mult[i])(h, temb, train)
                if h.shape[1] in cfg.attn_resolutions:
                    h = attn(f"up_{i}_attn_{j}")(h)
            if i > 0:
                h = up(f"up_{i}_resample", h)
        assert not skips

        h = nn.silu(_Norm(**kw, name="norm_out")(h))
        h = nn.Conv(cfg.out_ch, (3, 3), padding="SAME", kernel_init=_zero_init, **kw,
                    name="conv_out")(h)                               # (B, H, W, out_ch)
        return h.astype(x.dtype)


def count_params(params) -> int:
    """Total number of scalars in a parameter pytree (arrays or ``jax.ShapeDtypeStruct``s)."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params)))


def init_shapes(config: UNetConfig, image_size: int, batch: int = 1):
    """Parameter shapes of ``UNet(config)`` for ``image_size``-square inputs, via
    ``jax.eval_shape`` (no FLOPs, no memory): a pytree of ``jax.ShapeDtypeStruct``."""
    model = UNet(config)
    x = jax.ShapeDtypeStruct((batch, image_size, image_size, config.in_channels), jnp.float32)
    return jax.eval_shape(lambda k, x: model.init(k, x, jnp.zeros((batch,))), jax.random.key(0), x)


def unet_cifar10(**overrides) -> UNetConfig:
    """32x32x3: ch 128, ch_mult (2, 2, 2), 2 blocks, attention at 16, dropout 0.1, DDPM++
    resampling blocks, skip rescale. 35,652,611 parameters unconditional."""
    base = dict(ch=128, ch_mult=(2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                dropout=0.1, in_channels=3)
    return UNetConfig(**{**base, **overrides})


def unet_digits(**overrides) -> UNetConfig:
    """8x8x1 (sklearn digits): ch 32, ch_mult (1, 2), 2 blocks, attention at 4x4, dropout 0.1.
    1,065,889 parameters unconditional; a training step at batch 128 is CPU-cheap."""
    base = dict(ch=32, ch_mult=(1, 2), num_res_blocks=2, attn_resolutions=(4,), dropout=0.1,
                in_channels=1)
    return UNetConfig(**{**base, **overrides})


def unet_tiny(**overrides) -> UNetConfig:
    """Test-sized: ch 8, ch_mult (1, 2), 1 block, attention at 4x4 (use 8x8 inputs)."""
    base = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
                in_channels=3)
    return UNetConfig(**{**base, **overrides})


PRESETS = {"cifar10": unet_cifar10, "digits": unet_digits, "tiny": unet_tiny}

__all__ = ["UNet", "UNetConfig", "ResBlock", "AttnBlock", "count_params", "init_shapes",
           "fourier_embedding", "num_groups", "unet_cifar10", "unet_digits", "unet_tiny",
           "PRESETS"]
