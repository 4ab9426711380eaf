"""DualFast as a sampler hook: the rule against an independent NumPy loop, identity at scale 0,
no extra model call, every solver; Self-Guidance's rule and NFE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import grids, solvers
from jdiff.accel.dualfast import DualFast, self_guidance
from jdiff.hooks import Hook

SCHED = jdiff.schedules.vp_linear()
N = 6


def mock_eps(x, t, args=None):
    """A smooth, nonlinear eps-model (its outputs change with t and x)."""
    return jnp.tanh(x) * (0.5 + t) + 0.1 * jnp.sin(3.0 * t) * x


@pytest.fixture(scope="module")
def setup():
    grid = grids.make_grid(SCHED, "logsnr", N, "t_min")
    x_T = jdiff.init_noise(SCHED, grid[0], jax.random.normal(jax.random.key(0), (8, 3)))
    return grid, x_T


def numpy_ddim_dualfast(grid, x_T, scale, ramp, reference, space):
    """DDIM (eta 0) with the DualFast rule, written out in float64 from the module docstring."""
    t = np.asarray(grid, np.float64)
    alpha, sigma = np.asarray(SCHED.alpha(t), np.float64), np.asarray(SCHED.sigma(t), np.float64)
    x = np.asarray(x_T, np.float64)
    ref = None
    for i in range(N):
        eps = np.tanh(x) * (0.5 + t[i]) + 0.1 * np.sin(3.0 * t[i]) * x
        x0 = (x - sigma[i] * eps) / alpha[i]
        m = eps if space == "eps" else x0
        c = {"constant": scale, "step": scale * i / (N - 1), "time": scale * (1 - t[i] / t[0])}[ramp]
        if ref is not None:
            m_mixed = m + c * (m - ref)
            if space == "eps":
                eps = m_mixed
                x0 = (x - sigma[i] * eps) / alpha[i]
            else:
                x0 = m_mixed
                eps = (x - alpha[i] * x0) / sigma[i]
        if ref is None or reference == "previous":
            ref = m  # the raw output, not the mixed one
        x = alpha[i + 1] * x0 + sigma[i + 1] * eps
    return x


@pytest.mark.parametrize("ramp,reference,space", [("step", "previous", "eps"), ("constant", "first", "x0"),
                                                  ("time", "previous", "x0"), ("constant", "first", "eps")])
def test_rule_matches_an_independent_loop(setup, ramp, reference, space):
    grid, x_T = setup
    hook = DualFast(jnp.asarray(0.7), ramp=ramp, reference=reference, space=space)
    x = jdiff.sample(mock_eps, SCHED, solvers.get_solver("ddim"), grid, x_T, hooks=hook)
    want = numpy_ddim_dualfast(grid, x_T, 0.7, ramp, reference, space)
    np.testing.assert_allclose(np.asarray(x), want, rtol=2e-5, atol=2e-5)
    plain = jdiff.sample(mock_eps, SCHED, solvers.get_solver("ddim"), grid, x_T)
    assert np.max(np.abs(np.asarray(plain) - want)) > 1e-2  # the correction is not negligible here


def numpy_multistep_dualfast(grid, x_T, scale, solver, history):
    """DPM-Solver++(2M) (midpoint, lower order on the last step, x0 history) or iPNDM (Adams-
    Bashforth in (x / alpha, sigma / alpha), eps history) with DualFast (``time`` ramp, ``first``
    reference, eps space) in float64: ``history="mixed"`` stores the mixed output in the solver's
    history, ``"raw"`` the model's own."""
    t = np.asarray(grid, np.float64)
    alpha, sigma = np.asarray(SCHED.alpha(t), np.float64), np.asarray(SCHED.sigma(t), np.float64)
    lam, rho = np.log(alpha / sigma), sigma / alpha
    ab = [[1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12], [55 / 24, -59 / 24, 37 / 24, -9 / 24]]
    x, ref, hist = np.asarray(x_T, np.float64), None, []
    for i in range(N):
        eps = np.tanh(x) * (0.5 + t[i]) + 0.1 * np.sin(3.0 * t[i]) * x
        x0 = (x - sigma[i] * eps) / alpha[i]
        raw = x0 if solver == "dpmpp_2m" else eps
        if ref is None:
            ref, used = eps, raw
        else:
            c = scale * (1 - t[i] / t[0])
            eps_m = eps + c * (eps - ref)
            used = (x - sigma[i] * eps_m) / alpha[i] if solver == "dpmpp_2m" else eps_m
        past = hist[::-1]  # newest first: the stored outputs of steps i-1, i-2, ...
        hist.append(used if history == "mixed" else raw)
        if solver == "dpmpp_2m":
            h = lam[i + 1] - lam[i]
            k = min(2, i + 1, N - i)
            d = used if k == 1 else used + 0.5 * (used - past[0]) / ((lam[i] - lam[i - 1]) / h)
            x = (sigma[i + 1] / sigma[i]) * x - alpha[i + 1] * np.expm1(-h) * d
        else:
            b = ab[min(4, i + 1) - 1]
            comb = b[0] * used + sum(bj * m for bj, m in zip(b[1:], past, strict=False))
            x = alpha[i + 1] * (x / alpha[i] + (rho[i + 1] - rho[i]) * comb)
    return x


