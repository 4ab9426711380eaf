"""Gaussian statistics of data, the Gaussian denoiser and the closed-form Gaussian PF-ODE.

Wang & Vastola, "The Unreasonable Effectiveness of Gaussian Score Approximation for Diffusion
Models and its Applications" (TMLR 2024, arXiv 2412.09726; earlier arXiv 2311.10892; official code
github.com/Animadversio/GaussianTeleportationDiffusion). Notation (``jdiff/schedules.py``): the
forward marginal is ``x_t = alpha_t x_0 + sigma_t eps``; VP schedules have
``alpha^2 + sigma^2 = 1``, VE / EDM (:class:`jdiff.schedules.SigmaSchedule`) have ``alpha = 1``,
``sigma = t``. Every formula below holds for any ``(alpha_t, sigma_t)``.

Data model ``x_0 ~ N(mu, Sigma)`` with ``Sigma = U diag(lam) U^T + lam_res (I - U U^T)``: ``U``
(D, r) has orthonormal columns, ``lam`` (r,) >= 0, and the D - r directions off the subspace of
``U`` share one residual variance ``lam_res`` (0 at full rank r = D; for a rank-r truncation the
mean of the dropped eigenvalues by default, the maximum-likelihood isotropic residual of
probabilistic PCA, Tipping & Bishop 1999; ``residual="zero"`` gives the official code's choice,
treating those directions as lam = 0). In the rotated, centred coordinates
``c = U^T (x - alpha_t mu)`` (r,) and the residual ``res = (I - U U^T)(x - alpha_t mu)`` (D,),
every direction is an independent 1-D Gaussian with diffused variance
``s_k(t) = alpha_t^2 lam_k + sigma_t^2``:

* Gaussian (Wiener) denoiser, the exact posterior mean (paper Sec. 3, eq. of ``D(x, sigma)``)::

      x0_hat(x, t) = mu + U diag(alpha_t lam / s(t)) c + (alpha_t lam_res / s_res(t)) res
      eps_hat(x, t) = sigma_t [U diag(1 / s(t)) c + res / s_res(t)]

* Probability-flow ODE in closed form ("analytical teleportation", paper Sec. 4; official
  ``edm_x_t_traj`` for EDM and ``DiffusionSpectra/core/ODE_analytical_lib.py`` for VP): along the
  PF-ODE each coordinate of ``x_t - alpha_t mu`` scales like ``sqrt(s_k(t))``, so from time T to t::

      x_t = alpha_t mu + U diag(f) c_T + f_res res_T,    f_k = sqrt(s_k(t) / s_k(T))

  (derivation: ``dx/dt = (d log alpha/dt) x - (sigma^2 d log(sigma/alpha)/dt) score`` with the
  Gaussian score ``-(x - alpha mu)/s`` gives ``dy/dt = y (d s/dt) / (2 s)`` per direction for
  ``y = c_k``, i.e. ``y ~ sqrt(s)``).

* The official code's second form, the denoised estimate along that trajectory
  (``gaussian_analytical_x0hat_t_solution_edm``)::

      x0_hat(x_t, t) = mu + U diag(alpha_t lam / sqrt(s(t) s(T))) c_T + ...

  which is the denoiser above applied to the first form (tested).

Shapes: samples are ``(batch, *shape)`` with ``prod(shape) = D``, flattened internally and
reshaped back, so images (H, W, C) and vectors (D,) work alike. The maps cost O(batch D r).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..prediction import check_prediction, from_x0_eps

RESIDUALS = ("mean", "zero")
_FORMAT = 1  # version of the .npz layout written by GaussianStats.save


@struct.dataclass
class GaussianStats:
    """Mean and (possibly low-rank) covariance eigendecomposition of a data distribution.

    A pytree: the arrays are traced (a new set of statistics of the same shapes reuses compiled
    programs), ``shape`` is static. Build with :meth:`from_data`, :meth:`from_dataset`,
    :meth:`from_mixture` or :meth:`from_moments`; store with :meth:`save` / :meth:`load`.
    Statistics must live in the model's own data space (images in ``[-1, 1]`` for jdiff's image
    models, latents with their scale factor for a latent model).
    """

    mean: jnp.ndarray  # (D,)
    eigvals: jnp.ndarray  # (r,) descending, clamped at >= 0
    eigvecs: jnp.ndarray  # (D, r) orthonormal columns (eigenvectors)
    residual_var: jnp.ndarray  # () variance of each of the D - r off-subspace directions (0 if r = D)
    shape: tuple = struct.field(pytree_node=False, default=())  # shape of one sample; () means (D,)

    # --- metadata ----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def rank(self) -> int:
        return int(self.eigvals.shape[0])

    @property
    def full_rank(self) -> bool:
        return self.rank == self.dim

    @property
    def sample_shape(self) -> tuple:
        return tuple(self.shape) if self.shape else (self.dim,)

    def covariance(self) -> np.ndarray:
        """The covariance (D, D) these statistics represent (float64 NumPy; for checks)."""
        u = np.asarray(self.eigvecs, np.float64)
        lam = np.asarray(self.eigvals, np.float64)
        cov = (u * lam) @ u.T
        if not self.full_rank:
            cov += float(self.residual_var) * (np.eye(self.dim) - u @ u.T)
        return cov

    def data_std(self) -> float:
        """Root mean variance per dimension, ``sqrt(trace(Sigma) / D)`` (the scale that
        :func:`jdiff.accel.auto_skip` measures errors against)."""
        total = float(np.sum(np.asarray(self.eigvals, np.float64)))
        total += (self.dim - self.rank) * float(self.residual_var)
        return math.sqrt(total / self.dim)

    def astype(self, dtype) -> GaussianStats:
        """The same statistics stored in ``dtype`` (float64 needs ``jax.enable_x64``)."""
        return self.replace(mean=jnp.asarray(self.mean, dtype), eigvals=jnp.asarray(self.eigvals, dtype),
                            eigvecs=jnp.asarray(self.eigvecs, dtype),
                            residual_var=jnp.asarray(self.residual_var, dtype))

    # --- constructors ------------------------------------------------------------------------
    @classmethod
    def from_moments(cls, mean, cov, rank: int | None = None, *, shape=None, residual: str = "mean",
                     dtype=jnp.float32) -> GaussianStats:
        """Statistics from a mean (D,) and a covariance (D, D): float64 ``numpy.linalg.eigh``,
        eigenvalues sorted descending and clamped at 0, the top ``rank`` kept (default: all).

        ``residual``: ``"mean"`` (default) gives the D - r dropped directions the mean of the
        dropped eigenvalues (probabilistic PCA); ``"zero"`` treats them as lam = 0 (the official
        code). ``shape``: the shape of one sample (default ``(D,)``).
        """
        if residual not in RESIDUALS:
            raise ValueError(f"unknown residual {residual!r}; valid: {', '.join(RESIDUALS)}")
        mu = _finite_array(mean, "mean")
        c = _finite_array(cov, "cov")
        if mu.ndim != 1 or mu.shape[0] < 1:
            raise ValueError(f"mean must have shape (D,), got {mu.shape}")
        d = mu.shape[0]
        if c.shape != (d, d):
            raise ValueError(f"cov must have shape (D, D) = ({d}, {d}) to match the mean, got {c.shape}")
        shape = _check_shape(shape, d)
        rank = _check_rank(rank, d)
        lam, u = np.linalg.eigh(0.5 * (c + c.T))  # ascending
        lam, u = lam[::-1], u[:, ::-1]
        lam = np.maximum(lam, 0.0)
        res = float(np.mean(lam[rank:])) if (rank < d and residual == "mean") else 0.0
        return cls(mean=jnp.asarray(mu, dtype), eigvals=jnp.asarray(lam[:rank].copy(), dtype),
                   eigvecs=jnp.asarray(u[:, :rank].copy(), dtype), residual_var=jnp.asarray(res, dtype),
                   shape=shape)

    @classmethod
    def from_data(cls, x, rank: int | None = None, *, residual: str = "mean", chunk_size: int = 4096,
                  dtype=jnp.float32) -> GaussianStats:
        """Empirical statistics of samples ``x`` of shape (N, ...) (flattened to (N, D)).

        Mean and unbiased covariance (divisor N - 1) accumulated in float64, ``chunk_size`` rows
        at a time (memory O(D^2 + chunk_size D)), then :meth:`from_moments`. Needs N >= 2.
        """
        x = np.asarray(x)
        if x.ndim < 2:
            raise ValueError(f"x must have shape (N, ...) with a batch axis first, got shape {x.shape}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise ValueError(f"x must be numeric, got dtype {x.dtype}")
        acc = _Moments(int(np.prod(x.shape[1:])))
        for lo in range(0, x.shape[0], _check_chunk(chunk_size)):
            acc.add(x[lo:lo + chunk_size].reshape(-1, acc.dim))
        mean, cov = acc.result()
        return cls.from_moments(mean, cov, rank, shape=x.shape[1:], residual=residual, dtype=dtype)

    @classmethod
    def from_dataset(cls, ds, rank: int | None = None, *, residual: str = "mean", chunk_size: int = 1024,
                     dtype=jnp.float32) -> GaussianStats:
        """Statistics of a :class:`jdiff.data.ImageDataset` in model range (``[-1, 1]``, via
        :func:`jdiff.data.to_model_range`), streamed ``chunk_size`` images at a time; ``shape`` is
        the data set's (H, W, C)."""
        from ..data import ImageDataset, to_model_range

        if not isinstance(ds, ImageDataset):
            raise ValueError(f"from_dataset needs a jdiff.data.ImageDataset, got {type(ds).__name__}")
        acc = _Moments(int(np.prod(ds.image_shape)))
        for lo in range(0, len(ds), _check_chunk(chunk_size)):
            acc.add(to_model_range(ds.images[lo:lo + chunk_size]).reshape(-1, acc.dim))
        mean, cov = acc.result()
        return cls.from_moments(mean, cov, rank, shape=ds.image_shape, residual=residual, dtype=dtype)

    @classmethod
    def from_mixture(cls, mix, rank: int | None = None, *, residual: str = "mean",
                     dtype=jnp.float32) -> GaussianStats:
        """Exact moments of a :class:`jdiff.testbeds.GaussianMixture`
        (``mean = sum_k w_k mu_k``, ``cov = sum_k w_k (Sigma_k + mu_k mu_k^T) - mean mean^T``)."""
        mean, cov = mix.mean_cov()
        return cls.from_moments(mean, cov, rank, residual=residual, dtype=dtype)

    # --- storage -----------------------------------------------------------------------------
    def save(self, path) -> str:
        """Write ``path`` as ``.npz`` (suffix added if missing); returns the path written."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        np.savez(path, format=np.int64(_FORMAT), mean=np.asarray(self.mean), eigvals=np.asarray(self.eigvals),
                 eigvecs=np.asarray(self.eigvecs), residual_var=np.asarray(self.residual_var),
                 shape=np.asarray(self.sample_shape, np.int64))
        return path

    @classmethod
    def load(cls, path, dtype=jnp.float32) -> GaussianStats:
        """Read statistics written by :meth:`save`; ``ValueError`` for a missing or malformed file."""
        path = os.fspath(path)
        try:
            with np.load(path) as f:
                data = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read Gaussian statistics from {path!r}: {e}") from None
        need = {"format", "mean", "eigvals", "eigvecs", "residual_var", "shape"}
        if not need <= set(data):
            raise ValueError(f"{path!r} is not a GaussianStats file: missing {sorted(need - set(data))}")
        if int(data["format"]) != _FORMAT:
            raise ValueError(f"{path!r}: unsupported GaussianStats format {int(data['format'])}")
        mu, lam, u = data["mean"], data["eigvals"], data["eigvecs"]
        d = mu.shape[0] if mu.ndim == 1 else -1
        if mu.ndim != 1 or lam.ndim != 1 or u.shape != (d, lam.shape[0]) or data["residual_var"].shape != ():
            raise ValueError(f"{path!r}: inconsistent shapes mean {mu.shape}, eigvals {lam.shape}, "
                             f"eigvecs {u.shape}")
        shape = tuple(int(s) for s in data["shape"])
        return cls(mean=jnp.asarray(mu, dtype), eigvals=jnp.asarray(lam, dtype), eigvecs=jnp.asarray(u, dtype),
                   residual_var=jnp.asarray(data["residual_var"], dtype),
                   shape=() if shape == (d,) else _check_shape(shape, d))


class _Moments:
    """Streaming float64 mean and covariance: sums of ``x - shift`` and its outer products, with
    ``shift`` the first chunk's mean (avoids the cancellation of raw second moments)."""

    def __init__(self, dim: int):
        self.dim, self.n, self.shift = dim, 0, None
        self.s1 = np.zeros(dim)
        self.s2 = np.zeros((dim, dim))

    def add(self, chunk):
        chunk = np.asarray(chunk, np.float64)  # (n, D)
        if not np.all(np.isfinite(chunk)):
            raise ValueError("the data contain non-finite values")
        if self.shift is None:
            self.shift = chunk.mean(axis=0)
        c = chunk - self.shift
        self.n += c.shape[0]
        self.s1 += c.sum(axis=0)
        self.s2 += c.T @ c

    def result(self):
        if self.n < 2:
            raise ValueError(f"need at least 2 samples to estimate a covariance, got {self.n}")
        m = self.s1 / self.n
        cov = (self.s2 - self.n * np.outer(m, m)) / (self.n - 1)
        return self.shift + m, 0.5 * (cov + cov.T)


