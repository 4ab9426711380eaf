"""Gaussian statistics, the closed-form Gaussian PF-ODE and analytical teleportation (jdiff.accel).

Independent oracles: the diffrax reference solve of the exact testbed model
(:func:`jdiff.reference_solve`), the testbed's own closed form
(:func:`jdiff.testbeds.gaussian_ode_solution`) and exact model, NumPy moments of samples, and the
full-matrix form of the Wiener denoiser."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff import accel
from jdiff.accel import GaussianStats
from jdiff.testbeds import from_arrays, gaussian_ode_solution, get_testbed

VP = jdiff.schedules.vp_discrete()
EDM = jdiff.schedules.edm()
SCHEDULES = {"vp": (VP, "logsnr"), "edm": (EDM, "karras")}


@pytest.fixture(scope="module")
def gauss16d():
    return get_testbed("gauss16d")


@pytest.fixture(scope="module")
def gauss64(gauss16d):
    """gauss16d rebuilt in float64 (eigenvectors orthogonal to float64 precision), with its
    float64 statistics."""
    mean, cov = gauss16d.mean_cov()
    with jax.enable_x64(True):
        mix = from_arrays([1.0], mean[None], covs=cov[None], name="gauss16d_f64", dtype=jnp.float64)
        stats = GaussianStats.from_moments(mean, cov, dtype=jnp.float64)
    return mix, stats


def _se_moments(x):
    """Mean and covariance of samples x (N, D) with their standard errors (from the samples)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    m = x.mean(0)
    c = x - m
    prods = c[:, :, None] * c[:, None, :]
    return m, np.cov(x.T), c.std(0) / np.sqrt(n), prods.std(0) / np.sqrt(n)


# --- the closed form against independent solutions -------------------------------------------

@pytest.mark.parametrize("sched", list(SCHEDULES))
def test_teleport_equals_reference_ode_solution(sched, gauss64):
    """On an exact Gaussian, teleporting to any grid time (and to t = 0) equals the diffrax
    Dopri8 solve of the exact model's PF-ODE within 1e-5 (float64)."""
    schedule, spacing = SCHEDULES[sched]
    mix, stats = gauss64
    grid = jdiff.grids.make_grid(schedule, spacing, 6)
    with jax.enable_x64(True):
        model = mix.model_fn(schedule)
        x_T = jdiff.init_noise(schedule, grid[0], jax.random.normal(jax.random.key(0), (24, 16), jnp.float64))
        for k in range(1, len(grid)):
            x_k, kk = accel.teleport(stats, schedule, grid, x_T, k) if k < len(grid) - 1 else (
                accel.gaussian_flow(stats, schedule, x_T, grid[0], grid[k]), k)
            assert kk == k
            ref = jdiff.reference_solve(model, schedule, x_T, grid[0], grid[k])
            np.testing.assert_allclose(np.asarray(x_k), ref, rtol=0, atol=1e-5)
        # flowing back from an intermediate time recovers the start (the map is invertible)
        back = accel.gaussian_flow(stats, schedule, accel.gaussian_flow(stats, schedule, x_T, grid[0], grid[3]),
                                   grid[3], grid[0])
        np.testing.assert_allclose(np.asarray(back), np.asarray(x_T), rtol=1e-10)


def test_flow_agrees_with_testbed_closed_form(gauss16d):
    """float32: the accel map of ``from_mixture`` stats equals the testbed's own closed form."""
    stats = GaussianStats.from_mixture(gauss16d)
    x = jax.random.normal(jax.random.key(1), (32, 16))
    for t0, t1 in [(1.0, 0.4), (0.7, 0.0), (0.3, 0.9)]:
        np.testing.assert_allclose(np.asarray(accel.gaussian_flow(stats, VP, x, t0, t1)),
                                   np.asarray(gaussian_ode_solution(gauss16d, VP, x, t0, t1)), atol=2e-6)


@pytest.mark.parametrize("name", ["dpmpp_2m", "heun"] + [pytest.param(n, marks=pytest.mark.slow)
                                                         for n in ("unipc_bh2", "ipndm")])
