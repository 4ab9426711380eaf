"""The sampling protocol: traced args, value semantics (no recompiles), split runs, hooks, keys."""

import dataclasses
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import grids, solvers
from jdiff.hooks import Hook
from jdiff.models import MLP
from jdiff.network import flax_net, make_model_fn
from jdiff.testbeds import get_testbed

N = 7  # grid steps of the split / hook tests


@pytest.fixture(scope="module")
def problem(vp):
    tb = get_testbed("mix16d")
    x_T = jax.random.normal(jax.random.key(1), (8, 16))
    return tb, tb.model_fn(vp), x_T


# ---- value semantics: what does and does not recompile ---------------------------------------


def _programs():
    return jdiff.sampling.compiled_programs()


def test_recreated_solvers_transforms_models_and_new_args_do_not_recompile(vp, problem):
    tb, _, x_T = problem
    g = grids.make_grid(vp, "logsnr", 5)

    def run(args=None):
        return jdiff.sample(tb.model_fn(vp), vp, solvers.get_solver("dpmpp_2m"), g, x_T, args=args,
                            correct_x0=jdiff.thresholding.dynamic_thresholding(0.995))

    run()
    before = _programs()
    run()
    assert _programs() == before  # new solver, thresholding and model_fn objects: same program
    run({"scale": jnp.float32(1.0)})
    after_args = _programs()
    assert after_args == before + 1  # a new args *structure* is a new program ...
    run({"scale": jnp.float32(3.0)})
    assert _programs() == after_args  # ... a new args *value* is not
    # options that differ are different programs (the cache key is the configuration)
    jdiff.sample(tb.model_fn(vp), vp, solvers.dpm_solver_multistep(2, lower_order_final=False), g,
                 x_T)
    assert _programs() == after_args + 1


def test_equal_solvers_compare_and_hash_by_value():
    for name in solvers.SOLVERS:
        a, b = solvers.get_solver(name), solvers.get_solver(name)
        assert a == b and hash(a) == hash(b), name
    assert solvers.ddim(0.5) != solvers.ddim(0.25)
    assert solvers.unic(solvers.ddim()) == solvers.unic(solvers.ddim())
    assert jdiff.thresholding.dynamic_thresholding(0.9) == jdiff.thresholding.dynamic_thresholding(0.9)


@dataclasses.dataclass(frozen=True)
class ProjectOnto(Hook):
    """A DDNM-style x0 transform whose data come from ``args``: replace the first coordinate of
    the data prediction by the measurement ``args["y"]`` (test hook)."""

    def x0(self, x0, x, t, alpha, sigma, args, ctx):
        return x0.at[:, 0].set(args["y"])


def test_measurement_in_args_does_not_recompile_and_is_used(vp, problem):
    _, model, x_T = problem
    g = grids.make_grid(vp, "logsnr", 5)
    solver = solvers.get_solver("unipc_bh2")
    a = jdiff.sample(model, vp, solver, g, x_T, args={"y": jnp.full((8,), 0.5)}, hooks=ProjectOnto())
    before = _programs()
    b = jdiff.sample(model, vp, solver, g, x_T, args={"y": jnp.full((8,), -0.25)}, hooks=ProjectOnto())
    assert _programs() == before
    # the last step lands on t = 0 and returns the (projected) data prediction
    np.testing.assert_array_equal(np.asarray(a)[:, 0], 0.5)
    np.testing.assert_array_equal(np.asarray(b)[:, 0], -0.25)


def _large_constants(text: str, min_elements: int):
    """Shapes of constants with at least ``min_elements`` elements in a StableHLO module."""
    out = []
    for m in re.finditer(r"stablehlo\.constant dense<[^>]*>\s*:\s*tensor<([0-9x]+)x[a-z0-9]+>", text):
        n = int(np.prod([int(d) for d in m.group(1).split("x")]))
        if n >= min_elements:
            out.append(m.group(1))
    return out


