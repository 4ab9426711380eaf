"""Gaussian-mixture data with an exact model function at every noise level.

Data ``x_0 ~ sum_k w_k N(mu_k, Sigma_k)`` with ``Sigma_k = U_k diag(lam_k) U_k^T``. Under the
forward process ``x_t = alpha x_0 + sigma eps`` each component diffuses to
``N(alpha mu_k, U_k diag(alpha^2 lam_k + sigma^2) U_k^T)``, so with ``s_k = alpha^2 lam_k + sigma^2``
and rotated centred coordinates ``y_k = U_k^T (x - alpha mu_k)``:

* responsibilities ``r_k(x) = softmax_k(log w_k - 1/2 sum_d log s_kd - 1/2 sum_d y_kd^2 / s_kd)``
  (log-sum-exp, never a ratio of densities),
* ``eps(x) = sigma sum_k r_k U_k (y_k / s_k)``   (= -sigma * score; no division by sigma),
* ``x0(x)  = sum_k r_k (mu_k + U_k (alpha lam_k / s_k) y_k)``   (the exact posterior mean).

Both are finite at sigma = 0 as long as every ``lam_kd > 0``.

**Labelled mixtures** (guidance testbeds): components may carry class labels ``c_k`` in
``0 .. C-1``. The class-conditional data distribution is the mixture of the components of that
class, so its exact model is the same formula with the responsibilities restricted to them
(``r_k(x | c) = softmax over {k : c_k = c}``), and the exact classifier of the noisy sample is
``log p(c | x_t) = logsumexp_{k: c_k = c} l_k(x) - logsumexp_k l_k(x)`` with the per-component
log-densities ``l_k`` above. The model function reads the labels from ``args`` (``args["y"]`` or
an integer ``args``, per sample); the null class ``C`` gives the unconditional mixture, so the
same model function serves classifier-free guidance.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..prediction import check_prediction


@struct.dataclass
class GaussianMixture:
    """A Gaussian mixture; ``rot is None`` means diagonal covariances (``U_k = I``)."""

    log_weights: jnp.ndarray  # (K,)
    means: jnp.ndarray  # (K, D)
    eigvals: jnp.ndarray  # (K, D), > 0
    rot: jnp.ndarray | None  # (K, D, D) orthogonal U_k, columns are eigenvectors; or None
    name: str = struct.field(pytree_node=False, default="mixture")
    labels: jnp.ndarray | None = None  # (K,) int32 class of each component, or None (unlabelled)
    n_classes: int = struct.field(pytree_node=False, default=0)  # C (labels 0..C-1; C is null)

    @property
    def dim(self) -> int:
        return int(self.means.shape[-1])

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    # --- exact model functions -------------------------------------------------------------
    def _component_logits(self, x, alpha, sigma):
        """Per-component ``log w_k + log N(x; alpha mu_k, S_k)`` up to a constant (B, K), the
        rotated coordinates y (B, K, D) and the diffused variances (K, D)."""
        dtype = x.dtype
        means = self.means.astype(dtype)
        lam = self.eigvals.astype(dtype)
        d = x[:, None, :] - alpha * means[None]  # (B, K, D)
        y = d if self.rot is None else jnp.einsum("bkd,kde->bke", d, self.rot.astype(dtype))
        s = alpha**2 * lam + sigma**2  # (K, D)
        logp = (
            self.log_weights.astype(dtype)[None]
            - 0.5 * jnp.sum(jnp.log(s), axis=-1)[None]
            - 0.5 * jnp.sum(y**2 / s[None], axis=-1)
        )
        return logp, y, s

    def _class_mask(self, y, batch: int):
        """(B, K) bool: component k belongs to sample b's class (all True for the null class)."""
        y = jnp.broadcast_to(jnp.asarray(y, jnp.int32), (batch,))
        return (self.labels[None, :] == y[:, None]) | (y[:, None] == self.n_classes)

    def _terms(self, x, alpha, sigma, labels=None):
        """Responsibilities (B, K), rotated coordinates y (B, K, D), diffused variances (K, D);
        restricted to the components of class ``labels`` (per sample) when given."""
        logp, y, s = self._component_logits(x, alpha, sigma)
        if labels is not None:
            self._require_labels()
            logp = jnp.where(self._class_mask(labels, x.shape[0]), logp, -jnp.inf)
        r = jax.nn.softmax(logp, axis=-1)
        # The barrier stops XLA from fusing the softmax product into the following dot: with jax
        # 0.10.2 on CPU that fusion returned NaN nondeterministically for batches of ~8000 (seen
        # on gauss16d; tests/test_testbeds.py::test_exact_model_has_no_spurious_nans).
        r, y = jax.lax.optimization_barrier((r, y))
        return r, y, s

    def _unrotate(self, v):
        return v if self.rot is None else jnp.einsum("bke,kde->bkd", v, self.rot.astype(v.dtype))

    def _require_labels(self):
        if self.labels is None:
            raise ValueError(f"testbed {self.name!r} has no component labels (spec field 'labels')")

    def eps(self, x, alpha, sigma, labels=None):
        """Exact noise prediction ``E[eps | x_t = x (, c = labels)]`` for x of shape (B, D)."""
        r, y, s = self._terms(x, alpha, sigma, labels)
        return sigma * jnp.sum(r[..., None] * self._unrotate(y / s[None]), axis=1)

    def x0(self, x, alpha, sigma, labels=None):
        """Exact data prediction ``E[x_0 | x_t = x (, c = labels)]`` for x of shape (B, D)."""
        r, y, s = self._terms(x, alpha, sigma, labels)
        lam = self.eigvals.astype(x.dtype)
        shrink = self._unrotate(alpha * lam[None] / s[None] * y)
        return jnp.sum(r[..., None] * (self.means.astype(x.dtype)[None] + shrink), axis=1)

    def log_prob(self, x, alpha=1.0, sigma=0.0):
        """Log density of the diffused marginal ``p_t(x)`` (data density at the defaults)."""
        dtype = x.dtype
        d = x[:, None, :] - alpha * self.means.astype(dtype)[None]
        y = d if self.rot is None else jnp.einsum("bkd,kde->bke", d, self.rot.astype(dtype))
        s = alpha**2 * self.eigvals.astype(dtype) + sigma**2
        logp = (
            self.log_weights.astype(dtype)[None]
            - 0.5 * jnp.sum(jnp.log(2 * jnp.pi * s), axis=-1)[None]
            - 0.5 * jnp.sum(y**2 / s[None], axis=-1)
        )
        return jax.nn.logsumexp(logp, axis=-1)

    def class_log_probs(self, x, alpha=1.0, sigma=0.0):
        """Exact ``log p(c | x_t = x)`` for every class, shape (B, C) (the data at the defaults)."""
        self._require_labels()
        logp = self._component_logits(x, alpha, sigma)[0]
        member = jnp.arange(self.n_classes)[None, :] == self.labels[:, None]  # (K, C)
        per_class = jax.nn.logsumexp(jnp.where(member[None], logp[:, :, None], -jnp.inf), axis=1)
        return per_class - jax.nn.logsumexp(logp, axis=-1, keepdims=True)

    def classifier(self, schedule):
        """The exact noisy classifier ``log_prob(x, t, args) -> (B,)``: ``log p(y | x_t)`` of the
        labels ``y`` in ``args`` (for :func:`jdiff.guidance.classifier_guidance`); a ``Partial``
        whose arrays are traced."""
        self._require_labels()
        return jax.tree_util.Partial(ExactClassifier(), self, schedule)

    def model_fn(self, schedule, prediction: str = "eps", conditional: bool = True):
        """The exact model function ``model_fn(x, t, args)`` of this mixture under ``schedule``.

        A ``jax.tree_util.Partial`` over the mixture and the schedule: their arrays are traced, so
        a new call of ``model_fn`` (or a new mixture of the same shapes) reuses compiled samplers.
        A labelled mixture reads class labels from ``args`` (``args["y"]`` or an integer array;
        the null class ``n_classes``, or no labels, gives the unconditional model) unless
        ``conditional=False`` (the unconditional model whatever ``args`` holds, e.g. the base of
        classifier guidance); otherwise ``args`` is ignored."""
        check_prediction(prediction)
        return jax.tree_util.Partial(ExactModel(prediction, bool(conditional)), self, schedule)

    # --- data ------------------------------------------------------------------------------
    def sample(self, key, n: int, dtype=jnp.float32, y=None):
        """Exact samples ``x_0`` of shape (n, D); of class ``y`` (scalar or (n,)) when given."""
        if y is None:
            return self.sample_with_labels(key, n, dtype)[0]
        self._require_labels()
        kc, kz = jax.random.split(key)
        logits = jnp.where(self._class_mask(y, n), self.log_weights[None], -jnp.inf)
        return self._draw(kz, jax.random.categorical(kc, logits, axis=-1), dtype)

    def sample_with_labels(self, key, n: int, dtype=jnp.float32):
        """``(x_0, labels)``: exact samples of shape (n, D) and the class of the component each was
        drawn from (all 0 for an unlabelled mixture); ``x_0`` is what :meth:`sample` returns."""
        kc, kz = jax.random.split(key)
        comp = jax.random.categorical(kc, self.log_weights, shape=(n,))
        labels = jnp.zeros((n,), jnp.int32) if self.labels is None else self.labels[comp]
        return self._draw(kz, comp, dtype), labels

    def _draw(self, key, comp, dtype):
        """One sample of component ``comp[i]`` per row."""
        z = jax.random.normal(key, (comp.shape[0], self.dim), dtype) * jnp.sqrt(self.eigvals[comp]).astype(dtype)
        if self.rot is not None:
            z = jnp.einsum("nde,ne->nd", self.rot[comp].astype(dtype), z)
        return self.means[comp].astype(dtype) + z

    def mean_cov(self):
        """Mean (D,) and covariance (D, D) of the data distribution (float64 NumPy)."""
        w = np.exp(np.asarray(self.log_weights, np.float64))
        mu = np.asarray(self.means, np.float64)
        lam = np.asarray(self.eigvals, np.float64)
        if self.rot is None:
            covs = np.stack([np.diag(v) for v in lam])
        else:
            u = np.asarray(self.rot, np.float64)
            covs = np.einsum("kde,ke,kfe->kdf", u, lam, u)
        m = w @ mu
        cov = np.einsum("k,kdf->df", w, covs + np.einsum("kd,kf->kdf", mu, mu)) - np.outer(m, m)
        return m, cov


