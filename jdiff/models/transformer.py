"""A BERT-style Transformer encoder denoiser for discrete (text) diffusion (Flax Linen).

    cfg = TransformerConfig(vocab_size=N, hidden=768, num_layers=12, num_heads=12,
                            time_mode="agnostic", num_timesteps=2048, cls_id=101)
    model = Transformer(cfg)
    params = init_params(model, jax.random.key(0), seq_len=64)
    apply_fn = make_apply_fn(model, pad_id=0)        # (params, x_t int32[B, L], t f32[B]) -> f32[B, L, N]
    train_fn = make_train_apply_fn(model, pad_id=0)  # (params, x_t, t, key) -> logits, with dropout

``N`` is the vocabulary size including the [MASK] token. ``t`` is continuous time in (0, 1];
``t * num_timesteps`` is the step ``k`` of a discrete chain with ``T = num_timesteps`` steps.

Architecture (BERT, Devlin et al. 2019, as in HuggingFace ``BertForMaskedLM``; post-LN)::

    h = LN(E_tok[x] + E_pos[0..L'-1] + E_type[0])                        # (B, L', H), L' = L + extras
    for each of num_layers layers:
        a = softmax(Q K^T / sqrt(H / heads) + mask_bias) V               # per head; keys masked
        a = LN(h + Dropout(Dense_H(a)))                                  # BertSelfOutput
        a = a + Dense_H(ReLU(Dense_2H(sinusoidal(k - 1; max period T)))) # time_mode == "layerwise"
        h = LN(a + Dropout(Dense_H(GELU(Dense_I(a)))))                   # BertIntermediate/Output
    z = LN(GELU(Dense_H(h)))                                             # MLM head transform
    logits = z @ E_tok^T + b   (tied)   or   z @ W_dec + b   (untied)    # (B, L', N)

GELU is the exact erf form (BERT's ``hidden_act="gelu"``); LayerNorm epsilon 1e-12. Dropout
(embeddings, attention probabilities, both residual branches) is active only with
``train=True``. Initialisation as BERT: N(0, 0.02) weights and embeddings, zero biases.

Sequence framing (``cls_id``): DiffusionBERT feeds ``[CLS] x_t [SEP]`` with attention mask 1 on
[CLS] and 0 on [SEP], and drops the first and last output positions (reference section 1.3). A
key with attention mask 0 is seen by no query, so the trailing [SEP] changes no kept output and is
omitted here; with ``cls_id`` set, [CLS] is prepended and its output dropped. With
``cls_id=None`` (a network trained from scratch) nothing is prepended.

Time designs (``time_mode``; DiffusionBERT section 3.3, reference section 1.4):

* ``"agnostic"`` (TAD): no time input; the network infers t from the number of [MASK] tokens.
* ``"layerwise"`` (LTE): as the official ``models/modeling_bert_new_timestep.py``: a sinusoidal
  embedding (dimension H, max period T) of the 0-based step ``k - 1 = t T - 1`` goes through a
  per-layer MLP Linear(H, 2H)-ReLU-Linear(2H, H) and is added to the self-attention output (after
  its LayerNorm), before the FFN. Continuous t is embedded as is (at t = k / T it is the
  official embedding of step k - 1).
* ``"prefix"`` (PTE): one time token inserted after the [CLS] position (first when ``cls_id`` is
  None); it gets a position embedding like any token, and its output is dropped. The official
  code uses the word-embedding row ``k + 110`` as the time token, which for T > ~900 collides
  with real wordpieces of bert-base-uncased (rows 999+ are real tokens). We never reuse the word
  table: ``prefix_embedding="sinusoidal"`` (default) embeds the step through
  ``Dense_H(sinusoidal(t T - 1; max period T))``, which takes continuous t directly and shares
  parameters between neighbouring steps (a table row is trained only when its step is drawn:
  about 1 / T of the updates); ``prefix_embedding="table"`` is a separate learned table of T
  rows indexed by the discretised step ``ceil(t T) - 1`` (closest to the official per-step rows).

The parameter tree mirrors BERT's module names, so :mod:`jdiff.models.bert_checkpoint` maps a
HuggingFace checkpoint onto it one key at a time.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from .mlp import sinusoidal_embedding

TIME_MODES = ("agnostic", "layerwise", "prefix")
PREFIX_EMBEDDINGS = ("sinusoidal", "table")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyper-parameters of :class:`Transformer` (frozen: hashable, safe to share).

    The defaults are bert-base-uncased (110M parameters) with a layer-agnostic time design.

    Attributes:
      vocab_size: N, number of token ids including [MASK] (and [PAD], [CLS], ...).
      hidden: H, width of the residual stream.
      num_layers: number of Transformer blocks.
      num_heads: attention heads; must divide ``hidden``.
      intermediate: FFN width I.
      max_len: number of learned positions; must be >= L + framing tokens.
      type_vocab_size: rows of BERT's token-type (segment) table; segment 0 is always used.
      dropout: hidden dropout rate (embeddings and residual branches).
      attention_dropout: dropout rate on attention probabilities.
      layer_norm_eps: LayerNorm epsilon (BERT: 1e-12).
      tie_embeddings: decode with the transposed token embedding (BERT) or a separate matrix.
      time_mode: ``"agnostic" | "layerwise" | "prefix"`` (see module docstring).
      num_timesteps: T: t in (0, 1] is step ``t T``; max period of the sinusoidal embeddings.
      prefix_embedding: ``"sinusoidal" | "table"``, the prefix time token's embedding.
      cls_id: id of [CLS] to prepend (output dropped); ``None`` prepends nothing.
      initializer_range: standard deviation of the normal initialisation (BERT: 0.02).
    """

    vocab_size: int = 30522
    hidden: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate: int = 3072
    max_len: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    tie_embeddings: bool = True
    time_mode: str = "agnostic"
    num_timesteps: int = 2048
    prefix_embedding: str = "sinusoidal"
    cls_id: Optional[int] = None
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.time_mode not in TIME_MODES:
            raise ValueError(f"time_mode must be one of {TIME_MODES}, got {self.time_mode!r}")
        if self.prefix_embedding not in PREFIX_EMBEDDINGS:
            raise ValueError(f"prefix_embedding must be one of {PREFIX_EMBEDDINGS}, got "
                             f"{self.prefix_embedding!r}")
        if self.hidden % self.num_heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of num_heads "
                             f"({self.num_heads})")
        for name in ("vocab_size", "hidden", "num_layers", "num_heads", "intermediate", "max_len",
                     "type_vocab_size", "num_timesteps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cls_id is not None and not 0 <= self.cls_id < self.vocab_size:
            raise ValueError(f"cls_id {self.cls_id} is outside the vocabulary [0, {self.vocab_size})")

    @property
    def num_prefix(self) -> int:
        """Positions prepended to x_t (and dropped from the output): [CLS] and/or the time token."""
        return int(self.cls_id is not None) + int(self.time_mode == "prefix")


def tiny_config(vocab_size: int, **overrides) -> TransformerConfig:
    """A 2-layer, hidden-32 configuration for tests and CPU smoke runs."""
    base = dict(vocab_size=vocab_size, hidden=32, num_layers=2, num_heads=2, intermediate=64,
                max_len=64, num_timesteps=64)
    base.update(overrides)
    return TransformerConfig(**base)


def _init(cfg: TransformerConfig):
    return nn.initializers.normal(cfg.initializer_range)


def _dense(cfg, features, name):
    return nn.Dense(features, kernel_init=_init(cfg), name=name)


def _layer_norm(cfg, name):
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, name=name)


