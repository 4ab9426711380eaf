import jax
import numpy as np
import pytest

import jdiff


@pytest.fixture(scope="session")
def vp():
    return jdiff.schedules.vp_discrete()


@pytest.fixture(scope="session")
def gauss64():
    """A single 8-D Gaussian with full covariance in float64 (orthogonal to f64 precision)."""
    rng = np.random.RandomState(0)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    cov = (q * np.logspace(-2, 0, 8)) @ q.T
    with jax.enable_x64(True):
        return jdiff.testbeds.from_arrays([1.0], 0.3 * rng.standard_normal((1, 8)), covs=cov[None],
                                          name="gauss8d", dtype=jax.numpy.float64)
