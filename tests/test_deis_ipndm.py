"""DEIS (tAB, log-rho) and iPNDM: diffusers parity, coefficients, order, NFE, finiteness.

Parity fixtures come from ``tests/fixtures/make_deis_fixtures.py`` (torch + diffusers, never
imported here): diffusers' ``DEISMultistepScheduler`` (eps prediction, default final point,
``lower_order_final=True``), orders 2 and 3, ``trailing`` and ``linspace`` spacing, NFE 5/10/20,
on the exact mixture eps of ``mix16d`` and ``mix2d``.

diffusers' DEIS always ends at timestep 0 (``sigma_last``), i.e. jdiff time ``t = 1 / N`` =
``t_min``, not at sigma = 0; its ``linspace`` timesteps are ``linspace(0, N - 1, n + 1)`` without
the last point. :func:`deis_grid` builds both from :func:`jdiff.grids.make_grid` and
:func:`test_grid_equals_diffusers_timesteps` checks them against the stored timesteps/sigmas.

Documented diffusers misbehaviour: its order-2/3 coefficients are differences of antiderivatives
(``ind_fn(rho_t) - ind_fn(rho_s0)``) evaluated in float32, which cancel catastrophically (terms of
size ``rho log(rho)^2 / h^2`` for a coefficient of size ``rho h``); for mix16d, order 3, NFE 20
(no ``lower_order_final`` at >= 15 steps, so the last step is a third-order extrapolation over
``h = log(rho_49 / rho_0) ~ 2.8``) the resulting error is amplified to ~4e-4 in the samples. The
fixture also holds each run with the scheduler's sigmas cast to float64 (same diffusers code,
float64 coefficients). In the 22 other cases jdiff (float32) matches both runs to 1e-4 (worst
3e-5). In the two affected cases diffusers' own float32 and float64-coefficient runs differ by
3.9e-4 / 5.3e-4 (asserted > TOL), and jdiff in float64 is checked against the float64-coefficient
run (1.8e-5 / 9.6e-6); jdiff float32 is 8.5e-6 / 9.0e-5 from it, the latter a thin margin because
one sample of mix16d (index 25) amplifies float32 rounding to 1e-4 over these 20 steps (jdiff
float32 vs float64). :func:`test_float32_coefficients_are_accurate` shows the cause directly.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from helpers import load_npz, order_slope
from jdiff import grids
from jdiff.grids import make_grid
from jdiff.solvers.base import GridCoeffs, grid_coeffs
from jdiff.solvers.deis_ipndm import DEIS_IPNDM_SOLVERS, deis_coefficients, deis_step_order

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "diffusers_deis.npz")
TOL = 1e-4
TESTBEDS = ("mix16d", "mix2d")
ORDERS = (2, 3)
SPACINGS = ("trailing", "linspace")
NFES = (5, 10, 20)
CASES = [(tb, o, sp, n) for tb in TESTBEDS for o in ORDERS for sp in SPACINGS for n in NFES]
# diffusers' float32 coefficient rounding exceeds TOL here (asserted, see module docstring)
DIFFUSERS_F32_CASES = {("mix16d", 3, "trailing", 20), ("mix16d", 3, "linspace", 20)}

SCHEDULE = jdiff.schedules.vp_discrete()
SOLVERS = {name: factory() for name, factory in DEIS_IPNDM_SOLVERS.items()}
N_TRAIN = SCHEDULE.num_train_timesteps


def fixture():
    return load_npz(FIXTURE)


@functools.lru_cache(maxsize=None)
def model_fn(testbed: str):
    """One closure per testbed (a new closure would compile ``jdiff.sample`` anew)."""
    return jdiff.testbeds.get_testbed(testbed).model_fn(SCHEDULE)


def deis_grid(spacing: str, n: int) -> np.ndarray:
    """diffusers DEIS discretisation as a jdiff grid: n steps ending at timestep 0 (t = 1 / N)."""
    if spacing == "trailing":
        return np.concatenate([make_grid(SCHEDULE, "trailing", n)[:-1], [1.0 / N_TRAIN]])
    if spacing == "linspace":
        return make_grid(SCHEDULE, "linspace", n + 1)[:-1]
    raise ValueError(spacing)


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@functools.lru_cache(maxsize=None)
def run_jdiff(testbed: str, order: int, spacing: str, n: int, x64: bool = False) -> np.ndarray:
    x_T = fixture()[f"{testbed}__noise"]
    g = deis_grid(spacing, n)
    solver = SOLVERS[f"deis_{order}"]
    if not x64:
        return np.asarray(jdiff.sample(model_fn(testbed), SCHEDULE, solver, g, x_T))
    with jax.enable_x64(True):
        return np.asarray(jdiff.sample(model_fn(testbed), SCHEDULE, solver, g,
                                       jnp.asarray(x_T, jnp.float64)))


def case_id(case):
    return "{}-o{}-{}-n{}".format(*case)


# --- diffusers' formulas, float64 NumPy (the maths the parity is about) -----------------------


def _ind2(t, b, c):
    return t * (-np.log(c) + np.log(t) - 1) / (np.log(b) - np.log(c))


def _ind3(t, b, c, d):
    lt, lc, ld = np.log(t), np.log(c), np.log(d)
    num = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
    return num / ((np.log(b) - lc) * (np.log(b) - ld))


def diffusers_coefficients(rho_t, rho_s0, rho_s1, rho_s2, k):
    """``multistep_deis_{first,second,third}_order_update`` weights of eps_s0, eps_s1, eps_s2."""
    if k == 1:
        return np.array([rho_t - rho_s0, 0.0, 0.0])
    if k == 2:
        return np.array([_ind2(rho_t, rho_s0, rho_s1) - _ind2(rho_s0, rho_s0, rho_s1),
                         _ind2(rho_t, rho_s1, rho_s0) - _ind2(rho_s0, rho_s1, rho_s0), 0.0])
    r = (rho_t, rho_s0, rho_s1, rho_s2)
    return np.array([_ind3(r[0], r[1], r[2], r[3]) - _ind3(r[1], r[1], r[2], r[3]),
                     _ind3(r[0], r[2], r[3], r[1]) - _ind3(r[1], r[2], r[3], r[1]),
                     _ind3(r[0], r[3], r[1], r[2]) - _ind3(r[1], r[3], r[1], r[2])])


def numpy_deis(model, x_T, alpha, sigma, t, order, lower_order_final=True):
    """diffusers' DEIS ``step`` loop (orders, warm-up, lower_order_final) in float64 NumPy."""
    rho = sigma / alpha
    x, hist, n = np.asarray(x_T, np.float64), [], len(t) - 1
    for i in range(n):
        hist.insert(0, np.asarray(model(x, t[i]), np.float64))
        k = min(order, i + 1)
        if lower_order_final and n < 15:
            k = min(k, n - i)
        c = diffusers_coefficients(rho[i + 1], rho[i], rho[max(i - 1, 0)], rho[max(i - 2, 0)], k)
        x = alpha[i + 1] * (x / alpha[i] + sum(c[j] * hist[j] for j in range(k)))
    return x


