"""Noise schedules as pytrees of pure functions of continuous time.

Every schedule describes the forward marginal ``x_t = alpha(t) x_0 + sigma(t) eps`` through

* ``alpha(t)``, ``sigma(t)``, ``log_snr(t) = log alpha(t) - log sigma(t)`` (the DPM-Solver lambda),
* ``sigma_hat(t) = sigma(t) / alpha(t) = exp(-log_snr(t))`` (the k-diffusion / EDM sigma of the
  scaled variable ``x / alpha``), and
* the inverse ``t_of_log_snr(lam)``.

Time ``t = 0`` is always the clean end point (``alpha = 1, sigma = 0, log_snr = +inf``), so a grid
that ends at 0 ends on data. ``t_min`` is the smallest time a network was trained at and ``t_max``
the largest.

Kinds (constructors below):

* :func:`vp_discrete`: DDPM beta table (linear 1e-4..0.02 over 1000 steps by default). Its
  ``alphas_cumprod`` is bit-identical to the float32 table of PyTorch schedulers on x86-64 CPUs
  with AVX2/AVX512 dispatch (checked against torch 2.13.0; see :func:`_torch_linspace_f32`; the
  ``ATEN_CPU_CAPABILITY=default`` path differs by one ulp in some betas). Continuous-time
  access interpolates ``log alpha`` piecewise linearly with knots at ``t_n = (n + 1) / N`` (the
  official DPM-Solver convention, Lu et al. 2022, ``NoiseScheduleVP('discrete')``) plus a knot
  ``(0, 0)`` for the clean end point. Table index ``n`` is time ``(n + 1) / N``.
* :func:`vp_linear`: continuous VP SDE, ``beta(t) = beta_0 + t (beta_1 - beta_0)`` (Song et al.
  2021), ``log alpha(t) = -t^2 (beta_1 - beta_0) / 4 - t beta_0 / 2``.
* :func:`vp_cosine`: Nichol & Dhariwal cosine schedule in continuous time,
  ``log alpha(t) = log cos((t + s) / (1 + s) pi / 2) - log cos(s / (1 + s) pi / 2)``, evaluated
  in a cancellation-free form (see :class:`VPCosine`).
* :func:`ve` and :func:`edm`: ``alpha = 1``, ``sigma = t`` (time *is* the noise level, as in
  k-diffusion and EDM, Karras et al. 2022).

Schedule maths runs in the precision of the inputs (float32 tables, promoted to float64 by
float64 callers such as the reference solver and grid construction). Tables are stored as JAX
arrays, not NumPy arrays: a NumPy leaf first transferred inside ``jax.enable_x64`` is reused as a
float64 buffer by later float32 calls of the same jitted function (seen with jax 0.10.2). In bf16 the
VP schedule collapses (alpha-bar rounds to 1 near t = 0), so never evaluate it in bf16.
"""

from __future__ import annotations

import math
from typing import Union

import jax.numpy as jnp
import numpy as np
from flax import struct

ArrayLike = Union[jnp.ndarray, np.ndarray, float]