def test_wrapped_flax_model_is_not_baked_into_the_program(vp):
    """The documented wrapper (make_model_fn over a Flax module) keeps every weight a parameter of
    the lowered program; the closure a user might write instead bakes them in as constants (and
    warns), which is what this test would catch."""
    module = MLP(features=64, depth=2, time_embedding_dim=16)
    params = module.init(jax.random.key(0), jnp.zeros((1, 3)), 0.5)
    g = grids.make_grid(vp, "logsnr", 3)
    x_T = jnp.ones((4, 3))
    model_fn = make_model_fn(flax_net(module), params, vp, "eps")
    text = jdiff.sampling.lower_sample(model_fn, vp, solvers.get_solver("ddim"), g, x_T).as_text()
    assert _large_constants(text, 64 * 64) == []

    def closure(x, t, args):
        return module.apply(params, x, 1000.0 * t)

    with pytest.warns(UserWarning, match="closes over arrays"):
        lowered = jdiff.sampling.lower_sample(closure, vp, solvers.get_solver("ddim"), g, x_T)
    assert "64x64" in _large_constants(lowered.as_text(), 64 * 64)


def test_model_signature_is_checked(vp):
    g = grids.make_grid(vp, "logsnr", 3)
    with pytest.raises(ValueError, match=r"model_fn\(x, t, args\)"):
        jdiff.sample(lambda x, t: x, vp, solvers.get_solver("ddim"), g, jnp.ones((2, 2)))


# ---- split runs and mid-grid starts -----------------------------------------------------------

# the default run: one solver per state type / family, split at points that include k = N - 2
# (a one-step segment before the final step, the case XLA once compiled differently); every
# solver at every k and both grid ends in the slow test below
SPLIT_CASES = [("ddpm", 3), ("heun", N - 2), ("dpmpp_3m", N - 2), ("dpm_solver_3_single", 4),
               ("unipc_bh2", 1), ("lms", 5)]


def _check_split(vp, model, x_T, name, ks, final="zero"):
    solver = solvers.get_solver(name)
    g = grids.make_grid(vp, "logsnr", N, final)
    key = jax.random.key(3)
    full = np.asarray(jdiff.sample(model, vp, solver, g, x_T, key))
    for k in ks:
        x_k, state = jdiff.sample(model, vp, solver, g, x_T, key, stop=k, return_state=True)
        assert not np.array_equal(np.asarray(x_k), full)
        rest = jdiff.sample(model, vp, solver, g, None, key, start=k, state=state)
        np.testing.assert_array_equal(np.asarray(rest), full, err_msg=f"{name} split at {k}")


@pytest.mark.parametrize("name,k", SPLIT_CASES)
def test_split_at_k_is_bit_identical(vp, problem, name, k):
    _check_split(vp, problem[1], problem[2], name, [k])


@pytest.mark.slow
@pytest.mark.parametrize("final", ["zero", "t_min"])
@pytest.mark.parametrize("name", list(solvers.SOLVERS))
def test_split_at_every_k_is_bit_identical(vp, problem, name, final):
    _check_split(vp, problem[1], problem[2], name, range(1, N), final)


@pytest.mark.parametrize("name", ["dpmpp_3m", "unipc_bh2", "deis_3"])
def test_fresh_mid_grid_start_warms_up_like_a_new_run(vp, problem, name):
    """``start=k`` without a state restarts the warm-up at grid[k]: on grids shorter than the
    lower-order-final threshold it equals a run on the grid's tail."""
    _, model, x_T = problem
    solver = solvers.get_solver(name)
    g = grids.make_grid(vp, "logsnr", 10)
    k = 4
    x_k = jdiff.init_noise(vp, g[k], x_T)
    mid = jdiff.sample(model, vp, solver, g, x_k, start=k)
    tail = jdiff.sample(model, vp, solver, g[k:], x_k)
    np.testing.assert_allclose(np.asarray(mid), np.asarray(tail), rtol=0, atol=2e-6)