def numpy_ipndm(model, x_T, alpha, sigma, t, max_order=4):
    """iPNDM as zju-pi/diff-sampler's ``ipndm_sampler`` loop, in (x / alpha, sigma / alpha), with
    ComfyUI's Euler step (``x = denoised``) when the step lands on sigma = 0."""
    ab = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12],
          4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    rho = sigma / alpha
    x_hat, buf = np.asarray(x_T, np.float64) / alpha[0], []
    for i in range(len(t) - 1):
        d = np.asarray(model(alpha[i] * x_hat, t[i]), np.float64)
        buf.insert(0, d)
        k = 1 if rho[i + 1] == 0 else min(max_order, i + 1)
        x_hat = x_hat + (rho[i + 1] - rho[i]) * sum(b * e for b, e in zip(ab[k], buf))
        buf = buf[: max_order - 1]
    return alpha[-1] * x_hat


def coeffs64(t):
    with jax.enable_x64(True):
        g = grid_coeffs(SCHEDULE, jnp.asarray(t, jnp.float64), jnp.float64)
        return np.asarray(g.alpha), np.asarray(g.sigma)


# --- grid, metadata ----------------------------------------------------------------------------


def test_fixture_metadata_and_noise():
    f = fixture()
    for key in ("diffusers_version", "torch_version", "model_precision"):
        assert str(f[key])
    with np.load(os.path.join(os.path.dirname(FIXTURE), "diffusers_ddim.npz")) as ddim:
        for tb in TESTBEDS:  # the same noise draws as the DDIM/Euler fixtures
            np.testing.assert_array_equal(f[f"{tb}__noise"], ddim[f"{tb}__noise"])


def test_grid_equals_diffusers_timesteps():
    f = fixture()
    for sp in SPACINGS:
        for n in NFES:
            g = deis_grid(sp, n)
            assert g.shape == (n + 1,) and g[-1] == 1.0 / N_TRAIN == SCHEDULE.t_min
            ts = np.round(g * N_TRAIN - 1).astype(np.int64)
            np.testing.assert_array_equal(ts[:-1], f[f"{sp}__n{n}__timesteps"])
            assert ts[-1] == 0  # diffusers' sigma_last is timestep 0, not sigma = 0
            a, s = coeffs64(g)
            np.testing.assert_allclose(s / a, f[f"{sp}__n{n}__sigmas"], rtol=2e-6)