def test_teleport_then_solver_equals_solver_from_exact_state(name, gauss64):
    """teleport + solver from grid[k] = the same solver started at grid[k] from the exact state
    (the testbed's independent closed form), within 1e-6 (float64, where the two closed forms
    differ by rounding only; in float32 their ~1e-7 differences grow to ~1e-6 through the solver);
    sample_teleported is that same run."""
    mix, stats = gauss64
    solver = jdiff.solvers.get_solver(name)
    grid = jdiff.grids.make_grid(VP, "logsnr", 8)
    with jax.enable_x64(True):
        model = mix.model_fn(VP)
        x_T = jax.random.normal(jax.random.key(2), (64, 16), jnp.float64)
        x_k, k = accel.teleport(stats, VP, grid, x_T, 0.3)
        assert k == 2  # floor(0.3 * 8 + 1/2)
        exact = gaussian_ode_solution(mix, VP, x_T, grid[0], grid[k])
        out = np.asarray(jdiff.sample(model, VP, solver, grid, x_k, start=k))
        ref = np.asarray(jdiff.sample(model, VP, solver, grid, exact, start=k))
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-6)
        conv, info = accel.sample_teleported(model, VP, solver, grid, x_T, stats, 0.3, history="fresh",
                                             return_info=True)
    np.testing.assert_array_equal(np.asarray(conv), out)
    assert info == accel.TeleportInfo(skip_index=2, t_start=float(grid[2]), nfe=solver.nfe(6, True),
                                      probe_calls=0)


def test_teleport_with_edm_then_heun(gauss64):
    """The official algorithm (EDM Karras grid, teleport, unchanged Heun from there) equals Heun
    from the exact state."""
    mix, stats = gauss64
    grid = jdiff.grids.make_grid(EDM, "karras", 10)
    heun = jdiff.solvers.get_solver("heun")
    with jax.enable_x64(True):
        model = mix.model_fn(EDM)
        x_T = jdiff.init_noise(EDM, grid[0], jax.random.normal(jax.random.key(3), (32, 16), jnp.float64))
        x_k, k = accel.teleport(stats, EDM, grid, x_T, 4)
        exact = gaussian_ode_solution(mix, EDM, x_T, grid[0], grid[k])
        np.testing.assert_allclose(np.asarray(jdiff.sample(model, EDM, heun, grid, x_k, start=k)),
                                   np.asarray(jdiff.sample(model, EDM, heun, grid, exact, start=k)), atol=1e-6)


# --- the denoiser --------------------------------------------------------------------------------

@pytest.mark.parametrize("sched", list(SCHEDULES))
def test_gaussian_denoiser_equals_exact_model(sched, gauss64):
    schedule, _ = SCHEDULES[sched]
    mix, stats = gauss64
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(4), (16, 16), jnp.float64)
        for t in ([0.9, 0.3, 0.01] if sched == "vp" else [60.0, 2.0, 0.01]):
            for pred in ("x0", "eps", "v"):
                got = accel.gaussian_denoiser(stats, schedule, pred)(x, t, None)
                want = mix.model_fn(schedule, pred)(x, t, None)
                np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("rank", [None, 5])
