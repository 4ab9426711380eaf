import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jdiff
from jdiff import schedules

ALL = list(schedules.SCHEDULES)


def test_alphas_cumprod_is_float32_cumprod_of_linear_betas(vp):
    betas = schedules.ddpm_betas()
    assert betas.dtype == np.float32 and betas[0] == np.float32(1e-4) and betas[-1] == np.float32(0.02)
    ac = np.asarray(vp.alphas_cumprod)
    assert ac.dtype == np.float32 and ac.shape == (1000,)
    # accumulated in double, rounded per element, as torch.cumprod does on CPU
    assert np.array_equal(ac, np.cumprod((1 - betas).astype(np.float64)).astype(np.float32))
    # close to (but not necessarily bit-equal with) a float32-accumulated product
    np.testing.assert_allclose(ac, np.cumprod(1 - betas, dtype=np.float32), rtol=1e-5)


def test_discrete_knots_reproduce_table(vp):
    n = np.arange(1000)
    with jax.enable_x64(True):
        a = np.asarray(vp.alpha(jnp.asarray((n + 1) / 1000.0)))
    np.testing.assert_allclose(a**2, np.asarray(vp.alphas_cumprod, np.float64), rtol=2e-6)
    assert float(vp.timestep(0.5)) == 499.0


@pytest.mark.parametrize("name", ALL)
def test_clean_end_point(name):
    s = schedules.get_schedule(name)
    with jax.enable_x64(True):
        assert float(s.alpha(0.0)) == pytest.approx(1.0, abs=1e-12)
        assert float(s.sigma(0.0)) == pytest.approx(0.0, abs=1e-6)
        assert float(s.t_of_log_snr(jnp.inf)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=30, deadline=None)
@given(u=st.floats(0.0, 1.0))
def test_log_snr_inverse_and_identities(name, u):
    s = schedules.get_schedule(name)
    with jax.enable_x64(True):
        t = jnp.float64(s.t_min + u * (s.t_max - s.t_min))
        lam = s.log_snr(t)
        assert float(s.t_of_log_snr(lam)) == pytest.approx(float(t), rel=1e-5, abs=1e-6)
        a, sg = float(s.alpha(t)), float(s.sigma(t))
        assert float(lam) == pytest.approx(np.log(a) - np.log(sg), rel=1e-9, abs=1e-9)
        assert float(s.sigma_hat(t)) == pytest.approx(sg / a, rel=1e-9)
        if s.kind == "vp":
            assert a**2 + sg**2 == pytest.approx(1.0, abs=1e-12)


def test_log_snr_decreasing():
    for name in ALL:
        s = schedules.get_schedule(name)
        t = np.linspace(s.t_min, s.t_max, 200)
        with jax.enable_x64(True):
            lam = np.asarray(s.log_snr(jnp.asarray(t)))
        assert np.all(np.diff(lam) < 0), name


def test_vp_linear_matches_integral_of_beta():
    s = schedules.vp_linear()
    t = 0.37
    integral = 0.1 * t + 0.5 * (20 - 0.1) * t**2  # int_0^t beta
    with jax.enable_x64(True):
        assert float(s.alpha(t)) == pytest.approx(np.exp(-0.5 * integral), rel=1e-12)


def test_bf16_collapses_schedule_but_float32_does_not(vp):
    """Why schedule maths is never run in bf16: alpha-bar rounds to 1 near t = 0."""
    abar = np.asarray(vp.alphas_cumprod)[:5]
    assert np.all(abar < 1.0)
    assert np.all(np.asarray(jnp.asarray(abar, jnp.bfloat16), np.float32) == 1.0)


def test_bad_schedule_inputs():
    with pytest.raises(ValueError, match="valid: vp_discrete"):
        schedules.get_schedule("nope")
    with pytest.raises(ValueError, match="beta_schedule"):
        schedules.vp_discrete(beta_schedule="nope")
    with pytest.raises(ValueError, match="non-increasing"):
        schedules.vp_discrete(alphas_cumprod=np.array([0.5, 0.9]))


def test_other_beta_tables():
    for kind in ("scaled_linear", "squaredcos_cap_v2"):
        s = schedules.vp_discrete(beta_schedule=kind)
        assert np.all(np.diff(np.asarray(s.alphas_cumprod)) < 0)
    assert jdiff.schedules.edm().t_max == 80.0