def test_bad_start_stop_and_state(vp, problem):
    _, model, x_T = problem
    g = grids.make_grid(vp, "logsnr", 4)
    ddim = solvers.get_solver("ddim")
    for kw in ({"start": 4}, {"start": 2, "stop": 2}, {"stop": 5}, {"start": -1}):
        with pytest.raises(ValueError, match="start"):
            jdiff.sample(model, vp, ddim, g, x_T, **kw)
    with pytest.raises(ValueError, match="SampleState"):
        jdiff.sample(model, vp, ddim, g, None, state=x_T)
    _, st = jdiff.sample(model, vp, ddim, g, x_T, stop=2, return_state=True)
    with pytest.raises(ValueError, match="not both"):
        jdiff.sample(model, vp, ddim, g, x_T, start=2, state=st)


# ---- hooks, outputs and transform state -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Extrapolate(Hook):
    """A stateful x0 transform in the shape of DualFast: ``x0 + w (x0 - x0_prev)`` with the
    previous step's first data prediction cached in the hook state (test hook)."""

    w: float = 0.0

    def init(self, x_T, grid, args):
        return (jnp.zeros_like(x_T), jnp.zeros((), bool))

    def x0(self, x0, x, t, alpha, sigma, args, ctx):
        if self.w == 0.0:
            return x0
        prev, have = ctx.state
        return jnp.where(have, x0 + self.w * (x0 - prev), x0)

    def post_step(self, state, outputs, grid, i, args, ctx):
        if self.w == 0.0 and not self.cache_at_identity:
            return state, ctx.state
        return state, (outputs[0].x0, jnp.ones((), bool))

    cache_at_identity: bool = False


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m_sde", "dpm_solver_3_single"])
def test_identity_transform_is_bit_identical_and_state_is_used(vp, problem, name):
    _, model, x_T = problem
    solver = solvers.get_solver(name)
    g = grids.make_grid(vp, "logsnr", N)
    key = jax.random.key(4)
    plain = np.asarray(jdiff.sample(model, vp, solver, g, x_T, key))
    ident = jdiff.sample(model, vp, solver, g, x_T, key, hooks=Extrapolate(0.0))
    np.testing.assert_array_equal(np.asarray(ident), plain)
    # still caching the outputs at the identity setting: the program differs (x0 is computed and
    # stored), and XLA's fusion may move the last ulp of eps-form updates, amplified by the
    # noise-form singlestep solvers (README); the x0 transform itself returns its input, so eps
    # is not recomputed from it
    cached = np.asarray(jdiff.sample(model, vp, solver, g, x_T, key,
                                     hooks=Extrapolate(0.0, cache_at_identity=True)))
    np.testing.assert_allclose(cached, plain, rtol=0, atol=1e-6 if "single" not in name else 1e-3)
    moved = jdiff.sample(model, vp, solver, g, x_T, key, hooks=Extrapolate(0.3))
    assert np.max(np.abs(np.asarray(moved) - plain)) > 1e-3


def test_steps_return_their_model_outputs(vp, problem):
    tb, model, x_T = problem
    g = jdiff.solvers.grid_coeffs(vp, grids.make_grid(vp, "logsnr", 4), jnp.float32)
    denoise = jdiff.sampling.make_denoise(model, "eps")
    for name in ("ddim", "heun", "dpmpp_2s", "dpmpp_3m", "dpm_solver_3_single", "unipc_bh2", "lms"):
        solver = solvers.get_solver(name)
        state = solver.init(x_T, g, jax.random.key(0))
        _, outputs = jax.jit(lambda st: solver.step(denoise, st, g, 0))(state)
        assert len(outputs) == solver.nfe(4, False) // 4, name
        x0, eps = outputs[0]
        # x0 = (x - sigma eps) / alpha of the eps model: float32 error divided by alpha(t_max)
        np.testing.assert_allclose(np.asarray(x0), np.asarray(tb.x0(x_T, g.alpha[0], g.sigma[0])),
                                   atol=1e-5 / float(g.alpha[0]))
        np.testing.assert_allclose(np.asarray(eps), np.asarray(tb.eps(x_T, g.alpha[0], g.sigma[0])),
                                   atol=1e-5)


X0_HOOK_KEYS = []