def _finite_array(value, name):
    try:
        a = np.asarray(value, np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} is not a numeric array ({e})") from None
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} has non-finite values")
    return a


def _check_rank(rank, d: int) -> int:
    if rank is None:
        return d
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= d:
        raise ValueError(f"rank must be an integer in [1, {d}] (the data dimension), got {rank!r}")
    return int(rank)


def _check_chunk(chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def _check_shape(shape, d: int) -> tuple:
    """``()`` for vectors (D,), else the sample shape, whose size must be D."""
    if shape is None:
        return ()
    shape = tuple(int(s) for s in shape)
    if int(np.prod(shape)) != d:
        raise ValueError(f"sample shape {shape} has {int(np.prod(shape))} entries, the statistics {d}")
    return () if shape == (d,) else shape


# --- the maps ------------------------------------------------------------------------------------

def _flatten(stats: GaussianStats, x):
    """``x`` (B, *shape) -> (B, D) in at least float32; ``ValueError`` on a size mismatch."""
    x = jnp.asarray(x)
    if x.ndim < 2 or math.prod(x.shape[1:]) != stats.dim:
        raise ValueError(f"x must have shape (batch, ...) with {stats.dim} entries per sample "
                         f"(the statistics' dimension), got shape {x.shape}")
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    return x.reshape(x.shape[0], stats.dim).astype(dtype)


def _alpha_sigma(schedule, t, dtype):
    """``(alpha, sigma)`` at t (t = 0 is the clean end point), as (1,) or (B, 1) arrays."""
    t = jnp.asarray(t)
    zero = t == 0
    safe = jnp.where(zero, jnp.ones_like(t), t)
    a = jnp.where(zero, 1.0, schedule.alpha(safe)).astype(dtype)
    s = jnp.where(zero, 0.0, schedule.sigma(safe)).astype(dtype)
    return jnp.reshape(a, (-1, 1)), jnp.reshape(s, (-1, 1))


def _project(stats: GaussianStats, xf, a):
    """Rotated coordinates ``c = U^T (x - a mu)`` (B, r) and the off-subspace residual (B, D)
    (None at full rank)."""
    dtype = xf.dtype
    mu, u = stats.mean.astype(dtype), stats.eigvecs.astype(dtype)
    d = xf - a * mu  # (B, D)
    c = d @ u  # (B, r)
    res = None if stats.full_rank else d - c @ u.T
    return c, res


def _variances(stats: GaussianStats, a, s, dtype):
    """Diffused variances ``a^2 lam + s^2``: (.., r) in the eigenbasis and (.., 1) off it."""
    lam = stats.eigvals.astype(dtype)
    lr = stats.residual_var.astype(dtype)
    return a**2 * lam + s**2, a**2 * lr + s**2


def _ratio_sqrt(num, den):
    """``sqrt(num / den)``, 0 where both vanish (a lam = 0 direction at sigma = 0)."""
    return jnp.where(den > 0, jnp.sqrt(num / jnp.where(den > 0, den, 1.0)), 0.0)


def _flow_terms(stats, schedule, x, t_from, t_to):
    """What both closed forms need: the dtype, ``alpha_to``, the eigen-coordinates ``c`` and the
    off-subspace residual of ``x - alpha_from mu``, and the variances ``s`` at both times."""
    xf = _flatten(stats, x)
    dtype = xf.dtype
    a0, s0 = _alpha_sigma(schedule, t_from, dtype)
    a1, s1 = _alpha_sigma(schedule, t_to, dtype)
    c, res = _project(stats, xf, a0)
    return dtype, a1, c, res, _variances(stats, a0, s0, dtype), _variances(stats, a1, s1, dtype)


def gaussian_flow(stats: GaussianStats, schedule, x, t_from, t_to):
    """Closed-form probability-flow ODE map of ``N(mu, Sigma)`` from ``t_from`` to ``t_to``.

    ``x_to = alpha_to mu + U diag(sqrt(s(to) / s(from))) U^T (x - alpha_from mu)
    + sqrt(s_res(to) / s_res(from)) (I - U U^T)(x - alpha_from mu)`` with
    ``s(t) = alpha_t^2 lam + sigma_t^2`` (module docstring; Wang & Vastola 2024, Sec. 4, the VP
    form of the official ``ODE_analytical_lib.py`` and the EDM form of ``edm_x_t_traj``).

    ``x``: (batch, ...) at time ``t_from``; returns the same shape and dtype at ``t_to``. Either
    direction works (``t_to > t_from`` runs the ODE backwards) as long as ``s(from) > 0``; ``t_to``
    may be 0. Times are scalars (traced or not).
    """
    dtype, a1, c, res, (v0, v0r), (v1, v1r) = _flow_terms(stats, schedule, x, t_from, t_to)
    f = _ratio_sqrt(v1, v0)  # (1, r)
    out = a1 * stats.mean.astype(dtype) + (c * f) @ stats.eigvecs.astype(dtype).T
    if res is not None:
        out = out + _ratio_sqrt(v1r, v0r) * res
    return out.reshape(x.shape).astype(jnp.asarray(x).dtype)


def gaussian_flow_x0(stats: GaussianStats, schedule, x, t_from, t_to):
    """The official code's second form: the denoised estimate at ``t_to`` along the closed-form
    trajectory from ``x`` at ``t_from``, written directly in ``c_from``:

    ``x0_hat = mu + U diag(alpha_to lam / sqrt(s(to) s(from))) c_from + (same with lam_res) res``

    (``gaussian_analytical_x0hat_t_solution_edm``, generalised to any schedule). Equals
    ``gaussian_denoiser(...)(gaussian_flow(x, t_from, t_to), t_to)`` (tested)."""
    dtype, a1, c, res, (v0, v0r), (v1, v1r) = _flow_terms(stats, schedule, x, t_from, t_to)

    def gain(lam, va, vb):
        den = va * vb
        return jnp.where(den > 0, a1 * lam / jnp.sqrt(jnp.where(den > 0, den, 1.0)), 0.0)

    out = stats.mean.astype(dtype) + (c * gain(stats.eigvals.astype(dtype), v1, v0)) @ stats.eigvecs.astype(dtype).T
    if res is not None:
        out = out + gain(stats.residual_var.astype(dtype), v1r, v0r) * res
    return out.reshape(x.shape).astype(jnp.asarray(x).dtype)


def gaussian_x0_eps(stats: GaussianStats, schedule, x, t):
    """``(x0_hat, eps_hat)`` of the Gaussian at ``x`` (batch, ...), time ``t`` (scalar or (batch,)):

    ``x0_hat = mu + U diag(alpha lam / s) c + (alpha lam_res / s_res) res``,
    ``eps_hat = sigma (U diag(1 / s) c + res / s_res)``, ``s = alpha^2 lam + sigma^2``
    (Wiener filter; module docstring). ``eps_hat`` is computed without dividing by sigma, so it is
    finite at sigma = 0 wherever ``lam > 0``; a ``lam = 0`` direction at sigma = 0 gets
    ``x0_hat = x / alpha`` there and ``eps_hat = 0``."""
    xf = _flatten(stats, x)
    dtype = xf.dtype
    a, s = _alpha_sigma(schedule, t, dtype)
    c, res = _project(stats, xf, a)
    v, vr = _variances(stats, a, s, dtype)
    u = stats.eigvecs.astype(dtype)
    pos, posr = v > 0, vr > 0
    inv, invr = 1.0 / jnp.where(pos, v, 1.0), 1.0 / jnp.where(posr, vr, 1.0)
    g = jnp.where(pos, a * stats.eigvals.astype(dtype) * inv, 1.0 / a)  # (B|1, r)
    x0 = stats.mean.astype(dtype) + (c * g) @ u.T
    eps = (c * jnp.where(pos, inv, 0.0)) @ u.T
    if res is not None:
        x0 = x0 + jnp.where(posr, a * stats.residual_var.astype(dtype) * invr, 1.0 / a) * res
        eps = eps + jnp.where(posr, invr, 0.0) * res
    eps = s * eps
    out_dtype = jnp.asarray(x).dtype
    return x0.reshape(x.shape).astype(out_dtype), eps.reshape(x.shape).astype(out_dtype)


@dataclasses.dataclass(frozen=True)
class GaussianModel:
    """``(stats, schedule, x, t, args) -> prediction``: the static part of
    :func:`gaussian_denoiser` (compares by value, so re-creating it does not recompile)."""

    prediction: str = "x0"

    def __call__(self, stats: GaussianStats, schedule, x, t, args=None):  # noqa: ARG002
        x0, eps = gaussian_x0_eps(stats, schedule, x, t)
        if self.prediction == "x0":
            return x0
        if self.prediction == "eps":
            return eps
        a, s = _alpha_sigma(schedule, t, x0.dtype)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        return from_x0_eps(x0, eps, a.reshape(shape), s.reshape(shape), self.prediction)


def gaussian_denoiser(stats: GaussianStats, schedule, prediction: str = "x0"):
    """The Gaussian model as a jdiff model function ``model_fn(x, t, args)``.

    Predicts ``x0`` (the Wiener denoiser, the exact posterior mean of ``N(mu, Sigma)``) by
    default; ``prediction="eps"`` (finite at sigma = 0, suits :func:`jdiff.reference_solve`),
    ``"v"`` or ``"score"`` on request. Pass the same ``prediction`` to :func:`jdiff.sample`. A
    ``jax.tree_util.Partial`` over the statistics and the schedule: their arrays are traced.
    ``args`` is ignored.
    """
    check_prediction(prediction)
    if not isinstance(stats, GaussianStats):
        raise ValueError(f"stats must be a GaussianStats, got {type(stats).__name__}")
    return jax.tree_util.Partial(GaussianModel(prediction), stats, schedule)


__all__ = ["GaussianStats", "GaussianModel", "gaussian_flow", "gaussian_flow_x0", "gaussian_x0_eps",
           "gaussian_denoiser", "RESIDUALS"]
