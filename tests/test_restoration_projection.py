"""DDNM, DDNM+, DDRM and RePaint: exact consistency, against the exact posterior, float64 parity
with transcriptions of the official updates, NFE, batching and compilation, bad inputs.

What theory says and what is tested. None of these methods samples the exact posterior: the
model's data prediction ``E[x0 | x_t]`` is that of the unconditional x_t, whose measured
coordinates carry noise the posterior process would not have, so they converge (as NFE grows) to
biased limits. They are exact when the measured and unmeasured coordinates are independent under
the prior (a diagonal Gaussian with a mask: the unmeasured ones then follow the prior exactly) and
there the sample mean must match the exact posterior mean to Monte-Carlo error. On mix16d (a
correlated mixture) the tests check that more NFE helps and that the methods beat the naive
estimate ``A^+ y`` + prior mean in the null space by a stated margin."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff.paths import _sample_path
from jdiff.restoration import AvgPoolSR, Mask, Matrix, posterior_mean, prior_arrays
from jdiff.restoration import projection as P
from jdiff.restoration import repaint as RP
from jdiff.sampling import compiled_programs, stream_keys
from jdiff.solvers import get_solver
from jdiff.testbeds import from_arrays, get_testbed


B, N = 4, 6  # batch and grid steps shared by the fast tests (shared compiled programs)


@pytest.fixture(scope="module")
def sch():
    return jdiff.schedules.vp_discrete()


@pytest.fixture(scope="module")
def mix():
    return get_testbed("mix16d")


@pytest.fixture(scope="module")
def mask16():
    return Mask.random(0, (16,), 0.5)


_GRIDS: dict = {}


def _grid(sch, n):
    """The logsnr grid of n steps to t = 0 of the (one) schedule, built once."""
    if n not in _GRIDS:
        _GRIDS[n] = jdiff.grids.make_grid(sch, "logsnr", n, "zero")
    return _GRIDS[n]


def _draw(prior, n, seed):
    """Prior samples, NumPy float64 (no XLA compilation)."""
    w, mu, covs = prior_arrays(prior)
    rng = np.random.default_rng(seed)
    comp = rng.choice(len(w), size=n, p=w)
    chol = np.linalg.cholesky(covs)
    return mu[comp] + np.einsum("nde,ne->nd", chol[comp], rng.standard_normal((n, mu.shape[1])))


def _measure_mask(op, x, sigma_y, seed):
    """``y = mask * (x + sigma_y n)`` in NumPy float32 (as :func:`measure` for masks)."""
    m = np.asarray(op.mask)
    n = np.random.default_rng(seed).standard_normal(x.shape)
    return jnp.asarray(np.where(m, x + sigma_y * n, 0.0), jnp.float32)


def _mask_err(op, x, y):
    m = np.asarray(op.mask)
    return float(np.max(np.abs(np.where(m, np.asarray(x, np.float64) - np.asarray(y, np.float64), 0))))


@dataclasses.dataclass(frozen=True)
class _AsImage:
    """A vector model applied to images: (B, H, W, C) -> flatten -> model -> reshape."""

    def __call__(self, base, x, t, args=None):
        return base(x.reshape(x.shape[0], -1), t, args).reshape(x.shape)


@dataclasses.dataclass(frozen=True)
class _Counting:
    """Counts the model's evaluations on the host (``calls`` is the module-level list)."""

    def __call__(self, base, x, t, args=None):
        jax.debug.callback(lambda: _CALLS.append(1))
        return base(x, t, args)


_CALLS: list = []


