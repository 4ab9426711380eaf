"""DPS, PiGDM and the SMC sampler (jdiff.restoration.guided, jdiff.restoration.smc).

DPS's gradient against central finite differences of the norm and PiGDM's guidance vector against
a dense float64 computation (both through the exact mix16d model); the transforms against the
faithful samplers where the equivalence is exact (DPS + ddpm, PiGDM + ddim with awd=False) and
with other solvers; SMC converging to the exact posterior as particles grow, reproducing the prior
under a flat likelihood, exact consistency at sigma_y = 0; every method finite on mix16d with mask
and matrix operators; no recompilation for a new measurement or operator; clear errors.

Programs are shared between tests (same shapes: B = 8 rows, 10 steps) to keep the file fast."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff.restoration import Mask, Matrix, posterior_mean, prior_arrays, sample_posterior
from jdiff.restoration import guided, smc
from jdiff.restoration.guided import (
    dps_gradient, dps_guidance, dps_residual_norm, dps_sample, measurement_args, pigdm_guidance,
    pigdm_sample, pigdm_vector, restore_dps, restore_pigdm,
)
from jdiff.restoration.smc import restore_smc, smc_draw, smc_mean, smc_sample
from jdiff.testbeds import get_testbed

_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


@pytest.fixture(autouse=True, scope="module")
def _fast_compile():
    """Compile the samplers' programs (DPS/PiGDM, SMC, jdiff.sample) without XLA's backend
    optimisations while this module runs: the same HLO programs, about a fifth of the CPU compile
    time. Restored afterwards."""
    mp = pytest.MonkeyPatch()
    for mod, name in ((guided, "_run"), (smc, "_smc"), (jdiff.sampling, "_sample")):
        fn = getattr(mod, name)
        fast = jax.jit(fn.__wrapped__, static_argnames=("cfg",), compiler_options=_FAST_COMPILE)
        mp.setattr(mod, name, fast)
    yield
    mp.undo()


B, STEPS, D = 8, 10, 16
SMC_STEPS = 40  # SMC converges to the posterior of its DDPM chain: 10 steps under-disperse mix16d


@pytest.fixture(scope="module")
def mix():
    return get_testbed("mix16d")


@pytest.fixture(scope="module")
def model(mix, vp):
    return mix.model_fn(vp)


@pytest.fixture(scope="module")
def grid(vp):
    return jdiff.grids.make_grid(vp, "logsnr", STEPS, "zero")


@pytest.fixture(scope="module")
def smc_grid(vp):
    return jdiff.grids.make_grid(vp, "logsnr", SMC_STEPS, "zero")


def _matrix_np(m=8, seed=0):
    return np.random.RandomState(seed).standard_normal((m, D)) / 4.0


def _mask_np(seed=1):
    return np.random.RandomState(seed).permutation(D) < D // 2  # 8 of 16 dimensions observed


@pytest.fixture(scope="module")
def ops():
    return {"mask": Mask.create(_mask_np()), "matrix": Matrix.create(_matrix_np())}


@pytest.fixture(scope="module")
def truth(mix):
    """B prior draws (NumPy: no eager XLA compilations)."""
    w, mu, covs = prior_arrays(mix)
    rng = np.random.RandomState(2)
    comp = rng.choice(len(w), size=B, p=w)
    sd = np.sqrt(np.stack([np.diag(c) for c in covs]))  # mix16d is diagonal
    return jnp.asarray(mu[comp] + sd[comp] * rng.standard_normal((B, D)), jnp.float32)


def _y(op, truth, sig, seed=3):
    """``y = A x + sigma_y n`` (noise on observed entries only, as :func:`measure`)."""
    y = np.asarray(op.A(truth))
    n = np.random.RandomState(seed).standard_normal(y.shape)
    if isinstance(op, Mask):
        n = n * np.asarray(op.mask)
    return jnp.asarray(y + sig * n, jnp.float32)


def _x_T(seed=4):
    return jnp.asarray(np.random.RandomState(seed).standard_normal((B, D)), jnp.float32)


# ------------------------------------------------------------------------------------------
# DPS: gradient of the norm (not its square), float64
# ------------------------------------------------------------------------------------------
def _compile_fast(fn, *args):
    """``jax.jit(fn)`` for ``args`` without XLA's backend optimisations (faster to compile)."""
    return jax.jit(fn).lower(*args).compile(compiler_options=_FAST_COMPILE)


