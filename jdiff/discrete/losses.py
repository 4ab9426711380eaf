"""Losses of absorbing-state diffusion, ``loss(params, apply_fn, batch, key) -> (scalar, metrics)``.

``apply_fn(params, x_t int32 (B, L), u float32 (B,) in (0, 1]) -> logits float32 (B, L, N)``:
x0 logits; the mask logit is ignored (forced to -inf). ``batch``: an int array (B, L) of clean
tokens, or a dict ``{"tokens": (B, L), "valid": bool (B, L)}`` whose ``valid = False`` positions
(padding) are never noised and are excluded from every term.

**Variational bound** (D3PM eq. 1; DiffusionBERT eq. 3; official code
``diffusion_word_freq.compute_kl_reverse_process``), discrete T::

    -log p(x0) <= sum_{t=1}^T E_q L_t,   L_t = sum_i [x_t^i = M] KL(q(x_{t-1}^i | x_t, x0) || p_theta(x_{t-1}^i | x_t))

The prior term KL(q(x_T | x0) || p(x_T)) is 0 (alpha_bar_1 = 0: x_T is all mask). The t = 1 term
``-log p_theta(x0 | x1)`` is the same KL at s = 0: there ``c_mask = 0`` and q is a point mass at
x0. With ``c = c_mask`` of q and ``c'`` of p_theta (equal unless the spindle's argmax weights
differ from the true ones), per masked token::

    KL = c log(c / c') + (1 - c) log((1 - c) / (1 - c')) - (1 - c) log p_theta(x0^i | x_t)

An unbiased estimate draws t ~ U{1..T}: ``bound = T * L_t`` (per sequence, nats).

**Hybrid loss** (D3PM §3.4, official code ``--hybrid_lambda 1e-2``): ``L_t + coef * CE`` with
``CE = -sum_i log p_theta(x0^i | x_t)`` over the valid tokens (``ce_positions='all'``, as the code)
or the masked ones. As in the code the bound enters as the single-t term ``L_t`` (= bound / T in
expectation), not as ``T * L_t``.

**Continuous-time masked bound** (T -> infinity; MDLM / Shi et al. 2024 form)::

    -log p(x0) <= E_{u ~ U(0,1]} sum_i [x_u^i = M] (-alpha_bar'(u) / (1 - alpha_bar(u))) (-log p_theta(x0^i | x_u))

(linear: weight 1/u). For the spindle the per-token alpha_bar of the true x0 is used; that is the
bound only for a model that knows each token's rate (token-independent schedules: exact).

**t sampling**: one t per example (default; a deviation from the code, which draws one t per
batch: lower variance, same expectation) or ``t_per_batch=True`` (the code).

**Reduction**: ``'token'`` (default): sums over the batch divided by its number of valid tokens;
``'sequence'``: divided by the batch size (the code). ``metrics``: ``loss``, ``bound`` (nats per
valid token), ``bits_per_token``, ``ce`` (per valid token), ``bound_per_seq`` (B,).

:func:`sequence_bound` evaluates every term of the bound (T model calls) for perplexity.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from .absorbing import Absorbing, x0_log_probs

__all__ = ["LOSS_KINDS", "LossSpec", "absorbing_loss", "sequence_bound", "split_batch", "kl_masked"]

LOSS_KINDS = ("vb", "hybrid", "continuous")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Static description of an absorbing loss (hashable, compares by value)."""

    kind: str = "hybrid"
    T: int = 2048  # steps of the discrete process (vb, hybrid); the code's num_steps
    hybrid_coef: float = 1e-2
    ce_positions: str = "all"  # 'all' valid tokens (code) or 'masked'
    t_per_batch: bool = False
    reduction: str = "token"

    def __post_init__(self):
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"unknown discrete loss {self.kind!r}; valid: {', '.join(LOSS_KINDS)}")
        if not (isinstance(self.T, int) and self.T >= 1):
            raise ValueError(f"T must be an integer >= 1, got {self.T!r}")
        if self.ce_positions not in ("all", "masked"):
            raise ValueError(f"ce_positions must be 'all' or 'masked', got {self.ce_positions!r}")
        if self.reduction not in ("token", "sequence"):
            raise ValueError(f"reduction must be 'token' or 'sequence', got {self.reduction!r}")
        if not (math.isfinite(self.hybrid_coef) and self.hybrid_coef >= 0):
            raise ValueError(f"hybrid_coef must be finite and >= 0, got {self.hybrid_coef!r}")


def split_batch(batch):
    """``(tokens int32 (B, L), valid bool (B, L))``."""
    if isinstance(batch, dict):
        x0 = jnp.asarray(batch["tokens"], jnp.int32)
        valid = batch.get("valid")
        valid = jnp.ones(x0.shape, bool) if valid is None else jnp.asarray(valid, bool)
    else:
        x0 = jnp.asarray(batch, jnp.int32)
        valid = jnp.ones(x0.shape, bool)
    return x0, valid


def _xlogy_ratio(a, b):
    """a log(a / b) with 0 log(0 / b) = 0."""
    return jnp.where(a > 0, a * (jnp.log(jnp.where(a > 0, a, 1.0)) - jnp.log(b)), 0.0)