def _rms(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


# ---------------------------------------------------------------------------------------------
# DDNM: exact consistency with any solver
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "unipc_bh2"])
def test_ddnm_hook_noiseless_is_consistent_with_any_solver(sch, mix, mask16, solver):
    """A x = y to float precision from the solver itself (the hook's final projection off); a
    new measurement and operator of the same shapes and a re-created hook reuse the program."""
    y = _measure_mask(mask16, _draw(mix, B, 1), 0.0, 0)
    x_T = jax.random.normal(jax.random.key(2), (B, 16))
    run = lambda op, y: jdiff.sample(  # noqa: E731
        mix.model_fn(sch), sch, get_solver(solver), _grid(sch, N), x_T, jax.random.key(3),
        args=P.restoration_args(op, y, 0.0), hooks=(P.DDNM(final_projection=False),))
    out = run(mask16, y)
    assert np.all(np.isfinite(out))
    assert _mask_err(mask16, out, y) < 1e-6
    assert np.min(np.abs(np.where(np.asarray(mask16.mask), 1.0, out))) > 0  # the model's, not 0
    n0 = compiled_programs()
    mask2 = Mask.random(1, (16,), 0.5)
    y2 = _measure_mask(mask2, _draw(mix, B, 2), 0.0, 0)
    assert _mask_err(mask2, run(mask2, y2), y2) < 1e-6
    assert compiled_programs() == n0


@pytest.mark.parametrize("solver", ["dpmpp_2m", pytest.param("ddim", marks=pytest.mark.slow),
                                    pytest.param("unipc_bh2", marks=pytest.mark.slow)])
def test_ddnm_hook_noiseless_is_consistent_image_sr(sch, mix, solver):
    """Average-pooling super-resolution of 4 x 4 images (the mix16d model on flattened images),
    through ``restore_ddnm`` with the hook (default: final projection on)."""
    model = jax.tree_util.Partial(_AsImage(), mix.model_fn(sch))
    op = AvgPoolSR(2, (4, 4, 1))
    x = _draw(mix, B, 4).reshape(B, 4, 4, 1)
    y = jnp.asarray(x.reshape(B, 2, 2, 2, 2, 1).mean(axis=(2, 4)), jnp.float32)
    out = P.restore_ddnm(model, sch, op, y, 0.0, N, jax.random.key(5), solver=solver)
    assert out.shape == x.shape
    lo = np.asarray(out, np.float64).reshape(B, 2, 2, 2, 2, 1).mean(axis=(2, 4))
    assert np.max(np.abs(lo - np.asarray(y))) < 1e-6
    assert _rms(out, np.repeat(np.repeat(np.asarray(y), 2, 1), 2, 2)) > 1e-3  # not just A^+ y


@pytest.mark.slow
@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_ddnm_projection_model_transform(sch, mix, mask16, prediction):
    """The projection as a model-function transform: consistent with a multistep solver, and the
    same samples as the hook (up to rounding)."""
    y = _measure_mask(mask16, _draw(mix, B, 1), 0.0, 0)
    x_T = jax.random.normal(jax.random.key(2), (B, 16))
    args = P.restoration_args(mask16, y, 0.0)
    model = mix.model_fn(sch, prediction)
    proj = P.ddnm_projection(model, sch, prediction=prediction)
    solver, g = get_solver("dpmpp_2m"), _grid(sch, N)
    out = jdiff.sample(proj, sch, solver, g, x_T, args=args, prediction=prediction)
    ref = jdiff.sample(model, sch, solver, g, x_T, args=args, prediction=prediction,
                       hooks=(P.DDNM(final_projection=False),))
    assert _mask_err(mask16, out, y) < 1e-6
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-4)


def test_ddnm_own_sampler_time_travel(sch, mix, mask16):
    """DDNM's own sampler with time travel (sample_path): consistent, NFE as planned (model calls
    counted); the same key gives the same samples, a new measurement no new program; identical
    measurements in two rows give different samples."""
    model = jax.tree_util.Partial(_Counting(), mix.model_fn(sch))
    y = _measure_mask(mask16, _draw(mix, B, 6), 0.0, 0)
    y = y.at[1].set(y[0])
    _CALLS.clear()
    run = lambda y: P.restore_ddnm(model, sch, mask16, y, 0.0, 30, jax.random.key(7),  # noqa: E731
                                   travel_length=2, travel_repeat=3, return_plan=True)
    out, plan = run(y)
    jax.block_until_ready(out)
    assert plan.path is not None and len(plan.grid) - 1 < plan.nfe <= 30
    assert len(_CALLS) == plan.nfe == P.ddnm_nfe(plan.grid, 2, 3)
    assert _mask_err(mask16, out, y) < 1e-6
    assert _rms(out[0], out[1]) > 1e-3
    n0 = _sample_path._cache_size()
    again, _ = run(y)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(out))
    y2 = _measure_mask(mask16, _draw(mix, B, 7), 0.0, 0)
    assert _mask_err(mask16, run(y2)[0], y2) < 1e-6
    assert _sample_path._cache_size() == n0