def test_dps_gradient_matches_finite_differences_of_the_norm(mix, vp):
    """float64: grad_x ||y - A x0_hat(x)|| against central differences of numpy's norm of the
    exact model's x0 (a squared norm would be off by 2 ||r||)."""
    with jax.enable_x64(True):
        A = _matrix_np(5)
        op = Matrix.create(A, dtype=jnp.float64)
        rng = np.random.RandomState(0)
        x = rng.standard_normal((3, D))
        y = rng.standard_normal((3, 5)) * 0.5
        t, h = 0.4, 1e-6
        xs = np.concatenate([(x[:, None, :] + sgn * h * np.eye(D)[None]).reshape(-1, D) for sgn in (1, -1)])
        model = mix.model_fn(vp)

        def run(x, y, xs):
            grad, x0, norm = dps_gradient(model, vp, op, y, x, t)
            tt = jnp.float64(t)
            a, s = vp.alpha(tt), vp.sigma(tt)
            return grad, x0, norm, mix.x0(xs, a, s), mix.x0(x, a, s)

        grad, x0, norm, x0s, x0_direct = map(np.asarray, _compile_fast(run, x, y, xs)(x, y, xs))
        np.testing.assert_allclose(x0, x0_direct, rtol=1e-12)
        np.testing.assert_allclose(norm, np.linalg.norm(y - x0_direct @ A.T, axis=1), rtol=1e-12)
        yy = np.tile(np.repeat(y, D, axis=0), (2, 1))
        nrm = np.linalg.norm(yy - x0s @ A.T, axis=1).reshape(2, 3, D)
        fd = (nrm[0] - nrm[1]) / (2 * h)
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_dps_norm_has_zero_gradient_at_zero_residual(ops):
    op = ops["mask"]
    x0 = jnp.ones((2, D))
    g = _compile_fast(jax.grad(lambda v: jnp.sum(dps_residual_norm(op, op.A(x0), v))), x0)(x0)
    assert bool(jnp.all(g == 0))


# ------------------------------------------------------------------------------------------
# PiGDM guidance vector against the dense formula, float64
# ------------------------------------------------------------------------------------------
def test_pigdm_vector_matches_dense_computation(mix, vp):
    """float64, noisy and noiseless: g against J^T A^T (r^2 A A^T + sigma_y^2 I)^{-1} (y - A x0)
    with dense matrices and the model's Jacobian; at sigma_y = 0 also the reference codes'
    pseudo-inverse form J^T (A^+ y - A^+ A x0), times 1 / r^2."""
    with jax.enable_x64(True):
        A = _matrix_np(5)
        op = Matrix.create(A, dtype=jnp.float64)
        rng = np.random.RandomState(1)
        x = rng.standard_normal((3, D))
        y = rng.standard_normal((3, 5)) * 0.5
        t = 0.3
        model = mix.model_fn(vp)

        def run(x, y, sig):
            g, x0 = pigdm_vector(model, vp, op, y, sig, x, t)
            tt = jnp.float64(t)
            a, s = vp.alpha(tt), vp.sigma(tt)
            J = jax.vmap(jax.jacfwd(lambda v: mix.x0(v[None], a, s)[0]))(x)  # (3, D, D)
            return g, x0, J, a, s

        prog = _compile_fast(run, x, y, 0.1)
        for sig in (0.1, 0.0):
            g, x0, J, a, s = map(np.asarray, prog(x, y, sig))
            r2 = s**2 / (a**2 + s**2)
            for b in range(3):
                res = y[b] - A @ x0[b]
                dense = J[b].T @ A.T @ np.linalg.solve(r2 * A @ A.T + sig**2 * np.eye(5), res)
                np.testing.assert_allclose(g[b], dense, rtol=1e-9, atol=1e-10)
                if sig == 0.0:
                    P = np.linalg.pinv(A)
                    np.testing.assert_allclose(g[b], J[b].T @ (P @ y[b] - P @ A @ x0[b]) / r2, rtol=1e-8,
                                               atol=1e-9)