def _gelu(x):
    return nn.gelu(x, approximate=False)  # BERT's erf GELU


def time_steps(t, num_timesteps: int):
    """0-based (fractional) step ``t T - 1`` of continuous time t in (0, 1]: shape of ``t``."""
    return jnp.asarray(t, jnp.float32) * num_timesteps - 1.0


def step_index(t, num_timesteps: int):
    """0-based integer step ``ceil(t T) - 1`` in [0, T) of t in (0, 1]: int32, shape of ``t``.

    The 1e-3 tolerance absorbs float32 rounding at grid points: without it, ``t = k / T`` maps
    to step k instead of k - 1 for 575 of the 1000 grid points when T = 1000."""
    t = jnp.asarray(t, jnp.float32)
    k = jnp.ceil(t * num_timesteps - 1e-3) - 1
    return jnp.clip(k, 0, num_timesteps - 1).astype(jnp.int32)


class SelfAttention(nn.Module):
    """Multi-head self-attention with BERT's key padding mask (``BertSelfAttention``)."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, h, mask, train: bool):
        cfg = self.cfg
        b, n, _ = h.shape
        d = cfg.hidden // cfg.num_heads

        def heads(x):  # (B, L, H) -> (B, heads, L, d)
            return x.reshape(b, n, cfg.num_heads, d).transpose(0, 2, 1, 3)

        q = heads(_dense(cfg, cfg.hidden, "query")(h))
        k = heads(_dense(cfg, cfg.hidden, "key")(h))
        v = heads(_dense(cfg, cfg.hidden, "value")(h))
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(d)        # (B, heads, L, L)
        # HF adds (1 - mask) * finfo.min; `where` is the same after softmax and never overflows.
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        probs = nn.Dropout(cfg.attention_dropout)(probs, deterministic=not train)
        out = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
        return out.transpose(0, 2, 1, 3).reshape(b, n, cfg.hidden)         # (B, L, H)


class Block(nn.Module):
    """One post-LN BERT layer (``BertLayer``), with the optional layer-wise time embedding."""

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, h, mask, temb, train: bool):
        cfg = self.cfg
        a = SelfAttention(cfg, name="attention")(h, mask, train)
        a = _dense(cfg, cfg.hidden, "attention_output")(a)
        a = nn.Dropout(cfg.dropout)(a, deterministic=not train)
        a = _layer_norm(cfg, "attention_LayerNorm")(h + a)
        if temb is not None:  # layerwise: (B, H) -> broadcast over positions
            e = nn.relu(_dense(cfg, 2 * cfg.hidden, "time_mlp_0")(temb))
            a = a + _dense(cfg, cfg.hidden, "time_mlp_1")(e)[:, None, :]
        f = _gelu(_dense(cfg, cfg.intermediate, "intermediate")(a))
        f = _dense(cfg, cfg.hidden, "output")(f)
        f = nn.Dropout(cfg.dropout)(f, deterministic=not train)
        return _layer_norm(cfg, "output_LayerNorm")(a + f)


class Transformer(nn.Module):
    """BERT-style denoiser ``(x_t, t, attention_mask) -> logits``.

    Call shapes:
      x: int32 (B, L) token ids in [0, vocab_size).
      t: float (B,) or scalar, continuous time in (0, 1] (ignored for ``time_mode="agnostic"``).
      attention_mask: bool (B, L), True for real tokens (keys with False are not attended);
        ``None`` attends everywhere.
      returns: float32 (B, L, vocab_size) logits of p(x_0 | x_t) (framing positions dropped).
    """

    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x, t=None, attention_mask=None, train: bool = False):
        cfg = self.cfg
        if x.ndim != 2:
            raise ValueError(f"x must have shape (batch, length), got {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"x must be integer token ids, got {x.dtype}")
        b, n = x.shape
        total = n + cfg.num_prefix
        if total > cfg.max_len:
            raise ValueError(f"sequence length {n} + {cfg.num_prefix} framing token(s) exceeds "
                             f"max_len {cfg.max_len}")
        if attention_mask is None:
            attention_mask = jnp.ones((b, n), bool)
        attention_mask = jnp.asarray(attention_mask, bool)
        if attention_mask.shape != (b, n):
            raise ValueError(f"attention_mask must have shape {(b, n)}, got {attention_mask.shape}")
        if cfg.time_mode != "agnostic":
            if t is None:
                raise ValueError(f"time_mode={cfg.time_mode!r} needs t")
            t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
        init = _init(cfg)

        word = nn.Embed(cfg.vocab_size, cfg.hidden, embedding_init=init, name="word_embeddings")
        e = word(x)                                                            # (B, L, H)
        prefix, prefix_mask = [], []
        if cfg.cls_id is not None:
            prefix.append(word(jnp.full((b, 1), cfg.cls_id, jnp.int32)))
            prefix_mask.append(jnp.ones((b, 1), bool))
        if cfg.time_mode == "prefix":
            if cfg.prefix_embedding == "table":
                tok = nn.Embed(cfg.num_timesteps, cfg.hidden, embedding_init=init,
                               name="time_token")(step_index(t, cfg.num_timesteps))  # (B, H)
            else:
                s = sinusoidal_embedding(time_steps(t, cfg.num_timesteps), cfg.hidden,
                                         float(cfg.num_timesteps))
                tok = _dense(cfg, cfg.hidden, "time_token")(s)                # (B, H)
            prefix.append(tok[:, None, :])
            prefix_mask.append(jnp.ones((b, 1), bool))
        if prefix:
            e = jnp.concatenate(prefix + [e], axis=1)                           # (B, L', H)
            attention_mask = jnp.concatenate(prefix_mask + [attention_mask], axis=1)
        pos = nn.Embed(cfg.max_len, cfg.hidden, embedding_init=init, name="position_embeddings")
        typ = nn.Embed(cfg.type_vocab_size, cfg.hidden, embedding_init=init,
                       name="token_type_embeddings")
        h = e + pos(jnp.arange(total))[None] + typ(jnp.zeros((1, 1), jnp.int32))
        h = _layer_norm(cfg, "embeddings_LayerNorm")(h)
        h = nn.Dropout(cfg.dropout)(h, deterministic=not train)

        temb = None
        if cfg.time_mode == "layerwise":
            temb = sinusoidal_embedding(time_steps(t, cfg.num_timesteps), cfg.hidden,
                                        float(cfg.num_timesteps))             # (B, H)
        for i in range(cfg.num_layers):
            h = Block(cfg, name=f"layer_{i}")(h, attention_mask, temb, train)

        h = h[:, cfg.num_prefix:]                                               # (B, L, H)
        z = _gelu(_dense(cfg, cfg.hidden, "head_transform")(h))
        z = _layer_norm(cfg, "head_LayerNorm")(z)
        if cfg.tie_embeddings:
            logits = word.attend(z)
        else:
            logits = nn.Dense(cfg.vocab_size, use_bias=False, kernel_init=init,
                              name="head_decoder")(z)
        bias = self.param("head_bias", nn.initializers.zeros, (cfg.vocab_size,))
        return (logits + bias).astype(jnp.float32)                             # (B, L, N)


def init_params(model: Transformer, key, seq_len: int = 8, batch: int = 1):
    """Parameters of ``model`` (the ``{"params": ...}`` variables dict) for (batch, seq_len) input.

    Compiled as one program (on CPU several times faster than Flax's op-by-op ``init``)."""
    x = jnp.zeros((batch, seq_len), jnp.int32)
    return jax.jit(lambda k: model.init(k, x, jnp.ones((batch,), jnp.float32)))(key)


def _mask(x_t, attention_mask, pad_id):
    if attention_mask is None and pad_id is not None:
        attention_mask = x_t != pad_id
    return attention_mask


@dataclasses.dataclass(frozen=True)
class DenoiserFn:
    """Deterministic ``apply_fn(params, x_t, t, attention_mask=None) -> logits`` (see
    :func:`make_apply_fn`). A frozen dataclass, so it compares and hashes by value: re-creating
    it does not recompile a sampler that takes ``apply_fn`` as a static argument."""

    model: Transformer
    pad_id: Optional[int] = None

    def __call__(self, params, x_t, t, attention_mask=None):
        return self.model.apply(params, x_t, t, _mask(x_t, attention_mask, self.pad_id),
                                train=False)


@dataclasses.dataclass(frozen=True)
class TrainDenoiserFn:
    """``fn(params, x_t, t, key, attention_mask=None) -> logits`` with dropout from ``key``."""

    model: Transformer
    pad_id: Optional[int] = None

    def __call__(self, params, x_t, t, key, attention_mask=None):
        return self.model.apply(params, x_t, t, _mask(x_t, attention_mask, self.pad_id),
                                train=True, rngs={"dropout": key})


def make_apply_fn(model: Transformer, pad_id: Optional[int] = None) -> DenoiserFn:
    """Deterministic denoiser ``apply_fn(params, x_t, t, attention_mask=None) -> logits``.

    ``x_t`` int32 (B, L), ``t`` float32 (B,) in (0, 1], logits float32 (B, L, N). Without an
    explicit ``attention_mask``, positions holding ``pad_id`` are not attended (``pad_id=None``:
    attend everywhere); padding must then stay ``pad_id`` in x_t (never noised), as
    :mod:`jdiff.discrete.losses` does with ``valid = False`` positions. ``params`` is the
    variables dict returned by :func:`init_params`.
    """
    return DenoiserFn(model, pad_id)


def make_train_apply_fn(model: Transformer, pad_id: Optional[int] = None) -> TrainDenoiserFn:
    """Training denoiser ``fn(params, x_t, t, key, attention_mask=None) -> logits`` with dropout
    drawn from ``key``. :func:`bind_dropout` turns it into the 3-argument ``apply_fn``."""
    return TrainDenoiserFn(model, pad_id)


def bind_dropout(train_fn, key):
    """``apply_fn(params, x_t, t)`` using dropout key ``key`` (may be traced, e.g. inside a loss)."""
    return lambda params, x_t, t, attention_mask=None: train_fn(params, x_t, t, key, attention_mask)


__all__ = ["TIME_MODES", "PREFIX_EMBEDDINGS", "TransformerConfig", "Transformer", "Block",
           "SelfAttention", "tiny_config", "init_params", "make_apply_fn",
           "make_train_apply_fn", "bind_dropout", "time_steps", "step_index", "DenoiserFn", "TrainDenoiserFn"]
