"""Shape and jit checks of the MLP denoiser (tiny widths: runs in a couple of seconds)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.models import MLP, sinusoidal_embedding


@pytest.fixture(scope="module")
def model_and_params():
    model = MLP(features=16, depth=2, time_embedding_dim=8)
    params = model.init(jax.random.key(0), jnp.zeros((1, 3)), 0.5)
    return model, params


def test_sinusoidal_embedding_shapes():
    assert sinusoidal_embedding(jnp.float32(0.3), 8).shape == (8,)
    assert sinusoidal_embedding(jnp.ones((5,)), 8).shape == (5, 8)
    odd = sinusoidal_embedding(jnp.ones((5,)), 7)
    assert odd.shape == (5, 7) and np.all(np.asarray(odd[:, -1]) == 0)
    # t = 0: cos part is 1, sin part is 0
    np.testing.assert_array_equal(sinusoidal_embedding(jnp.float32(0.0), 4), [1, 1, 0, 0])


def test_scalar_and_batched_t(model_and_params):
    model, params = model_and_params
    x = jax.random.normal(jax.random.key(1), (4, 3))
    out_scalar = model.apply(params, x, 0.25)
    assert out_scalar.shape == x.shape and out_scalar.dtype == x.dtype
    out_batched = model.apply(params, x, jnp.full((4,), 0.25))
    np.testing.assert_allclose(out_scalar, out_batched, rtol=1e-6, atol=1e-6)
    # different times give different outputs per row
    out_mixed = model.apply(params, x, jnp.array([0.1, 0.2, 0.3, 0.4]))
    assert out_mixed.shape == x.shape
    assert not np.allclose(out_mixed, out_scalar)


def test_param_shapes(model_and_params):
    _, params = model_and_params
    p = params["params"]
    assert p["time_dense"]["kernel"].shape == (8, 16)
    assert p["dense_in"]["kernel"].shape == (3, 16)
    assert p["dense_1"]["kernel"].shape == (16, 16)
    assert p["dense_out"]["kernel"].shape == (16, 3)
    assert "dense_2" not in p


def test_bad_shapes_raise(model_and_params):
    model, params = model_and_params
    with pytest.raises(ValueError):
        model.apply(params, jnp.zeros((4, 3)), jnp.zeros((3,)))
    with pytest.raises(ValueError):
        model.apply(params, jnp.zeros((3,)), 0.5)


def test_jit_compiles_once_with_partial(model_and_params):
    model, params = model_and_params
    traces = []

    def apply(p, x, t):
        traces.append(1)
        return model.apply(p, x, t)

    f = jax.jit(apply)
    x = jnp.ones((4, 3))
    a = f(params, x, jnp.float32(0.1))
    b = f(params, x, jnp.float32(0.9))
    assert len(traces) == 1
    np.testing.assert_allclose(a, model.apply(params, x, 0.1), rtol=1e-5, atol=1e-6)
    assert not np.allclose(a, b)
    # the sampler form: Partial(apply, params) is a pytree, so params are traced arguments
    fn = jax.tree_util.Partial(model.apply, params)
    g = jax.jit(lambda fn, x, t: fn(x, t))
    np.testing.assert_allclose(g(fn, x, 0.1), a, rtol=1e-5, atol=1e-6)


def test_class_conditional_mlp_and_labelled_testbed_runs(model_and_params):
    """num_classes adds a label embedding (null class = num_classes, y=None means null); the
    unconditional MLP keeps its parameters and rejects labels; a labelled testbed feeds
    conditional runs with the class of each sample's component."""
    from jdiff.run import RunConfig, build_run

    model, params = model_and_params
    with pytest.raises(ValueError, match="unconditional"):
        model.apply(params, jnp.ones((2, 3)), 0.5, jnp.array([0, 1]))
    cond = MLP(features=16, depth=2, time_embedding_dim=8, num_classes=3)
    p = cond.init(jax.random.key(0), jnp.ones((2, 3)), 0.5, jnp.array([0, 1]))
    assert p["params"]["label_embed"]["embedding"].shape == (4, 16)
    assert {k for k in p["params"] if k != "label_embed"} == set(model.init(jax.random.key(0), jnp.ones((2, 3)), 0.5)["params"])
    x = jnp.ones((2, 3))
    np.testing.assert_array_equal(cond.apply(p, x, 0.5), cond.apply(p, x, 0.5, jnp.array([3, 3])))
    assert not np.allclose(cond.apply(p, x, 0.5, jnp.array([0, 0])), cond.apply(p, x, 0.5, jnp.array([1, 1])))
    run = build_run(RunConfig(data="classes2d", model="mlp", conditional=True, batch_size=64, mlp_features=16,
                              mlp_depth=2))
    batch = run.batch_fn(0)
    assert run.num_classes == 3 and batch["y"].shape == (64,) and set(np.unique(batch["y"])) <= {0, 1, 2}
    # each point is most probably of its own class more often than chance
    from jdiff.testbeds import get_testbed

    pred = np.argmax(np.asarray(get_testbed("classes2d").class_log_probs(jnp.asarray(batch["x"]))), 1)
    assert np.mean(pred == batch["y"]) > 0.6
    assert "y" not in build_run(RunConfig(data="classes2d", model="mlp", batch_size=8)).batch_fn(0)