@pytest.mark.parametrize("sched", list(SCHEDULES))
def test_the_two_official_forms_agree(sched, rank, gauss16d):
    """(1) x0-hat along the trajectory (``gaussian_analytical_x0hat_t_solution_edm``) equals the
    denoiser applied to the trajectory (``edm_x_t_traj``); (2) the eigenbasis (Woodbury) denoiser
    equals the full-matrix one ``mu + alpha Sigma (alpha^2 Sigma + sigma^2 I)^-1 (x - alpha mu)``
    (``edm_gaussian_score`` vs ``Gaussian_score``)."""
    schedule, spacing = SCHEDULES[sched]
    with jax.enable_x64(True):
        stats = GaussianStats.from_mixture(gauss16d, rank=rank, dtype=jnp.float64)
        grid = jdiff.grids.make_grid(schedule, spacing, 5)
        x_T = jdiff.init_noise(schedule, grid[0], jax.random.normal(jax.random.key(5), (8, 16), jnp.float64))
        den = accel.gaussian_denoiser(stats, schedule)
        for t in grid[1:]:
            x_t = accel.gaussian_flow(stats, schedule, x_T, grid[0], t)
            np.testing.assert_allclose(np.asarray(accel.gaussian_flow_x0(stats, schedule, x_T, grid[0], t)),
                                       np.asarray(den(x_t, t, None)), rtol=1e-10, atol=1e-12)
            if t == 0:
                continue
            a, s = float(schedule.alpha(t)), float(schedule.sigma(t))
            cov, mu = stats.covariance(), np.asarray(stats.mean)
            full = mu + a * (cov @ np.linalg.solve(a * a * cov + s * s * np.eye(16),
                                                   (np.asarray(x_t) - a * mu).T)).T
            np.testing.assert_allclose(np.asarray(den(x_t, t, None)), full, rtol=1e-9, atol=1e-11)


def test_zero_covariance_map_is_pure_scaling():
    """With lam = 0 everywhere the flow is x -> alpha_t mu + (sigma_t / sigma_T)(x - alpha_T mu)."""
    mu = np.linspace(-1, 1, 6)
    with jax.enable_x64(True):
        stats = GaussianStats.from_moments(mu, np.zeros((6, 6)), rank=2, dtype=jnp.float64)
        x = jax.random.normal(jax.random.key(6), (4, 6), jnp.float64)
        for sch, t0, t1 in [(VP, 0.8, 0.2), (EDM, 40.0, 0.5)]:
            a0, s0, a1, s1 = (float(f(t)) for t in (t0, t1) for f in (sch.alpha, sch.sigma))
            want = a1 * mu + (s1 / s0) * (np.asarray(x) - a0 * mu)
            np.testing.assert_allclose(np.asarray(accel.gaussian_flow(stats, sch, x, t0, t1)), want, rtol=1e-12)
            np.testing.assert_allclose(np.asarray(accel.gaussian_flow(stats, sch, x, t0, t0)), np.asarray(x),
                                       rtol=1e-14)


# --- statistics --------------------------------------------------------------------------------

def test_from_mixture_matches_monte_carlo_moments():
    tb = get_testbed("mix16d")
    stats = GaussianStats.from_mixture(tb)
    m, c, se_m, se_c = _se_moments(tb.sample(jax.random.key(7), 40000))
    assert np.all(np.abs(np.asarray(stats.mean) - m) < 5 * se_m)
    assert np.all(np.abs(stats.covariance() - c) < 5 * se_c + 1e-6)
    assert np.all(np.diff(np.asarray(stats.eigvals)) <= 0) and np.all(np.asarray(stats.eigvals) >= 0)


def test_from_data_recovers_gauss16d_covariance(gauss16d):
    x = np.asarray(gauss16d.sample(jax.random.key(8), 40000))
    stats = GaussianStats.from_data(x, chunk_size=3000)  # streamed in 14 uneven chunks
    mean, cov = gauss16d.mean_cov()
    _, _, se_m, se_c = _se_moments(x)
    assert np.all(np.abs(np.asarray(stats.mean) - mean) < 5 * se_m)
    assert np.all(np.abs(stats.covariance() - cov) < 5 * se_c)
    # the streamed moments equal NumPy's in one go
    np.testing.assert_allclose(stats.covariance(), np.cov(x.T.astype(np.float64)), atol=1e-6)
    u = np.asarray(stats.eigvecs, np.float64)
    np.testing.assert_allclose(u.T @ u, np.eye(16), atol=1e-6)