# ------------------------------------------------------------------------------------------
# Transforms = faithful samplers where exact; other solvers valid
# ------------------------------------------------------------------------------------------
def test_dps_transform_with_ddpm_is_the_official_sampler(model, vp, grid, ops, truth):
    op = ops["mask"]
    y = _y(op, truth, 0.0)
    key = jax.random.key(7)
    ref = dps_sample(model, vp, op, y, grid, key, zeta=0.7, x_T=_x_T())
    out = jdiff.sample(dps_guidance(model, vp, jnp.float32(0.7), grid), vp, jdiff.solvers.ddpm(), grid,
                       _x_T(), key, args=measurement_args(op, y, 0.0))
    assert np.all(np.isfinite(ref))
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
    # the correction matters (the test would pass trivially if it were dropped)
    plain = dps_sample(model, vp, op, y, grid, key, zeta=0.0, x_T=_x_T())
    assert float(jnp.max(jnp.abs(plain - ref))) > 0.05


def test_pigdm_transform_with_ddim_is_the_reference_step_without_awd(model, vp, grid, ops, truth):
    op = ops["mask"]
    y = _y(op, truth, 0.1)
    key = jax.random.key(8)
    ref = pigdm_sample(model, vp, op, y, 0.1, grid, key, w=1.0, eta=1.0, awd=False, x_T=_x_T())
    out = jdiff.sample(pigdm_guidance(model, vp, jnp.float32(1.0), weighting="reference"), vp,
                       jdiff.solvers.ddpm(), grid, _x_T(), key, args=measurement_args(op, y, 0.1))
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
    awd = pigdm_sample(model, vp, op, y, 0.1, grid, key, w=1.0, eta=1.0, awd=True, x_T=_x_T())
    assert np.all(np.isfinite(awd)) and float(jnp.max(jnp.abs(awd - ref))) > 1e-3


@pytest.mark.parametrize("method,solver", [("dps", "dpmpp_2m"), ("pigdm", "unipc_bh2")])
def test_transforms_with_other_solvers_move_towards_the_measurement(model, vp, ops, truth, method, solver):
    """With a multistep solver the transforms are valid score guidance: finite, and the
    measurement residual is far below that of unguided samples (scale 0, same program)."""
    op = ops["matrix"]
    for sig in (0.0, 0.1):
        y = _y(op, truth, sig)
        fn = restore_dps if method == "dps" else restore_pigdm
        opt = "zeta" if method == "dps" else "w"
        res = {}
        for scale in (1.0, 0.0):
            x, info = fn(model, vp, op, y, sig, STEPS, jax.random.key(5), solver=solver, return_info=True,
                         **{opt: jnp.float32(scale)})
            assert np.all(np.isfinite(x)) and x.shape == (B, D)
            res[scale] = float(jnp.sqrt(jnp.mean((op.A(x) - y) ** 2)))
        assert info["solver"] == solver and info["nfe"] == STEPS
        assert res[1.0] < 0.5 * res[0.0], res