@pytest.mark.parametrize("solver,history", [("dpmpp_2m", "raw"), ("ipndm", "raw"), ("dpmpp_2m", "mixed")])
def test_history_option_matches_an_independent_loop(setup, solver, history):
    """``history="raw"``: only the newest output is mixed; the solver's history (x0 for DPM-Solver++,
    eps for iPNDM) keeps the raw model outputs."""
    grid, x_T = setup
    hook = DualFast(jnp.asarray(0.6), history=history)
    x = np.asarray(jdiff.sample(mock_eps, SCHED, solvers.get_solver(solver), grid, x_T, hooks=hook))
    want = numpy_multistep_dualfast(grid, x_T, 0.6, solver, history)
    np.testing.assert_allclose(x, want, rtol=2e-5, atol=2e-5)
    other = numpy_multistep_dualfast(grid, x_T, 0.6, solver, "mixed" if history == "raw" else "raw")
    assert np.max(np.abs(other - want)) > 1e-3  # the two histories differ measurably here


def test_raw_history_is_a_no_op_for_one_step_solvers(setup):
    grid, x_T = setup
    x = jdiff.sample(mock_eps, SCHED, solvers.get_solver("ddim"), grid, x_T,
                     hooks=DualFast(jnp.asarray(0.6), history="raw"))
    want = numpy_ddim_dualfast(grid, x_T, 0.6, "time", "first", "eps")
    np.testing.assert_allclose(np.asarray(x), want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", ["ddim", "dpmpp_3m", "heun"]
                         + [pytest.param(n, marks=pytest.mark.slow)
                            for n in ("unipc_bh2", "dpmpp_2m", "deis_2", "ipndm")])
def test_scale_zero_is_the_base_solver_and_no_call_is_added(name):
    tb = jdiff.testbeds.get_testbed("mix2d")
    model = tb.model_fn(SCHED)
    grid = grids.make_grid(SCHED, "logsnr", 5)
    x_T = jdiff.init_noise(SCHED, grid[0], jax.random.normal(jax.random.key(1), (64, 2)))
    solver = solvers.get_solver(name)
    plain = np.asarray(jdiff.sample(model, SCHED, solver, grid, x_T))
    same = np.asarray(jdiff.sample(model, SCHED, solver, grid, x_T, hooks=DualFast(0.0)))
    assert np.array_equal(plain, same)  # a static 0 is the identity, bit for bit
    traced0 = np.asarray(jdiff.sample(model, SCHED, solver, grid, x_T, hooks=DualFast(jnp.asarray(0.0))))
    np.testing.assert_allclose(traced0, plain, rtol=1e-5, atol=1e-5)  # up to eps recomputation
    mixed = np.asarray(jdiff.sample(model, SCHED, solver, grid, x_T, hooks=DualFast(jnp.asarray(0.5))))
    assert np.all(np.isfinite(mixed)) and np.max(np.abs(mixed - plain)) > 1e-3

    calls = []

    def counted(x, t, args=None):
        jax.debug.callback(lambda: calls.append(1))
        return model(x, t, args)

    jax.block_until_ready(jdiff.sample(counted, SCHED, solver, grid, x_T, hooks=DualFast(0.5)))
    assert len(calls) == jdiff.nfe(solver, grid)