# --- parity ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_deis_matches_diffusers(case):
    tb, o, sp, n = case
    f = fixture()
    key = f"{tb}__o{o}__{sp}__n{n}__"
    ref32, ref64c = f[key + "x0"], f[key + "x0_f64sigmas"]
    if case not in DIFFUSERS_F32_CASES:
        x = run_jdiff(tb, o, sp, n)
        assert max_abs(x, ref32) <= TOL, f"{case}: {max_abs(x, ref32):.3g}"
        assert max_abs(x, ref64c) <= TOL, f"{case}: {max_abs(x, ref64c):.3g}"
        return
    # diffusers' float32 coefficients alone move its result by more than TOL ...
    assert max_abs(ref32, ref64c) > TOL
    # ... and jdiff reproduces the same discretisation with accurate coefficients
    x64 = run_jdiff(tb, o, sp, n, x64=True)
    assert max_abs(x64, ref64c) <= TOL, f"{case}: {max_abs(x64, ref64c):.3g}"


def test_diffusers_float32_cases_are_exactly_the_documented_ones():
    f = fixture()
    bad = {c for c in CASES
           if max_abs(f["{}__o{}__{}__n{}__x0".format(*c)],
                      f["{}__o{}__{}__n{}__x0_f64sigmas".format(*c)]) > TOL}
    assert bad == DIFFUSERS_F32_CASES


@pytest.mark.parametrize("spacing", SPACINGS)
def test_deis_equals_numpy_diffusers_formulas_float64(spacing):
    """jdiff's cancellation-free coefficients and order schedule == diffusers' maths in float64.

    n = 20 (third order up to the last step) reuses the documented parity runs; n = 5 exercises
    ``lower_order_final``."""
    tb = "mix16d"
    model = jax.jit(model_fn(tb))
    x_T = fixture()[f"{tb}__noise"]
    for n in (20, 5):
        g = deis_grid(spacing, n)
        a, s = coeffs64(g)
        with jax.enable_x64(True):
            ref = numpy_deis(lambda x, t: model(jnp.asarray(x), jnp.float64(t), None), x_T, a, s, g, 3)
        err = max_abs(run_jdiff(tb, 3, spacing, n, x64=True), ref)
        assert err < 1e-9, (spacing, n, err)


# --- coefficients -----------------------------------------------------------------------------


def exact_coefficients(rho_s0, h, nodes):
    """``c_j = rho_s0 int_0^{-h} e^u l_j(u) du`` (Lagrange basis on ``nodes``), Gauss-Legendre.

    40 points integrate the smooth integrand to machine precision for the h used here."""
    z, w = np.polynomial.legendre.leggauss(40)
    u = -h * (z + 1) / 2  # [-1, 1] -> [0, -h]
    c = []
    for j in range(len(nodes)):
        lj = np.prod([(u - m) / (nodes[j] - m) for m in np.delete(nodes, j)], axis=0)
        c.append(-h / 2 * rho_s0 * np.sum(w * np.exp(u) * lj))
    return np.array(c)


@pytest.mark.parametrize("h", [1e-3, 0.05, 0.3, 0.99, 1.01, 2.5, 8.0])
def test_coefficients_are_the_exact_integrals(h):
    """jdiff's weights == the exact integrals (quadrature) == diffusers' antiderivative formulas.

    Cases on both sides of the series/closed-form switch at h = 1. At h = 1e-3 diffusers'
    formulas cancel even in float64 (relative error ~1e-6 to 1e-5 of the step), so there they are
    only checked to 1e-4 while jdiff's weights stay within 1e-10 (the quadrature's own rounding)."""
    with jax.enable_x64(True):
        for lam_s0, u1, u2 in [(-4.0, 0.8 * h, 1.9 * h), (1.5, 0.3, 0.5), (3.0, 2.0 * h, 2.1 * h)]:
            lam = np.array([lam_s0 + h, lam_s0, lam_s0 - u1, lam_s0 - u2])
            rho = np.exp(-lam)
            scale = abs(rho[0] - rho[1])
            for k in (1, 2, 3):
                ours = np.asarray(deis_coefficients(jnp.float64(rho[0]), jnp.float64(rho[1]),
                                                    *(jnp.float64(v) for v in lam), k, 3))
                exact = np.zeros(3)
                exact[:k] = exact_coefficients(rho[1], h, np.array([0.0, u1, u2])[:k])
                np.testing.assert_allclose(ours, exact, atol=1e-10 * scale, rtol=0,
                                           err_msg=f"k={k}")
                theirs = diffusers_coefficients(*rho, k)
                tol = 1e-10 if h >= 0.05 else 1e-4
                np.testing.assert_allclose(theirs, exact, atol=tol * scale, rtol=0,
                                           err_msg=f"k={k}")