# ---------------------------------------------------------------------------------------------
# Against the exact posterior
# ---------------------------------------------------------------------------------------------
def _independent_gaussian():
    """One diagonal Gaussian in 16-D: measured and unmeasured coordinates are independent, so the
    replacement methods are exact (module docstring)."""
    rng = np.random.RandomState(5)
    return from_arrays([1.0], 0.5 * rng.standard_normal((1, 16)), stds=rng.uniform(0.1, 0.5, (1, 16)),
                       name="diag16d")


def _method(name):
    return P.METHODS.get(name) or RP.METHODS[name]


@pytest.mark.parametrize("method", ["ddnm", "ddrm", pytest.param("repaint", marks=pytest.mark.slow),
                                    pytest.param("ddnm_plus", marks=pytest.mark.slow)])
def test_exact_when_coordinates_independent(sch, mask16, method):
    """Independent prior: the sample mean matches the exact posterior mean to Monte-Carlo error
    (noiseless DDNM/RePaint; DDRM and DDNM+ with sigma_y = 0.1)."""
    prior = _independent_gaussian()
    sy = 0.0 if method in ("ddnm", "repaint") else 0.1
    R = 1000
    y = _measure_mask(mask16, _draw(prior, 2, 8), sy, 9)
    pm = posterior_mean(prior, mask16, y, sy)
    out = _method(method)(prior.model_fn(sch), sch, mask16, jnp.repeat(y, R, axis=0), sy, 20,
                          jax.random.key(10))
    err = _rms(np.asarray(out).reshape(2, R, 16).mean(1), pm)
    # Monte-Carlo error of a mean of R samples: prior std <= 0.5 -> < 0.5 / sqrt(1000) = 0.016
    assert err < 0.02, err


@pytest.mark.parametrize("method", ["ddrm", pytest.param("ddnm", marks=pytest.mark.slow),
                                    pytest.param("ddnm_plus", marks=pytest.mark.slow),
                                    pytest.param("repaint", marks=pytest.mark.slow)])
def test_more_nfe_approaches_exact_posterior_mix16d(sch, mix, mask16, method):
    """mix16d (correlated): error(NFE 50) < error(NFE 10), and at NFE 50 at most 0.8 x the error
    of the naive estimate (y on the measured entries, the prior mean elsewhere). Measured with
    R = 1000 samples per measurement: ddnm 0.37 -> 0.27, ddrm 0.38 -> 0.32, repaint 0.38 -> 0.32
    (NFE 10 -> 50; naive 0.46; Monte-Carlo error 0.005); biased limits, see the module doc."""
    sy = 0.0 if method in ("ddnm", "repaint") else 0.05
    R = 1000
    y = _measure_mask(mask16, _draw(mix, B, 1), sy, 5)
    pm = posterior_mean(mix, mask16, y, sy)
    naive = _rms(np.where(np.asarray(mask16.mask), np.asarray(y), mix.mean_cov()[0]), pm)
    errs = {}
    for nfe in (10, 50):
        out = _method(method)(mix.model_fn(sch), sch, mask16, jnp.repeat(y, R, axis=0), sy, nfe,
                              jax.random.key(7))
        errs[nfe] = _rms(np.asarray(out).reshape(B, R, 16).mean(1), pm)
    assert errs[50] < errs[10], errs
    assert errs[50] < 0.8 * naive, (errs, naive)


