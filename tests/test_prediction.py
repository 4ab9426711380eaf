import jax
import jax.numpy as jnp
import numpy as np

import jdiff
import pytest

from jdiff import prediction, schedules


@pytest.mark.parametrize("kind", prediction.PREDICTIONS)
def test_roundtrip(kind):
    k1, k2 = jax.random.split(jax.random.key(0))
    x0, eps = jax.random.normal(k1, (4, 3)), jax.random.normal(k2, (4, 3))
    a, s = 0.6, 0.8  # VP: a^2 + s^2 = 1 (needed by v)
    x = a * x0 + s * eps
    pred = prediction.from_x0_eps(x0, eps, a, s, kind)
    got_x0, got_eps = prediction.to_x0_eps(pred, x, a, s, kind)
    np.testing.assert_allclose(np.asarray(got_x0), np.asarray(x0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_eps), np.asarray(eps), atol=1e-5)


def test_bad_kind():
    with pytest.raises(ValueError, match="valid: eps, x0, v, score"):
        prediction.check_prediction("noise")


def test_edm_scalings_and_denoiser():
    c_skip, c_out, c_in, c_noise = prediction.edm_scalings(jnp.float32(0.5), 0.5)
    assert float(c_skip) == pytest.approx(0.5) and float(c_in) == pytest.approx(1 / np.sqrt(0.5))
    assert float(c_out) == pytest.approx(0.25 / np.sqrt(0.5)) and float(c_noise) == pytest.approx(np.log(0.5) / 4)
    # with a zero network the EDM denoiser is the optimal linear shrinkage for unit-sigma_data data
    zero_net = lambda params, x, c, y, train, key: jnp.zeros_like(x)  # noqa: E731
    d = jdiff.network.make_model_fn(zero_net, None, schedules.edm(), "edm")
    x = jnp.ones((2, 3))
    np.testing.assert_allclose(np.asarray(d(x, jnp.float32(2.0), None)), 0.25 / 4.25, rtol=1e-6)