def test_low_rank_keeps_the_residual(gauss16d):
    with jax.enable_x64(True):
        full = GaussianStats.from_mixture(gauss16d, dtype=jnp.float64)
        low = GaussianStats.from_mixture(gauss16d, rank=6, dtype=jnp.float64)
        zero = GaussianStats.from_mixture(gauss16d, rank=6, residual="zero", dtype=jnp.float64)
        lam = np.asarray(full.eigvals)
        np.testing.assert_allclose(np.asarray(low.eigvals), lam[:6])
        np.testing.assert_allclose(float(low.residual_var), lam[6:].mean())
        assert float(zero.residual_var) == 0.0
        np.testing.assert_allclose(np.trace(low.covariance()), lam.sum(), rtol=1e-12)  # variance kept
        assert low.data_std() == pytest.approx(full.data_std(), rel=1e-12)
        # the low-rank maps are the full-rank maps of the covariance they represent (residual
        # directions with eigenvalue lam_res, or 0)
        x = jax.random.normal(jax.random.key(9), (8, 16), jnp.float64)
        for st_ in (low, zero):
            eq = GaussianStats.from_moments(np.asarray(st_.mean), st_.covariance(), dtype=jnp.float64)
            assert eq.full_rank and not st_.full_rank
            for t1 in (0.5, 0.05):
                np.testing.assert_allclose(np.asarray(accel.gaussian_flow(st_, VP, x, 1.0, t1)),
                                           np.asarray(accel.gaussian_flow(eq, VP, x, 1.0, t1)), atol=1e-10)
                np.testing.assert_allclose(np.asarray(accel.gaussian_x0_eps(st_, VP, x, t1)[0]),
                                           np.asarray(accel.gaussian_x0_eps(eq, VP, x, t1)[0]), atol=1e-10)


def test_save_load_roundtrip_and_image_shapes(tmp_path):
    rng = np.random.RandomState(0)
    x = rng.standard_normal((300, 4, 2, 3)) * rng.uniform(0.1, 1, (1, 4, 2, 3))
    stats = GaussianStats.from_data(x, rank=10)
    assert stats.sample_shape == (4, 2, 3) and stats.rank == 10 and stats.dim == 24
    path = stats.save(tmp_path / "stats")
    assert path.endswith(".npz")
    back = GaussianStats.load(path)
    for f in ("mean", "eigvals", "eigvecs", "residual_var"):
        np.testing.assert_array_equal(np.asarray(getattr(back, f)), np.asarray(getattr(stats, f)))
    assert back.shape == stats.shape
    # image-shaped samples: the maps flatten and reshape back
    z = jax.random.normal(jax.random.key(10), (5, 4, 2, 3))
    y = accel.gaussian_flow(back, VP, z, 1.0, 0.3)
    assert y.shape == z.shape
    np.testing.assert_array_equal(np.asarray(y).reshape(5, 24),
                                  np.asarray(accel.gaussian_flow(back, VP, z.reshape(5, 24), 1.0, 0.3)))


def test_from_dataset_streams_in_model_range():
    rng = np.random.RandomState(1)
    images = rng.randint(0, 256, size=(50, 3, 3, 2)).astype(np.uint8)
    ds = jdiff.data.ImageDataset(images, np.zeros(50, np.int32), 1, name="tiny")
    stats = GaussianStats.from_dataset(ds, chunk_size=7)
    ref = GaussianStats.from_data(jdiff.data.to_model_range(images))
    assert stats.sample_shape == (3, 3, 2)
    np.testing.assert_allclose(np.asarray(stats.mean), np.asarray(ref.mean), atol=1e-6)
    np.testing.assert_allclose(stats.covariance(), ref.covariance(), atol=1e-6)


# --- auto skip, history, grids ------------------------------------------------------------------

