"""Absorbing-state (mask) diffusion: schedules, forward marginals and closed-form posteriors.

State space: N token ids, one of which is the mask id ``mask_id`` (a testbed with V real tokens
uses N = V + 1 and ``mask_id = V``). Time is continuous, ``u in [0, 1]``; a discrete process with
T steps uses ``u = t / T`` for the integers ``t = 0 .. T``. Every schedule gives the keep
probability ``alpha_bar(u)`` per token, with ``alpha_bar(0) = 1`` and ``alpha_bar(1) = 0``
exactly (so x_0 is clean and x_T is all-mask).

**Forward marginal** (D3PM absorbing, Austin et al. 2021; DiffusionBERT §3.1)::

    q(x_t^i | x_0^i) = alpha_bar_t^i     if x_t^i = x_0^i
                     = 1 - alpha_bar_t^i  if x_t^i = [M]

**Posterior for any s < t** (the |V| x |V| form ``q(x_s|x_t,x0) ∝ x_t Q_{s->t}^T ⊙ x_0 Qbar_s``
of D3PM eq. 3 / DiffusionBERT eq. 5, in closed form; reference §1.1, [derived])::

    x_t^i != [M]:  x_s^i = x_t^i
    x_t^i == [M]:  P(x_s^i = [M])   = (1 - alpha_bar_s^i) / (1 - alpha_bar_t^i)        =: c_mask
                   P(x_s^i = x_0^i) = (alpha_bar_s^i - alpha_bar_t^i) / (1 - alpha_bar_t^i) = 1 - c_mask

**x0-parameterisation**: ``p_theta(x_s | x_t) = sum_{x0} q(x_s | x_t, x0) p_theta(x0 | x_t)``: the
same with ``onehot(x_0)`` replaced by the predicted x0 distribution (the mask logit forced to
-inf, so the model never predicts a mask as clean data).

**Schedules** (``flax.struct`` pytrees: arrays and lambda are traced, the form is static, so two
equal schedules compare equal and a new lambda does not recompile):

* :func:`linear`: ``alpha_bar = 1 - u`` (D3PM absorbing, ``beta_t = 1 / (T - t + 1)``; the
  official code's "mutual" schedule);
* :func:`cosine`: ``alpha_bar = cos(pi u / 2)``;
* :func:`spindle` (DiffusionBERT §3.2): ``alpha_bar^i = clip(1 - u + lam sin(pi u) w_i, 0,
  max_keep)`` for ``0 < u < 1`` with a per-token weight ``w_i`` from corpus counts, in two forms:

  - ``form='difference'`` (**default**; official code ``diffusion_word_freq.MaskDiffusion.noise_fn``
    + ``word_freq.py``): ``f[v] = log(count[v] + 1) / max log(count + 1)``, ``w_i = f[x0_i] -
    mean_j f[x0_j]`` (mean over the sentence's non-padding tokens). It is the default because it
    is what the released checkpoints were trained with, and ``|w_i| <= 1`` keeps the schedule
    bounded and monotone for ``lam < 1/pi``.
  - ``form='ratio'`` (paper eqs. 10-12): ``H[v] = -log(freq[v])``, ``w_i = mean_j H_j / H_i - 1``
    (= ``-H~(x0_i)``). It is unbounded: a very frequent token has ``H_i -> 0`` and
    ``w_i -> +inf`` (a token with frequency 0.5 next to rare tokens of H = 12 gets w ≈ 16, so
    ``alpha_bar`` saturates at the clip for most of the trajectory and is not monotone in u); a
    token never seen in the corpus has ``H = inf`` (we count it once, so H stays finite). The
    clip keeps ``alpha_bar`` a probability; the posterior's ``c_mask`` is clipped to [0, 1]
    where non-monotonicity would make it leave that range. Measured on the WikiText-2
    validation words (whitespace tokens, 64-token windows, lam = 0.3): ratio-form weights span
    [-0.55, 1.72] against [-0.65, 0.50] for the difference form; ``lam * 1.72 > 1 / pi``, so
    for the most frequent words ("the", ",", "<unk>") ``1 - u + lam sin(pi u) w`` exceeds 1 early
    in the trajectory and 4.9 % of (u, token) pairs sit at the 0.999 clip (difference form: 0 %).

  Frequent (low-information) tokens get ``w > 0`` and are kept longer in both forms. ``lam = 0``
  is the linear schedule. At ``u = 0`` and ``u = 1`` the schedule is exactly 1 and 0 (the code
  clips every step to 0.999, which leaves 0.1 % masks in x_0; we keep its clip for 0 < u < 1 only).

**Spindle at sampling time** x_0 is unknown; as in the official code the weights come from the
argmax of the predicted x0 distribution (here: the argmax at masked positions, the observed token
elsewhere, then centred). **Deviation from the code**: the code's one-step reverse transition
``qt_reverse`` uses the token-independent base beta_t while its marginal uses the per-token
alpha_bar (reference §1.2 pitfall); jdiff derives the posterior from the per-token alpha_bar
throughout (closed form above), for q (with the true x_0's weights) and for p_theta (with the
argmax weights), so the bound in :mod:`jdiff.discrete.losses` is a valid bound on the sampler's
likelihood.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = ["Linear", "Cosine", "Spindle", "linear", "cosine", "spindle", "get_schedule", "SCHEDULES",
           "Absorbing", "x0_log_probs", "predicted_x0"]

SPINDLE_FORMS = ("difference", "ratio")


def _u(u, like):
    """u (B,) or scalar -> broadcastable against ``like`` (B, L)."""
    u = jnp.asarray(u, jnp.float32)
    return u.reshape(u.shape + (1,) * (jnp.ndim(like) - u.ndim)) if jnp.ndim(like) else u


def _ends(u, a):
    """Exactly 1 at u <= 0 and 0 at u >= 1."""
    return jnp.where(u <= 0, 1.0, jnp.where(u >= 1, 0.0, a))


@struct.dataclass
class Linear:
    """``alpha_bar(u) = 1 - u`` (D3PM absorbing; DiffusionBERT ``(T - t + 1)^-1``)."""

    name: str = struct.field(pytree_node=False, default="linear")

    def weights(self, x0, valid=None):
        return jnp.zeros(jnp.shape(x0), jnp.float32)

    def alpha_bar(self, u, w):  # u: (B,) or (), w: (B, L) -> (B, L)
        u = _u(u, w)
        return _ends(u, jnp.clip(1.0 - u, 0.0, 1.0) + 0.0 * w)


@struct.dataclass
class Cosine:
    """``alpha_bar(u) = cos(pi u / 2)``."""

    name: str = struct.field(pytree_node=False, default="cosine")

    def weights(self, x0, valid=None):
        return jnp.zeros(jnp.shape(x0), jnp.float32)

    def alpha_bar(self, u, w):
        u = _u(u, w)
        return _ends(u, jnp.clip(jnp.cos(0.5 * jnp.pi * u), 0.0, 1.0) + 0.0 * w)


@struct.dataclass
class Spindle:
    """Token-information-aware schedule (DiffusionBERT §3.2; see the module docstring).

    ``g`` (N,) is the per-token statistic: the normalised log-frequency ``f`` (difference form) or
    the information ``H = -log freq`` (ratio form); ``g[mask_id]`` is unused."""

    g: jnp.ndarray  # (N,) float32
    lam: jnp.ndarray  # () float32, traced
    max_keep: jnp.ndarray  # () float32, traced (code: 0.999)
    form: str = struct.field(pytree_node=False, default="difference")
    name: str = struct.field(pytree_node=False, default="spindle")

    def weights(self, x0, valid=None):
        """Per-token weights ``w`` (B, L) of a (predicted) clean sequence; 0 at padding."""
        g = self.g[x0]  # (B, L)
        valid = jnp.ones(jnp.shape(x0), bool) if valid is None else valid
        n = jnp.maximum(jnp.sum(valid, -1, keepdims=True), 1)
        mean = jnp.sum(jnp.where(valid, g, 0.0), -1, keepdims=True) / n
        if self.form == "difference":  # official code: f_i - mean_j f_j
            w = g - mean
        else:  # paper eq. 12: -H~ = mean_j H_j / H_i - 1
            w = mean / g - 1.0
        return jnp.where(valid, w, 0.0)

    def alpha_bar(self, u, w):
        u = _u(u, w)
        a = 1.0 - u + self.lam * jnp.sin(jnp.pi * u) * w
        return _ends(u, jnp.clip(a, 0.0, self.max_keep))


SCHEDULES = ("linear", "cosine", "spindle")


def linear() -> Linear:
    return Linear()


def cosine() -> Cosine:
    return Cosine()


def spindle(counts, lam: float = 0.3, form: str = "difference", max_keep: float = 0.999,
            mask_id: int | None = None) -> Spindle:
    """Spindle schedule from token counts ``counts`` (N,) (``word_freq.py``'s counts; the mask's
    entry, if ``mask_id`` is given, is set to 0). ``lam``: the code's ``--word_freq_lambda`` 0.3.

    difference: ``f = log(count + 1) / max log(count + 1)``;
    ratio: ``H = -log(max(count, 1) / sum(count))`` (unseen tokens counted once)."""
    if form not in SPINDLE_FORMS:
        raise ValueError(f"unknown spindle form {form!r}; valid: {', '.join(SPINDLE_FORMS)}")
    c = np.asarray(counts, np.float64).copy()
    if c.ndim != 1 or c.size < 2 or not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("spindle counts must be a 1-D array of finite non-negative numbers")
    if mask_id is not None:
        c[mask_id] = 0.0
    if form == "difference":
        lc = np.log(c + 1.0)
        if lc.max() <= 0:
            raise ValueError("spindle counts are all zero")
        g = lc / lc.max()
    else:
        freq = np.maximum(c, 1.0) / max(c.sum(), 1.0)
        g = np.maximum(-np.log(freq), 1e-6)  # a token with frequency 1 would give H = 0
    return Spindle(g=jnp.asarray(g, jnp.float32), lam=jnp.float32(lam), max_keep=jnp.float32(max_keep),
                   form=form)


def get_schedule(name: str, counts=None, **kw):
    if name == "linear":
        return linear()
    if name == "cosine":
        return cosine()
    if name == "spindle":
        if counts is None:
            raise ValueError("the spindle schedule needs token counts")
        return spindle(counts, **kw)
    raise ValueError(f"unknown discrete schedule {name!r}; valid: {', '.join(SCHEDULES)}")


def x0_log_probs(logits, mask_id: int, forbidden=()):
    """log p_theta(x0 | x_t) (B, L, N) from network logits, the mask's logit forced to -inf, and
    those of the ids in ``forbidden`` (a static tuple: e.g. [PAD], [CLS], [SEP], which never
    occur in clean text) too; the rest renormalised."""
    logits = jnp.asarray(logits, jnp.float32)
    logits = logits.at[..., (mask_id,) + tuple(forbidden)].set(-jnp.inf)
    return jax.nn.log_softmax(logits, axis=-1)


def predicted_x0(x_t, logp0, mask_id: int):
    """The argmax of the predicted x0 at masked positions, the observed token elsewhere (B, L)."""
    return jnp.where(x_t == mask_id, jnp.argmax(logp0, -1).astype(x_t.dtype), x_t)


def _log(x):
    return jnp.log(jnp.maximum(x, 0.0))  # log 0 = -inf, never nan for a rounding-negative value


@struct.dataclass
class Absorbing:
    """The absorbing process: a schedule (pytree), ``num_states`` N and ``mask_id`` (static)."""

    schedule: object
    num_states: int = struct.field(pytree_node=False)
    mask_id: int = struct.field(pytree_node=False)

    # ---- forward ------------------------------------------------------------------------
    def alpha_bar(self, u, x0, valid=None):
        """Keep probabilities (B, L) of a clean sequence x0 (B, L) at time u (B,) or ()."""
        return self.schedule.alpha_bar(u, self.schedule.weights(x0, valid))

    def marginal_probs(self, x0, alpha):
        """q(x_t | x_0) as probabilities (B, L, N): alpha onehot(x0) + (1 - alpha) onehot(mask)."""
        a = alpha[..., None]
        return a * jax.nn.one_hot(x0, self.num_states) + (1 - a) * jax.nn.one_hot(
            jnp.full_like(x0, self.mask_id), self.num_states)

    def sample_marginal(self, key, x0, alpha, valid=None):
        """x_t ~ q(x_t | x_0): keep each token with probability alpha, else mask (padding kept)."""
        keep = jax.random.uniform(key, jnp.shape(x0)) < alpha
        if valid is not None:
            keep = keep | ~valid
        return jnp.where(keep, x0, self.mask_id).astype(jnp.int32)

    # ---- reverse ------------------------------------------------------------------------
    @staticmethod
    def mask_coefficient(alpha_s, alpha_t):
        """c_mask = (1 - alpha_bar_s) / (1 - alpha_bar_t) (any s < t), in [0, 1]; 0 where
        alpha_bar_t = 1 (then nothing is masked at t)."""
        den = 1.0 - alpha_t
        c = (1.0 - alpha_s) / jnp.where(den > 0, den, 1.0)
        return jnp.where(den > 0, jnp.clip(c, 0.0, 1.0), 0.0)

    def posterior_probs(self, x_t, x0, alpha_s, alpha_t):
        """q(x_s | x_t, x_0) (B, L, N), closed form (module docstring)."""
        c = self.mask_coefficient(alpha_s, alpha_t)[..., None]
        oh = lambda v: jax.nn.one_hot(v, self.num_states)  # noqa: E731
        masked = c * oh(jnp.full_like(x_t, self.mask_id)) + (1 - c) * oh(x0)
        return jnp.where((x_t == self.mask_id)[..., None], masked, oh(x_t))

    def posterior_logits(self, x_t, logp0, alpha_s, alpha_t):
        """log p_theta(x_s | x_t) (B, L, N) from log p_theta(x0 | x_t) (mask entry -inf):
        masked positions ``[log(1 - c) + logp0, log c at the mask]``; others a point mass at x_t."""
        c = self.mask_coefficient(alpha_s, alpha_t)
        lp = _log(1.0 - c)[..., None] + logp0
        lp = lp.at[..., self.mask_id].set(_log(c))
        point = jnp.where(jax.nn.one_hot(x_t, self.num_states) > 0, 0.0, -jnp.inf)
        return jnp.where((x_t == self.mask_id)[..., None], lp, point)

    def model_alphas(self, u_s, u_t, x_t, logp0, valid=None):
        """(alpha_bar_s, alpha_bar_t) (B, L) for p_theta: the schedule's weights from
        :func:`predicted_x0` (token-independent schedules ignore them)."""
        w = self.schedule.weights(predicted_x0(x_t, logp0, self.mask_id), valid)
        return self.schedule.alpha_bar(u_s, w), self.schedule.alpha_bar(u_t, w)


def check_process(num_states: int, mask_id: int) -> None:
    if not (isinstance(num_states, int) and num_states >= 2):
        raise ValueError(f"num_states must be an integer >= 2, got {num_states!r}")
    if not (isinstance(mask_id, int) and 0 <= mask_id < num_states):
        raise ValueError(f"mask_id must be in [0, {num_states}), got {mask_id!r}")


def absorbing(schedule, num_states: int, mask_id: int) -> Absorbing:
    """The process over ``num_states`` ids with ``mask_id`` the absorbing state."""
    check_process(num_states, mask_id)
    return Absorbing(schedule=schedule, num_states=num_states, mask_id=mask_id)


def discrete_times(T, steps: int):
    """The sampler's grid ``t_i = floor(T (steps - i) / steps)``, i = 0..steps, as fractions
    ``u_i = t_i / T`` (steps + 1,); ``T=None``: continuous ``u_i = (steps - i) / steps``. Starts at
    1 (all mask), ends at exactly 0; stride T / steps when steps divides T."""
    i = jnp.arange(steps + 1, dtype=jnp.int32)
    if T is None:
        return (steps - i).astype(jnp.float32) / steps
    T = jnp.asarray(T, jnp.int32)
    return ((T * (steps - i)) // steps).astype(jnp.float32) / T.astype(jnp.float32)


__all__ += ["absorbing", "check_process", "discrete_times", "SPINDLE_FORMS"]