def test_coefficients_at_sigma_zero_are_the_limits():
    """Final step to rho = 0: weights = int_0^{rho_s0} Lagrange basis in log rho (Gauss-Laguerre).

    With u = log(rho / rho_s0): c_j = -rho_s0 int_{-inf}^0 e^u l_j(u) du, exact for polynomials."""
    v, w = np.polynomial.laguerre.laggauss(20)  # int_0^inf e^-v f(v) dv
    rho_s0, lam_s0 = 0.01, -np.log(0.01)
    for u1, u2 in [(0.3, 0.7), (1.0, 1.6)]:
        nodes = np.array([0.0, u1, u2])
        with jax.enable_x64(True):
            ours = np.asarray(deis_coefficients(
                jnp.float64(0.0), jnp.float64(rho_s0), jnp.float64(np.inf), jnp.float64(lam_s0),
                jnp.float64(lam_s0 - u1), jnp.float64(lam_s0 - u2), 3, 3))
        for j in range(3):
            others = np.delete(nodes, j)
            lj = np.prod([(-v - m) / (nodes[j] - m) for m in others], axis=0)
            assert ours[j] == pytest.approx(-rho_s0 * np.sum(w * lj), rel=1e-12, abs=1e-15)
        assert np.all(np.isfinite(ours)) and np.sum(ours) == pytest.approx(-rho_s0, rel=1e-12)


@pytest.mark.parametrize("n", [20, 100])
def test_float32_coefficients_are_accurate(n):
    """Root cause of the documented parity cases, on diffusers' trailing grids in float32.

    Error of the order-3 weights relative to the step ``|rho_t - rho_s0|``, against float64:
    jdiff's cancellation-free form only inherits the rounding of the float32 grid (~1e-6 / h);
    diffusers' antiderivative differences lose ~1e-7 * log(rho)^2 / h^3: measured 4e-6 vs 2.4e-5
    at n = 20 and 3e-5 vs 3e-3 at n = 100 (and 1.5e-4 vs 0.5 at n = 500, where diffusers' own
    float32 and float64-sigma runs of mix16d differ by 1.7)."""
    g = deis_grid("trailing", n)
    f32 = grid_coeffs(SCHEDULE, jnp.asarray(g, jnp.float32), jnp.float32)
    with jax.enable_x64(True):
        g64 = grid_coeffs(SCHEDULE, jnp.asarray(g, jnp.float64), jnp.float64)
        rho64 = np.asarray(g64.sigma_hat)
    rho32, lam32 = np.asarray(f32.sigma_hat), np.asarray(f32.lam)
    i = np.arange(2, n)
    ours = np.asarray(deis_coefficients(rho32[i + 1], rho32[i], lam32[i + 1], lam32[i],
                                        lam32[i - 1], lam32[i - 2], 3, 3), np.float64).T
    exact = np.stack([diffusers_coefficients(*rho64[[j + 1, j, j - 1, j - 2]], 3) for j in i])
    theirs = np.stack([diffusers_coefficients(*rho32[[j + 1, j, j - 1, j - 2]], 3)
                       for j in i]).astype(np.float64)
    step = np.abs(rho64[i + 1] - rho64[i])[:, None]
    ours_err = np.max(np.abs(ours - exact) / step)
    theirs_err = np.max(np.abs(theirs - exact) / step)
    assert ours_err < 5e-5, ours_err
    factor = 3 if n == 20 else 30  # measured 5.5 and 100
    assert theirs_err > factor * ours_err, (ours_err, theirs_err)


def test_step_orders_follow_diffusers():
    order = lambda i, n, o: int(deis_step_order(i, n, o))  # noqa: E731
    assert [order(i, 5, 3) for i in range(5)] == [1, 2, 3, 2, 1]
    assert [order(i, 5, 2) for i in range(5)] == [1, 2, 2, 2, 1]
    assert [order(i, 2, 3) for i in range(2)] == [1, 1]
    assert [order(i, 15, 3) for i in range(15)] == [1, 2] + [3] * 13  # >= 15 steps: no lowering
    assert [order(i, 6, 3) for i in range(6)] == [1, 2, 3, 3, 2, 1]