# ---------------------------------------------------------------------------------------------
# Float64 parity with transcriptions of the official updates (NumPy, no JAX)
# ---------------------------------------------------------------------------------------------
class _NumpyProblem:
    """A float64 NumPy problem independent of jdiff's arithmetic: a diagonal Gaussian mixture's
    exact noise prediction, the VP-discrete schedule on a grid from its (float32) table, and a
    rank-deficient 8 x 16 matrix operator (a zero singular value inside U's range) through its
    stored SVD factors (the transcriptions check the update equations, given the SVD)."""

    def __init__(self, sch, n_steps):
        mix = get_testbed("mix16d")
        self.w, self.mu, covs = prior_arrays(mix)
        self.var = np.einsum("kdd->kd", covs)
        rng = np.random.RandomState(3)
        a = rng.standard_normal((8, 16))
        a[7] = a[0] + a[1]
        with jax.enable_x64(True):
            self.prior = from_arrays(self.w, self.mu, stds=np.sqrt(self.var), dtype=jnp.float64)
            self.op = Matrix.create(a, dtype=jnp.float64)
        assert int(np.sum(np.asarray(self.op.s) > 0)) == 7  # rank 7 of 8 rows
        self.grid = _grid(sch, n_steps)
        knots = np.asarray(sch.t_knots, np.float64)
        log_alpha = np.asarray(sch.log_alpha_knots, np.float64)
        la = np.interp(self.grid, knots, log_alpha)
        self.t = self.grid
        self.alpha = np.where(self.grid == 0, 1.0, np.exp(la))
        self.sigma = np.where(self.grid == 0, 0.0, np.sqrt(-np.expm1(2 * la)))
        op = self.op
        self.V = np.asarray(op.Vm, np.float64).T  # V(z) = z @ self.V
        self.s = np.asarray(op.s, np.float64)
        self.Ur = np.asarray(op.Ur, np.float64)
        self.mat, self.P = np.asarray(op.mat, np.float64), np.asarray(op.P, np.float64)

    def Ut(self, y):
        c = np.zeros((y.shape[0], self.s.shape[0]))
        c[:, : self.Ur.shape[1]] = y @ self.Ur
        return np.where(self.s > 0, c, 0.0)

    def eps(self, x, i):
        a, sg = self.alpha[i], self.sigma[i]
        var = a**2 * self.var + sg**2  # (K, D)
        d = x[:, None, :] - a * self.mu[None]
        logp = np.log(self.w)[None] - 0.5 * np.sum(np.log(var), 1)[None] - 0.5 * np.sum(d**2 / var[None], 2)
        r = np.exp(logp - logp.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        return sg * np.einsum("bk,bkd->bd", r, d / var[None])


def _ddrm_official(pb, y, sigma_0, etaB, etaA, etaC, z_init, z_steps):
    """NumPy float64 transcription of DDRM's ``efficient_generalized_steps`` (bahjat-kawar/ddrm,
    functions/denoising.py) on any (alpha, sigma) grid. Deviations from the official code:
    ``x_T = alpha_T V(init_y)`` (official ``V(init_y / sigma_T)``, a VP approximation); spectral
    coordinates with s = 0 are "missing" (official: zero entries listed in ``singulars``, as its
    truncated deblurring SVD has, fall in "after"); one noise draw per step shared by the three
    disjoint cases."""
    n = z_init.shape[1]
    singulars, V = pb.s, pb.V
    lite = singulars > 0
    U_t_y = pb.Ut(y)
    Sig_inv_U_t_y = np.zeros_like(U_t_y)
    Sig_inv_U_t_y[:, lite] = U_t_y[:, lite] / singulars[lite]
    largest_sigmas = pb.sigma[0] / pb.alpha[0]
    large_singulars_index = np.where(lite & (singulars * largest_sigmas > sigma_0))[0]
    inv_singulars_and_zero = np.zeros(n)
    inv_singulars_and_zero[large_singulars_index] = sigma_0 / singulars[large_singulars_index]
    init_y = np.zeros_like(z_init)
    init_y[:, large_singulars_index] = U_t_y[:, large_singulars_index] / singulars[large_singulars_index]
    remaining_s = np.sqrt(np.clip(largest_sigmas**2 - inv_singulars_and_zero**2, 0.0, None))
    init_y = init_y + remaining_s * z_init
    x = pb.alpha[0] * (init_y @ V)
    for i in range(len(pb.t) - 1):
        et = pb.eps(x, i)
        x0_t = (x - et * pb.sigma[i]) / pb.alpha[i]  # (xt - et * (1 - at).sqrt()) / at.sqrt()
        sigma_next = pb.sigma[i + 1] / pb.alpha[i + 1]  # (1 - at_next).sqrt() / at_next.sqrt()
        V_t_x0 = x0_t @ V.T
        SVt_x0 = V_t_x0 * singulars
        cond_before = lite & (singulars * sigma_next > sigma_0)
        cond_after = lite & (singulars * sigma_next < sigma_0)
        std_nextC = sigma_next * etaC
        sigma_tilde_nextC = np.sqrt(sigma_next**2 - std_nextC**2)
        std_nextA = sigma_next * etaA
        sigma_tilde_nextA = np.sqrt(sigma_next**2 - std_nextA**2)
        diff_sigma_t_nextB = np.sqrt(sigma_next**2 - sigma_0**2 / singulars[cond_before] ** 2 * etaB**2)
        z = z_steps[i]
        Vt_xt_mod_next = V_t_x0 + sigma_tilde_nextC * (et @ V.T) + std_nextC * z
        with np.errstate(divide="ignore", invalid="ignore"):  # sigma_0 = 0: no "after" entries
            Vt_xt_mod_next[:, cond_after] = (V_t_x0[:, cond_after] + sigma_tilde_nextA
                                             * ((U_t_y - SVt_x0) / sigma_0)[:, cond_after]
                                             + std_nextA * z[:, cond_after])
        Vt_xt_mod_next[:, cond_before] = (Sig_inv_U_t_y[:, cond_before] * etaB
                                          + (1 - etaB) * V_t_x0[:, cond_before]
                                          + diff_sigma_t_nextB * z[:, cond_before])
        x = pb.alpha[i + 1] * (Vt_xt_mod_next @ V)
    return x


@pytest.mark.parametrize("sigma_y", [0.3, pytest.param(0.0, marks=pytest.mark.slow)])
def test_ddrm_matches_official_update_float64(sch, sigma_y):
    """ddrm_sample against the NumPy float64 transcription of the official update with the same
    noise: identical to 1e-10. sigma_y = 0.3 exercises all three cases (before/after/missing)."""
    pb = _NumpyProblem(sch, 5)
    Bp, n = 3, 16
    rng = np.random.default_rng(0)
    y = _draw(pb.prior, Bp, 1) @ pb.mat.T + sigma_y * rng.standard_normal((Bp, 8))
    sn = pb.sigma[1:] / pb.alpha[1:]
    if sigma_y > 0:  # the grid visits both sides of some threshold sigma_y / s_i
        prod = pb.s[pb.s > 0][:, None] * sn[None]
        assert (prod > sigma_y).any() and (prod < sigma_y).any()
    with jax.enable_x64(True):
        key = jax.random.key(2)
        out = P.ddrm_sample(pb.prior.model_fn(sch), sch, pb.op, jnp.asarray(y), pb.grid, key,
                            sigma_y=sigma_y, eta=0.85, eta_b=0.9)
        z_init = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), (Bp, n), jnp.float64))
        k = jax.random.fold_in(key, 1)
        z_steps = [np.asarray(jax.random.normal(jax.random.fold_in(k, i), (Bp, n), jnp.float64))
                   for i in range(len(pb.grid) - 1)]
    ref = _ddrm_official(pb, y, sigma_y, 0.9, 0.85, 0.85, z_init, z_steps)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-10)