@dataclasses.dataclass(frozen=True)
class RecordKeys(Hook):
    """Records the key data its x0 transform and post-step hook receive (test hook)."""

    def init(self, x_T, grid, args):
        n = grid.t.shape[0] - 1
        return (jnp.zeros((n, 2), jnp.uint32), jnp.zeros((n, 2), jnp.uint32))

    def x0(self, x0, x, t, alpha, sigma, args, ctx):
        jax.debug.callback(lambda k: X0_HOOK_KEYS.append(tuple(np.asarray(k))),
                           jax.random.key_data(ctx.key))
        return x0

    def post_step(self, state, outputs, grid, i, args, ctx):
        x0_keys, post_keys = ctx.state
        return state, (x0_keys, post_keys.at[i].set(jax.random.key_data(ctx.key)))


def test_key_streams_are_independent(vp, problem):
    """The solver's per-step keys, the model's per-call keys and the hooks' keys are all distinct."""
    _, _, x_T = problem
    n = 5
    g = grids.make_grid(vp, "logsnr", n)
    model_keys = []

    def model(x, t, args, key):
        jax.debug.callback(lambda k: model_keys.append(tuple(np.asarray(k))), jax.random.key_data(key))
        return 0.1 * x

    key = jax.random.key(11)
    solver = solvers.get_solver("ddpm")
    _, st = jdiff.sample(model, vp, solver, g, x_T, key, hooks=RecordKeys(), model_key=True,
                         return_state=True)
    solver_keys = {tuple(np.asarray(jax.random.key_data(jax.random.fold_in(st.solver.key, i))))
                   for i in range(n)}
    post_keys = {tuple(k) for k in np.asarray(st.hooks[0][1])}
    x0_keys = set(X0_HOOK_KEYS[-n:])
    assert len(model_keys) == n and len(set(model_keys)) == n
    assert len(solver_keys) == n and len(post_keys) == n and len(x0_keys) == n
    sets = [solver_keys, set(model_keys), post_keys, x0_keys]
    for a in range(4):
        for b in range(a):
            assert not (sets[a] & sets[b]), (a, b)
    # the streams themselves: fold_in(key, 0 | 1 | 2), pairwise distinct
    streams = jdiff.sampling.key_streams(key)
    data = [tuple(np.asarray(jax.random.key_data(k))) for k in streams]
    assert len(set(data)) == 3
    for s_, k in enumerate(streams):
        np.testing.assert_array_equal(jax.random.key_data(k),
                                      jax.random.key_data(jax.random.fold_in(key, s_)))
    # the solver's stream is not the raw key either (the model stream would then collide with it)
    assert tuple(np.asarray(jax.random.key_data(st.solver.key))) != tuple(
        np.asarray(jax.random.key_data(key)))


def test_determinism_across_fresh_compilations(vp, problem):
    """Same inputs, same bits, also after the compiled program is dropped and rebuilt."""
    _, model, x_T = problem
    g = grids.make_grid(vp, "logsnr", 5)
    solver = solvers.get_solver("dpmpp_2m_sde")
    a = np.asarray(jdiff.sample(model, vp, solver, g, x_T, jax.random.key(2)))
    jax.clear_caches()
    assert _programs() == 0
    b = np.asarray(jdiff.sample(model, vp, solver, g, x_T, jax.random.key(2)))
    np.testing.assert_array_equal(a, b)