@dataclasses.dataclass(frozen=True)
class ExactModel:
    """``(mixture, schedule, x, t, args) -> prediction``: the static part of a mixture's exact
    model function (:meth:`GaussianMixture.model_fn`)."""

    prediction: str = "eps"
    conditional: bool = True  # read class labels from args (labelled mixtures)

    def __call__(self, mix: GaussianMixture, schedule, x, t, args=None):
        from ..network import labels_from_args
        from ..prediction import from_x0_eps

        a = schedule.alpha(t).astype(x.dtype)
        s = schedule.sigma(t).astype(x.dtype)
        y = labels_from_args(args) if (self.conditional and mix.labels is not None) else None
        if self.prediction == "eps":
            return mix.eps(x, a, s, y)
        if self.prediction == "x0":
            return mix.x0(x, a, s, y)
        return from_x0_eps(mix.x0(x, a, s, y), mix.eps(x, a, s, y), a, s, self.prediction)


@dataclasses.dataclass(frozen=True)
class ExactClassifier:
    """``(mixture, schedule, x, t, args) -> (B,)``: ``log p(y | x_t)`` of a labelled mixture
    (:meth:`GaussianMixture.classifier`)."""

    def __call__(self, mix: GaussianMixture, schedule, x, t, args=None):
        from ..network import labels_from_args

        y = labels_from_args(args)
        if y is None:
            raise ValueError("the exact classifier needs the labels in args ({'y': labels})")
        a = schedule.alpha(t).astype(x.dtype)
        s = schedule.sigma(t).astype(x.dtype)
        logp = mix.class_log_probs(x, a, s)
        y = jnp.broadcast_to(jnp.asarray(y, jnp.int32), (x.shape[0],))
        return jnp.take_along_axis(logp, y[:, None], axis=1)[:, 0]