def _ddnm_plus_official(pb, y, sigma_y, eta, x_T, zs):
    """NumPy float64 transcription of DDNM+'s ``ddnm_plus_diffusion`` with the SVD operators'
    ``Lambda`` and ``Lambda_noise`` (wyhuai/DDNM, functions/svd_ddnm.py, svd_operators.py) on any
    (alpha, sigma) grid, the noise z drawn in spectral coordinates."""
    singulars, V = pb.s, pb.V
    n = singulars.shape[0]
    inverse_singulars = np.where(singulars > 0, 1.0 / np.where(singulars > 0, singulars, 1), 0.0)
    x = x_T
    for i in range(len(pb.t) - 1):
        et = pb.eps(x, i)
        x0_t = (x - et * pb.sigma[i]) / pb.alpha[i]
        a, sigma_t = pb.alpha[i + 1], pb.sigma[i + 1]
        # Lambda
        lambda_t = np.ones(n)
        if a != 0 and sigma_y != 0:
            change_index = (sigma_t < a * sigma_y * inverse_singulars) * 1.0
            lambda_t = lambda_t * (-change_index + 1.0) + change_index * (
                singulars * sigma_t * (1 - eta**2) ** 0.5 / a / sigma_y)
        x0_t_hat = x0_t - (((x0_t @ pb.mat.T - y) @ pb.P.T) @ V.T * lambda_t) @ V
        # Lambda_noise
        d1_t = np.ones(n) * sigma_t * eta
        d2_t = np.ones(n) * sigma_t * (1 - eta**2) ** 0.5
        if a != 0 and sigma_y != 0:
            change_index = (sigma_t < a * sigma_y * inverse_singulars) * 1.0
            d1_t = d1_t * (-change_index + 1.0) + change_index * sigma_t * eta
            d2_t = d2_t * (-change_index + 1.0)
            change_index = (sigma_t > a * sigma_y * inverse_singulars) * 1.0
            d1_t = d1_t * (-change_index + 1.0) + np.sqrt(
                change_index * (sigma_t**2 - a**2 * sigma_y**2 * inverse_singulars**2))
            d2_t = d2_t * (-change_index + 1.0)
            change_index = (singulars == 0) * 1.0
            d1_t = d1_t * (-change_index + 1.0) + change_index * sigma_t * eta
            d2_t = d2_t * (-change_index + 1.0) + change_index * sigma_t * (1 - eta**2) ** 0.5
        x = a * x0_t_hat + (zs[i] * d1_t + (et @ V.T) * d2_t) @ V
    return x