def test_post_step_hooks_see_the_raw_model_outputs(setup):
    """ctx.model_outputs holds the model's outputs before the x0 hooks, outputs the used ones."""
    grid, x_T = setup
    seen = []

    class Shift(Hook):
        def x0(self, x0, x, t, alpha, sigma, args, ctx):
            return x0 + 1.0

    class Spy(Hook):
        def post_step(self, state, outputs, grid, i, args, ctx):
            jax.debug.callback(lambda a, b: seen.append((np.asarray(a), np.asarray(b))),
                               outputs[0].x0, ctx.model_outputs[0].x0)
            return state, ctx.state

    jax.block_until_ready(jdiff.sample(mock_eps, SCHED, solvers.get_solver("ddim"), grid, x_T,
                                       hooks=(Shift(), Spy())))
    assert len(seen) == N
    for used, raw in seen:
        np.testing.assert_allclose(used - raw, 1.0, atol=1e-4)


def test_self_guidance_rule_and_nfe(setup):
    grid, x_T = setup
    guided = self_guidance(mock_eps, SCHED, 0.3, delta=0.05)
    x, t = x_T, jnp.asarray(0.4)
    want = mock_eps(x, t) + 0.3 * (mock_eps(x, t) - mock_eps(x, t + 0.05))
    np.testing.assert_allclose(np.asarray(guided(x, t, None)), np.asarray(want), rtol=1e-6)
    # capped at t_max
    np.testing.assert_allclose(np.asarray(guided(x, jnp.asarray(0.99), None)),
                               np.asarray(mock_eps(x, 0.99) + 0.3 * (mock_eps(x, 0.99) - mock_eps(x, 1.0))),
                               rtol=1e-6)
    # scale is traced: a new value reuses the program
    run = lambda s: jdiff.sample(self_guidance(mock_eps, SCHED, s), SCHED, solvers.get_solver("ddim"), grid, x_T)
    run(0.1)
    n0 = jdiff.sampling.compiled_programs()
    run(0.2)
    assert jdiff.sampling.compiled_programs() == n0


@pytest.mark.parametrize("kwargs,match", [({"ramp": "cosine"}, "unknown DualFast ramp"),
                                          ({"reference": "last"}, "unknown DualFast reference"),
                                          ({"space": "v"}, "unknown DualFast space"),
                                          ({"history": "newest"}, "unknown DualFast history"),
                                          ({"scale": -0.5}, "scale must be >= 0")])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DualFast(**kwargs)
    with pytest.raises(ValueError, match="delta must be positive"):
        self_guidance(mock_eps, SCHED, 0.1, delta=0.0)


def test_per_solver_defaults_and_plan():
    """Off (a static 0: the base solver bit for bit) where the class default was measured to harm
    (iPNDM, DPM-Solver++(3M)) and, as a precaution, for unmeasured order >= 3 solvers; the class
    default elsewhere; options given explicitly win (``--dualfast`` through the plan)."""
    from jdiff.accel.plan import AccelPlan, dualfast_plan

    for name in ("ipndm", "dpmpp_3m", "deis_3", "dpm_solver_3"):
        assert DualFast.for_solver(name).is_identity, name
        assert DualFast.for_solver(solvers.get_solver(name)).is_identity, name
    for name in ("ddim", "dpmpp_2m", "unipc_bh2", "deis_2", "heun"):
        assert DualFast.for_solver(name) == DualFast(), name
    assert DualFast.for_solver("ipndm", scale=0.1, history="raw") == DualFast(0.1, history="raw")
    ipndm, ddim = solvers.get_solver("ipndm"), solvers.get_solver("ddim")
    bare = AccelPlan(**dualfast_plan(""))
    assert bare.hooks_for(ipndm) == () and bare.hooks_for(ddim) == (DualFast(),)
    assert bare.describe(ipndm)["dualfast"] is None and bare.describe(ddim)["dualfast"]["scale"] == 0.25
    ramp = AccelPlan(**dualfast_plan("ramp=step"))
    assert ramp.hooks_for(ipndm) == () and ramp.hooks_for(ddim) == (DualFast(ramp="step"),)
    forced = AccelPlan(**dualfast_plan("scale=0.1,history=raw"))
    assert forced.hooks_for(ipndm) == (DualFast(0.1, history="raw"),)
    assert AccelPlan(dualfast=DualFast()).hooks_for(ipndm) == (DualFast(),)  # given as an object: as is
    assert AccelPlan(**dualfast_plan(None)).hooks_for(ddim) == ()