def from_arrays(
    weights, means, stds=None, covs=None, name: str = "mixture", dtype=jnp.float32, labels=None
) -> GaussianMixture:
    """Build a mixture from NumPy-like arrays, validating every field.

    ``weights`` (K,) positive (normalised here), ``means`` (K, D), and either ``stds`` ((K,) or
    (K, D), positive; diagonal covariances) or ``covs`` ((K, D, D) symmetric positive definite).
    ``labels`` (K,) optional integer class of each component: classes ``0 .. C-1``, each used.
    Raises ``ValueError`` naming the field and the reason. ``dtype=jnp.float64`` (inside
    ``jax.enable_x64``) keeps the eigenvectors orthogonal to float64 precision.
    """

    def arr(field, value):
        try:
            a = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: field {field!r} is not a numeric array ({e})") from None
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: field {field!r} has non-finite values")
        return a

    w = arr("weights", weights)
    mu = arr("means", means)
    if w.ndim != 1 or w.shape[0] < 1:
        raise ValueError(f"{name}: field 'weights' must be a non-empty list, got shape {w.shape}")
    if np.any(w <= 0):
        raise ValueError(f"{name}: field 'weights' must be positive")
    K = w.shape[0]
    if mu.ndim != 2 or mu.shape[0] != K or mu.shape[1] < 1:
        raise ValueError(
            f"{name}: field 'means' must have shape (K={K}, D) to match 'weights', got {mu.shape}"
        )
    D = mu.shape[1]
    if (stds is None) == (covs is None):
        raise ValueError(f"{name}: give exactly one of the fields 'stds' (diagonal) or 'covs' (full)")
    if stds is not None:
        sd = arr("stds", stds)
        if sd.ndim == 1 and sd.shape[0] == K:
            sd = np.repeat(sd[:, None], D, axis=1)
        if sd.shape != (K, D):
            raise ValueError(f"{name}: field 'stds' must have shape (K={K},) or (K={K}, D={D}), got {sd.shape}")
        if np.any(sd <= 0):
            raise ValueError(f"{name}: field 'stds' must be positive")
        lam, rot = sd**2, None
    else:
        c = arr("covs", covs)
        if c.shape != (K, D, D):
            raise ValueError(f"{name}: field 'covs' must have shape (K={K}, D={D}, D={D}), got {c.shape}")
        if not np.allclose(c, np.swapaxes(c, 1, 2), atol=1e-10, rtol=1e-8):
            raise ValueError(f"{name}: field 'covs' must be symmetric")
        lam, rot = np.linalg.eigh(c)
        if np.any(lam <= 0):
            raise ValueError(f"{name}: field 'covs' must be positive definite (smallest eigenvalue {lam.min():.3g})")
    w = w / w.sum()
    lab, n_classes = _check_component_labels(labels, K, name)
    return GaussianMixture(
        log_weights=jnp.asarray(np.log(w), dtype),
        means=jnp.asarray(mu, dtype),
        eigvals=jnp.asarray(lam, dtype),
        rot=None if rot is None else jnp.asarray(rot, dtype),
        name=name,
        labels=None if lab is None else jnp.asarray(lab, jnp.int32),
        n_classes=n_classes,
    )


