"""Stochastic solvers against independent float64 references with the same injected noise.

Each reference is written from its source's own formulation (not jdiff's): DDIM (Song et al.
2021, eq. 16) in alpha-bar terms, k-diffusion's ``sample_euler_ancestral`` and
``sample_dpmpp_2m_sde`` in Karras' sigma variables (``x_hat = x / alpha``, ``sigma_hat``). The
noise of step i is the normal draw jdiff makes there: ``normal(fold_in(fold_in(key, 0), i))``
(the solver's stream, :func:`jdiff.sampling.key_streams`). A wrong noise scale (e.g. DDIM's
``eta`` instead of ``eta**2`` in the variance) moves the result by far more than the tolerance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import grids, solvers
from jdiff.testbeds import get_testbed

N = 12
KEY = jax.random.key(21)


@pytest.fixture(scope="module")
def setup(vp):
    tb = get_testbed("gauss16d")
    g = np.asarray(grids.make_grid(vp, "logsnr", N), np.float64)
    x_T = np.asarray(jax.random.normal(jax.random.key(5), (32, 16)) * vp.prior_std(g[0]), np.float32)
    solver_key = jdiff.sampling.key_streams(KEY)[0]
    z = [np.asarray(jax.random.normal(jax.random.fold_in(solver_key, i), x_T.shape, jnp.float32),
                    np.float64) for i in range(N)]
    with jax.enable_x64(True):
        t = jnp.asarray(g)
        safe = jnp.where(t == 0, 1.0, t)
        alpha = np.where(g == 0, 1.0, np.asarray(vp.alpha(safe), np.float64))
        sigma = np.where(g == 0, 0.0, np.asarray(vp.sigma(safe), np.float64))

    def x0_of(x, i):
        with jax.enable_x64(True):
            return np.asarray(tb.x0(jnp.asarray(x), alpha[i], sigma[i]), np.float64)

    return tb, g, x_T, z, alpha, sigma, x0_of


def _jdiff(vp, tb, g, x_T, solver):
    return np.asarray(jdiff.sample(tb.model_fn(vp), vp, solver, jnp.asarray(g, jnp.float32),
                                   jnp.asarray(x_T), KEY), np.float64)


@pytest.mark.parametrize("eta", [0.3, 0.7, 1.0])
def test_ddim_eta_against_the_ddim_paper(vp, setup, eta):
    tb, g, x_T, z, alpha, sigma, x0_of = setup
    x = x_T.astype(np.float64)
    for i in range(N):
        ab_t, ab_s = alpha[i] ** 2, alpha[i + 1] ** 2  # alpha-bar of the DDIM paper
        x0 = x0_of(x, i)
        e = (x - np.sqrt(ab_t) * x0) / np.sqrt(1 - ab_t)
        if i == N - 1:  # to t = 0: sigma_eta = 0
            x = x0
            break
        sig = eta * np.sqrt((1 - ab_s) / (1 - ab_t)) * np.sqrt(1 - ab_t / ab_s)  # eq. 16
        x = np.sqrt(ab_s) * x0 + np.sqrt(1 - ab_s - sig**2) * e + sig * z[i]
    got = _jdiff(vp, tb, g, x_T, solvers.ddim(eta))
    np.testing.assert_allclose(got, x, rtol=0, atol=2e-4)


def test_euler_ancestral_against_k_diffusion(vp, setup):
    tb, g, x_T, z, alpha, sigma, x0_of = setup
    eta = 0.6
    sh = sigma / alpha
    xh = x_T.astype(np.float64) / alpha[0]
    for i in range(N):
        d = (xh - x0_of(alpha[i] * xh, i)) / sh[i]  # to_d
        s_from, s_to = sh[i], sh[i + 1]
        up = min(s_to, eta * np.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2))
        down = np.sqrt(s_to**2 - up**2)
        xh = xh + d * (down - s_from)
        if s_to > 0:
            xh = xh + z[i] * up
    got = _jdiff(vp, tb, g, x_T, solvers.euler_ancestral(eta))
    np.testing.assert_allclose(got, alpha[N] * xh, rtol=0, atol=2e-4)


def _kdiff_sde(setup, correction, s_noise=1.0, eta=1.0):
    """k-diffusion's SDE-DPM-Solver++ loop in (x_hat, sigma_hat), t = -log sigma_hat: the
    first-order exponential step, ``correction(den, h, h_eta, past)`` (``past``: the earlier
    steps' (denoised, h), newest first), then the noise; a step onto sigma = 0 returns the data
    prediction. Returns the final sample in x."""
    tb, g, x_T, z, alpha, sigma, x0_of = setup
    sh = sigma / alpha
    xh = x_T.astype(np.float64) / alpha[0]
    past = []
    for i in range(N):
        den = x0_of(alpha[i] * xh, i)
        if sh[i + 1] == 0:
            return alpha[N] * den
        h = np.log(sh[i]) - np.log(sh[i + 1])
        h_eta = h * (eta + 1)
        xh = np.exp(-h_eta) * xh + -np.expm1(-h_eta) * den
        xh = xh + correction(den, h, h_eta, past)
        xh = xh + z[i] * sh[i + 1] * np.sqrt(-np.expm1(-2 * eta * h)) * s_noise
        past.insert(0, (den, h))
    return alpha[N] * xh


@pytest.mark.parametrize("s_noise", [1.0, 0.5])
def test_dpmpp_2m_sde_against_k_diffusion(vp, setup, s_noise):
    """k-diffusion's ``sample_dpmpp_2m_sde`` (midpoint, eta = 1) has no lower-order final steps:
    compared on N = 12 < 15 with jdiff's rule off."""

    def midpoint(den, h, h_eta, past):
        if not past:
            return 0.0
        den_1, h_1 = past[0]
        return 0.5 * -np.expm1(-h_eta) * (h / h_1) * (den - den_1)

    want = _kdiff_sde(setup, midpoint, s_noise)
    solver = solvers.dpm_solver_multistep(2, eta=1.0, s_noise=s_noise, lower_order_final=False)
    got = _jdiff(vp, setup[0], setup[1], setup[2], solver)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)


def test_dpmpp_3m_sde_against_k_diffusion(vp, setup):
    """k-diffusion's ``sample_dpmpp_3m_sde`` (eta = 1): the published third-order coefficient,
    i.e. jdiff's ``reference_d2=True`` (README: the Taylor-correct one differs), no lower-order
    final steps."""

    def third_order(den, h, h_eta, past):
        phi_2 = np.expm1(-h_eta) / h_eta + 1
        if len(past) >= 2:
            (den_1, h_1), (den_2, h_2) = past[:2]
            r0, r1 = h_1 / h, h_2 / h
            d1_0, d1_1 = (den - den_1) / r0, (den_1 - den_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            return phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
        if past:
            den_1, h_1 = past[0]
            return phi_2 * (den - den_1) / (h_1 / h)
        return 0.0

    want = _kdiff_sde(setup, third_order)
    solver = solvers.dpm_solver_multistep(3, eta=1.0, reference_d2=True, lower_order_final=False)
    got = _jdiff(vp, setup[0], setup[1], setup[2], solver)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
