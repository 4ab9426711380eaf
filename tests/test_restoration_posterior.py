"""Exact Gaussian-mixture posteriors under y = A x + sigma_y n: against grid quadrature and
importance sampling in 2-D, noiseless consistency, limits, and equivalent operators."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.restoration import (
    Identity, Mask, Matrix, exact_posterior, posterior_cov, posterior_mean, posterior_params,
    prior_arrays, sample_posterior,
)
from jdiff.testbeds import from_arrays, get_testbed


def _full_cov_2d():
    """3 components in 2-D with full covariances (exercises the rotated path)."""
    covs = [[[0.05, 0.03], [0.03, 0.04]], [[0.02, -0.01], [-0.01, 0.06]], [[0.08, 0.0], [0.0, 0.01]]]
    return from_arrays([0.5, 0.3, 0.2], [[-0.8, 0.2], [0.5, 0.7], [0.3, -0.9]], covs=covs, name="full2d")


PRIORS = {"mix2d": lambda: get_testbed("mix2d"), "full2d": _full_cov_2d}
A_2D = np.array([[1.0, 0.5]])
SIGMA = 0.3
Y_2D = np.array([[0.4], [-0.9]])  # two measurements (batch of 2)


def _draw(prior, n, seed):
    """Prior samples and their components, NumPy float64 (no XLA compilation)."""
    w, mu, covs = prior_arrays(prior)
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(w), size=n, p=w)
    chol = np.linalg.cholesky(covs)
    return mu[comp] + np.einsum("nde,ne->nd", chol[comp], rng.standard_normal((n, mu.shape[1]))), comp


def _compile_fast(fn, *args):
    """``jax.jit(fn)`` for ``args`` without XLA's backend optimisations (faster to compile)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={
        "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})


def _log_gauss(x, mu, cov):
    """log N(x; mu, cov) for x (N, D), NumPy float64."""
    d = x - mu
    sol = np.linalg.solve(cov, d.T).T
    return -0.5 * (np.sum(d * sol, axis=1) + np.linalg.slogdet(2 * np.pi * cov)[1])


def _component_log_prior(x, prior):
    w, mu, covs = prior_arrays(prior)
    return np.stack([np.log(w[k]) + _log_gauss(x, mu[k], covs[k]) for k in range(len(w))], axis=1)


def _log_lik(x, y, A, sigma):
    r = y[None, :] - x @ A.T
    m = A.shape[0]
    return -0.5 * np.sum(r**2, axis=1) / sigma**2 - 0.5 * m * np.log(2 * np.pi * sigma**2)


@pytest.mark.parametrize("prior_name", list(PRIORS))
def test_closed_form_matches_grid_quadrature_2d(prior_name):
    """Posterior mean, covariance, component weights and evidence against a fine 2-D grid
    quadrature of prior x likelihood (the integrands are Gaussians well inside the box and
    resolved by 15+ points per standard deviation: quadrature error far below 1e-8)."""
    prior = PRIORS[prior_name]()
    half = 1.8 if prior_name == "mix2d" else 2.8
    g = np.linspace(-half, half, 721)
    h = g[1] - g[0]
    X = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    comp = _component_log_prior(X, prior)  # (N, K)
    op = Matrix.create(A_2D)
    p = posterior_params(prior, op, Y_2D, SIGMA)
    mean, cov = posterior_mean(prior, op, Y_2D, SIGMA), posterior_cov(prior, op, Y_2D, SIGMA)
    for b, y in enumerate(Y_2D):
        joint = np.exp(comp + _log_lik(X, y, A_2D, SIGMA)[:, None])  # (N, K)
        Z = joint.sum() * h * h
        tot = joint.sum(axis=1)
        m = (X * tot[:, None]).sum(0) / tot.sum()
        d = X - m
        c = (d[:, :, None] * d[:, None, :] * tot[:, None, None]).sum(0) / tot.sum()
        pi = joint.sum(0) / joint.sum()
        np.testing.assert_allclose(mean[b], m, atol=1e-8)
        np.testing.assert_allclose(cov[b], c, atol=1e-8)
        np.testing.assert_allclose(np.exp(p.log_weights[b]), pi, atol=1e-8)
        np.testing.assert_allclose(p.log_evidence[b], np.log(Z), atol=1e-7)
        # each component's posterior mean as well
        for k in range(pi.size):
            if pi[k] > 1e-6:
                mk = (X * joint[:, k:k + 1]).sum(0) / joint[:, k].sum()
                np.testing.assert_allclose(p.means[b, k], mk, atol=1e-7)


