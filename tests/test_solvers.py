"""Solver correctness: convergence order, reference solve, determinism, vmap, NFE, identities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import grids, solvers
from jdiff.testbeds import gaussian_ode_solution, get_testbed
from helpers import order_slope

ORDER_STEPS = (8, 16, 32, 64)


@pytest.fixture(scope="module")
def order_problem(gauss_problem):
    return gauss_problem


@pytest.mark.parametrize("name,nominal", [("ddim", 1), ("euler", 1), ("heun", 2)])
@pytest.mark.parametrize("final", ["t_min", "zero"])
def test_convergence_order(vp, order_problem, name, nominal, final):
    model, x_T, refs = order_problem
    solver = solvers.get_solver(name)
    errs = []
    with jax.enable_x64(True):
        for n in ORDER_STEPS:
            g = grids.make_grid(vp, "logsnr", n, final)
            x = jdiff.sample(model, vp, solver, g, x_T)
            errs.append(float(np.sqrt(np.mean((np.asarray(x) - refs[final]) ** 2))))
    order = order_slope(errs, ORDER_STEPS)
    assert order >= nominal - 0.2, (name, final, errs, order)
    assert order <= nominal + 0.6, (name, final, errs, order)  # not accidentally "too good"


@pytest.mark.parametrize("schedule", list(jdiff.schedules.SCHEDULES))
def test_reference_solve_matches_closed_form(gauss64, schedule):
    s = jdiff.schedules.get_schedule(schedule)
    g = grids.make_grid(s, "logsnr", 4)
    with jax.enable_x64(True):
        model = gauss64.model_fn(s)
        x_T = jax.random.normal(jax.random.key(0), (16, 8), jnp.float64) * s.prior_std(g[0])
        for t_end in (g[-2], 0.0):
            ref = jdiff.reference_solve(model, s, x_T, g[0], t_end)
            exact = np.asarray(gaussian_ode_solution(gauss64, s, x_T, g[0], t_end))
            assert np.max(np.abs(ref - exact)) < 1e-6


# ---- float32 behaviour on the built-in 16-D mixture ------------------------------------------
@pytest.fixture(scope="module")
def mix(vp):
    tb = get_testbed("mix16d")
    return tb, tb.model_fn(vp), jax.random.normal(jax.random.key(1), (64, 16))


ALL = list(solvers.SOLVERS)


@pytest.mark.parametrize("name", ALL)
def test_determinism_and_finite(vp, mix, name):
    _, model, x_T = mix
    solver = solvers.get_solver(name)
    g = grids.make_grid(vp, "logsnr", 6)
    a = jdiff.sample(model, vp, solver, g, x_T, key=jax.random.key(7))
    b = jdiff.sample(model, vp, solver, g, x_T, key=jax.random.key(7))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.all(np.isfinite(np.asarray(a)))
    if solver.stochastic:
        c = jdiff.sample(model, vp, solver, g, x_T, key=jax.random.key(8))
        assert np.max(np.abs(np.asarray(a) - np.asarray(c))) > 1e-2


@pytest.mark.parametrize("name", ["ddim", "heun", "ddpm"])
def test_batch_equals_vmap(vp, gauss64, name):
    """Batched sampling equals vmap over single samples (no coupling across the batch).

    In float64 the two agree to ~1e-12. In float32 they differ at the 1e-5 level because XLA
    reduces a batch of 64 and a batch of 1 in different orders (ulp-level model differences),
    which a 5-step solver then amplifies by its step's Lipschitz constant."""
    solver = solvers.get_solver(name)
    g = grids.make_grid(vp, "karras", 5)
    key = jax.random.key(2)
    with jax.enable_x64(True):
        model = gauss64.model_fn(vp)
        x_T = jax.random.normal(jax.random.key(1), (16, 8), jnp.float64)
        batch = jdiff.sample(model, vp, solver, g, x_T, key=key)
        if solver.stochastic:  # per-sample keys: vmap over (x, key) pairs
            keys = jax.random.split(key, 16)
            batch = jax.vmap(lambda x, k: jdiff.sample(model, vp, solver, g, x[None], key=k)[0])(x_T, keys)
            single = jnp.stack([jdiff.sample(model, vp, solver, g, x_T[i:i + 1], key=keys[i])[0]
                                for i in range(4)])
            np.testing.assert_allclose(np.asarray(batch[:4]), np.asarray(single), atol=1e-6)
            return
        single = jax.vmap(lambda x: jdiff.sample(model, vp, solver, g, x[None])[0])(x_T)
    np.testing.assert_allclose(np.asarray(batch), np.asarray(single), atol=1e-6)
    # float32: same answer up to amplified rounding
    tb = get_testbed("mix16d")
    m32 = tb.model_fn(vp)
    x32 = jax.random.normal(jax.random.key(1), (64, 16))
    b32 = jdiff.sample(m32, vp, solver, g, x32, key=key)
    s32 = jax.vmap(lambda x: jdiff.sample(m32, vp, solver, g, x[None], key=key)[0])(x32)
    np.testing.assert_allclose(np.asarray(b32), np.asarray(s32), atol=1e-4)


