"""Exact discrete testbed: a mixture of product distributions over short token sequences.

``p(x) = sum_k w_k prod_{i<L} P_k[i, x_i]`` over sequences of length L with V real tokens
(ids 0..V-1); the absorbing process uses N = V + 1 states with ``mask_id = V``. JSON spec
``{"weights": [K], "probs": [K][L][V]}`` (weights and each row of probs non-negative, summing to
1 within 1e-6; they are renormalised).

Exact answers: sampling, ``log p(x)``, the whole distribution over the V^L sequences
(:meth:`MixtureProduct.all_probs`, small V^L) and its entropy, and the **exact denoiser** of the
absorbing process::

    pi_k(x_t)        ∝ w_k prod_{i: x_t^i != M} P_k[i, x_t^i]         (component posterior)
    p(x0^i = v | x_t) = sum_k pi_k(x_t) P_k[i, v]  at masked i;   onehot(x_t^i) elsewhere

For a token-independent schedule (linear, cosine) the masked pattern is independent of x0 given
which positions are masked, so this posterior does not depend on t: :meth:`denoiser` ignores its
time argument. (Under the spindle the masking rate depends on x0 and the exact posterior would
depend on t; this denoiser is then the t-agnostic approximation.)

:func:`exact_bound` computes the denoiser's variational bound exactly (linear/cosine): with
``A_t = alpha_bar(t / T)`` and ``c_t = (1 - A_{t-1}) / (1 - A_t)`` the bound of x0 is::

    sum_t E_{x_t} L_t = sum_{m in {0,1}^L} W(|m|) sum_{i: m_i = 1} -log p(x0^i | x0 with m masked)
    W(k) = sum_{t=1}^T A_t^{L-k} (1 - A_t)^k (1 - c_t)

(enumerating x0 and the 2^L mask patterns), or by Monte Carlo over x0 and m with its standard
error when ``V^L 2^L`` is large.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = ["MixtureProduct", "from_arrays", "load_spec", "get_discrete_testbed", "BUILTIN_DISCRETE",
           "denoiser_apply", "exact_bound", "nll_table", "tv_distance", "sequence_index", "mask_weights"]

BUILTIN_DISCRETE = ("k3l4v5", "k4l5v6")
MAX_ENUM = 2_000_000  # sequences enumerated by all_probs


@struct.dataclass
class MixtureProduct:
    """Mixture of K product distributions over sequences: ``weights`` (K,), ``probs`` (K, L, V)."""

    weights: jnp.ndarray  # (K,) float32
    probs: jnp.ndarray  # (K, L, V) float32
    name: str = struct.field(pytree_node=False, default="custom")

    @property
    def K(self) -> int:
        return self.probs.shape[0]

    @property
    def L(self) -> int:
        return self.probs.shape[1]

    @property
    def V(self) -> int:
        return self.probs.shape[2]

    @property
    def num_states(self) -> int:
        return self.V + 1

    @property
    def mask_id(self) -> int:
        return self.V

    # ---- exact distribution ----------------------------------------------------------------
    def arrays64(self):
        """``(weights (K,), probs (K, L, V))`` in float64, renormalised after the float32 storage."""
        w = np.asarray(self.weights, np.float64)
        P = np.asarray(self.probs, np.float64)
        return w / w.sum(), P / P.sum(-1, keepdims=True)

    def sample(self, key, n: int):
        """(n, L) int32 exact samples (one compiled program per n)."""
        return _sample_mixture(self.weights, self.probs, key, int(n))

    def log_prob(self, x):
        """log p(x) (n,) of sequences x (n, L), float64 NumPy."""
        x = np.asarray(x)
        w, P = self.arrays64()
        with np.errstate(divide="ignore"):
            lp = np.log(P[:, np.arange(self.L)[None, :], x])  # (K, n, L)
            lw = np.log(w)
        comp = lw[:, None] + lp.sum(-1)  # (K, n)
        m = comp.max(0)
        m = np.where(np.isfinite(m), m, 0.0)
        with np.errstate(divide="ignore"):
            return m + np.log(np.exp(comp - m).sum(0))

    def all_sequences(self):
        """Every sequence (V^L, L) in lexicographic order (index = :func:`sequence_index`)."""
        if self.V ** self.L > MAX_ENUM:
            raise ValueError(f"{self.name}: V^L = {self.V ** self.L} sequences are too many to enumerate")
        return np.array(list(itertools.product(range(self.V), repeat=self.L)), np.int64).reshape(-1, self.L)

    def all_probs(self):
        """p over every sequence (V^L,), float64, summing to 1."""
        w, P = self.arrays64()
        out = w.reshape((-1,) + (1,) * self.L)
        full = np.ones((self.K,) + (self.V,) * self.L)
        for i in range(self.L):
            shape = [self.K] + [1] * self.L
            shape[1 + i] = self.V
            full = full * P[:, i, :].reshape(shape)
        return (out * full).sum(0).reshape(-1)

    def entropy(self) -> float:
        """Exact entropy in nats (enumeration)."""
        p = self.all_probs()
        nz = p[p > 0]
        return float(-(nz * np.log(nz)).sum())

    # ---- exact denoiser ----------------------------------------------------------------------
    def denoiser(self, x_t):
        """Exact x0 log-probabilities (B, L, N) from x_t (B, L) (mask id V); see module docstring.
        The mask column is -inf; unmasked positions are a point mass at x_t."""
        V, mask_id = self.V, self.mask_id
        logP = jnp.log(self.probs)  # (K, L, V)
        unm = x_t != mask_id  # (B, L)
        tok = jnp.where(unm, x_t, 0)
        per = jnp.take_along_axis(logP[None], tok[:, None, :, None], -1)[..., 0]  # (B, K, L)
        per = jnp.where(unm[:, None, :], per, 0.0)
        logpi = jnp.log(self.weights)[None] + per.sum(-1)  # (B, K)
        logpi = jax.nn.log_softmax(logpi, -1)
        marg = jax.nn.logsumexp(logpi[:, :, None, None] + logP[None], axis=1)  # (B, L, V)
        point = jnp.where(jax.nn.one_hot(tok, V) > 0, 0.0, -jnp.inf)
        logp = jnp.where(unm[..., None], point, marg)
        return jnp.concatenate([logp, jnp.full(logp.shape[:-1] + (1,), -jnp.inf)], -1)


@functools.partial(jax.jit, static_argnums=3)
def _sample_mixture(weights, probs, key, n):
    kc, kx = jax.random.split(key)
    comp = jax.random.categorical(kc, jnp.log(weights), shape=(n,))  # (n,)
    logits = jnp.log(probs[comp])  # (n, L, V)
    return jax.random.categorical(kx, logits, axis=-1).astype(jnp.int32)


def denoiser_apply(params: MixtureProduct, x_t, u):
    """``apply_fn(params, x_t, u)`` of the exact denoiser (``params`` is the testbed; u unused)."""
    del u
    return params.denoiser(x_t)


_denoise_jit = jax.jit(denoiser_apply)


# ---- construction and specs --------------------------------------------------------------------
def from_arrays(weights, probs, name: str = "custom") -> MixtureProduct:
    """Validated testbed from arrays; ``ValueError`` with one line for a bad spec."""
    try:
        w = np.asarray(weights, np.float64)
        P = np.asarray(probs, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: 'weights' and 'probs' must be numeric arrays") from None
    if w.ndim != 1 or w.size < 1:
        raise ValueError(f"{name}: 'weights' must be a non-empty list, got shape {w.shape}")
    if P.ndim != 3 or P.shape[0] != w.size or P.shape[1] < 1 or P.shape[2] < 2:
        raise ValueError(f"{name}: 'probs' must have shape [K][L][V] with K = {w.size} components, "
                         f"L >= 1 and V >= 2, got {P.shape}")
    for what, a, axis in (("weights", w, None), ("probs", P, -1)):
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ValueError(f"{name}: field '{what}' must be finite and non-negative")
        s = a.sum() if axis is None else a.sum(axis)
        if not np.allclose(s, 1.0, atol=1e-6):
            raise ValueError(f"{name}: field '{what}' must sum to 1"
                             + (" over the vocabulary in every component and position" if axis else ""))
    w = w / w.sum()
    P = P / P.sum(-1, keepdims=True)
    return MixtureProduct(weights=jnp.asarray(w, jnp.float32), probs=jnp.asarray(P, jnp.float32), name=name)


def load_spec(path: str) -> MixtureProduct:
    """Testbed from a JSON spec ``{"weights": [K], "probs": [K][L][V]}``."""
    try:
        with open(path) as f:
            spec = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"testbed spec {path!r} is not valid JSON: {e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"testbed spec {path!r} is not a text file") from None
    if not isinstance(spec, dict) or not {"weights", "probs"} <= set(spec):
        raise ValueError(f"testbed spec {path!r} must be an object with fields 'weights' and 'probs'")
    extra = set(spec) - {"weights", "probs", "name"}
    if extra:
        raise ValueError(f"testbed spec {path!r} has unknown field(s) {', '.join(sorted(extra))}")
    name = os.path.splitext(os.path.basename(path))[0]
    return from_arrays(spec["weights"], spec["probs"], name=str(spec.get("name", name)))


def _builtin(K, L, V, seed, name):
    """Deterministic peaked components (Dirichlet(0.4)) with distinct weights."""
    rng = np.random.RandomState(seed)
    probs = rng.dirichlet(0.4 * np.ones(V), size=(K, L))
    probs = 0.98 * probs + 0.02 / V  # every sequence has positive probability
    w = np.arange(1, K + 1, dtype=np.float64)
    return from_arrays(w / w.sum(), probs, name=name)


def get_discrete_testbed(name: str) -> MixtureProduct:
    """A built-in (``k3l4v5``: K=3, L=4, V=5; ``k4l5v6``: K=4, L=5, V=6) or a ``.json`` spec."""
    if name == "k3l4v5":
        return _builtin(3, 4, 5, 0, name)
    if name == "k4l5v6":
        return _builtin(4, 5, 6, 1, name)
    if name.endswith(".json"):
        return load_spec(name)
    raise ValueError(f"unknown discrete testbed {name!r}; valid: {', '.join(BUILTIN_DISCRETE)} or a "
                     "path to a .json spec")


# ---- exact measures ------------------------------------------------------------------------------
def sequence_index(x, V: int):
    """Lexicographic index (n,) of sequences x (n, L) in :meth:`MixtureProduct.all_sequences`."""
    x = np.asarray(x, np.int64)
    return x @ (V ** np.arange(x.shape[1] - 1, -1, -1, dtype=np.int64))


def tv_distance(samples, probs, V: int) -> float:
    """Total variation between the histogram of ``samples`` (n, L) and ``probs`` (V^L,)."""
    idx = sequence_index(samples, V)
    hist = np.bincount(idx, minlength=probs.size) / idx.size
    return float(0.5 * np.abs(hist - probs).sum())


def mask_weights(schedule, T: int, L: int):
    """W(k), k = 0..L, of the module docstring (float64) for a token-independent schedule."""
    t = np.arange(1, T + 1)
    n = max(1024, 1 << (T).bit_length())  # padded to few lengths: few eager compilations
    u = jnp.asarray(np.minimum(np.arange(n) / T, 1.0), jnp.float32)
    A = np.asarray(schedule.alpha_bar(u, jnp.zeros((n, 1), jnp.float32))[:T + 1, 0], np.float64)  # (T + 1,)
    At, As = A[t], A[t - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(1 - At > 0, (1 - As) / (1 - At), 0.0)
    k = np.arange(L + 1)[:, None]
    return (At[None] ** (L - k) * (1 - At[None]) ** k * (1 - c[None])).sum(-1)  # (L + 1,)


def _nll_masked(tb: MixtureProduct, x0, m):
    """sum over masked i of -log p(x0^i | x0 with mask m) for x0 (n, L), m bool (n, L)."""
    x_t = jnp.where(jnp.asarray(m), tb.mask_id, jnp.asarray(x0, jnp.int32))
    lp = np.asarray(_denoise_jit(tb, x_t, None), np.float64)  # (n, L, N)
    lp_x0 = np.take_along_axis(lp, np.asarray(x0)[..., None], -1)[..., 0]
    return np.where(m, -lp_x0, 0.0).sum(-1)


def nll_table(tb: MixtureProduct, chunk: int = 65536):
    """``(p (n,), nll (n, 2^L), k (2^L,))`` over the sequences of positive probability and every
    mask pattern: ``nll[x0, m] = sum_{i masked} -log p(x0^i | x0 with m masked)``, ``k = |m|``
    (independent of the schedule and T: compute once, pass to :func:`exact_bound`)."""
    L = tb.L
    seqs = tb.all_sequences()
    p = tb.all_probs()
    pats = np.array(list(itertools.product([False, True], repeat=L)), bool)  # (2^L, L)
    keep = np.flatnonzero(p > 0)
    step = max(1, chunk // pats.shape[0])
    out = []
    for i in range(0, keep.size, step):
        xs = seqs[keep[i:i + step]]
        X = np.repeat(xs, pats.shape[0], 0)
        M = np.tile(pats, (xs.shape[0], 1))
        out.append(_nll_masked(tb, X, M).reshape(xs.shape[0], -1))
    return p[keep], np.concatenate(out), pats.sum(-1)


def exact_bound(tb: MixtureProduct, schedule, T: int, n_mc: int = 0, key=None, chunk: int = 65536, table=None):
    """The exact denoiser's variational bound, nats per sequence: ``(value, standard_error)``.

    Enumeration (standard error 0) when ``n_mc = 0`` (``table``: a precomputed
    :func:`nll_table`); else a Monte-Carlo estimate over ``n_mc`` draws of ``x0 ~ p`` and a
    uniform mask pattern, reweighted by ``2^L W(|m|)``."""
    if getattr(schedule, "name", "") == "spindle":
        raise ValueError("exact_bound needs a token-independent schedule (linear or cosine)")
    L = tb.L
    W = mask_weights(schedule, T, L)
    if n_mc == 0:
        p, nll, k = nll_table(tb, chunk) if table is None else table
        return float(p @ (nll @ W[k])), 0.0
    key = jax.random.key(0) if key is None else key
    kx, km = jax.random.split(key)
    vals = []
    for i in range(0, n_mc, chunk):
        n = min(chunk, n_mc - i)
        x0 = np.asarray(tb.sample(jax.random.fold_in(kx, i), n))
        m = np.asarray(jax.random.bernoulli(jax.random.fold_in(km, i), 0.5, (n, L)))
        vals.append(_nll_masked(tb, x0, m) * W[m.sum(-1)] * 2.0 ** L)
    v = np.concatenate(vals)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