def _torch_linspace_f32(start: float, end: float, steps: int, fused: bool = True) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` on CPU, reproduced bit for bit.

    PyTorch's CPU kernel (``aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp``, scalar loop) fills
    the first half as ``start + step * i`` and the second half as ``end - step * (steps - 1 - i)``
    in float32, with ``step = (end - start) / (steps - 1)`` (float32). The kernel is compiled once
    per CPU capability: the AVX2 and AVX512 builds (what x86-64 machines with AVX2 dispatch to) are
    compiled with FMA contraction, so each value is ONE rounding of ``start + step * i`` (a fused
    multiply-add); the DEFAULT build (``ATEN_CPU_CAPABILITY=default``) rounds the product first.
    ``fused=True`` (default) reproduces the former, ``fused=False`` the latter; they differ in 196
    of the 1000 DDPM betas (by one float32 ulp). Checked against torch 2.13.0 (CPU) on x86-64 with
    AVX512, AVX2 and DEFAULT dispatch; other platforms (e.g. aarch64) were not checked.
    """
    def fma(a, b, c):
        """float32 ``a * b + c`` rounded once (a fused multiply-add), element-wise and exact.

        The float64 product of two float32 values is exact; the float64 sum ``t`` is rounded and
        TwoSum gives its error ``err`` exactly. Rounding ``t`` to float32 is then correct unless
        ``t`` lies exactly on a float32 rounding midpoint with ``err != 0``: the sign of ``err``
        decides there (a plain float64 -> float32 cast would double-round).
        """
        a, b, c = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
        p = a * b
        t = p + c
        bb = t - p
        err = (p - (t - bb)) + (c - bb)  # p + c == t + err exactly
        r = t.astype(np.float32)
        other = np.nextafter(r, np.where(t > r, np.inf, -np.inf).astype(np.float32))
        tie = (t != r) & (t == (r.astype(np.float64) + other.astype(np.float64)) / 2) & (err != 0)
        nearer = np.where(err > 0, np.maximum(r, other), np.minimum(r, other))
        return np.where(tie, nearer, r).astype(np.float32)

    if steps == 1:
        return np.array([start], dtype=np.float32)
    s, e = np.float32(start), np.float32(end)
    step = np.float32((e - s) / np.float32(steps - 1))
    i = np.arange(steps)
    half = steps // 2
    k_lo = i[:half].astype(np.float32)
    k_hi = (steps - 1 - i[half:]).astype(np.float32)
    out = np.empty(steps, dtype=np.float32)
    if fused:
        out[:half] = fma(step, k_lo, s)
        out[half:] = fma(-step, k_hi, e)
    else:
        out[:half] = s + step * k_lo
        out[half:] = e - step * k_hi
    return out


def ddpm_betas(
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
) -> np.ndarray:
    """float32 beta table as built by PyTorch schedulers (diffusers' ``betas``)."""
    if beta_schedule == "linear":
        return _torch_linspace_f32(beta_start, beta_end, num_train_timesteps)
    if beta_schedule == "scaled_linear":
        b = _torch_linspace_f32(beta_start**0.5, beta_end**0.5, num_train_timesteps)
        return (b * b).astype(np.float32)
    if beta_schedule == "squaredcos_cap_v2":
        def abar(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        n = num_train_timesteps
        b = [min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)]
        return np.asarray(b, dtype=np.float32)
    raise ValueError(
        f"unknown beta_schedule {beta_schedule!r}; valid: linear, scaled_linear, squaredcos_cap_v2"
    )


def alphas_cumprod_from_betas(betas: np.ndarray) -> np.ndarray:
    """float32 ``cumprod(1 - betas)`` exactly as ``torch.cumprod`` computes it on CPU.

    ``1 - beta`` is formed in float32; PyTorch's CPU cumulative product accumulates in double
    (``acc_type<float>``) and rounds each output to float32, which is what we do here.
    """
    alphas = (np.float32(1.0) - betas.astype(np.float32)).astype(np.float32)
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def _vp_sigma_from_log_alpha(log_alpha):
    return jnp.sqrt(-jnp.expm1(2.0 * log_alpha))


def _vp_log_snr_from_log_alpha(log_alpha):
    return log_alpha - 0.5 * jnp.log(-jnp.expm1(2.0 * log_alpha))


def _vp_log_alpha_from_log_snr(lam):
    # alpha^2 = sigmoid(2 lam)  =>  log alpha = -0.5 * log(1 + exp(-2 lam))
    return -0.5 * jnp.logaddexp(0.0, -2.0 * lam)


class _VPMixin:
    """alpha, sigma and log-SNR of a variance-preserving schedule from its ``log_alpha``."""

    kind = "vp"

    def alpha(self, t):
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t):
        return _vp_sigma_from_log_alpha(self.log_alpha(t))

    def log_snr(self, t):
        return _vp_log_snr_from_log_alpha(self.log_alpha(t))

    def sigma_hat(self, t):
        return jnp.exp(-self.log_snr(t))

    def t_of_log_snr(self, lam):
        return self.t_of_log_alpha(_vp_log_alpha_from_log_snr(jnp.asarray(lam)))

    def prior_std(self, t):  # noqa: ARG002 - same for every t of a VP schedule
        """Std of the initial noise ``x_T = prior_std * z`` (1 for VP, as DDPM/DPM-Solver)."""
        return 1.0


@struct.dataclass
class VPDiscrete(_VPMixin):
    """VP schedule from a discrete ``alphas_cumprod`` table (see module docstring)."""

    t_knots: jnp.ndarray  # (N + 1,) float32: 0, 1/N, ..., 1
    log_alpha_knots: jnp.ndarray  # (N + 1,) float32: 0, 0.5 log abar_0, ..., 0.5 log abar_{N-1}
    alphas_cumprod: jnp.ndarray  # (N,) float32, bit-identical to PyTorch's table
    num_train_timesteps: int = struct.field(pytree_node=False, default=1000)
    name: str = struct.field(pytree_node=False, default="vp_discrete")

    @property
    def t_min(self) -> float:
        return 1.0 / self.num_train_timesteps

    @property
    def t_max(self) -> float:
        return 1.0

    def log_alpha(self, t):
        return jnp.interp(t, self.t_knots, self.log_alpha_knots)

    def t_of_log_alpha(self, log_alpha):
        # log alpha decreases in t; jnp.interp needs increasing abscissae.
        return jnp.interp(log_alpha, self.log_alpha_knots[::-1], self.t_knots[::-1])

    def timestep(self, t):
        """Table index (the timestep a discrete-time network was trained with): ``N t - 1``."""
        return t * self.num_train_timesteps - 1.0


def vp_discrete(
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    beta_schedule: str = "linear",
    alphas_cumprod: np.ndarray | None = None,
) -> VPDiscrete:
    """DDPM-style discrete VP schedule (default: linear betas 1e-4..0.02 over 1000 steps)."""
    if alphas_cumprod is None:
        alphas_cumprod = alphas_cumprod_from_betas(
            ddpm_betas(num_train_timesteps, beta_start, beta_end, beta_schedule)
        )
    ac = np.asarray(alphas_cumprod, dtype=np.float32)
    if ac.ndim != 1 or not np.all((ac > 0) & (ac <= 1)) or np.any(np.diff(ac) > 0):
        raise ValueError("alphas_cumprod must be a 1-D, non-increasing table in (0, 1]")
    n = ac.shape[0]
    t_knots = np.concatenate([[0.0], np.arange(1, n + 1, dtype=np.float64) / n])
    log_alpha = np.concatenate([[0.0], 0.5 * np.log(ac.astype(np.float64))])
    return VPDiscrete(
        t_knots=jnp.asarray(t_knots, jnp.float32),
        log_alpha_knots=jnp.asarray(log_alpha, jnp.float32),
        alphas_cumprod=jnp.asarray(ac),
        num_train_timesteps=n,
    )


@struct.dataclass
class VPLinear(_VPMixin):
    """Continuous VP SDE with linear beta(t) (score_sde ``VPSDE``: beta 0.1 -> 20)."""

    beta_0: float = struct.field(pytree_node=False, default=0.1)
    beta_1: float = struct.field(pytree_node=False, default=20.0)
    t_min: float = struct.field(pytree_node=False, default=1e-3)
    t_max: float = struct.field(pytree_node=False, default=1.0)
    name: str = struct.field(pytree_node=False, default="vp_linear")

    def log_alpha(self, t):
        t = jnp.asarray(t)
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def t_of_log_alpha(self, log_alpha):
        # Solve (b1 - b0)/4 t^2 + b0/2 t + log_alpha = 0 for t >= 0 (stable root).
        c = -4.0 * log_alpha * (self.beta_1 - self.beta_0)
        return c / (jnp.sqrt(self.beta_0**2 + c) + self.beta_0) / (self.beta_1 - self.beta_0)


def vp_linear(beta_0: float = 0.1, beta_1: float = 20.0, t_min: float = 1e-3) -> VPLinear:
    return VPLinear(beta_0=beta_0, beta_1=beta_1, t_min=t_min)


@struct.dataclass
class VPCosine(_VPMixin):
    """Continuous cosine VP schedule (Nichol & Dhariwal 2021), as in DPM-Solver's JAX code.

    With ``u(t) = (t + s) / (1 + s) pi / 2`` and ``u0 = u(0)``, ``alpha(t) = cos(u) / cos(u0)``.
    ``log alpha`` is evaluated without cancellation (see :meth:`log_alpha`), so
    ``sigma = sqrt(-expm1(2 log alpha))`` and ``log_snr`` (see :class:`_VPMixin`) keep full
    relative precision down to ``t = 0``; :meth:`t_of_log_alpha` inverts it in the same way.

    ``t_max`` defaults to 0.9946, where beta would otherwise blow up (DPM-Solver's
    ``cosine_t_max`` for ``cosine_beta_max = 999``).
    """

    s: float = struct.field(pytree_node=False, default=0.008)
    t_min: float = struct.field(pytree_node=False, default=1e-3)
    t_max: float = struct.field(pytree_node=False, default=0.9946)
    name: str = struct.field(pytree_node=False, default="vp_cosine")

    def _u0(self) -> float:
        return self.s / (1.0 + self.s) * math.pi / 2.0

    def log_alpha(self, t):
        """``log alpha = log(cos(u) / cos(u0))``, cancellation-free; ``k = pi / (2 (1 + s))``.

        For ``t < 1/2`` (``alpha > 0.7``), with ``(u + u0) / 2 = (t + 2 s) k / 2``,
        ``(u - u0) / 2 = t k / 2`` and
        ``cos(u) - cos(u0) = -2 sin((u + u0) / 2) sin((u - u0) / 2)``:

            log alpha = log1p(-2 sin((t + 2 s) k / 2) sin(t k / 2) / cos(u0)).

        For ``t >= 1/2``, with ``cos(u) = sin(pi / 2 - u) = sin((1 - t) k)`` (``1 - t`` is exact
        there in binary floating point):

            log alpha = log(sin((1 - t) k)) - log(cos(u0)).
        """
        t = jnp.asarray(t)
        k = math.pi / (2.0 * (1.0 + self.s))
        c0 = math.cos(self._u0())
        small = t < 0.5
        ts, tl = jnp.where(small, t, 0.0), jnp.where(small, 0.5, t)  # no NaN in either branch
        x = (-2.0 / c0) * jnp.sin((ts + 2.0 * self.s) * (0.5 * k)) * jnp.sin(ts * (0.5 * k))
        return jnp.where(small, jnp.log1p(x), jnp.log(jnp.sin((1.0 - tl) * k)) - math.log(c0))

    def t_of_log_alpha(self, log_alpha):
        """``t = (u - u0) 2 (1 + s) / pi`` with ``u - u0 = atan2(sin(u - u0), cos(u - u0))``.

        With ``c0, s0 = cos(u0), sin(u0)``, ``e1 = expm1(log alpha)``, ``e2 = expm1(2 log alpha)``
        (both <= 0) and ``cos(u) = c0 alpha``:

            sin(u)      = sqrt(s0^2 - c0^2 e2),
            sin(u - u0) = c0 (-c0^2 e2 / (sin(u) + s0) - s0 e1),
            cos(u - u0) = c0^2 alpha + s0 sin(u),

        each a sum of non-negative terms, so ``t`` keeps full relative precision as ``t -> 0``.
        """
        log_alpha = jnp.asarray(log_alpha)
        u0 = self._u0()
        c0, s0 = math.cos(u0), math.sin(u0)
        e1, e2 = jnp.expm1(log_alpha), jnp.expm1(2.0 * log_alpha)
        sin_u = jnp.sqrt(s0**2 - c0**2 * e2)
        sin_d = c0 * (-(c0**2) * e2 / (sin_u + s0) - s0 * e1)
        cos_d = c0**2 * jnp.exp(log_alpha) + s0 * sin_u
        return jnp.arctan2(sin_d, cos_d) * (2.0 * (1.0 + self.s) / math.pi)


def vp_cosine(s: float = 0.008, t_min: float = 1e-3, t_max: float = 0.9946) -> VPCosine:
    return VPCosine(s=s, t_min=t_min, t_max=t_max)


@struct.dataclass
class SigmaSchedule:
    """``alpha = 1, sigma = t``: variance exploding (VE) and EDM schedules in sigma-time."""

    t_min: float = struct.field(pytree_node=False, default=0.002)
    t_max: float = struct.field(pytree_node=False, default=80.0)
    sigma_data: float = struct.field(pytree_node=False, default=0.5)
    name: str = struct.field(pytree_node=False, default="edm")
    kind = "sigma"

    def alpha(self, t):
        return jnp.ones_like(jnp.asarray(t))

    def sigma(self, t):
        return jnp.asarray(t)

    def sigma_hat(self, t):
        return jnp.asarray(t)

    def log_snr(self, t):
        return -jnp.log(jnp.asarray(t))

    def t_of_log_snr(self, lam):
        return jnp.exp(-jnp.asarray(lam))

    def prior_std(self, t):
        """Std of the initial noise ``x_T = prior_std * z``: sigma(t_start), as in EDM."""
        return t


def edm(sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5) -> SigmaSchedule:
    """EDM schedule (Karras et al. 2022): sigma in [0.002, 80], sigma_data 0.5."""
    return SigmaSchedule(t_min=sigma_min, t_max=sigma_max, sigma_data=sigma_data, name="edm")


def ve(sigma_min: float = 0.01, sigma_max: float = 50.0) -> SigmaSchedule:
    """VE SDE (Song et al. 2021, score_sde ``VESDE``) in sigma-time: sigma in [0.01, 50]."""
    return SigmaSchedule(t_min=sigma_min, t_max=sigma_max, sigma_data=0.5, name="ve")


Schedule = Union[VPDiscrete, VPLinear, VPCosine, SigmaSchedule]

SCHEDULES = {
    "vp_discrete": vp_discrete,
    "vp_linear": vp_linear,
    "vp_cosine": vp_cosine,
    "ve": ve,
    "edm": edm,
}


def get_schedule(name: str) -> Schedule:
    """Schedule by name, with default parameters. Raises ``ValueError`` listing valid names."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    return SCHEDULES[name]()