@pytest.mark.slow
@pytest.mark.parametrize("sigma_y", [0.3, 0.0])
def test_ddnm_plus_matches_official_update_float64(sch, sigma_y):
    """ddnm_plus_sample against the transcription of the official Lambda / Lambda_noise (same
    noise, float64): identical to 1e-10; at sigma_y = 0 plain DDNM gives the same."""
    pb = _NumpyProblem(sch, 5)
    Bp, n = 3, 16
    rng = np.random.default_rng(0)
    y = _draw(pb.prior, Bp, 1) @ pb.mat.T + sigma_y * rng.standard_normal((Bp, 8))
    x_T = rng.standard_normal((Bp, n))
    with jax.enable_x64(True):
        key = jax.random.key(2)
        kw = dict(sigma_y=sigma_y, x_T=jnp.asarray(x_T))
        out = P.ddnm_plus_sample(pb.prior.model_fn(sch), sch, pb.op, jnp.asarray(y), pb.grid, key, **kw)
        plain = (P.ddnm_sample(pb.prior.model_fn(sch), sch, pb.op, jnp.asarray(y), pb.grid, key, **kw)
                 if sigma_y == 0 else None)
        k_post = stream_keys(jax.random.split(key)[1])[3]
        zs = [np.asarray(jax.random.normal(jax.random.fold_in(jax.random.fold_in(k_post, i), 0),
                                           (Bp, n), jnp.float64)) for i in range(len(pb.grid) - 1)]
    ref = _ddnm_plus_official(pb, y, sigma_y, 0.85, x_T, zs)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=0, atol=1e-10)
    if plain is not None:
        np.testing.assert_allclose(np.asarray(plain), ref, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# RePaint
# ---------------------------------------------------------------------------------------------
def test_repaint_nfe_known_region_and_no_recompiles(sch, mix, mask16):
    """Model calls counted = the path's down moves (repaint_nfe); the known region equals y at
    the end; a new y and a new mask of the same shape reuse the program."""
    model = jax.tree_util.Partial(_Counting(), mix.model_fn(sch))
    g = _grid(sch, N)
    y = _measure_mask(mask16, _draw(mix, B, 11), 0.0, 0)
    _CALLS.clear()
    run = lambda op, y: RP.repaint_sample(model, sch, op, y, g, jax.random.key(12),  # noqa: E731
                                          jump_length=2, resamplings=3)
    out = run(mask16, y)
    jax.block_until_ready(out)
    path = jdiff.paths.repaint_path(N, 2, 3)
    assert len(_CALLS) == RP.repaint_nfe(g, 2, 3) == int(np.sum(np.diff(path) == 1)) == 14
    np.testing.assert_array_equal(np.where(np.asarray(mask16.mask), np.asarray(out), 0), np.asarray(y))
    assert np.all(np.isfinite(out))
    n0 = _sample_path._cache_size()
    mask2 = Mask.random(1, (16,), 0.5)
    y2 = _measure_mask(mask2, _draw(mix, B, 13), 0.0, 0)
    out2 = run(mask2, y2)
    np.testing.assert_array_equal(np.where(np.asarray(mask2.mask), np.asarray(out2), 0), np.asarray(y2))
    assert _sample_path._cache_size() == n0


def test_plans_and_nfe(sch):
    """Realised NFE within the budget; RePaint's automatic schedule resamples when the budget
    allows, the paper's j = r = 10 need 101 calls for 11 steps."""
    assert P.nfe_of("ddrm", sch, 20) == 20
    assert P.nfe_of("ddnm", sch, 20) == 20
    assert P.nfe_of("ddnm_plus", sch, 20, solver="heun") == 19
    p = P.plan("ddnm", sch, 100, travel_length=5, travel_repeat=3)
    assert p.nfe <= 100 and p.path is not None and len(p.grid) - 1 < p.nfe
    p = P.plan("ddnm", sch, 100, solver="heun", travel_length=5, travel_repeat=3)
    assert 80 <= p.nfe <= 100 and p.path is not None
    for nfe in (10, 100):
        p = RP.plan("repaint", sch, nfe)
        assert 0.75 * nfe <= p.nfe <= nfe
    assert RP.nfe_of("repaint", sch, 100, jump_length=10, resamplings=10) == 10
    assert set(P.METHODS) == {"ddnm", "ddnm_plus", "ddrm"} and set(RP.METHODS) == {"repaint"}


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "heun", "dpmpp_2m_sde"])
def test_repaint_and_ddnm_travel_with_other_solvers(sch, mix, mask16, solver):
    """RePaint and DDNM's hook with time travel carried by other solvers: known region / A x = y
    at the end, finite, NFE within the budget."""
    y = _measure_mask(mask16, _draw(mix, B, 3), 0.0, 0)
    for fn in (RP.restore_repaint, P.restore_ddnm):
        kw = {"travel_length": 2, "travel_repeat": 2} if fn is P.restore_ddnm else {}
        out, plan = fn(mix.model_fn(sch), sch, mask16, y, 0.0, 24, jax.random.key(4), solver=solver,
                       return_plan=True, **kw)
        assert plan.path is not None and plan.nfe <= 24
        assert np.all(np.isfinite(out)) and _mask_err(mask16, out, y) < 1e-6


