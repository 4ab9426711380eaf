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
