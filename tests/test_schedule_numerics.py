"""float32 accuracy of the schedules against float64 references (small arrays, no hypothesis).

Tolerances are in units of the float32 unit roundoff ``U = 2**-24`` (half an ulp of 1), each a
few times the largest error measured (jax 0.10.2, CPU), and far below what a cancellation-prone
formula gives (the former vp_cosine, ``log cos(u) - log cos(u0)``, was off by 7e-3 in sigma at
t = 1e-4). Schedules are evaluated under ``jax.jit``, as the samplers run them (and one compile per
function is much faster than op-by-op dispatch).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import schedules

U = 2.0**-24  # float32 unit roundoff

# Small times where log alpha ~ -t: 1 - alpha^2 cancels unless computed as -expm1(2 log alpha).
# Four points a decade, 1e-6 .. 1e-2 included.
SMALL_T = np.geomspace(1e-6, 1e-2, 17).astype(np.float32)

VP_NAMES = [n for n in schedules.SCHEDULES if schedules.get_schedule(n).kind == "vp"]


@jax.jit
def _forward(s, t):
    return s.alpha(t), s.sigma(t), s.log_snr(t)


@jax.jit
def _round_trip(s, t):
    return s.t_of_log_snr(s.log_snr(t))


def _times(s, n=32):
    """float32 times over [t_min, t_max], spaced both geometrically and uniformly."""
    t = np.concatenate([np.geomspace(s.t_min, s.t_max, n), np.linspace(s.t_min, s.t_max, n)])
    return t.astype(np.float32)


def _cosine_reference(s, t):
    """float64 alpha, sigma, log_snr of the cosine schedule from an independent closed form.

    With ``u = (t + s) / (1 + s) pi / 2`` and ``u0 = u(0)``: ``alpha = cos(u) / cos(u0)`` and
    ``sigma^2 = 1 - alpha^2 = (cos^2 u0 - cos^2 u) / cos^2 u0 = sin(u + u0) sin(u - u0) / cos^2 u0``
    with ``u - u0 = t / (1 + s) pi / 2`` formed from ``t`` directly: no cancellation (agrees with
    50-digit mpmath to 1e-15 relative over t in [1e-8, 0.9946]).
    """
    t = np.asarray(t, np.float64)
    k = np.pi / (2.0 * (1.0 + s.s))
    u, u0 = (t + s.s) * k, s.s * k
    alpha = np.cos(u) / np.cos(u0)
    sigma = np.sqrt(np.sin(u + u0) * np.sin(t * k)) / np.cos(u0)
    return alpha, sigma, np.log(alpha) - np.log(sigma)


@pytest.mark.parametrize("where", ["small_t", "range"])
def test_vp_cosine_float32_matches_float64(where):
    """float32 vp_cosine against float64, for t in 1e-6..1e-2 and over [t_min, t_max].

    Tolerances, with the largest errors measured (these times; a dense 44,000-point scan in
    parentheses): sigma 10 U relative (2.2 U; 4.3 U); log_snr and log alpha 8 U (|value| + 1)
    absolute, as float32 rounds a log-domain value to U |value| (log_snr 1.6; 3.6; log alpha, i.e.
    alpha relative, 1.1; 1.9). The former formula is off in sigma by 6e-2 at t = 1e-6, 7e-3 at
    1e-4 and 1.4e-5 (230 U) at 1e-3."""
    s = schedules.vp_cosine()
    t32 = SMALL_T if where == "small_t" else _times(s)
    alpha, sigma, lam = _cosine_reference(s, t32)
    got = _forward(s, jnp.asarray(t32))
    assert all(g.dtype == jnp.float32 for g in got)
    got_alpha, got_sigma, got_lam = (np.asarray(g, np.float64) for g in got)
    np.testing.assert_allclose(got_sigma, sigma, rtol=10 * U, atol=0)
    log_alpha = np.log(alpha)
    err_log_alpha = np.abs(np.log(got_alpha) - log_alpha)
    np.testing.assert_array_less(err_log_alpha, 8 * U * (np.abs(log_alpha) + 1))
    np.testing.assert_array_less(np.abs(got_lam - lam), 8 * U * (np.abs(lam) + 1))


def _roundtrip_bound(s, t32):
    """What a float32 round trip ``t -> log_snr -> t`` achieves: ``U (|lam| + 1) |dt/dlam| + U t``.

    log_snr itself carries an absolute error of about ``U (|lam| + 1)`` (its rounding plus that of
    log alpha and log sigma), which the inverse turns into ``|dt/dlam|`` times as much in t; the
    inverse adds its own rounding of t. ``dt/dlam`` is a central difference of the float64 schedule
    (relative step 1e-6: accurate to far better than the factor the tolerance allows).
    """
    t = t32.astype(np.float64)
    with jax.enable_x64(True):
        lam, lam_hi, lam_lo = (np.asarray(_forward(s, jnp.asarray(x))[2])
                               for x in (t, t * (1 + 1e-6), t * (1 - 1e-6)))
    dlam_dt = (lam_hi - lam_lo) / (2e-6 * t)
    return U * ((np.abs(lam) + 1) / np.abs(dlam_dt) + t)


@pytest.mark.parametrize("name", list(schedules.SCHEDULES))
def test_float32_log_snr_round_trip(name):
    """float32 ``|t_of_log_snr(log_snr(t)) - t|`` within 8 ``_roundtrip_bound``s on [t_min, t_max].

    Measured maxima in bounds (these times; a dense 40,000-point scan in parentheses): vp_discrete
    1.0 (1.5), vp_linear 1.4 (2.2), vp_cosine 2.0 (2.7), ve 0.6 (0.7), edm 0.6 (0.8); the former
    vp_cosine reached 830 (6e-4 relative at t = 1.2e-3)."""
    s = schedules.get_schedule(name)
    t32 = _times(s)
    back = _round_trip(s, jnp.asarray(t32))
    assert back.dtype == jnp.float32
    err = np.abs(np.asarray(back, np.float64) - t32)
    np.testing.assert_array_less(err, 8 * _roundtrip_bound(s, t32))


def test_vp_cosine_float32_round_trip_at_small_t():
    """The same bound for t in 1e-6..1e-2, below vp_cosine's t_min (measured maximum 1.4 bounds)."""
    s = schedules.vp_cosine()
    back = np.asarray(_round_trip(s, jnp.asarray(SMALL_T)), np.float64)
    np.testing.assert_array_less(np.abs(back - SMALL_T), 8 * _roundtrip_bound(s, SMALL_T))