def _check_component_labels(labels, K: int, name: str):
    """``(labels int array or None, C)``; ``ValueError`` unless they are K integers covering 0..C-1."""
    if labels is None:
        return None, 0
    try:
        lab = np.asarray(labels)
    except (TypeError, ValueError):
        lab = np.asarray([], dtype=object)
    if lab.shape != (K,) or lab.dtype.kind not in "iu":
        raise ValueError(f"{name}: field 'labels' must be {K} integers (one class per component), "
                         f"got {labels!r}"[:300])
    if np.any(lab < 0):
        raise ValueError(f"{name}: field 'labels' must be >= 0, got {int(lab.min())}")
    n_classes = int(lab.max()) + 1
    missing = sorted(set(range(n_classes)) - set(lab.tolist()))
    if missing:
        raise ValueError(f"{name}: field 'labels' must use every class 0..{n_classes - 1}; "
                         f"missing {missing}")
    return lab.astype(np.int32), n_classes


def gaussian_ode_solution(mix: GaussianMixture, schedule, x_T, t_start, t_end):
    """Closed-form probability-flow ODE map of a *single* Gaussian from ``t_start`` to ``t_end``.

    Per eigendirection the PF-ODE is affine and solves to (Wang & Vastola 2024, VP form)
    ``x_t = alpha_t mu + U diag(sqrt((alpha_t^2 lam + sigma_t^2) / (alpha_T^2 lam + sigma_T^2)))
    U^T (x_T - alpha_T mu)``.
    """
    if mix.n_components != 1:
        raise ValueError("the closed-form PF-ODE solution needs a single-component testbed")
    dtype = x_T.dtype
    a0, s0 = schedule.alpha(t_start).astype(dtype), schedule.sigma(t_start).astype(dtype)
    a1, s1 = schedule.alpha(t_end).astype(dtype), schedule.sigma(t_end).astype(dtype)
    mu, lam = mix.means[0].astype(dtype), mix.eigvals[0].astype(dtype)
    f = jnp.sqrt((a1**2 * lam + s1**2) / (a0**2 * lam + s0**2))
    d = x_T - a0 * mu
    if mix.rot is None:
        return a1 * mu + f * d
    u = mix.rot[0].astype(dtype)
    return a1 * mu + ((d @ u) * f) @ u.T