# ---------------------------------------------------------------------------------------------
# Compilation and prediction types (slow: more programs)
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_no_recompiles_ddnm_plus_and_ddrm(sch, mix, mask16):
    """A new y, operator of the same configuration and sigma_y: no new program for DDNM+'s sampler
    and DDRM; the same key gives the same samples."""
    model = mix.model_fn(sch)
    g = _grid(sch, N)
    y = _measure_mask(mask16, _draw(mix, B, 1), 0.0, 0)
    mask2 = Mask.random(7, (16,), 0.5)
    y2 = _measure_mask(mask2, _draw(mix, B, 2), 0.05, 3)
    for run in (lambda op, y, s, k: P.ddnm_plus_sample(model, sch, op, y, g, k, sigma_y=s),
                lambda op, y, s, k: P.ddrm_sample(model, sch, op, y, g, k, sigma_y=s)):
        a = run(mask16, y, 0.0, jax.random.key(5))
        n0 = (compiled_programs(), P.ddrm_compiled_programs())
        np.testing.assert_array_equal(np.asarray(run(mask16, y, 0.0, jax.random.key(5))), np.asarray(a))
        run(mask2, y2, 0.05, jax.random.key(6))
        assert (compiled_programs(), P.ddrm_compiled_programs()) == n0


@pytest.mark.slow
@pytest.mark.parametrize("prediction", ["x0", "v"])
def test_prediction_types_agree(sch, mix, mask16, prediction):
    """The same exact model as eps, x0 or v predictor: the same samples up to float32 rounding."""
    y = _measure_mask(mask16, _draw(mix, B, 1), 0.1, 2)
    g = _grid(sch, N)
    k = jax.random.key(3)
    for fn in (lambda m, p: P.ddrm_sample(m, sch, mask16, y, g, k, sigma_y=0.1, prediction=p),
               lambda m, p: P.ddnm_plus_sample(m, sch, mask16, y, g, k, sigma_y=0.1, prediction=p),
               lambda m, p: P.restore_ddnm(m, sch, mask16, y, 0.1, N, k, solver="dpmpp_2m", prediction=p),
               lambda m, p: RP.repaint_sample(m, sch, mask16, y, g, k, jump_length=2, resamplings=2,
                                              prediction=p)):
        ref = fn(mix.model_fn(sch), "eps")
        out = fn(mix.model_fn(sch, prediction), prediction)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=2e-3)


