import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff.testbeds import BUILTIN, from_arrays, get_testbed, load_spec


@pytest.mark.parametrize("name", list(BUILTIN))
def test_eps_is_minus_sigma_times_autodiff_score(name):
    """The closed-form eps equals -sigma * grad log p_t (autodiff of the diffused density).

    Tolerance 1e-6: the built-in full-covariance testbeds store float32 eigenvectors, orthogonal
    only to ~1e-7, which both formulas inherit differently."""
    tb = get_testbed(name)
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (5, tb.dim), jnp.float64)
        for a, s in [(0.9, 0.43), (0.2, 0.98), (1.0, 0.05)]:
            score = jax.vmap(jax.grad(lambda v: tb.log_prob(v[None], a, s)[0]))(x)
            np.testing.assert_allclose(np.asarray(tb.eps(x, a, s)), np.asarray(-s * score), atol=1e-6)
            # x0 is consistent with eps through x = alpha x0 + sigma eps
            np.testing.assert_allclose(np.asarray(a * tb.x0(x, a, s) + s * tb.eps(x, a, s)),
                                       np.asarray(x), atol=1e-6)


def test_finite_at_sigma_zero():
    tb = get_testbed("mix2d")
    x = jax.random.normal(jax.random.key(0), (7, 2))
    assert np.all(np.isfinite(np.asarray(tb.eps(x, 1.0, 0.0))))
    np.testing.assert_allclose(np.asarray(tb.x0(x, 1.0, 0.0)), np.asarray(x), atol=1e-6)


def test_exact_model_has_no_spurious_nans():
    """Regression: XLA CPU once fused the softmax product into the following dot and returned NaN
    nondeterministically at batch ~8000 (jax 0.10.2); jdiff puts an optimization barrier there."""
    tb = get_testbed("gauss16d")
    x = jax.random.normal(jax.random.key(5), (8000, 16))
    g = jnp.asarray([1.0, 0.995], jnp.float32)
    f = jax.jit(lambda x, g: tb.eps(x, g[0] * 0.00635, g[1]))
    for _ in range(10):
        assert not np.any(np.isnan(np.asarray(f(x, g))))


def test_sampler_moments():
    tb = get_testbed("mix64d")
    x = np.asarray(tb.sample(jax.random.key(0), 20000), np.float64)
    mean, cov = tb.mean_cov()
    assert np.max(np.abs(x.mean(0) - mean)) < 0.03
    assert np.max(np.abs(np.cov(x.T) - cov)) < 0.03


def test_json_spec_roundtrip(tmp_path):
    diag = {"weights": [1, 3], "means": [[0, 0], [1, 1]], "stds": [[0.1, 0.2], [0.3, 0.3]]}
    full = {"weights": [1], "means": [[0, 1]], "covs": [[[1.0, 0.5], [0.5, 2.0]]]}
    for spec in (diag, full):
        p = tmp_path / "mine.json"
        p.write_text(json.dumps(spec))
        tb = load_spec(str(p))
        assert tb.name == "mine" and tb.dim == 2
        m, c = tb.mean_cov()
        if "covs" in spec:
            np.testing.assert_allclose(c, spec["covs"][0], atol=1e-6)
    tb = get_testbed(str(p))
    assert tb.n_components == 1


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"means": [[0.0]], "stds": [[1.0]]}, "missing field 'weights'"),
        ({"weights": [1.0], "stds": [[1.0]]}, "missing field 'means'"),
        ({"weights": [1.0], "means": [[0.0]]}, "exactly one of the fields 'stds'"),
        ({"weights": [1.0, 2.0], "means": [[0.0]], "stds": [[1.0]]}, "field 'means' must have shape"),
        ({"weights": [-1.0], "means": [[0.0]], "stds": [[1.0]]}, "field 'weights' must be positive"),
        ({"weights": [1.0], "means": [[0.0]], "stds": [[-1.0]]}, "field 'stds' must be positive"),
        ({"weights": [1.0], "means": [[0.0, 1.0]], "stds": [[1.0, 1.0, 1.0]]}, "field 'stds' must have shape"),
        ({"weights": [1.0], "means": [["a"]], "stds": [[1.0]]}, "field 'means' is not a numeric"),
        ({"weights": [1.0], "means": [[0.0, 0.0]], "covs": [[[1.0, 2.0], [0.0, 1.0]]]}, "symmetric"),
        ({"weights": [1.0], "means": [[0.0, 0.0]], "covs": [[[1.0, 2.0], [2.0, 1.0]]]}, "positive definite"),
        ({"weights": [1.0], "means": [[0.0]], "stds": [[1.0]], "colour": 1}, "unknown field"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_malformed_spec_names_field(tmp_path, spec, match):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=match):
        load_spec(str(p))


def test_unreadable_specs(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_spec(str(p))
    with pytest.raises(ValueError, match="does not exist"):
        load_spec(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="valid: gauss16d, mix2d, mix16d, mix64d"):
        get_testbed("nope")


def test_from_arrays_scalar_stds():
    tb = from_arrays([1, 1], [[0, 0, 0], [1, 1, 1]], stds=[0.5, 0.25])
    np.testing.assert_allclose(np.asarray(tb.eigvals), [[0.25] * 3, [0.0625] * 3])
    assert jdiff.testbeds.get_testbed("mix2d").n_components == 8