def test_euler_equals_ddim_and_ancestral_equals_ddpm(vp, mix):
    """On one grid, Euler in (x/alpha, sigma/alpha) is the DDIM step, and for VP schedules Euler
    ancestral (k-diffusion) is exactly the DDPM posterior step (derived in first_order.py)."""
    _, model, x_T = mix
    g = grids.make_grid(vp, "uniform_t", 7)
    k = jax.random.key(11)
    run = lambda n: np.asarray(jdiff.sample(model, vp, solvers.get_solver(n), g, x_T, key=k))
    np.testing.assert_allclose(run("euler"), run("ddim"), atol=2e-5)
    np.testing.assert_allclose(run("euler_ancestral"), run("ddpm"), atol=2e-5)


# every solver on a grid ending at 0 and on one ending at t_min with the final denoising call; the
# other two combinations for a few solvers (all of them with -m slow)
NFE_CASES = [pytest.param(n, f, d, marks=() if (f, d) in (("zero", False), ("t_min", True))
                          or n in ("ddim", "heun", "dpmpp_2s", "unipc_bh2") else pytest.mark.slow)
             for n in ALL for f in ("zero", "t_min") for d in (False, True)]


@pytest.mark.parametrize("name,final,dtz", NFE_CASES)
def test_nfe_is_exact(vp, name, final, dtz):
    calls = []

    def counted(x, t, args=None):
        jax.debug.callback(lambda: calls.append(1))
        return jnp.zeros_like(x)

    solver = solvers.get_solver(name)
    g = grids.make_grid(vp, "logsnr", 4, final)
    if dtz and final == "zero":  # a model call at t = 0 (c_noise = log 0 on VE/EDM): refused
        with pytest.raises(ValueError, match="denoise_to_zero"):
            jdiff.sample(counted, vp, solver, g, jnp.ones((2, 3)), key=jax.random.key(0),
                         denoise_to_zero=True)
        with pytest.raises(ValueError, match="denoise_to_zero"):
            jdiff.nfe(solver, g, True)
        return
    x = jdiff.sample(counted, vp, solver, g, jnp.ones((2, 3)), key=jax.random.key(0),
                     denoise_to_zero=dtz)
    jax.block_until_ready(x)
    expected = jdiff.nfe(solver, g, dtz)
    assert len(calls) == expected
    two_calls = name in ("heun", "dpmpp_2s")  # 2 per step, 1 on a last step to sigma = 0
    base = (7 if final == "zero" else 8) if two_calls else 4
    assert expected == base + int(dtz)


def test_no_recompilation_for_new_grid_values(vp, mix):
    _, model, x_T = mix
    solver = solvers.get_solver("heun")
    jdiff.sample(model, vp, solver, grids.make_grid(vp, "logsnr", 5), x_T)
    before = jdiff.sampling._sample._cache_size()
    for name in ("karras", "uniform_t", "quadratic"):
        jdiff.sample(model, vp, solver, grids.make_grid(vp, name, 5), x_T)
    assert jdiff.sampling._sample._cache_size() == before


def test_denoise_to_zero_returns_x0_prediction(vp, mix):
    tb, model, x_T = mix
    g = grids.make_grid(vp, "logsnr", 5, "t_min")
    solver = solvers.get_solver("ddim")
    x_end = jdiff.sample(model, vp, solver, g, x_T)
    x_dtz = jdiff.sample(model, vp, solver, g, x_T, denoise_to_zero=True)
    t = jnp.float32(g[-1])
    expected = tb.x0(x_end, vp.alpha(t), vp.sigma(t))
    np.testing.assert_allclose(np.asarray(x_dtz), np.asarray(expected), atol=1e-4)


@pytest.mark.parametrize("prediction", ["x0", "v", "score"])
def test_prediction_types_give_same_samples(vp, mix, prediction):
    tb, model, x_T = mix
    g = grids.make_grid(vp, "logsnr", 6)
    solver = solvers.get_solver("heun")
    ref = jdiff.sample(model, vp, solver, g, x_T)
    other = jdiff.sample(tb.model_fn(vp, prediction), vp, solver, g, x_T, prediction=prediction)
    np.testing.assert_allclose(np.asarray(other), np.asarray(ref), atol=2e-3)


def test_ddpm_samples_the_data_distribution(vp):
    """Stochastic solver check against exact moments of a Gaussian testbed."""
    tb = get_testbed("gauss16d")
    mean, cov = tb.mean_cov()
    g = grids.make_grid(vp, "trailing", 200)
    x_T = jax.random.normal(jax.random.key(5), (8000, 16))
    x = np.asarray(jdiff.sample(tb.model_fn(vp), vp, solvers.get_solver("ddpm"), g, x_T,
                                key=jax.random.key(6)))
    assert np.max(np.abs(x.mean(0) - mean)) < 0.04
    assert np.max(np.abs(np.cov(x.T) - cov)) < 0.05