def test_auto_skip_is_consistent_with_probe_errors():
    tb = get_testbed("mix16d")
    model = tb.model_fn(VP)
    stats = GaussianStats.from_mixture(tb)
    grid = jdiff.grids.make_grid(VP, "logsnr", 10)
    probe = jax.random.normal(jax.random.key(11), (8, 16))
    errs = accel.probe_errors(model, stats, VP, grid, probe, range(1, 10))
    assert errs[0] < errs[-1]  # the Gaussian fits at high noise, not near the data
    j = int(np.argmax(np.asarray(errs) > errs[0]))  # a tolerance between two measured errors
    tol = 0.5 * (errs[j - 1] + errs[j]) if j > 0 else errs[0]
    k, calls = accel.auto_skip(model, stats, VP, grid, probe, tol)
    first_fail = next(i for i, e in enumerate(errs, start=1) if e > tol)
    assert k == first_fail - 1 and calls == first_fail
    x, info = accel.sample_teleported(model, VP, jdiff.solvers.get_solver("dpmpp_2m"), grid,
                                      jnp.concatenate([probe, probe]), stats, "auto", tol=tol, probe=8,
                                      return_info=True)
    assert info.skip_index == k and info.probe_calls == calls and info.nfe == 10 - k
    assert np.all(np.isfinite(np.asarray(x)))


def test_auto_skip_on_an_exact_gaussian_skips_to_the_end(gauss16d):
    stats = GaussianStats.from_mixture(gauss16d)
    grid = jdiff.grids.make_grid(VP, "logsnr", 6)
    probe = jax.random.normal(jax.random.key(12), (4, 16))
    errs = accel.probe_errors(gauss16d.model_fn(VP), stats, VP, grid, probe, range(1, 6))
    k, calls = accel.auto_skip(gauss16d.model_fn(VP), stats, VP, grid, probe, 2 * max(errs))
    assert (k, calls) == (5, 5)


def test_closed_form_history(gauss16d):
    """The history state holds the exact closed-form sample at grid[k] and the model outputs of
    the h steps before it (their log-SNRs); sampling resumes from it (accuracy: see
    benchmarks/teleport_mixtures.py)."""
    stats = GaussianStats.from_mixture(gauss16d)
    model = gauss16d.model_fn(VP)
    grid = jdiff.grids.make_grid(VP, "logsnr", 8)
    x_T = jax.random.normal(jax.random.key(13), (16, 16))
    solver = jdiff.solvers.get_solver("dpmpp_3m")
    st = accel.closed_form_state(stats, VP, solver, grid, x_T, 3)
    x_3, _ = accel.teleport(stats, VP, grid, x_T, 3)
    np.testing.assert_array_equal(np.asarray(st.solver.x), np.asarray(x_3))
    assert int(st.solver.start) == 0
    lam = np.asarray(jdiff.solvers.grid_coeffs(VP, grid, jnp.float32).lam)
    np.testing.assert_allclose(np.sort(np.asarray(st.solver.hist_lam)), np.sort(lam[:3]), rtol=1e-6)
    x, info = accel.sample_teleported(model, VP, solver, grid, x_T, stats, 3, history="closed_form",
                                      return_info=True)
    assert info.nfe == 5 and np.all(np.isfinite(np.asarray(x)))
    st2 = accel.closed_form_state(stats, VP, jdiff.solvers.get_solver("unipc_bh2"), grid, x_T, 3)
    np.testing.assert_array_equal(np.asarray(st2.solver.x_prev),
                                  np.asarray(accel.gaussian_flow(stats, VP, x_T, grid[0], grid[2])))
    with pytest.raises(ValueError, match="needs a multistep solver"):
        accel.sample_teleported(model, VP, jdiff.solvers.get_solver("heun"), grid, x_T, stats, 3,
                                history="closed_form")


def test_tail_grid_is_the_tail_of_the_grid():
    for sched, spacing in SCHEDULES.values():
        grid = jdiff.grids.make_grid(sched, spacing, 10)
        for k in (1, 4, 7):
            np.testing.assert_allclose(accel.tail_grid(sched, spacing, 10 - k, grid[k]), grid[k:], rtol=1e-9)
            # final="zero": 10 points from t_max to t_min (9 intervals), then 0
            assert accel.time_at_fraction(sched, k / 9, spacing) == pytest.approx(grid[k], rel=1e-9)
    assert accel.t_of_sigma(EDM, 3.5) == pytest.approx(3.5)
    assert float(VP.sigma_hat(accel.t_of_sigma(VP, 3.5))) == pytest.approx(3.5, rel=1e-5)


