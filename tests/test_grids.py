import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import grids, schedules


@pytest.mark.parametrize(
    "spacing,expected",
    [
        ("trailing", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        ("leading", [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]),
        ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
    ],
)
def test_discrete_spacings_follow_pytorch_conventions(vp, spacing, expected):
    np.testing.assert_array_equal(grids.discrete_timesteps(1000, 10, spacing), expected)
    g = grids.make_grid(vp, spacing, 10)
    np.testing.assert_allclose(g, np.append((np.array(expected) + 1) / 1000, 0.0))


@pytest.mark.parametrize("schedule", list(schedules.SCHEDULES))
@pytest.mark.parametrize("name", grids.CONTINUOUS_GRIDS)
@pytest.mark.parametrize("final", grids.FINALS)
def test_continuous_grids_shape_and_ends(schedule, name, final):
    s = schedules.get_schedule(schedule)
    for n in (1, 2, 7):
        g = grids.make_grid(s, name, n, final)
        assert g.shape == (n + 1,) and g.dtype == np.float64
        assert np.all(np.diff(g) < 0)
        assert g[0] == s.t_max
        if final == "zero":
            assert g[-1] == 0.0 and (n == 1 or g[-2] == pytest.approx(s.t_min))
        else:
            assert g[-1] == pytest.approx(s.t_min)


def test_spacings_are_uniform_in_their_variable(vp):
    g = grids.make_grid(vp, "logsnr", 8, "t_min")
    with jax.enable_x64(True):
        lam = np.asarray(vp.log_snr(jnp.asarray(g)))
        sh = np.asarray(vp.sigma_hat(jnp.asarray(grids.make_grid(vp, "karras", 8, "t_min"))))
    np.testing.assert_allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-6)
    np.testing.assert_allclose(np.diff(sh ** (1 / 7)), np.diff(sh ** (1 / 7))[0], rtol=1e-6)
    q = grids.make_grid(vp, "quadratic", 8, "t_min")
    np.testing.assert_allclose(np.diff(np.sqrt(q)), np.diff(np.sqrt(q))[0], rtol=1e-9)


def test_karras_tail_property():
    """A Karras grid from its k-th point is the tail of the full grid (used by teleportation)."""
    s = schedules.edm()
    g = grids.make_grid(s, "karras", 18)
    tail = grids.make_grid(s, "karras", 14, t_max=g[4])
    np.testing.assert_allclose(tail, g[4:], rtol=1e-9)


def test_grid_errors(vp):
    with pytest.raises(ValueError, match="valid: uniform_t, logsnr"):
        grids.make_grid(vp, "nope", 10)
    with pytest.raises(ValueError, match="needs a vp_discrete schedule"):
        grids.make_grid(schedules.edm(), "trailing", 10)
    with pytest.raises(ValueError, match="positive integer"):
        grids.make_grid(vp, "logsnr", 0)
    with pytest.raises(ValueError, match="final"):
        grids.make_grid(vp, "logsnr", 3, final="end")
    with pytest.raises(ValueError, match="strictly decreasing"):
        grids.check_grid([1.0, 0.5, 0.7])
    # beyond the schedule's range: vp_cosine is undefined at t = 1, vp_discrete clamps (h = 0)
    with pytest.raises(ValueError, match="beyond the schedule's range"):
        grids.make_grid(schedules.vp_cosine(), "logsnr", 5, t_max=1.0)
    with pytest.raises(ValueError, match="beyond the schedule's range"):
        grids.make_grid(vp, "uniform_t", 5, t_max=3.0)
    assert grids.make_grid(vp, "uniform_t", 5, t_max=1.0)[0] == 1.0
    # rounding 1000 evenly spaced points to 1000 timesteps repeats one (diffusers dedupes)
    with pytest.raises(ValueError, match="repeats a timestep"):
        grids.make_grid(vp, "linspace_dpm", 1000)
    assert len(grids.make_grid(vp, "trailing", 1000)) == 1001


def test_dpm_linspace_spacing(vp):
    """diffusers' DPM-Solver / UniPC / DEIS ``linspace`` is round(linspace(0, N-1, n+1)) without 0."""
    np.testing.assert_array_equal(grids.discrete_timesteps(1000, 5, "linspace_dpm"), [999, 799, 599, 400, 200])
    np.testing.assert_array_equal(grids.discrete_timesteps(1000, 7, "linspace_dpm"),
                                  [999, 856, 714, 571, 428, 285, 143])
    g = grids.make_grid(vp, "linspace_dpm", 5, "t_min")
    np.testing.assert_allclose(g, [1.0, 0.8, 0.6, 0.401, 0.201, 0.001])
