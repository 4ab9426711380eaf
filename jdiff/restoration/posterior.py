"""Exact posterior of a Gaussian-mixture prior under a linear-Gaussian measurement.

Prior ``x ~ sum_k w_k N(mu_k, Sigma_k)`` (a :class:`jdiff.testbeds.GaussianMixture`, vector data,
D up to a few hundred), measurement ``y = A x + sigma_y n``, ``n ~ N(0, I)``, with A the dense
form of an operator (:meth:`LinearOperator.dense`: :class:`Identity`, :class:`Mask`,
:class:`Matrix`, or any small operator). The posterior is again a Gaussian mixture; per component
(Kalman form, valid at ``sigma_y = 0`` as long as ``A Sigma_k A^T`` is invertible)::

    S_k   = A Sigma_k A^T + sigma_y^2 I
    K_k   = Sigma_k A^T S_k^{-1}
    m_k   = mu_k + K_k (y - A mu_k)
    P_k   = Sigma_k - K_k A Sigma_k                     (symmetrised)
    log pi_k = log w_k + log N(y; A mu_k, S_k) - log p(y)      (log-sum-exp)

All in float64 NumPy. Rank-deficient operators (duplicate or dependent rows, m > D) are reduced
first: with the thin SVD ``A = U_r diag(s_r) V_r^T`` of rank r, ``y' = U_r^T y`` carries all the
information about x and ``A' = diag(s_r) V_r^T`` has full row rank, so ``S_k`` is invertible
whenever ``Sigma_k`` is, also at ``sigma_y = 0``. The part of y outside the range of A is pure
noise; it changes only ``log p(y)`` (included when ``sigma_y > 0``; at ``sigma_y = 0`` it must
be zero and is ignored).

Masks: the dense form of a :class:`Mask` keeps the observed rows only (m = number of kept
dimensions) and :meth:`Mask.compress` selects the matching entries of a full-shape y.

API (batched over measurements: y has shape (B, *op.out_shape); a single unbatched y is
accepted and gets B = 1):

* :func:`posterior_params` -> :class:`PosteriorParams`: log weights (B, K), means (B, K, D),
  covariances (K, D, D) (the same for every y), gains, log evidence (B,);
* :func:`exact_posterior` -> ``list[GaussianMixture]``, one per row of y (covariances by their
  eigendecomposition; eigenvalues at or below ``D * eps * max`` set to exactly 0, so at
  ``sigma_y = 0`` the mixture's own samples satisfy ``A x = y`` to the precision of its dtype;
  ``log_prob`` and the exact score at noise level 0 then do not exist, at any sigma > 0 they do);
* :func:`posterior_mean` (B, D) and :func:`posterior_cov` (B, D, D);
* :func:`sample_posterior` (B, n, D): exact samples by pathwise conditioning (Matheron's rule:
  ``x = x_prior + K_k (y - A x_prior - sigma_y e)`` with ``x_prior ~ N(mu_k, Sigma_k)``), so
  that at ``sigma_y = 0`` every sample has ``A x = y`` to float64 round-off.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from ..testbeds.mixture import GaussianMixture
from .operators import LinearOperator, check_sigma_y, rng_from_key

__all__ = ["PosteriorParams", "posterior_params", "exact_posterior", "posterior_mean",
           "posterior_cov", "sample_posterior", "prior_arrays"]

_LOG_2PI = float(np.log(2 * np.pi))


class PosteriorParams(NamedTuple):
    """Exact posterior(s), float64 NumPy. B measurements, K components, D dimensions, r = rank A."""

    log_weights: np.ndarray  # (B, K) normalised log posterior weights
    means: np.ndarray  # (B, K, D)
    covs: np.ndarray  # (K, D, D): do not depend on y
    gains: np.ndarray  # (K, D, r): Kalman gains on the reduced measurement y' = U_r^T y
    A_red: np.ndarray  # (r, D): the full-row-rank reduced operator diag(s_r) V_r^T
    y_red: np.ndarray  # (B, r): the reduced measurements
    log_evidence: np.ndarray  # (B,) log p(y)
    sigma_y: float


def prior_arrays(prior: GaussianMixture):
    """``(weights (K,), means (K, D), covs (K, D, D))`` of a mixture, float64 NumPy."""
    w = np.exp(np.asarray(prior.log_weights, np.float64))
    mu = np.asarray(prior.means, np.float64)
    lam = np.asarray(prior.eigvals, np.float64)
    if prior.rot is None:
        covs = np.einsum("kd,de->kde", lam, np.eye(lam.shape[1]))
    else:
        u = np.asarray(prior.rot, np.float64)
        covs = np.einsum("kde,ke,kfe->kdf", u, lam, u)
    return w / w.sum(), mu, 0.5 * (covs + np.swapaxes(covs, 1, 2))


def _sigma(sigma_y) -> float:
    check_sigma_y(sigma_y)
    arr = np.asarray(sigma_y, np.float64)
    if arr.ndim != 0:
        raise ValueError(f"sigma_y must be a scalar for the exact posterior, got shape {arr.shape}")
    return float(arr)


def _measurements(op: LinearOperator, y):
    y = np.asarray(y, np.float64)
    if y.ndim == len(op.out_shape) and tuple(y.shape) == tuple(op.out_shape):
        y = y[None]
    yc = op.compress(y)  # checks the shape
    if not np.all(np.isfinite(yc)):
        raise ValueError("y has non-finite values")
    return yc


def posterior_params(prior: GaussianMixture, op: LinearOperator, y, sigma_y) -> PosteriorParams:
    """The exact posterior of ``prior`` given ``y = A x + sigma_y n`` (see the module docstring).

    ``ValueError`` for a y of the wrong shape, a bad sigma_y, a prior of another dimension than
    the operator's input, or a degenerate ``sigma_y = 0`` problem (A Sigma_k A^T singular)."""
    sig = _sigma(sigma_y)
    if op.dim_in != prior.dim or len(op.in_shape) != 1:
        raise ValueError(f"{op.name}: the prior has dimension {prior.dim}, the operator acts on "
                         f"data of shape {op.in_shape}")
    A = op.dense()  # (m, D)
    yc = _measurements(op, y)  # (B, m)
    w, mu, covs = prior_arrays(prior)
    K, D = mu.shape
    B, m = yc.shape

    # reduce to a full-row-rank operator
    if m:
        Ur, s, Vt = np.linalg.svd(A, full_matrices=False)
        tol = max(m, D) * np.finfo(np.float64).eps * (s.max() if s.size else 0.0)
        r = int(np.sum(s > tol))
    else:
        Ur, s, Vt, r = np.zeros((0, 0)), np.zeros(0), np.zeros((0, D)), 0
    Ur, A_red = Ur[:, :r], s[:r, None] * Vt[:r]
    y_red = yc @ Ur  # (B, r)
    y_perp = yc - y_red @ Ur.T

    means = np.empty((B, K, D))
    post_covs = np.empty((K, D, D))
    gains = np.empty((K, D, r))
    log_joint = np.empty((B, K))
    for k in range(K):
        Sigma = covs[k]
        SA = Sigma @ A_red.T  # (D, r)
        S = A_red @ SA + sig**2 * np.eye(r)
        S = 0.5 * (S + S.T)
        try:
            L = np.linalg.cholesky(S)
        except np.linalg.LinAlgError:
            raise ValueError(f"exact posterior: A Sigma_k A^T + sigma_y^2 I is singular for component "
                             f"{k} (sigma_y = {sig})") from None
        gain = np.linalg.solve(S, SA.T).T  # (D, r) = Sigma A^T S^-1
        resid = y_red - mu[k] @ A_red.T  # (B, r)
        means[:, k] = mu[k] + resid @ gain.T
        P = Sigma - gain @ SA.T
        post_covs[k] = 0.5 * (P + P.T)
        gains[k] = gain
        white = np.linalg.solve(L, resid.T)  # (r, B)
        log_joint[:, k] = (np.log(w[k]) - 0.5 * r * _LOG_2PI - np.sum(np.log(np.diag(L)))
                           - 0.5 * np.sum(white**2, axis=0))
    top = log_joint.max(axis=1, keepdims=True)
    log_ev = top[:, 0] + np.log(np.sum(np.exp(log_joint - top), axis=1))
    log_weights = log_joint - log_ev[:, None]
    if sig > 0 and m > r:
        log_ev = log_ev - 0.5 * (m - r) * (_LOG_2PI + 2 * np.log(sig)) \
            - 0.5 * np.sum(y_perp**2, axis=1) / sig**2
    return PosteriorParams(log_weights, means, post_covs, gains, A_red, y_red, log_ev, sig)