# --- float64 maths: convergence order, NumPy re-implementations ------------------------------

ORDER_STEPS = (16, 32, 64)  # >= 15: lower_order_final inactive, as in diffusers


_slope = order_slope


@pytest.fixture(scope="module")
def order_problem(vp, gauss_problem):
    model, x_T, refs = gauss_problem
    runs = {}

    def run(name, n, final):
        if (name, n, final) not in runs:
            with jax.enable_x64(True):
                g = grids.make_grid(vp, "logsnr", n, final)
                runs[name, n, final] = np.asarray(jdiff.sample(model, vp, SOLVERS[name], g, x_T))
        return runs[name, n, final]

    return model, x_T, refs, run


# measured slopes over N = 16, 32, 64 on the logsnr grid (vp_discrete, float64 Gaussian):
#   deis_1: t_min 0.96, zero 0.99; deis_2: t_min 1.91, zero 1.90;
#   deis_3: t_min 3.74 (zero: floor, see below); ipndm: t_min 2.08, zero 2.20
@pytest.mark.parametrize("name,final,lo,hi", [
    ("deis_2", "t_min", 1.7, 2.6),
    ("deis_3", "t_min", 2.7, 4.3),
    ("ipndm", "t_min", 1.7, 2.6),
    ("ipndm", "zero", 1.7, 2.6),
])
def test_convergence_order(order_problem, name, final, lo, hi):
    """DEIS-k has order k. iPNDM has order 2, not 4: its Adams-Bashforth weights are the
    equal-step ones, but diffusion grids are far from uniform in rho (a logsnr grid is geometric),
    where frozen AB weights are only second-order consistent, and its Euler warm-up step has an
    O(h^2) local error. The upper bound checks that the order really is 2.

    DEIS is tested with final = "t_min": on a grid ending at 0 the last step, t_min -> 0, has a
    fixed length (in lambda it is infinite) whatever N is, so its error (~2.7e-4 here) is a floor
    under the third-order decay (see :func:`test_deis3_final_zero_error_floor`). deis_3's warm-up
    (a DDIM then a second-order step, local errors O(h^2), O(h^3)) would cap it at order 2
    asymptotically, but at t_max eps barely changes (alpha / sigma ~ 6e-3), so the warm-up error
    stays far below the third-order error at these N."""
    _, _, refs, run = order_problem
    errs = [float(np.sqrt(np.mean((run(name, n, final) - refs[final]) ** 2))) for n in ORDER_STEPS]
    order = _slope(errs, ORDER_STEPS)
    assert lo <= order <= hi, (name, final, errs, order)


def test_deis3_final_zero_error_floor(order_problem):
    """With final = "zero", deis_3's error stalls at that of the fixed-length last step.

    Measured 3.8e-4 (N = 32), 2.7e-4 (N = 64), against 1.2e-5 for the same N = 64 run stopped at
    t_min: the floor is the t_min -> 0 step (a DDIM step, ``euler_at_zero``), not the third-order
    part. (With ``euler_at_zero=False``, the order-3 extrapolation to rho = 0: 3.4e-4.)"""
    _, _, refs, run = order_problem
    e32, e64 = (float(np.sqrt(np.mean((run("deis_3", n, "zero") - refs["zero"]) ** 2)))
                for n in (32, 64))
    e64_tmin = float(np.sqrt(np.mean((run("deis_3", 64, "t_min") - refs["t_min"]) ** 2)))
    assert e64 < e32 < 2**2.7 * e64  # decaying, but far slower than third order
    assert e64 > 10 * e64_tmin and e64 < 1e-3


@pytest.mark.parametrize("final", ["t_min", "zero"])
def test_ipndm_equals_numpy_recurrence(vp, order_problem, final):
    model, x_T, _, run = order_problem
    g = grids.make_grid(vp, "logsnr", 16, final)
    a, s = coeffs64(g)
    with jax.enable_x64(True):
        m = jax.jit(model)
        ref = numpy_ipndm(lambda x, t: m(jnp.asarray(x), jnp.float64(t), None), x_T, a, s, g)
    assert max_abs(run("ipndm", 16, final), ref) < 1e-10