@pytest.mark.parametrize("prior_name", list(PRIORS))
def test_closed_form_matches_importance_sampling_2d(prior_name):
    """Brute force: 1e6 prior samples weighted by the likelihood. Every estimate agrees with the
    closed form to within 5 of its own Monte Carlo standard errors (self-normalised IS, delta
    method)."""
    prior = PRIORS[prior_name]()
    w = prior_arrays(prior)[0]
    x, comp = _draw(prior, 1_000_000, 0)
    op = Matrix.create(A_2D)
    p = posterior_params(prior, op, Y_2D, SIGMA)
    mean, cov = posterior_mean(prior, op, Y_2D, SIGMA), posterior_cov(prior, op, Y_2D, SIGMA)
    for b, y in enumerate(Y_2D):
        lw = _log_lik(x, y, A_2D, SIGMA)
        wt = np.exp(lw - lw.max())
        wt /= wt.sum()
        ess = 1.0 / np.sum(wt**2)
        assert ess > 1e4

        def check(f, exact, what):
            est = wt @ f
            se = np.sqrt(np.sum(wt[:, None] ** 2 * (f - est) ** 2, axis=0))
            assert np.all(np.abs(est - exact) <= 5 * se + 1e-12), f"{what}: {est} vs {exact} (se {se})"

        check(x, mean[b], "mean")
        d = x - mean[b]
        check(np.stack([d[:, 0] ** 2, d[:, 0] * d[:, 1], d[:, 1] ** 2], 1),
              np.array([cov[b, 0, 0], cov[b, 0, 1], cov[b, 1, 1]]), "covariance")
        check((comp[:, None] == np.arange(len(w))[None]).astype(float), np.exp(p.log_weights[b]), "weights")


def test_noiseless_mask_is_exactly_consistent():
    """sigma_y = 0 with a mask: every posterior sample has A x = y (float64 round-off for the
    exact sampler; float32 precision for the posterior mixtures' own sampler); the posterior
    covariance vanishes on the observed dimensions."""
    prior = get_testbed("mix16d")
    op = Mask.random(0, (16,), 0.5)
    keep = np.asarray(op.mask)
    x_true = _draw(prior, 3, 1)[0]
    y = np.where(keep, x_true, 0.0)
    xs = sample_posterior(jax.random.key(2), prior, op, y, 0.0, 2000)
    assert xs.shape == (3, 2000, 16)
    assert np.max(np.abs(xs[:, :, keep] - x_true[:, None, keep])) < 1e-12
    assert np.all(np.std(xs[:, :, ~keep], axis=1) > 1e-3)  # the missing dims do vary
    p = posterior_params(prior, op, y, 0.0)
    assert np.max(np.abs(p.covs[:, keep])) < 1e-12
    np.testing.assert_allclose(posterior_mean(prior, op, y, 0.0)[:, keep], x_true[:, keep], atol=1e-12)
    posts = exact_posterior(prior, op, y, 0.0)
    draw = _compile_fast(lambda post, key: post.sample(key, 500), posts[0], jax.random.key(0))
    for b, post in enumerate(posts):
        s = np.asarray(draw(post, jax.random.key(3 + b)), np.float64)
        assert np.max(np.abs(s[:, keep] - x_true[b, keep])) < 1e-5


def test_identity_with_large_noise_tends_to_prior():
    prior = get_testbed("mix16d")
    w, mu, covs = prior_arrays(prior)
    y = _draw(prior, 2, 0)[0]
    op = Identity((16,))
    gaps = []
    for sigma in (10.0, 1e3):
        p = posterior_params(prior, op, y, sigma)
        gap = max(np.max(np.abs(np.exp(p.log_weights) - w)), np.max(np.abs(p.means - mu)),
                  np.max(np.abs(p.covs - covs)))
        gaps.append(gap)
    assert gaps[1] < 1e-5 and gaps[1] < gaps[0] / 1000  # shrinks like 1 / sigma_y^2


@pytest.mark.parametrize("sigma", [0.0, 0.1])
def test_selection_matrix_equals_mask(sigma):
    prior = get_testbed("mix16d")
    mask = Mask.random(4, (16,), 0.5)
    keep = np.asarray(mask.mask)
    mat = Matrix.create(np.eye(16)[keep])
    x = _draw(prior, 2, 5)[0]
    pm = posterior_params(prior, mask, np.where(keep, x, 0.0), sigma)
    px = posterior_params(prior, mat, x[:, keep], sigma)
    for field in ("log_weights", "means", "covs", "log_evidence"):
        np.testing.assert_allclose(getattr(pm, field), getattr(px, field), atol=1e-10, err_msg=field)