def _mixtures(params: PosteriorParams, name: str, dtype) -> list[GaussianMixture]:
    lam, rot = np.linalg.eigh(params.covs)  # (K, D), (K, D, D)
    tol = lam.shape[1] * np.finfo(np.float64).eps * np.maximum(lam.max(axis=1, keepdims=True), 0)
    lam = np.where(lam > tol, lam, 0.0)
    eig = jnp.asarray(lam, dtype)
    u = jnp.asarray(rot, dtype)
    return [GaussianMixture(log_weights=jnp.asarray(lw, dtype), means=jnp.asarray(mb, dtype),
                            eigvals=eig, rot=u, name=name)
            for lw, mb in zip(params.log_weights, params.means)]


def exact_posterior(prior: GaussianMixture, op: LinearOperator, y, sigma_y,
                    dtype=jnp.float32) -> list[GaussianMixture]:
    """One posterior :class:`GaussianMixture` per row of ``y`` (full covariances, ``dtype``)."""
    return _mixtures(posterior_params(prior, op, y, sigma_y), f"{prior.name}|{op.name}", dtype)


def posterior_mean(prior: GaussianMixture, op: LinearOperator, y, sigma_y) -> np.ndarray:
    """``E[x | y]`` for each row of y, (B, D) float64."""
    p = posterior_params(prior, op, y, sigma_y)
    return np.einsum("bk,bkd->bd", np.exp(p.log_weights), p.means)