def test_deis1_step_and_every_step_to_zero_is_ddim(vp):
    """deis_1's step is the DDIM / Euler step; so is every solver's final step to sigma = 0
    (``euler_at_zero``), whatever its history holds."""
    rng = np.random.RandomState(0)
    eps = jnp.asarray(rng.standard_normal((4, 3)))
    denoise = lambda x_, t, a, s: ((x_ - s * eps) / a, eps)  # noqa: E731
    ddim = jdiff.solvers.ddim()
    with jax.enable_x64(True):
        g = grid_coeffs(vp, jnp.asarray(grids.make_grid(vp, "logsnr", 4)), jnp.float64)
        x = jnp.asarray(rng.standard_normal((4, 3)))
        for i in range(4):
            ref, _ = ddim.step(denoise, jdiff.solvers.base.State(x, None), g, i, i == 3)
            ours, _ = SOLVERS["deis_1"].step(denoise, SOLVERS["deis_1"].init(x, g, None), g, i, i == 3)
            np.testing.assert_allclose(np.asarray(ours.x), np.asarray(ref.x), rtol=1e-12,
                                       atol=1e-12)
        for name, solver in SOLVERS.items():
            state = solver.init(x, g, None)
            state = state._replace(hist=jnp.asarray(rng.standard_normal(state.hist.shape)))
            ours, _ = solver.step(denoise, state, g, 3, True)
            np.testing.assert_allclose(np.asarray(ours.x), np.asarray(ref.x), rtol=1e-12,
                                       atol=1e-12, err_msg=name)


# --- interface: NFE, finiteness, state ----------------------------------------------------

# step counts with distinct order schedules: n = 1, 3 (warm-up and lower_order_final overlap),
# 15 (the first n without lower_order_final); n = 4 on a t_min grid (iPNDM's first AB4 step is
# its last). Every n = 1..30: test_coefficients_finite_for_every_step_count and the slow sweep.
NFE_CASES = [(1, "zero"), (3, "zero"), (15, "zero"), (4, "t_min")]


# relative max error at n = 15 (logsnr, to zero); measured 0.16, 0.042, 0.0072, 0.022
ACCURACY_AT_15 = {"deis_1": 0.25, "deis_2": 0.08, "deis_3": 0.015, "ipndm": 0.04}


@functools.lru_cache(maxsize=None)
def counted_gaussian_model():
    """eps of 1-D N(0, 1/4) data per coordinate, counting calls: cheap to compile."""
    calls = []

    def model(x, t, args=None):
        jax.debug.callback(lambda: calls.append(1))
        a, s = SCHEDULE.alpha(t), SCHEDULE.sigma(t)
        return s * x / (a**2 * 0.25 + s**2)

    return model, calls


@pytest.mark.parametrize("name", list(DEIS_IPNDM_SOLVERS))
def test_nfe_exact_and_finite(name):
    """Exact NFE (counted calls) and finite, accurate samples to sigma = 0 at small step counts."""
    model, calls = counted_gaussian_model()
    solver = SOLVERS[name]
    x_T = jnp.asarray(np.random.RandomState(2).standard_normal((8, 4)), jnp.float32)
    for n, final in NFE_CASES:
        g = grids.make_grid(SCHEDULE, "trailing" if n < 4 else "logsnr", n, final)
        calls.clear()
        x = np.asarray(jax.block_until_ready(jdiff.sample(model, SCHEDULE, solver, g, x_T)))
        assert len(calls) == jdiff.nfe(solver, g) == solver.nfe(n, final == "zero") == n
        assert np.all(np.isfinite(x)), (name, n, final)
        if n == 15:  # exact PF-ODE solution of the Gaussian: x_0 = 0.5 x_T / std(x at t_max)
            a, s = float(SCHEDULE.alpha(1.0)), float(SCHEDULE.sigma(1.0))
            exact = 0.5 * np.asarray(x_T) / np.sqrt(0.25 * a**2 + s**2)
            rel = max_abs(x, exact) / np.max(np.abs(exact))
            assert rel < ACCURACY_AT_15[name], (name, rel)