def kl_masked(c_q, c_p, logp0_x0):
    """KL(q || p_theta) at a masked position (module docstring); all (B, L)."""
    return _xlogy_ratio(c_q, c_p) + _xlogy_ratio(1.0 - c_q, 1.0 - c_p) - (1.0 - c_q) * jnp.where(
        c_q < 1.0, logp0_x0, 0.0)


def _draw_u(key, B, T, spec: LossSpec):
    """u_t (B,) and u_s (B,): t ~ U{1..T}, or u ~ U(0, 1] for the continuous loss."""
    n = 1 if spec.t_per_batch else B
    if spec.kind == "continuous":
        u = 1.0 - jax.random.uniform(key, (n,))
        return jnp.broadcast_to(u, (B,)), None
    t = jax.random.randint(key, (n,), 1, T + 1)
    t = jnp.broadcast_to(t, (B,)).astype(jnp.float32)
    return t / T, (t - 1.0) / T


def _vb_terms(params, apply_fn, process: Absorbing, x0, valid, u_t, u_s, key):
    """``(L_t per sequence (B,), -log p_theta(x0^i | x_t) (B, L), masked (B, L))`` at one draw
    ``x_t ~ q(x_t | x0)``; ``u_s = None``: the continuous-time integrand instead of L_t."""
    a_t = process.alpha_bar(u_t, x0, valid)  # (B, L)
    x_t = process.sample_marginal(key, x0, a_t, valid)
    logp0 = x0_log_probs(apply_fn(params, x_t, u_t), process.mask_id)  # (B, L, N)
    lp_x0 = jnp.take_along_axis(logp0, x0[..., None], -1)[..., 0]  # (B, L)
    masked = (x_t == process.mask_id) & valid
    if u_s is None:
        w = process.schedule.weights(x0, valid)
        _, da = jax.jvp(lambda u: process.schedule.alpha_bar(u, w), (u_t,), (jnp.ones_like(u_t),))
        den = 1.0 - a_t
        weight = jnp.where(den > 0, -da / jnp.where(den > 0, den, 1.0), 0.0)
        per_tok = jnp.where(masked, weight * -lp_x0, 0.0)
    else:
        a_s = process.alpha_bar(u_s, x0, valid)
        c_q = process.mask_coefficient(a_s, a_t)
        ps, pt = process.model_alphas(u_s, u_t, x_t, logp0, valid)
        c_p = process.mask_coefficient(ps, pt)
        per_tok = jnp.where(masked, kl_masked(c_q, c_p, lp_x0), 0.0)
    return jnp.sum(per_tok, -1), -lp_x0, masked


def absorbing_loss(process: Absorbing, spec: LossSpec | None = None, **kw):
    """``loss(params, apply_fn, batch, key) -> (scalar, metrics)`` (module docstring)."""
    spec = LossSpec(**kw) if spec is None else dataclasses.replace(spec, **kw)

    def loss(params, apply_fn, batch, key):
        x0, valid = split_batch(batch)  # (B, L)
        B = x0.shape[0]
        k_t, k_x = jax.random.split(key)
        u_t, u_s = _draw_u(k_t, B, spec.T, spec)
        term, nll, masked = _vb_terms(params, apply_fn, process, x0, valid, u_t, u_s, k_x)  # (B,)
        bound_seq = term if spec.kind == "continuous" else spec.T * term
        ce_where = valid if spec.ce_positions == "all" else masked
        ce_seq = jnp.sum(jnp.where(ce_where, nll, 0.0), -1)  # (B,)
        obj = term + spec.hybrid_coef * ce_seq if spec.kind == "hybrid" else bound_seq
        n_tok = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
        denom = n_tok if spec.reduction == "token" else jnp.float32(B)
        value = jnp.sum(obj) / denom
        bound = jnp.sum(bound_seq) / n_tok
        metrics = {"loss": value, "bound": bound, "bits_per_token": bound / math.log(2),
                   "ce": jnp.sum(ce_seq) / n_tok, "bound_per_seq": bound_seq}
        return value, metrics

    loss.spec = spec
    return loss


def sequence_bound(params, apply_fn, process: Absorbing, batch, key, T: int):
    """The variational bound of each sequence (B,) in nats, every term ``t = 1..T`` evaluated
    once (one draw of x_t per t; ``lax.scan``, T model calls): the evaluation behind bound-based
    perplexity. A coarser T is the official code's ``eval_step_size`` (its T / eval_step_size
    terms are this bound with ``T // eval_step_size`` steps). Padding is excluded."""
    x0, valid = split_batch(batch)
    B = x0.shape[0]

    def body(acc, t):
        u_t = jnp.full((B,), t / T, jnp.float32)
        u_s = jnp.full((B,), (t - 1) / T, jnp.float32)
        term, _, _ = _vb_terms(params, apply_fn, process, x0, valid, u_t, u_s, jax.random.fold_in(key, t))
        return acc + term, None

    total, _ = jax.lax.scan(body, jnp.zeros((B,), jnp.float32), jnp.arange(1, T + 1, dtype=jnp.float32))
    return total