# ------------------------------------------------------------------------------------------
# SMC
# ------------------------------------------------------------------------------------------
def _smc_error(model, vp, op, y, sig, grid, N, mix, seeds=(0, 1, 2)):
    pm = posterior_mean(mix, op, y, sig)
    errs, results = [], []
    for seed in seeds:
        r = smc_sample(model, vp, op, y, sig, grid, jax.random.key(100 + seed), particles=N)
        errs.append(np.sqrt(np.mean((np.asarray(smc_mean(r), np.float64) - pm) ** 2)))
        results.append(r)
    return float(np.mean(errs)), results


def test_smc_converges_to_the_exact_posterior_with_particles(model, vp, smc_grid, ops, truth, mix):
    """RMS error of the weighted particle mean to the exact posterior mean (8 measurements, 3
    seeds): 0.10 at N = 16, 0.037 at N = 256 (the proposal chain without its weights: 0.37 and
    0.34)."""
    op = ops["mask"]
    y = _y(op, truth, 0.1)
    e16, _ = _smc_error(model, vp, op, y, 0.1, smc_grid, 16, mix)
    e256, rs = _smc_error(model, vp, op, y, 0.1, smc_grid, 256, mix)
    assert e256 < 0.6 * e16 and e256 < 0.06, (e16, e256)
    r = rs[0]
    assert r.ess.shape == (SMC_STEPS, B) and r.resampled.shape == (SMC_STEPS, B)
    assert np.all(np.isfinite(r.log_weights)) and np.all(np.isfinite(r.particles))
    np.testing.assert_allclose(jax.nn.logsumexp(r.log_weights, axis=1), 0.0, atol=1e-5)
    assert np.all((r.ess >= 1 - 1e-3) & (r.ess <= 256 + 1e-2)) and np.all(r.final_ess >= 1 - 1e-3)


def test_smc_with_a_flat_likelihood_samples_the_prior(model, vp, smc_grid, ops, truth, mix):
    """sigma_y huge: uniform weights, no resampling, and the particles are prior samples (of the
    DDPM chain, which under-disperses mix16d a little at 40 steps; compared with the chain itself
    in the slow test)."""
    op = ops["mask"]
    y = _y(op, truth, 0.1)
    r = smc_sample(model, vp, op, y, 1e4, smc_grid, jax.random.key(9), particles=256)  # program shared
    assert np.all(np.asarray(r.final_ess) > 0.99 * 256) and not np.any(r.resampled)
    x = np.asarray(r.particles, np.float64).reshape(-1, D)
    mu, cov = mix.mean_cov()
    se = np.sqrt(np.diag(cov) / x.shape[0])
    assert np.all(np.abs(x.mean(0) - mu) < 5 * se + 0.02)
    assert np.all((x.var(0) > 0.75 * np.diag(cov)) & (x.var(0) < 1.1 * np.diag(cov)))


@pytest.mark.slow
def test_smc_with_a_flat_likelihood_is_the_ddpm_chain(model, vp, smc_grid, ops, truth):
    op = ops["mask"]
    y = _y(op, truth, 0.1)
    r = smc_sample(model, vp, op, y, 1e4, smc_grid, jax.random.key(9), particles=256)
    x = np.asarray(r.particles, np.float64).reshape(-1, D)
    x_T = jax.random.normal(jax.random.key(3), (4096, D))
    ref = jdiff.sample(model, vp, jdiff.solvers.ddpm(), smc_grid, x_T, jax.random.key(4))
    ref = np.asarray(ref, np.float64)
    se = np.sqrt(ref.var(0) / x.shape[0] + ref.var(0) / ref.shape[0])
    assert np.all(np.abs(x.mean(0) - ref.mean(0)) < 5 * se)
    np.testing.assert_allclose(x.var(0), ref.var(0), rtol=0.12)


def test_smc_noiseless_particles_are_exactly_consistent(model, vp, smc_grid, ops, truth):
    op = ops["mask"]
    y = _y(op, truth, 0.0)
    r = smc_sample(model, vp, op, y, 0.0, smc_grid, jax.random.key(10), particles=16)  # shared program
    ax = op.A(r.particles.reshape(-1, D)).reshape(B, 16, D)
    np.testing.assert_allclose(ax, jnp.broadcast_to(y[:, None], ax.shape), atol=1e-6)