def test_coefficients_finite_for_every_step_count():
    """Every DEIS weight of every step to sigma = 0, float32: finite (``euler_at_zero=False`` too,
    i.e. the limits of the formulas at rho_t = 0). trailing for n = 1..30; logsnr and karras (slow
    to build: their make_grid round-trips through the schedule) for a few n."""
    grid_list = [grids.make_grid(SCHEDULE, "trailing", n) for n in range(1, 31)]
    grid_list += [grids.make_grid(SCHEDULE, name, n)
                  for name in ("logsnr", "karras") for n in (2, 3, 15, 30)]
    g = grid_coeffs(SCHEDULE, jnp.asarray(np.concatenate(grid_list), jnp.float32), jnp.float32)
    rho_all, lam_all = np.asarray(g.sigma_hat), np.asarray(g.lam)  # elementwise: one call
    for order in (1, 2, 3):
        rows, start = [], 0
        for t in grid_list:
            n = len(t) - 1
            rho, lam = rho_all[start:start + n + 1], lam_all[start:start + n + 1]
            start += n + 1
            assert rho[-1] == 0 and lam[-1] == np.inf
            ks = np.asarray(deis_step_order(np.arange(n), n, order))
            for i in range(n):
                rows.append((rho[i + 1], rho[i], lam[i + 1], lam[i], lam[max(i - 1, 0)],
                             lam[max(i - 2, 0)], ks[i]))
        cols = [np.asarray(c) for c in zip(*rows)]
        c = np.asarray(deis_coefficients(*(jnp.asarray(v, jnp.float32) for v in cols[:6]),
                                         jnp.asarray(cols[6], jnp.int32), order))
        assert c.shape == (order, len(rows)) and np.all(np.isfinite(c)), order


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DEIS_IPNDM_SOLVERS))
def test_finite_for_nfe_1_to_30_to_zero(vp, name):
    """Full sweep NFE 1..30 with final sigma = 0 on the sharp mix16d testbed, float32 (30
    compilations per solver, hence ``slow``; the default run covers the distinct order
    schedules in :func:`test_nfe_exact_and_finite` and every step's weights in
    :func:`test_coefficients_finite_for_every_step_count`)."""
    model = model_fn("mix16d")
    x_T = jax.random.normal(jax.random.key(0), (8, 16))
    for n in range(1, 31):
        g = grids.make_grid(vp, ("trailing", "logsnr", "karras")[n % 3], n)
        x = np.asarray(jdiff.sample(model, vp, SOLVERS[name], g, x_T))
        assert np.all(np.isfinite(x)) and np.max(np.abs(x)) < 10, (name, n)


def test_state_has_fixed_shape_history(vp):
    x = jnp.zeros((4, 3))
    g = grid_coeffs(vp, jnp.asarray(grids.make_grid(vp, "logsnr", 5)), jnp.float32)
    assert isinstance(g, GridCoeffs)
    for name, order in [("deis_1", 1), ("deis_2", 2), ("deis_3", 3), ("ipndm", 4)]:
        state = SOLVERS[name].init(x, g, None)
        assert state.hist.shape == (order, 4, 3) and state.x is x


# --- LMS (k-diffusion's sample_lms): exact coefficients, order ------------------------------


def exact_lms_weights(rho_next, rhos):
    """``c_j = int_{rho_0}^{rho_next} l_j``, the Lagrange basis through ``rhos`` (newest first),
    in exact rational arithmetic on the given float64 nodes (an independent reference)."""
    from fractions import Fraction

    nodes = [Fraction(float(r)) for r in rhos]
    a, b = nodes[0], Fraction(float(rho_next))
    out = []
    for j, xj in enumerate(nodes):
        poly, denom = [Fraction(1)], Fraction(1)  # prod_{m != j} (x - x_m), lowest degree first
        for m, xm in enumerate(nodes):
            if m != j:
                poly = [(poly[q - 1] if q else 0) - (xm * poly[q] if q < len(poly) else 0)
                        for q in range(len(poly) + 1)]
                denom *= xj - xm
        integral = sum(c * (b ** (q + 1) - a ** (q + 1)) / (q + 1) for q, c in enumerate(poly))
        out.append(float(integral / denom))
    return np.array(out)


def test_lms_coefficients_are_the_exact_integrals():
    """jdiff's closed form (float64) = the exact integral of each Lagrange basis polynomial, for
    every step of random decreasing grids ending at rho = 0 (the final step too), orders 1-5;
    weights beyond the step's order are 0 and every candidate stays finite."""
    from jdiff.solvers.lms import lms_coefficients

    rng = np.random.RandomState(0)
    with jax.enable_x64(True):
        for trial in range(4):
            rho = np.append(np.sort(np.exp(rng.uniform(-5, 5, 9 + trial)))[::-1], 0.0)
            for order in (1, 2, 3, 4, 5):
                for i in range(len(rho) - 1):
                    k = min(i + 1, order)
                    nodes = [jnp.float64(rho[max(i - m, 0)]) for m in range(order)]
                    got = np.asarray(lms_coefficients(jnp.float64(rho[i + 1]), nodes,
                                                      jnp.int32(k), order))
                    ref = exact_lms_weights(rho[i + 1], [rho[i - m] for m in range(k)])
                    assert np.all(np.isfinite(got)) and np.all(got[k:] == 0), (order, i)
                    np.testing.assert_allclose(got[:k], ref, rtol=0,
                                               atol=1e-12 * np.max(np.abs(ref)))
    # order 1 is the Euler (DDIM) step, c_0 = rho_next - rho_i
    assert float(lms_coefficients(0.25, [1.0], 1, 1)[0]) == -0.75