# --- errors ------------------------------------------------------------------------------------

def test_bad_input_gives_one_clear_error(gauss16d):
    stats = GaussianStats.from_mixture(gauss16d)
    grid = jdiff.grids.make_grid(VP, "logsnr", 5)
    x_T = jnp.zeros((2, 16))
    model = gauss16d.model_fn(VP)
    cases = [
        (lambda: GaussianStats.from_data(np.zeros((1, 3))), "at least 2 samples"),
        (lambda: GaussianStats.from_data(np.zeros(5)), r"shape \(N, \.\.\.\)"),
        (lambda: GaussianStats.from_data(np.ones((4, 3)), rank=0), r"rank must be an integer in \[1, 3\]"),
        (lambda: GaussianStats.from_data(np.ones((4, 3)), rank=4), r"rank must be an integer in \[1, 3\]"),
        (lambda: GaussianStats.from_data(np.ones((4, 3)), residual="x"), "unknown residual"),
        (lambda: GaussianStats.from_data(np.full((4, 3), np.nan)), "non-finite"),
        (lambda: GaussianStats.from_moments(np.zeros(3), np.eye(2)), r"cov must have shape \(D, D\)"),
        (lambda: GaussianStats.load("/nonexistent/stats.npz"), "cannot read Gaussian statistics"),
        (lambda: accel.gaussian_flow(stats, VP, jnp.zeros((2, 15)), 1.0, 0.5), "16 entries per sample"),
        (lambda: accel.teleport(stats, VP, grid, x_T, -1), r"outside \[0, 4\]"),
        (lambda: accel.teleport(stats, VP, grid, x_T, 5), r"outside \[0, 4\]"),
        (lambda: accel.teleport(stats, VP, grid, x_T, 0.95), "must keep at least one step"),
        (lambda: accel.teleport(stats, VP, grid, x_T, 1.0), r"float in \[0, 1\)"),
        (lambda: accel.teleport(stats, VP, grid, x_T, -0.1), r"float in \[0, 1\)"),
        (lambda: accel.teleport(stats, VP, grid, x_T, True), "grid index"),
        (lambda: accel.auto_skip(model, stats, VP, grid, x_T, 0.0), "tol must be a positive number"),
        (lambda: accel.auto_skip(model, stats, VP, grid, x_T, -1.0), "tol must be a positive number"),
        (lambda: accel.sample_teleported(model, VP, jdiff.solvers.get_solver("ddim"), grid, x_T, stats,
                                         "auto"), "needs tol"),
        (lambda: accel.sample_teleported(model, VP, jdiff.solvers.get_solver("ddim"), grid, x_T, stats, 1,
                                         start=2), "sets 'start' itself"),
        (lambda: accel.time_at_fraction(VP, 1.2), r"float in \[0, 1\)"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()


def test_load_rejects_a_foreign_npz(tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a GaussianStats file"):
        GaussianStats.load(p)


def test_history_auto_and_hooks_with_a_closed_form_history():
    """history='auto' fills a multistep history from the closed form (and warms up solvers that
    keep none); hooks such as DualFast run on the Gaussian steps too, so their state is ready."""
    mix = jdiff.testbeds.get_testbed("mix16d")
    stats = accel.GaussianStats.from_mixture(mix)
    model = mix.model_fn(VP)
    grid = jdiff.grids.make_grid(VP, "logsnr", 8)
    x_T = jdiff.init_noise(VP, grid[0], jax.random.normal(jax.random.key(4), (64, 16)))
    for name in ("unipc_bh2", "ipndm", "ddim", "euler_ancestral"):
        solver = jdiff.solvers.get_solver(name)
        assert accel.supports_closed_form_history(solver, grid, x_T) == (name in ("unipc_bh2", "ipndm"))
    for name, want in (("dpmpp_2m", "closed_form"), ("heun", "fresh")):
        solver = jdiff.solvers.get_solver(name)
        assert accel.supports_closed_form_history(solver, grid, x_T) == (want == "closed_form")
        auto = accel.sample_teleported(model, VP, solver, grid, x_T, stats, 3)
        chosen = accel.sample_teleported(model, VP, solver, grid, x_T, stats, 3, history=want)
        np.testing.assert_array_equal(np.asarray(auto), np.asarray(chosen))
    solver = jdiff.solvers.get_solver("dpmpp_2m")
    plain = accel.sample_teleported(model, VP, solver, grid, x_T, stats, 3, history="closed_form")
    same = accel.sample_teleported(model, VP, solver, grid, x_T, stats, 3, history="closed_form",
                                   hooks=accel.DualFast(0.0))
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(same))
    mixed = accel.sample_teleported(model, VP, solver, grid, x_T, stats, 3, history="closed_form",
                                    hooks=accel.DualFast(jnp.asarray(0.5)))
    assert np.all(np.isfinite(np.asarray(mixed))) and np.max(np.abs(np.asarray(mixed) - np.asarray(plain))) > 1e-3


def test_auto_fraction_bisection_agrees_with_a_scan_and_is_maximal_on_a_gaussian():
    """On mix16d (disagreement growing as the noise falls) the bisection finds the last ladder
    point within tol, as a full scan does; on gauss16d the model is the Gaussian: max_fraction."""
    mix = jdiff.testbeds.get_testbed("mix16d")
    stats = accel.GaussianStats.from_mixture(mix)
    probe = jdiff.init_noise(VP, VP.t_max, jax.random.normal(jax.random.key(8), (16, 16)))
    ladder = np.array([accel.time_at_fraction(VP, j / 10) for j in range(10)] + [0.0])
    errs = accel.probe_errors(mix.model_fn(VP), stats, VP, ladder, probe, range(1, 10), space="eps")
    assert all(a <= b for a, b in zip(errs[:6], errs[1:7]))  # grows over the range searched
    tol = 0.5 * (errs[3] + errs[4])
    found = accel.auto_fraction(mix.model_fn(VP), stats, VP, probe, tol, resolution=10)
    assert found.fraction == 0.4 and found.calls <= 4 and found.n_probe == 16
    assert found.t == pytest.approx(ladder[4]) and found.nfe_per_sample(160) == pytest.approx(found.calls / 10)
    g = jdiff.testbeds.get_testbed("gauss16d")
    assert accel.auto_fraction(g.model_fn(VP), accel.GaussianStats.from_mixture(g), VP, probe, 1e-3,
                               resolution=10).fraction == 0.9
    with pytest.raises(ValueError, match="unknown probe space"):
        accel.probe_errors(mix.model_fn(VP), stats, VP, ladder, probe, [1], space="v")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(jdiff.solvers.SOLVERS))
def test_no_nan_for_any_solver_teleport_point_and_nfe(name):
    """Every solver, teleported to 0.3 and 0.7 of the log-SNR range (closed-form history where it
    keeps one), at its smallest step counts and with DualFast: finite samples."""
    from jdiff.accel.plan import AccelPlan, teleported_sample

    mix = jdiff.testbeds.get_testbed("mix2d")
    stats = accel.GaussianStats.from_mixture(mix)
    solver = jdiff.solvers.get_solver(name)
    x_T = jdiff.init_noise(VP, VP.t_max, jax.random.normal(jax.random.key(2), (128, 2)))
    for fraction in (0.3, 0.7):
        for n in (solver.min_steps, solver.min_steps + 3):
            for dualfast in (None, accel.DualFast()):
                plan = AccelPlan(teleport=fraction, dualfast=dualfast)
                x, _, _ = teleported_sample(plan, mix.model_fn(VP), stats, VP, solver, "logsnr", n, "zero", x_T,
                                            fraction, jax.random.key(3))
                assert np.all(np.isfinite(np.asarray(x))), (name, fraction, n, dualfast)