# ------------------------------------------------------------------------------------------
# Every method finite on mix16d, mask and matrix, sigma_y 0 and 0.1; no recompilation
# ------------------------------------------------------------------------------------------
def test_every_method_finite_and_compiled_once(model, vp, ops, truth):
    runs = [("dps", restore_dps, "mask", None), ("dps", restore_dps, "matrix", "dpmpp_2m"),
            ("pigdm", restore_pigdm, "mask", None), ("pigdm", restore_pigdm, "matrix", "unipc_bh2"),
            ("smc", restore_smc, "mask", None), ("smc", restore_smc, "matrix", None)]
    for name, fn, opname, solver in runs:
        op = ops[opname]
        opts = {"particles": 16} if name == "smc" else {}
        nfe = SMC_STEPS if name == "smc" else STEPS  # SMC: steps per particle
        for sig in (0.0, 0.1):
            x, info = fn(model, vp, op, _y(op, truth, sig), sig, nfe, jax.random.key(11), solver=solver,
                         return_info=True, **opts)
            assert x.shape == (B, D) and np.all(np.isfinite(x)), (name, opname, sig)
        assert info["nfe"] == (SMC_STEPS * 16 if name == "smc" else STEPS)
    counts = (guided.compiled_programs(), smc.compiled_programs(), jdiff.sampling.compiled_programs())
    # a new measurement, a new mask, a new matrix of the same shapes, other sigma_y and zeta/w
    new_ops = {"mask": Mask.create(_mask_np(seed=21)), "matrix": Matrix.create(_matrix_np(seed=5))}
    for name, fn, opname, solver in runs:
        op = new_ops[opname]
        opts = {"particles": 16} if name == "smc" else {"zeta": 0.5} if name == "dps" else {"w": 0.8}
        nfe = SMC_STEPS if name == "smc" else STEPS
        fn(model, vp, op, _y(op, truth, 0.05, seed=22), 0.05, nfe, jax.random.key(12), solver=solver, **opts)
    assert (guided.compiled_programs(), smc.compiled_programs(), jdiff.sampling.compiled_programs()) == counts


def test_smc_draw_picks_weighted_particles():
    parts = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 2)
    logw = jnp.log(jnp.asarray([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]) + 1e-30)
    r = smc.SMCResult(parts, logw, jnp.zeros((1, 2)), jnp.zeros((1, 2), bool), jnp.ones(2))
    key = jax.random.key(0)
    draw, mean = _compile_fast(lambda r, k: (smc_draw(r, k), smc_mean(r)), r, key)(r, key)
    expect = np.asarray(parts)[[0, 1], [1, 0]]
    np.testing.assert_array_equal(draw, expect)
    np.testing.assert_allclose(mean, expect)


def test_plans_report_the_realised_nfe(vp):
    p = guided.plan("dps", vp, 20)
    assert p.nfe == 20 and p.grid.shape == (21,) and p.grid[-1] == 0 and p.solver == "dps_ddpm"
    p2 = guided.plan("pigdm", vp, 21, "dpmpp_2s")  # two calls per step (one on the last)
    assert p2.nfe == jdiff.sampling.nfe(jdiff.solvers.dpmpp_2s(), p2.grid) <= 21 and p2.grid.shape[0] - 1 < 21
    assert guided.nfe_of("pigdm", vp, 20, "unipc_bh2", w=0.5) == 20
    assert smc.nfe_of(vp, 20, particles=8) == 160 and smc.plan(vp, 20, "ddpm").solver == "smc_ddpm"
    with pytest.raises(ValueError, match="applies to the method's own sampler"):
        guided.plan("pigdm", vp, 20, "ddim", awd=False)
    with pytest.raises(ValueError, match="applies to the transform"):
        guided.plan("pigdm", vp, 20, weighting="reference")
    with pytest.raises(ValueError, match="unknown method"):
        guided.plan("dpss", vp, 20)