def test_lms_1_is_ddim_and_final_steps(vp):
    """``lms(1)`` (and the final step of ``euler_at_zero=True``, whatever the history) is DDIM;
    the default final step to sigma = 0 is the order-4 polynomial step over the ring buffer."""
    from jdiff.solvers.lms import lms

    model = model_fn("mix2d")
    x_T = jax.random.normal(jax.random.key(0), (16, 2))
    g = grids.make_grid(vp, "karras", 6)
    ref = np.asarray(jdiff.sample(model, vp, jdiff.solvers.ddim(), g, x_T))
    np.testing.assert_allclose(np.asarray(jdiff.sample(model, vp, lms(1), g, x_T)), ref,
                               atol=2e-5)
    rng = np.random.RandomState(1)
    eps = jnp.asarray(rng.standard_normal((4, 3)))
    denoise = lambda x_, t, a, s: ((x_ - s * eps) / a, eps)  # noqa: E731
    with jax.enable_x64(True):
        c = grid_coeffs(vp, jnp.asarray(grids.make_grid(vp, "logsnr", 4)), jnp.float64)
        x = jnp.asarray(rng.standard_normal((4, 3)))
        want, _ = jdiff.solvers.ddim().step(denoise, jdiff.solvers.base.State(x, None), c, 3, True)
        solver = lms(4, euler_at_zero=True)
        state = solver.init(x, c, None)
        state = state._replace(hist=jnp.asarray(rng.standard_normal(state.hist.shape)))
        got, _ = solver.step(denoise, state, c, 3, True)
        np.testing.assert_allclose(np.asarray(got.x), np.asarray(want.x), rtol=1e-12, atol=1e-12)
        # the default final step is the order-4 polynomial step through the eps of steps 3..0,
        # read from the ring buffer (slot j % 4 holds step j's eps)
        got, _ = lms(4).step(denoise, state, c, 3, True)
        rho = np.asarray(c.sigma_hat)
        w = exact_lms_weights(rho[4], rho[3::-1])
        hist = np.asarray(state.hist)
        x_hat = np.asarray(x) / float(c.alpha[3]) + w[0] * np.asarray(eps) + sum(
            w[j] * hist[(3 - j) % 4] for j in (1, 2, 3))
        np.testing.assert_allclose(np.asarray(got.x), float(c.alpha[4]) * x_hat, rtol=1e-10,
                                   atol=1e-12)
        assert np.max(np.abs(np.asarray(got.x - want.x))) > 1e-5  # not the Euler step


# Measured slopes (logsnr grid, float64 Gaussian, t_min / zero): over N = 12..96 lms_2 1.77 /
# 1.82, lms_3 2.47 / 2.53, lms (4) 3.08 / 3.15; over N = 96..768: 1.97 / 1.97, 2.93 / 2.89,
# 3.85 / 3.85 (karras grid, t_min: 1.97, 2.93, 3.88). The nominal order is reached only on fine
# grids: the error constant of variable-step Adams-Bashforth grows with the ratio of successive
# steps, which on a log-SNR grid is e^{Delta lambda} in rho (2.3 at 12 steps). With
# euler_at_zero=True the grid ending at 0 has an error floor (2.6e-4 from N = 192 on, slope
# 0.06 for lms(4)): the final rho-step [rho(t_min), 0] does not shrink with N, and only the
# polynomial step integrates it to order k.
LMS_ORDER_STEPS = (96, 192, 384, 768)


@pytest.mark.parametrize("order,final", [
    (4, "zero"),
    *[pytest.param(o, f, marks=pytest.mark.slow) for o in (2, 3, 4) for f in ("t_min", "zero") if (o, f) != (4, "zero")],
])
def test_lms_convergence_order(vp, gauss_problem, order, final):
    from jdiff.solvers.lms import lms

    model, x_T, refs = gauss_problem
    solver = jdiff.solvers.get_solver("lms") if order == 4 else lms(order)
    assert solver.order == order
    errs = []
    with jax.enable_x64(True):
        for n in LMS_ORDER_STEPS:
            x = jdiff.sample(model, vp, solver, grids.make_grid(vp, "logsnr", n, final), x_T)
            errs.append(float(np.sqrt(np.mean((np.asarray(x) - refs[final]) ** 2))))
    slope = order_slope(errs, LMS_ORDER_STEPS)
    assert order - 0.3 <= slope <= order + 0.7, (order, final, errs, slope)
