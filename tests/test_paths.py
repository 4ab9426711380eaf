"""Non-monotone paths (RePaint's jumps): the path driver, its schedule, NFE and exact marginals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import grids, paths, solvers
from jdiff.testbeds import get_testbed


def _repaint_timesteps(t_T, jump_length, resamplings):
    """RePaint's ``get_schedule_jump`` (official code, without its unused options): timesteps
    from t_T - 1 down to 0 with one-step excursions back up, then -1 for the final step."""
    jumps = {j: resamplings - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, ts = t_T, []
    while t >= 1:
        t -= 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(jump_length):
                t += 1
                ts.append(t)
    return ts + [-1]


@pytest.mark.parametrize("n,length,resamplings", [(12, 3, 2), (20, 5, 3), (10, 10, 4), (30, 4, 1)])
def test_repaint_path_is_repaints_schedule_with_merged_jumps(n, length, resamplings):
    idx = [n - 1 - t for t in _repaint_timesteps(n, length, resamplings)]
    merged = idx[:2]
    for b in idx[2:]:
        if b < merged[-1] < merged[-2]:  # a run of one-step moves back: one jump to its end
            merged[-1] = b
        else:
            merged.append(b)
    np.testing.assert_array_equal(paths.repaint_path(n, length, resamplings), merged)


@pytest.mark.parametrize("name", ["heun", "dpm_solver_3_single", "ddpm"])
def test_monotone_path_is_sample(vp, name):
    tb = get_testbed("mix16d")
    x_T = jax.random.normal(jax.random.key(1), (8, 16))
    g = grids.make_grid(vp, "logsnr", 6)
    solver = solvers.get_solver(name)
    ref = jdiff.sample(tb.model_fn(vp), vp, solver, g, x_T, jax.random.key(0))
    got = paths.sample_path(tb.model_fn(vp), vp, solver, g, np.arange(7), x_T, jax.random.key(0))
    if solver.stochastic:  # keys per path position: same law, other draws
        assert got.shape == ref.shape and np.all(np.isfinite(np.asarray(got)))
    else:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


@pytest.mark.parametrize("name", ["ddim", "heun", "dpmpp_3m"])
def test_path_nfe_is_exact(vp, name):
    calls = []

    def model(x, t, args):
        jax.debug.callback(lambda: calls.append(1))
        return 0.1 * x

    g = grids.make_grid(vp, "logsnr", 8)
    p = paths.repaint_path(8, 2, 3)
    solver = solvers.get_solver(name)
    jax.block_until_ready(paths.sample_path(model, vp, solver, g, p, jnp.ones((2, 3)), jax.random.key(0)))
    assert len(calls) == paths.path_nfe(solver, g, p)


def test_a_jump_lands_on_the_exact_marginal(vp):
    """DDPM with the exact model walks down to grid[80] (t = 0.2), jumps back to grid[60]
    (t = 0.4): the samples have the diffused data moments there (alpha^2 Cov + sigma^2 I). A jump
    that forgot the variance already present (std sigma_j instead of
    sqrt(sigma_j^2 - r^2 sigma_i^2)) would be off by r^2 sigma_i^2 ~ 0.1 on the diagonal."""
    tb = get_testbed("gauss16d")
    mean, cov = tb.mean_cov()
    g = grids.make_grid(vp, "trailing", 100)
    x_T = jax.random.normal(jax.random.key(5), (20000, 16))
    p = np.concatenate([np.arange(81), [60]])
    x = np.asarray(paths.sample_path(tb.model_fn(vp), vp, solvers.get_solver("ddpm"), g, p, x_T,
                                     jax.random.key(6)), np.float64)
    a, s = float(vp.alpha(g[60])), float(vp.sigma(g[60]))
    np.testing.assert_allclose(x.mean(0), a * mean, atol=0.03)
    np.testing.assert_allclose(np.cov(x.T), a**2 * cov + s**2 * np.eye(16), atol=0.035)


@pytest.mark.slow
def test_repaint_walk_samples_the_data_distribution(vp):
    tb = get_testbed("gauss16d")
    mean, cov = tb.mean_cov()
    g = grids.make_grid(vp, "trailing", 200)
    x_T = jax.random.normal(jax.random.key(7), (20000, 16))
    x = np.asarray(paths.sample_path(tb.model_fn(vp), vp, solvers.get_solver("ddpm"), g,
                                     paths.repaint_path(200, 10, 3), x_T, jax.random.key(8)))
    assert np.max(np.abs(x.mean(0) - mean)) < 0.03
    assert np.max(np.abs(np.cov(x.T) - cov)) < 0.035


def test_bad_paths(vp):
    g = grids.make_grid(vp, "logsnr", 4)
    m = lambda x, t, args: x  # noqa: E731
    ddim, x = solvers.get_solver("ddim"), jnp.ones((2, 2))
    for bad, match in (([0, 2, 3], "one step down"), ([0, 1, 1], "one step down"), ([0, 5], r"\[0, 4\]"),
                       ([0], "at least 2"), ([0, 1, 2, 3, 4, 3, 4], "before its last")):
        with pytest.raises(ValueError, match=match):
            paths.sample_path(m, vp, ddim, g, np.asarray(bad), x, jax.random.key(0))
    with pytest.raises(ValueError, match="PRNG key"):
        paths.sample_path(m, vp, ddim, g, np.arange(5), x)


@pytest.mark.parametrize("name", ["dpmpp_3m", "unipc_bh2"])
def test_path_starting_mid_grid_is_sample_from_there(vp, name):
    tb = get_testbed("mix16d")
    g = grids.make_grid(vp, "logsnr", 8)
    x = jdiff.init_noise(vp, g[3], jax.random.normal(jax.random.key(1), (8, 16)))
    solver = solvers.get_solver(name)
    ref = jdiff.sample(tb.model_fn(vp), vp, solver, g, x, start=3)
    got = paths.sample_path(tb.model_fn(vp), vp, solver, g, np.arange(3, 9), x, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))


def test_jump_then_restart_equals_its_pieces(vp):
    """A path down to 5, back to 2 and down to the end equals: sample to 5, the forward jump with
    the jump stream's key of path position 5, and a fresh sample(start=2) (multistep solver: its
    history restarts after the jump)."""
    tb = get_testbed("mix16d")
    model = tb.model_fn(vp)
    g = grids.make_grid(vp, "logsnr", 8)
    x_T = jdiff.init_noise(vp, g[0], jax.random.normal(jax.random.key(1), (8, 16)))
    solver, key = solvers.get_solver("dpmpp_3m"), jax.random.key(4)
    p = np.concatenate([np.arange(6), np.arange(2, 9)])
    got = np.asarray(paths.sample_path(model, vp, solver, g, p, x_T, key))
    x5 = jdiff.sample(model, vp, solver, g, x_T, stop=5)
    z = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, paths.JUMP_STREAM), 5), x5.shape)
    x2 = paths.forward_jump(x5, vp.alpha(g[5]), vp.sigma(g[5]), vp.alpha(g[2]), vp.sigma(g[2]), z)
    want = np.asarray(jdiff.sample(model, vp, solver, g, x2, start=2))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)


def test_revisited_steps_draw_fresh_solver_noise(vp):
    """DDPM along [0, 1, 2, 1, 2, 3]: the two visits of step 1 -> 2 get different solver keys."""
    import dataclasses

    from jdiff.hooks import Hook

    seen = []

    @dataclasses.dataclass(frozen=True)
    class Spy(Hook):
        def post_step(self, state, outputs, grid, i, args, ctx):
            jax.debug.callback(lambda k, i: seen.append((int(i), tuple(np.asarray(k)))),
                               jax.random.key_data(state.key), i)
            return state, ctx.state

    g = grids.make_grid(vp, "logsnr", 3)
    m = lambda x, t, args: 0.1 * x  # noqa: E731
    jax.block_until_ready(paths.sample_path(m, vp, solvers.get_solver("ddpm"), g,
                                            np.asarray([0, 1, 2, 1, 2, 3]), jnp.ones((2, 2)),
                                            jax.random.key(0), hooks=Spy()))
    visits = [k for i, k in seen if i == 1]
    assert len(visits) == 2 and visits[0] != visits[1]