# ------------------------------------------------------------------------------------------
# Bad inputs: one clear ValueError each
# ------------------------------------------------------------------------------------------
def _one_line(exc_info, pattern):
    msg = str(exc_info.value)
    assert "\n" not in msg and re.search(pattern, msg), msg


@pytest.mark.parametrize("zeta", [-0.5, float("nan"), float("inf")])
def test_bad_zeta(model, vp, grid, ops, truth, zeta):
    op = ops["mask"]
    y = _y(op, truth, 0.0)
    with pytest.raises(ValueError) as e:
        dps_sample(model, vp, op, y, grid, jax.random.key(0), zeta=zeta)
    _one_line(e, "zeta must be")
    with pytest.raises(ValueError) as e:
        dps_guidance(model, vp, zeta, grid)
    _one_line(e, "zeta must be")
    with pytest.raises(ValueError) as e:
        restore_dps(model, vp, op, y, 0.0, 5, jax.random.key(0), zeta=zeta)
    _one_line(e, "zeta must be")


def test_bad_y_shape_particles_and_options(model, vp, grid, ops, truth):
    op = ops["matrix"]
    y_bad = jnp.zeros((B, 7))
    for fn in (restore_dps, restore_pigdm, restore_smc):
        with pytest.raises(ValueError) as e:
            fn(model, vp, op, y_bad, 0.0, 5, jax.random.key(0))
        _one_line(e, r"y must have shape \(batch, 8\).*got \(8, 7\)")
    with pytest.raises(ValueError) as e:
        measurement_args(op, jnp.zeros((8,)))
    _one_line(e, "y must have shape")
    y = _y(op, truth, 0.0)
    for particles in (0, -3, 2.5):
        with pytest.raises(ValueError) as e:
            smc_sample(model, vp, op, y, 0.0, grid, jax.random.key(0), particles=particles)
        _one_line(e, "particles must be a positive integer")
    with pytest.raises(ValueError) as e:
        restore_smc(model, vp, op, y, 0.0, 5, jax.random.key(0), particles=0)
    _one_line(e, "particles must be a positive integer")
    with pytest.raises(ValueError) as e:
        restore_smc(model, vp, op, y, 0.0, 5, jax.random.key(0), solver="dpmpp_2m")
    _one_line(e, "solver must be None or 'ddpm'")
    with pytest.raises(ValueError) as e:
        restore_pigdm(model, vp, op, y, -0.1, 5, jax.random.key(0))
    _one_line(e, "sigma_y")
    with pytest.raises(ValueError) as e:
        restore_pigdm(model, vp, op, y, 0.0, 5, jax.random.key(0), eta=1.5)
    _one_line(e, r"eta must be in \[0, 1\]")
    with pytest.raises(ValueError) as e:
        restore_pigdm(model, vp, op, y, 0.0, 5, jax.random.key(0), w=-1.0)
    _one_line(e, "w must be")
    with pytest.raises(ValueError) as e:
        restore_dps(model, vp, op, y, 0.0, 5, jax.random.key(0), zeta_typo=1.0)
    _one_line(e, "unknown option")
    with pytest.raises(ValueError) as e:
        restore_dps(model, vp, op, y, 0.0, 0, jax.random.key(0))
    _one_line(e, "nfe must be a positive integer")
    with pytest.raises(ValueError) as e:  # the transform without the measurement in args
        jdiff.sample(pigdm_guidance(model, vp), vp, jdiff.solvers.ddim(), grid, _x_T(), args=None)
    _one_line(e, "needs args=")