# ---------------------------------------------------------------------------------------------
# Bad inputs: one clear ValueError each
# ---------------------------------------------------------------------------------------------
def test_bad_inputs(sch, mix, mask16):
    model = mix.model_fn(sch)
    y = jnp.zeros((2, 16))
    k = jax.random.key(0)
    g = _grid(sch, N)
    cases = [
        (lambda: P.ddrm_sample(model, sch, mask16, jnp.zeros((2, 15)), g, k),
         r"y must have shape \(batch, 16\)"),
        (lambda: P.restore_ddnm(model, sch, mask16, jnp.zeros((16,)), 0.0, 5, k), r"y must have shape"),
        (lambda: P.ddnm_plus_sample(model, sch, mask16, y, g, k, sigma_y=-0.1), r"sigma_y must be"),
        (lambda: P.restore_ddrm(model, sch, mask16, y, -1.0, 5, k), r"sigma_y must be"),
        (lambda: P.ddrm_sample(model, sch, mask16, y, g, k, sigma_y=np.zeros(3)), r"sigma_y has shape"),
        (lambda: P.ddrm_sample(model, sch, mask16, y, g, k, eta=1.5), r"eta must be in \[0, 1\]"),
        (lambda: P.ddrm_sample(model, sch, mask16, y, g, k, eta_b=-0.1), r"eta_b must be in \[0, 1\]"),
        (lambda: P.ddnm_sample(model, sch, mask16, y, g, k, eta=2.0), r"eta must be in \[0, 1\]"),
        (lambda: RP.repaint_sample(model, sch, Matrix.create(np.eye(16)), y, g, k),
         r"RePaint inpaints: it needs a Mask operator"),
        (lambda: RP.restore_repaint(model, sch, AvgPoolSR(2, (4, 4, 1)), jnp.zeros((2, 2, 2, 1)), 0.0, 5, k),
         r"needs a Mask operator"),
        (lambda: P.restore_ddrm(model, sch, mask16, y, 0.0, 5, k, solver="ddim"),
         r"DDRM has its own sampler"),
        (lambda: P.ddrm_sample(model, sch, mask16, y, g, None), r"pass a PRNG key"),
        (lambda: P.ddnm_sample(model, sch, mask16, y, g, k, travel_repeat=0), r"travel_repeat must be"),
        (lambda: P.restore_ddnm(model, sch, mask16, y, 0.0, 0, k), r"nfe must be a positive integer"),
        (lambda: P.ddrm_sample(model, sch, mask16, y, g, k, args={"measurement": 1}), r"may not contain"),
        (lambda: P.ddrm_sample(model, sch, "mask", y, g, k), r"operator must be a jdiff.restoration"),
        (lambda: jdiff.sample(model, sch, get_solver("ddim"), g, y, k, hooks=(P.DDNM(),)),
         r"read the measurement from args"),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            fn()
        assert "\n" not in str(e.value)