def posterior_cov(prior: GaussianMixture, op: LinearOperator, y, sigma_y) -> np.ndarray:
    """``Cov[x | y]`` for each row of y, (B, D, D) float64."""
    p = posterior_params(prior, op, y, sigma_y)
    pi = np.exp(p.log_weights)
    mean = np.einsum("bk,bkd->bd", pi, p.means)
    second = np.einsum("bk,kde->bde", pi, p.covs) + np.einsum("bk,bkd,bke->bde", pi, p.means, p.means)
    cov = second - np.einsum("bd,be->bde", mean, mean)
    return 0.5 * (cov + np.swapaxes(cov, 1, 2))


def sample_posterior(key, prior: GaussianMixture, op: LinearOperator, y, sigma_y, n: int,
                     params: PosteriorParams | None = None) -> np.ndarray:
    """``n`` exact posterior samples per row of y: (B, n, D) float64 NumPy.

    The component is drawn from the posterior weights, then the sample by pathwise conditioning
    of a prior draw of that component (exact; at ``sigma_y = 0`` ``A x = y`` to round-off).
    Randomness: a NumPy generator seeded from ``key``'s data (deterministic per key).
    ``params``: a precomputed :func:`posterior_params` of the same problem (skips recomputing)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"sample_posterior: n must be a positive integer, got {n!r}")
    p = params if params is not None else posterior_params(prior, op, y, sigma_y)
    rng = rng_from_key(key, "sample_posterior")
    _, mu, covs = prior_arrays(prior)
    lam, rot = np.linalg.eigh(covs)
    sqrt_cov = rot * np.sqrt(np.maximum(lam, 0.0))[:, None, :]  # (K, D, D)
    B, K = p.log_weights.shape
    D = mu.shape[1]
    r = p.A_red.shape[0]
    out = np.empty((B, n, D))
    for b in range(B):
        pi = np.exp(p.log_weights[b] - p.log_weights[b].max())
        comp = rng.choice(K, size=n, p=pi / pi.sum())
        z = rng.standard_normal((n, D))
        x_prior = mu[comp] + np.einsum("nde,ne->nd", sqrt_cov[comp], z)
        e = rng.standard_normal((n, r))
        innov = p.y_red[b][None] - x_prior @ p.A_red.T - p.sigma_y * e  # (n, r)
        out[b] = x_prior + np.einsum("ndr,nr->nd", p.gains[comp], innov)
    return out