# ------------------------------------------------------------------------------------------
# Slow: convergence to the exact posterior at large N, all solver combinations
# ------------------------------------------------------------------------------------------
def _sw(a, b, n_dirs=128, seed=0):
    dirs = np.random.RandomState(seed).standard_normal((n_dirs, a.shape[1]))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return float(np.mean(np.abs(np.sort(a @ dirs.T, 0) - np.sort(b @ dirs.T, 0))))


@pytest.mark.slow
@pytest.mark.parametrize("opname", ["mask", "matrix"])
@pytest.mark.parametrize("sig", [0.0, 0.1])
def test_smc_reaches_the_sliced_wasserstein_floor(model, vp, ops, truth, mix, opname, sig):
    """As jdiff bench restore measures it: 4 measurements x 256 rows, one particle drawn per row
    from its own SMC run (100 steps), against 256 exact posterior samples. N = 64: within 1.5x
    the exact-vs-exact floor (+0.003); N = 4 is further."""
    op = ops[opname]
    y = _y(op, truth, sig)[:4]
    R = 256
    ex = sample_posterior(jax.random.key(1), mix, op, y, sig, R)
    ex2 = sample_posterior(jax.random.key(2), mix, op, y, sig, R)
    floor = np.mean([_sw(ex[b], ex2[b]) for b in range(4)])
    sws = {}
    for N in (4, 64):
        x = restore_smc(model, vp, op, jnp.repeat(y, R, axis=0), sig, 100, jax.random.key(3), particles=N)
        x = np.asarray(x, np.float64).reshape(4, R, D)
        sws[N] = np.mean([_sw(x[b], ex[b]) for b in range(4)])
    assert sws[64] < 1.5 * floor + 0.003, (sws, floor)
    assert sws[4] > sws[64], (sws, floor)


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["ddim", "ddpm", "dpmpp_2m", "unipc_bh2", "heun", "euler_ancestral",
                                    "dpmpp_2m_sde", "dpmpp_2s"])
@pytest.mark.parametrize("method", ["dps", "pigdm"])
def test_transforms_valid_with_every_solver(model, vp, ops, truth, mix, method, solver):
    """Guided samples are finite and much closer to the exact posterior mean than the prior mean
    is (measured: DPS 0.05-0.2 x, PiGDM 0.4-0.5 x under ODE solvers, 0.35 x under SDE ones)."""
    op = ops["matrix"]
    y = _y(op, truth, 0.1)
    fn = restore_dps if method == "dps" else restore_pigdm
    x = fn(model, vp, op, jnp.repeat(y, 64, axis=0), 0.1, 50, jax.random.key(5), solver=solver)
    assert np.all(np.isfinite(x))
    pm = posterior_mean(mix, op, y, 0.1)
    est = np.asarray(x, np.float64).reshape(B, 64, D).mean(1)
    prior_err = np.sqrt(np.mean((mix.mean_cov()[0] - pm) ** 2))
    assert np.sqrt(np.mean((est - pm) ** 2)) < 0.6 * prior_err


@pytest.mark.slow
def test_dps_transform_with_ode_ddim_is_dps_on_the_ode_step(model, vp, grid, ops, truth):
    """ddim(eta=0) + dps_guidance(eta=0) = the DDIM ODE step followed by -zeta grad (manual loop)."""
    op = ops["mask"]
    y = _y(op, truth, 0.0)
    zeta = 0.5
    out = jdiff.sample(dps_guidance(model, vp, zeta, grid, eta=0.0), vp, jdiff.solvers.ddim(), grid, _x_T(),
                       args=measurement_args(op, y, 0.0))
    g = jdiff.solvers.grid_coeffs(vp, grid, jnp.float32)
    x = _x_T()
    for i in range(STEPS):
        grad, x0, _ = dps_gradient(model, vp, op, y, x, g.t[i])
        eps = (x - g.alpha[i] * x0) / g.sigma[i]
        x = g.alpha[i + 1] * x0 + g.sigma[i + 1] * eps - zeta * grad
    np.testing.assert_allclose(out, x, atol=5e-5, rtol=1e-4)