def test_plain_closure_without_arrays_does_not_warn(vp):
    g = grids.make_grid(vp, "logsnr", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jdiff.sample(lambda x, t, args: 0.1 * x, vp, solvers.get_solver("ddim"), g, jnp.ones((2, 2)))


def test_reference_solve_traces_the_model_arrays(vp):
    """reference_solve splits model functions like sample: a re-created testbed model (a Partial
    over the mixture and the schedule) reuses the compiled diffrax solve."""
    tb = get_testbed("gauss16d")
    x_T = np.asarray(jax.random.normal(jax.random.key(0), (4, 16)), np.float64)
    a = jdiff.reference_solve(tb.model_fn(vp), vp, x_T, 0.5, 0.2, rtol=1e-6, atol=1e-6)
    before = jdiff.reference._solve._cache_size()
    b = jdiff.reference_solve(get_testbed("gauss16d").model_fn(vp), vp, x_T, 0.5, 0.2, rtol=1e-6,
                              atol=1e-6)
    assert jdiff.reference._solve._cache_size() == before
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k", [4])
def test_fresh_mid_group_start_of_singlestep_solver_is_accurate(vp, problem, k):
    """dpm_solver_3_single started at grid[k] (inside a group of the full grid's order list)
    restarts its groups there: close to the reference solve from grid[k], as a run on the tail."""
    tb, model, x_T = problem
    g = grids.make_grid(vp, "logsnr", 10)
    x_k = jdiff.init_noise(vp, g[k], x_T)
    solver = solvers.get_solver("dpm_solver_3_single")
    mid = np.asarray(jdiff.sample(model, vp, solver, g, x_k, start=k), np.float64)
    ref = jdiff.reference_solve(model, vp, np.asarray(x_k, np.float64), g[k], 0.0, rtol=1e-7,
                                atol=1e-7)
    tail = np.asarray(jdiff.sample(model, vp, solver, g[k:], x_k), np.float64)
    err, err_tail = np.sqrt(np.mean((mid - ref) ** 2)), np.sqrt(np.mean((tail - ref) ** 2))
    assert np.isfinite(err) and err < 2 * err_tail + 1e-3, (err, err_tail)


def test_correct_x0_runs_before_the_other_hooks(vp, problem):
    """``correct_x0`` first, then ``hooks`` in order: clipping to [-1, 1] and then projecting the
    first coordinate onto y = 5 leaves 5 (the other order would give 1)."""
    _, model, x_T = problem
    g = grids.make_grid(vp, "logsnr", 4)
    x = jdiff.sample(model, vp, solvers.get_solver("dpmpp_2m"), g, x_T, args={"y": jnp.full((8,), 5.0)},
                     correct_x0=jdiff.thresholding.dynamic_thresholding(0.995, 1.0), hooks=ProjectOnto())
    np.testing.assert_array_equal(np.asarray(x)[:, 0], 5.0)
    assert np.max(np.abs(np.asarray(x)[:, 1:])) <= 1.0


def test_resumed_bfloat16_run_returns_bfloat16(vp, problem):
    _, model, x_T = problem
    g = grids.make_grid(vp, "logsnr", 5)
    solver = solvers.get_solver("dpmpp_2m")
    xb = x_T.astype(jnp.bfloat16)
    full = jdiff.sample(model, vp, solver, g, xb)
    _, st = jdiff.sample(model, vp, solver, g, xb, stop=2, return_state=True)
    rest = jdiff.sample(model, vp, solver, g, None, start=2, state=st)
    assert full.dtype == rest.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(rest, np.float32), np.asarray(full, np.float32))


def _toy_conditional_net(params, x, c_noise, y=None, train=False, key=None):
    """eps = params * x + y (labels shift the prediction); a network function for make_model_fn."""
    return params * x + (0.0 if y is None else y[:, None].astype(x.dtype))


def test_labels_come_from_args(vp):
    g = grids.make_grid(vp, "logsnr", 3)
    x_T = jnp.ones((4, 2))
    model = make_model_fn(_toy_conditional_net, jnp.float32(0.5), vp, "eps", y=jnp.zeros((4,), jnp.int32))
    ddim = solvers.get_solver("ddim")
    run = lambda args: np.asarray(jdiff.sample(model, vp, ddim, g, x_T, args=args))  # noqa: E731
    default = run(None)
    a = run({"y": jnp.full((4,), 1, jnp.int32)})
    before = _programs()
    b = run({"y": jnp.full((4,), 2, jnp.int32)})
    assert _programs() == before
    assert not np.allclose(a, b) and not np.allclose(a, default)
    np.testing.assert_array_equal(run(jnp.full((4,), 2, jnp.int32)), b)  # an int array is the labels
    np.testing.assert_array_equal(run({"scale": jnp.float32(3.0)}), default)  # no y: the default
