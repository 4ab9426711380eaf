import jax
import numpy as np
import pytest

import jdiff


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Free every test module's compiled XLA programs when the module finishes.

    XLA:CPU keeps each compiled executable in ~120-160 memory mappings (measured with jax 0.10.2:
    one ``jdiff.sample`` program = 120-160 entries of /proc/self/maps), and JAX's jit caches keep
    every executable alive. The default suite compiles enough programs to reach Linux's
    ``vm.max_map_count`` (65530) in one process, after which mmap fails inside XLA and the next
    compilation segfaults. ``jax.clear_caches()`` drops the cached executables, and their mappings
    with them."""
    yield
    jax.clear_caches()


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


@pytest.fixture(scope="session")
def gauss_problem(vp, gauss64):
    """Float64 order-test problem: the Gaussian's exact model, 32 starting points, and the diffrax
    reference from t_max to t_min (``refs["t_min"]``) and to 0 (``refs["zero"]``)."""
    with jax.enable_x64(True):
        model = gauss64.model_fn(vp)
        x_T = jax.random.normal(jax.random.key(3), (32, 8), jax.numpy.float64)
        refs = {}
        for final in ("t_min", "zero"):
            g = jdiff.grids.make_grid(vp, "logsnr", 4, final)
            refs[final] = jdiff.reference_solve(model, vp, x_T, g[0], g[-1])
    return model, x_T, refs