def test_partial_model_is_traced(vp):
    """A jax.tree_util.Partial model passes its arrays as traced arguments (no recompile)."""
    def model(w, x, t, args):
        return w * x

    g = grids.make_grid(vp, "logsnr", 3)
    solver = solvers.get_solver("ddim")
    x_T = jnp.ones((2, 2))
    a = jdiff.sample(jax.tree_util.Partial(model, jnp.float32(0.1)), vp, solver, g, x_T)
    n = jdiff.sampling._sample._cache_size()
    b = jdiff.sample(jax.tree_util.Partial(model, jnp.float32(0.2)), vp, solver, g, x_T)
    assert jdiff.sampling._sample._cache_size() == n
    assert not np.allclose(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("schedule", ["ve", "edm"])  # VP: test_prediction_types_give_same_samples
def test_v_prediction_on_any_schedule(schedule):
    """``v = alpha eps - sigma x0`` is inverted exactly for any (alpha, sigma): on VE / EDM
    (alpha = 1) the factor 1 / (1 + sigma^2) matters (the VP-only ``x0 = alpha x - sigma v`` is off
    by up to 1 + sigma^2), and a v-model samples the same as the eps-model of the same data."""
    from jdiff.prediction import from_x0_eps, to_x0_eps

    s = jdiff.schedules.get_schedule(schedule)
    k1, k2 = jax.random.split(jax.random.key(0))
    with jax.enable_x64(True):
        x0 = jax.random.normal(k1, (4, 3), jnp.float64)
        eps = jax.random.normal(k2, (4, 3), jnp.float64)
        for t in np.linspace(s.t_min, s.t_max, 5):
            a, sg = s.alpha(jnp.float64(t)), s.sigma(jnp.float64(t))
            x = a * x0 + sg * eps
            got_x0, got_eps = to_x0_eps(from_x0_eps(x0, eps, a, sg, "v"), x, a, sg, "v")
            np.testing.assert_allclose(np.asarray(got_x0), np.asarray(x0), rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(np.asarray(got_eps), np.asarray(eps), rtol=1e-10, atol=1e-10)
    tb = get_testbed("mix16d")
    g = grids.make_grid(s, "logsnr", 8)
    z = jax.random.normal(jax.random.key(1), (64, 16))
    x_T = jdiff.init_noise(s, g[0], z)
    solver = solvers.get_solver("dpmpp_2m")
    ref = jdiff.sample(tb.model_fn(s), s, solver, g, x_T)
    v = jdiff.sample(tb.model_fn(s, "v"), s, solver, g, x_T, prediction="v")
    np.testing.assert_allclose(np.asarray(v), np.asarray(ref), atol=5e-4)  # measured <= 6.4e-5


def test_bfloat16_x_T_is_solved_in_float32(vp):
    """A bfloat16 x_T comes back bfloat16, but the solve runs in float32: only the rounding of
    x_T and of the result remain (with bfloat16 grid coefficients the log-SNR steps h of a
    200-step grid were off by up to 35% and multistep solvers lost an order of accuracy)."""
    tb = get_testbed("gauss16d")
    g = grids.make_grid(vp, "logsnr", 200)
    x_T = jax.random.normal(jax.random.key(3), (256, 16))
    x_bf = x_T.astype(jnp.bfloat16)
    for name in ("dpmpp_2m", "unipc_bh2"):
        s = solvers.get_solver(name)
        ref = np.asarray(jdiff.sample(tb.model_fn(vp), vp, s, g, x_bf.astype(jnp.float32)))
        out = jdiff.sample(tb.model_fn(vp), vp, s, g, x_bf)
        assert out.dtype == jnp.bfloat16
        # the result's own bfloat16 rounding: at most half an ulp, 2^-9 relative
        np.testing.assert_allclose(np.asarray(out, np.float32), ref, rtol=2.0 ** -8, atol=1e-6)


def _draws_noise(solver, g, to_zero):
    state = solver.init(jnp.zeros((2, 3)), g, jax.random.key(0))
    denoise = lambda x, t, a, s: (x, x)  # noqa: E731
    jaxpr = jax.make_jaxpr(lambda st: solver.step(denoise, st, g, 2, to_zero))(state)
    return "random_bits" in str(jaxpr)


@pytest.mark.parametrize("name", [n for n in ALL if solvers.get_solver(n).stochastic])
def test_stochastic_final_step_to_zero_draws_no_noise(vp, name):
    """A last step onto sigma = 0 gives the noise weight 0: it draws none (one draw fewer per
    sample call), while every other step does."""
    solver = solvers.get_solver(name)
    g = solvers.grid_coeffs(vp, jnp.asarray(grids.make_grid(vp, "logsnr", 4)), jnp.float32)
    assert _draws_noise(solver, g, to_zero=False)
    assert not _draws_noise(solver, g, to_zero=True)