def test_rank_deficient_and_overcomplete_operators():
    """Duplicated rows: y = (a x, a x) + sigma n is the single row a with noise sigma / sqrt(2)
    (and at sigma = 0 the same posterior); an overcomplete 20 x 16 matrix matches the unreduced
    Kalman formulas and the full 20-dimensional evidence."""
    prior = get_testbed("mix16d")
    rng = np.random.RandomState(0)
    a = rng.standard_normal((1, 16))
    x = _draw(prior, 2, 6)[0]
    y1 = x @ a.T
    for sigma, dup in ((0.2, np.vstack([a, a])), (0.0, np.vstack([a, 2 * a]))):
        y2 = y1 @ dup[:, :1].T / a[0, 0]  # (a x, a x) or (a x, 2 a x)
        p2 = posterior_params(prior, Matrix.create(dup, dtype=jnp.float32), y2, sigma)
        p1 = posterior_params(prior, Matrix.create(a), y1, sigma / np.sqrt(2) if sigma else 0.0)
        np.testing.assert_allclose(p2.log_weights, p1.log_weights, atol=1e-8)
        np.testing.assert_allclose(p2.means, p1.means, atol=1e-8)
        np.testing.assert_allclose(p2.covs, p1.covs, atol=1e-8)
    A = rng.standard_normal((20, 16)).astype(np.float32).astype(np.float64)
    sigma = 0.1
    y = x @ A.T + sigma * rng.standard_normal((2, 20))
    p = posterior_params(prior, Matrix.create(A), y, sigma)
    w, mu, covs = prior_arrays(prior)
    for k in range(len(w)):
        S = A @ covs[k] @ A.T + sigma**2 * np.eye(20)
        gain = covs[k] @ A.T @ np.linalg.inv(S)
        np.testing.assert_allclose(p.means[:, k], mu[k] + (y - mu[k] @ A.T) @ gain.T, atol=1e-8)
        np.testing.assert_allclose(p.covs[k], covs[k] - gain @ A @ covs[k], atol=1e-10)
    log_joint = np.stack([np.log(w[k]) + _log_gauss(y, A @ mu[k], A @ covs[k] @ A.T + sigma**2 * np.eye(20))
                          for k in range(len(w))], 1)
    top = log_joint.max(1)
    np.testing.assert_allclose(p.log_evidence, top + np.log(np.exp(log_joint - top[:, None]).sum(1)), atol=1e-8)


def test_samples_and_mixture_density_match_the_closed_form():
    """sample_posterior's moments agree with the closed form (Monte Carlo error), and the
    posterior mixture's density is prior x likelihood / evidence."""
    prior = get_testbed("mix16d")
    A = np.random.RandomState(1).standard_normal((5, 16))
    op, sigma = Matrix.create(A), 0.1
    x = _draw(prior, 1, 7)[0]
    y = x @ np.asarray(op.mat, np.float64).T + 0.1 * np.random.RandomState(2).standard_normal((1, 5))
    n = 40000
    xs = sample_posterior(jax.random.key(8), prior, op, y, sigma, n)[0]
    mean, cov = posterior_mean(prior, op, y, sigma)[0], posterior_cov(prior, op, y, sigma)[0]
    se = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(xs.mean(0) - mean) < 5 * se)
    np.testing.assert_allclose(np.cov(xs.T), cov, atol=5 * np.sqrt(2.0 / n) * np.max(np.diag(cov)))
    with jax.enable_x64(True):
        post = exact_posterior(prior, op, y, sigma, dtype=jnp.float64)[0]
        pts = jnp.asarray(xs[:5])
        lp_post = np.asarray(_compile_fast(lambda p, z: p.log_prob(z), post, pts)(post, pts))
        pts = np.asarray(pts)
    p = posterior_params(prior, op, y, sigma)
    Ad = np.asarray(op.mat, np.float64)
    comp = _component_log_prior(pts, prior)
    top = comp.max(1)
    lp_prior = top + np.log(np.exp(comp - top[:, None]).sum(1))
    np.testing.assert_allclose(lp_post, lp_prior + _log_lik(pts, y[0], Ad, sigma) - p.log_evidence[0], atol=1e-8)


def test_bad_inputs_give_one_line_value_errors():
    prior = get_testbed("mix16d")
    op = Mask.random(0, (16,), 0.5)
    y = np.zeros((2, 16))
    cases = [
        (lambda: posterior_params(prior, op, np.zeros((2, 15)), 0.1), r"y must have shape \(batch, 16\)"),
        (lambda: posterior_params(prior, op, y, -0.1), "sigma_y"),
        (lambda: posterior_params(prior, op, y, float("nan")), "sigma_y"),
        (lambda: posterior_params(prior, op, np.full((2, 16), np.nan), 0.1), "non-finite"),
        (lambda: posterior_params(prior, Mask.random(0, (8,), 0.5), np.zeros((1, 8)), 0.1), "dimension 16"),
        (lambda: posterior_params(prior, Identity((4, 4, 1)), np.zeros((1, 4, 4, 1)), 0.1), "dimension 16"),
        (lambda: sample_posterior(0, prior, op, y, 0.1, 0), "positive integer"),
        (lambda: sample_posterior("seed", prior, op, y, 0.1, 5), "key"),
    ]
    failures = []
    for i, (fn, pattern) in enumerate(cases):
        try:
            fn()
        except ValueError as e:
            if "\n" in str(e) or not re.search(pattern, str(e)):
                failures.append(f"case {i}: {e}")
        else:
            failures.append(f"case {i}: no ValueError")
    assert not failures, failures