@pytest.mark.parametrize("name", VP_NAMES)
def test_float32_vp_alpha_sigma_on_unit_circle(name):
    """``|alpha^2 + sigma^2 - 1| < 6 U`` in float32 over [t_min, t_max] (summed in float64).

    With alpha and sigma each within ~1.5 U relative, the sum is off by at most ~3 U; measured
    maxima 1.6 U (these times) and 2.7 U (dense scan)."""
    s = schedules.get_schedule(name)
    a, sg, _ = (np.asarray(g, np.float64) for g in _forward(s, jnp.asarray(_times(s))))
    np.testing.assert_array_less(np.abs(a * a + sg * sg - 1.0), 6 * U)


def test_vp_cosine_float32_end_points():
    """t = 0 is clean data (alpha 1, sigma 0, log_snr +inf) and log_snr = -inf maps to t = 1."""
    s = schedules.vp_cosine()
    a, sg, lam = (float(g[0]) for g in _forward(s, jnp.zeros(1, jnp.float32)))
    assert (a, sg, lam) == (1.0, 0.0, math.inf)
    back = np.asarray(jax.jit(s.t_of_log_snr)(jnp.asarray([np.inf, -np.inf], jnp.float32)))
    assert back[0] == 0.0 and back[1] == pytest.approx(1.0, abs=1e-6)
