"""UniPC (``jdiff.solvers.unipc``): diffusers parity, convergence order, exact NFE, finiteness.

Parity fixtures come from ``tests/fixtures/make_unipc_fixtures.py`` (torch + diffusers, never
imported here): diffusers' ``UniPCMultistepScheduler`` (eps prediction, ``final_sigmas_type="zero"``,
default ``lower_order_final``) on the exact mixture eps of ``mix16d`` / ``mix2d``, from fixed
noise, at NFE 5, 10, 20. What diffusers does that jdiff does not (checked below):

* ``bh1`` returns NaN at the final step to sigma = 0 (``B(h) = h = -inf`` times a zero residual),
  and so does the noise form (``predict_x0=False``: ``sigma_t * expm1(h) = 0 * inf``). jdiff
  returns the h -> inf limit of the same update; the fixture stores that limit computed from
  diffusers' own state at the last step (data form: its ``model_outputs[-1]``, which is exactly
  what diffusers' bh2 returns), and jdiff must match it.
* UniPC's ``timestep_spacing="linspace"`` is ``round(linspace(0, N - 1, n + 1))[::-1][:-1]``, not
  DDIM's ``round(linspace(0, N - 1, n))[::-1]`` that ``make_grid(..., "linspace", n)`` builds, so
  linspace cases run on diffusers' grid passed as an array. ``trailing`` is identical to
  ``make_grid``.
* Noise form at NFE 5: float32 conditioning. Its first steps from t = 999 multiply x by
  ``alpha_t / alpha_s ~ 6`` and eps by ``sigma_t (e^h - 1)``; jdiff and diffusers (float32) are
  each ~3.5e-4 (mix16d) from the float64 result of the same algorithm, in different directions
  (6.4e-4 apart); see :func:`test_eps_form_nfe5_is_float32_conditioning` (slow). Tolerance 1e-3
  there, 1e-4 everywhere else.

Compile cost: each (solver object, step count, shape) compiles ``jdiff.sample`` once (~1 s), so
solver objects are module constants and the default run keeps the count of those pairs small;
the wider sweeps are marked ``slow``.
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
from jdiff.solvers import ddim, ddpm, euler, heun
from jdiff.solvers.base import grid_coeffs
from jdiff.solvers.unipc import UNIPC_SOLVERS, unic, unipc

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "diffusers_unipc.npz")
TOL = 1e-4
SCHEDULE = jdiff.schedules.vp_discrete()
NFES = (5, 10, 20)
SPACINGS = ("trailing", "linspace")

# One object per configuration: jdiff.sample compiles once per (solver, n, shape).
MAIN = {(v, o): unipc(order=o, variant=v) for v in ("bh1", "bh2") for o in (2, 3)}
EPS_FORM = unipc(order=2, variant="bh2", predict_x0=False)
DDIM_UNIC_DIFFUSERS = unic(ddim(), order=2, variant="bh2", reuse="eps")  # diffusers' solver_p
DEFAULTS = {name: factory() for name, factory in UNIPC_SOLVERS.items()}


def fixture():
    return load_npz(FIXTURE)


@functools.lru_cache(maxsize=None)
def model_fn(testbed: str):
    return jdiff.testbeds.get_testbed(testbed).model_fn(SCHEDULE)


def diffusers_grid(spacing: str, n: int) -> np.ndarray:
    ts = fixture()[f"{spacing}__n{n}__timesteps"]
    return np.concatenate([(ts + 1.0) / 1000.0, [0.0]])


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# --- fixture facts ---------------------------------------------------------------------------


def test_fixture_metadata_and_size():
    f = fixture()
    for key in ("diffusers_version", "torch_version", "model_precision"):
        assert str(f[key])
    assert os.path.getsize(FIXTURE) < 300_000
    assert all(v.dtype == np.float32 for k, v in f.items() if k.endswith(("x0", "x0_limit", "noise")))


def test_grids_and_sigmas_match_diffusers():
    """trailing == make_grid; UniPC's linspace is its own rule; sigmas agree to float32 rounding."""
    f = fixture()
    for n in NFES:
        for sp in SPACINGS:
            g = diffusers_grid(sp, n)
            c = grid_coeffs(SCHEDULE, g, jnp.float32)
            sig = f[f"{sp}__n{n}__sigmas"]  # diffusers' sigma / alpha, ending at 0
            assert sig[-1] == 0.0 and np.asarray(c.sigma_hat)[-1] == 0.0
            np.testing.assert_allclose(np.asarray(c.sigma_hat)[:-1], sig[:-1], rtol=1e-6)
        trailing = diffusers_grid("trailing", n)
        np.testing.assert_array_equal(grids.make_grid(SCHEDULE, "trailing", n), trailing)
        ts = f[f"linspace__n{n}__timesteps"]
        unipc_linspace = np.linspace(0, 999, n + 1).round()[::-1][:-1].astype(np.int64)
        np.testing.assert_array_equal(ts, unipc_linspace)
        assert not np.array_equal(grids.make_grid(SCHEDULE, "linspace", n), diffusers_grid("linspace", n))


def test_where_diffusers_returns_nan():
    """bh1 and the noise form give NaN at the final step to sigma = 0 in diffusers; bh2 does not."""
    f = fixture()
    for key in (k for k in f if k.endswith("__x0")):
        kind, _, variant = key.split("__")[:3]
        nan_expected = variant == "bh1" or kind == "eps"
        assert np.all(np.isnan(f[key])) == nan_expected, key
        assert (key + "_limit" in f) == nan_expected, key
        if nan_expected:
            assert np.all(np.isfinite(f[key + "_limit"]))


# --- parity ----------------------------------------------------------------------------------

CASES = ([("main", tb, v, o, n) for tb in ("mix16d", "mix2d") for v in ("bh1", "bh2") for o in (2, 3)
          for n in NFES]
         + [(kind, tb, "bh2", 2, n) for kind in ("eps", "ddimp") for tb in ("mix16d", "mix2d")
            for n in NFES])


DEFAULT_RUN = {("eps", 5), ("eps", 10), ("ddimp", 10)} | {("main", n) for n in NFES}


def _param(case):
    slow = case[1] == "mix2d" or (case[0], case[4]) not in DEFAULT_RUN
    marks = [pytest.mark.slow] if slow else []
    return pytest.param(case, id="{}-{}-{}-o{}-n{}".format(*case), marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_matches_diffusers(case):
    kind, tb, variant, order, n = case
    solver = {"main": MAIN.get((variant, order)), "eps": EPS_FORM, "ddimp": DDIM_UNIC_DIFFUSERS}[kind]
    f = fixture()
    x_T = f[f"{tb}__noise"]
    tol = 1e-3 if (kind == "eps" and n == 5) else TOL  # float32 conditioning, see module doc
    for sp in (SPACINGS if kind == "main" else ("trailing",)):
        key = f"{kind}__{tb}__{variant}__o{order}__{sp}__n{n}__"
        ref = f[key + "x0_limit"] if key + "x0_limit" in f else f[key + "x0"]
        x = np.asarray(jdiff.sample(model_fn(tb), SCHEDULE, solver, diffusers_grid(sp, n), x_T))
        err = max_abs(x, ref)
        assert err <= tol, f"{key}: max abs diff {err:.3g}"


@pytest.mark.slow
def test_eps_form_nfe5_is_float32_conditioning():
    """jdiff and diffusers (both float32) are equally far from a float64 run of the algorithm."""
    f = fixture()
    tb = jdiff.testbeds.get_testbed("mix16d")
    g = diffusers_grid("trailing", 5)
    x_T = f["mix16d__noise"]
    ref = f["eps__mix16d__bh2__o2__trailing__n5__x0_limit"]
    x32 = np.asarray(jdiff.sample(model_fn("mix16d"), SCHEDULE, EPS_FORM, g, x_T))
    with jax.enable_x64(True):
        tb64 = jdiff.testbeds.from_arrays(
            np.exp(np.asarray(tb.log_weights, np.float64)), np.asarray(tb.means, np.float64),
            stds=np.sqrt(np.asarray(tb.eigvals, np.float64)), dtype=jnp.float64)
        x64 = np.asarray(jdiff.sample(tb64.model_fn(SCHEDULE), SCHEDULE, EPS_FORM, g,
                                      jnp.asarray(x_T, jnp.float64)))
    d_jdiff, d_diffusers, gap = max_abs(x32, x64), max_abs(ref, x64), max_abs(x32, ref)
    assert d_jdiff < 1e-3 and d_diffusers < 1e-3 and gap < d_jdiff + d_diffusers + 1e-6
    # the data form on the same case is well conditioned
    x = jdiff.sample(model_fn("mix16d"), SCHEDULE, MAIN[("bh2", 2)], g, x_T)
    assert max_abs(x, f["main__mix16d__bh2__o2__trailing__n5__x0"]) < 1e-5


# --- convergence order on a float64 Gaussian ---------------------------------------------------

STEPS = (16, 32, 64)
STEPS_SLOW = (16, 32, 64, 128)


_order = order_slope


@pytest.fixture(scope="module")
def gauss(gauss_problem):
    return gauss_problem


def _rms_error(gauss, vp, solver, n, final="t_min"):
    model, x_T, refs = gauss
    with jax.enable_x64(True):
        x = jdiff.sample(model, vp, solver, grids.make_grid(vp, "logsnr", n, final), x_T)
    return float(np.sqrt(np.mean((np.asarray(x) - refs[final]) ** 2)))


# final="t_min" and lower_order_final off: a grid ending at 0 adds a final denoising error that
# does not shrink with n (it caps every solver), and lower_order_final ends on an uncorrected
# first-order step. Nominal orders: UniPC-p with UniC is min(p + 1, 3) (the first-order warm-up
# step, corrected, has local error O(h^3)); UniP-p alone min(p, 2); DDIM + UniC is 2.
# (name, solver, nominal, steps, slow)
ORDER_CASES = [
    ("unipc_bh2_o3", unipc(order=3, lower_order_final=False), 3, STEPS, False),
    ("unipc_bh2_o2", unipc(order=2, lower_order_final=False), 3, STEPS_SLOW, True),
    ("ddim+unic2", unic(ddim(), order=2, lower_order_final=False), 2, STEPS, False),
    ("unipc_bh2_o1", unipc(order=1, lower_order_final=False), 2, STEPS_SLOW, True),
    ("unipc_bh1_o2", unipc(order=2, variant="bh1", lower_order_final=False), 3, STEPS_SLOW, True),
    ("unipc_bh1_o3", unipc(order=3, variant="bh1", lower_order_final=False), 3, STEPS_SLOW, True),
    ("unip_bh2_o2", unipc(order=2, corrector=False, lower_order_final=False), 2, STEPS_SLOW, True),
    ("unipc_bh2_o2_eps", unipc(order=2, predict_x0=False, lower_order_final=False), 3, STEPS_SLOW, True),
]


@pytest.mark.parametrize(
    "name,solver,nominal,steps",
    [pytest.param(n, s, o, st, id=n, marks=[pytest.mark.slow] if slow else [])
     for n, s, o, st, slow in ORDER_CASES],
)
def test_convergence_order(vp, gauss, name, solver, nominal, steps):
    assert solver.order == nominal
    errs = [_rms_error(gauss, vp, solver, n) for n in steps]
    order = _order(errs, steps)
    assert order >= nominal - 0.3, (name, errs, order)
    # UniPC-3 is pre-asymptotically closer to 4 (its order once warmed up) at these n
    assert order <= nominal + (1.5 if nominal == 3 else 0.6), (name, errs, order)


@pytest.mark.slow
def test_convergence_order_with_lower_order_final(vp, gauss):
    """Default unipc_bh2 (lower_order_final on): the last step is uncorrected first order, so the
    asymptotic order is 2; its local error constant is tiny at t_min (the data prediction hardly
    changes with lambda at low noise), so ~2.9 is observed for n = 16..128."""
    errs = [_rms_error(gauss, vp, DEFAULTS["unipc_bh2"], n) for n in STEPS_SLOW]
    assert _order(errs, STEPS_SLOW) >= 2.0 - 0.3, errs


def test_unic_on_ddim_is_unipc1(vp, gauss):
    """With x0 reuse, DDIM + UniC-1 is exactly UniPC-1 (DDIM is the data-form UniP-1)."""
    model, x_T, _ = gauss
    g = grids.make_grid(vp, "logsnr", 8, "t_min")
    with jax.enable_x64(True):
        a = jdiff.sample(model, vp, unic(ddim(), order=1), g, x_T)
        b = jdiff.sample(model, vp, unipc(order=1), g, x_T)
    assert max_abs(a, b) < 1e-12


def test_unic_improves_ddim_at_nfe10(vp, gauss):
    """On the grid ending at 0 (diffusers' setting), NFE 10: DDIM + UniC beats plain DDIM."""
    e_ddim = _rms_error(gauss, vp, ddim(), 10, "zero")
    e_unic = _rms_error(gauss, vp, unic(ddim()), 10, "zero")
    assert e_unic < 0.8 * e_ddim, (e_unic, e_ddim)


@pytest.mark.slow
def test_unic_improves_ddim_on_mixture_nfe10(vp):
    x_T = jax.random.normal(jax.random.key(4), (64, 16))
    g = grids.make_grid(vp, "trailing", 10)
    ref = jdiff.reference_solve(model_fn("mix16d"), vp, np.asarray(x_T, np.float64), g[0], 0.0)
    err = {s.name: max_abs(jdiff.sample(model_fn("mix16d"), vp, s, g, x_T), ref)
           for s in (ddim(), DDIM_UNIC_DIFFUSERS, unic(ddim()))}
    assert max(err["ddim_unic2_bh2_reuseeps"], err["ddim_unic2_bh2"]) < 0.8 * err["ddim"], err


# --- exact NFE -------------------------------------------------------------------------------

NFE_SOLVERS = {"unipc_bh2": DEFAULTS["unipc_bh2"], "ddim+unic": unic(ddim())}


@pytest.mark.parametrize("name", list(NFE_SOLVERS))
@pytest.mark.parametrize("final", ["zero", "t_min"])
def test_nfe_is_exact(vp, name, final):
    calls = []

    def counted(x, t, args=None):
        jax.debug.callback(lambda: calls.append(1))
        return 0.1 * x

    solver = NFE_SOLVERS[name]
    g = grids.make_grid(vp, "logsnr", 4, final)
    x = jdiff.sample(counted, vp, solver, g, jnp.ones((2, 3)))
    jax.block_until_ready(x)
    assert len(calls) == jdiff.nfe(solver, g) == 4
    assert solver.nfe(7, True) == solver.nfe(7, False) == 7


# --- finiteness ------------------------------------------------------------------------------


def _finite(solver, n, spacing="trailing"):
    x_T = jax.random.normal(jax.random.key(9), (8, 16))
    g = grids.make_grid(SCHEDULE, spacing, n)
    x = jdiff.sample(model_fn("mix16d"), SCHEDULE, solver, g, x_T, check_finite=True)
    return bool(np.all(np.isfinite(np.asarray(x))))


@pytest.mark.parametrize("name", list(DEFAULTS))
@pytest.mark.parametrize("n", [1, 2, 1000])
def test_no_nan_final_zero(name, n):
    """Final step to sigma = 0 is the x0 limit (diffusers' bh1 gives NaN there)."""
    assert _finite(DEFAULTS[name], n)


@pytest.mark.slow
def test_no_nan_sweep():
    more = [MAIN[("bh1", 3)], MAIN[("bh2", 3)], EPS_FORM, DDIM_UNIC_DIFFUSERS,
            unipc(order=3, lower_order_final=False),
            unipc(order=3, predict_x0=False, lower_order_final=False)]
    for n in range(1, 51):
        for s in DEFAULTS.values():
            assert _finite(s, n), (s.name, n)
    for n in range(1, 8):
        for s in more:
            assert _finite(s, n), (s.name, n)
    for s in more:
        for sp in ("trailing", "logsnr", "karras"):
            assert _finite(s, 1000, sp), (s.name, sp)


# --- options and interface -------------------------------------------------------------------


def test_names_orders_and_defaults():
    assert set(UNIPC_SOLVERS) == {"unipc_bh1", "unipc_bh2"}
    for name, s in DEFAULTS.items():
        assert s.name == name and s.order == 3 and not s.stochastic and s.min_steps == 1
    assert unipc(order=3, variant="bh1").name == "unipc_bh1_o3"
    assert unipc(corrector=False).order == 2 and unipc(order=1, corrector=False).order == 1
    assert unic(euler()).order == 2


@pytest.mark.parametrize("bad", [
    lambda: unipc(order=0), lambda: unipc(variant="bh3"), lambda: unipc(lower_order_final_below=0),
    lambda: unic(heun()), lambda: unic(ddpm()), lambda: unic(ddim(), reuse="v"), lambda: unic("ddim"),
])
def test_invalid_arguments(bad):
    with pytest.raises(ValueError):
        bad()


@pytest.mark.slow
def test_lower_order_final_threshold(vp, gauss):
    """``lower_order_final_below=15``: lowered at n = 10, not at n = 20 (DPM-Solver's rule)."""
    model, x_T, _ = gauss
    thr, on, off = (unipc(order=3, lower_order_final_below=15), unipc(order=3),
                    unipc(order=3, lower_order_final=False))
    with jax.enable_x64(True):
        for n, same in ((10, on), (20, off)):
            g = grids.make_grid(vp, "logsnr", n, "t_min")
            run = lambda s: np.asarray(jdiff.sample(model, vp, s, g, x_T))  # noqa: E731
            assert max_abs(run(thr), run(same)) < 1e-12
            other = off if same is on else on
            assert max_abs(run(thr), run(other)) > 1e-8


def test_closed_form_vandermonde_solve_equals_linalg_solve():
    """The rho systems ``sum_k r_k^j rho_k = b_j`` are solved in closed form (Lagrange basis
    coefficients) instead of ``jnp.linalg.solve``: same solution, float64, sizes 1-4, nodes like
    UniPC's (negative r_k, and r = 1 for the corrector), including nearly coincident nodes."""
    from jdiff.solvers.unipc import _solve_vandermonde

    rng = np.random.RandomState(0)
    with jax.enable_x64(True):
        for q in (1, 2, 3, 4):
            for trial in range(20):
                r = -np.sort(rng.uniform(0.05, 4.0, q))
                if trial % 2:
                    r[-1] = 1.0  # the corrector's r_p = 1
                if trial == 19 and q > 1:
                    r[1] = r[0] * (1 + 1e-6)  # nearly equal nodes: ill-conditioned, still agrees
                b = rng.standard_normal(q)
                R = np.vander(r, q, increasing=True).T  # R[j, k] = r_k^j
                want = np.linalg.solve(R, b)
                got = np.asarray([float(v) for v in _solve_vandermonde(
                    [jnp.float64(v) for v in r], [jnp.float64(v) for v in b])])
                scale = np.abs(want).max()
                np.testing.assert_allclose(got, want, rtol=0,
                                           atol=(1e-6 if trial == 19 else 1e-11) * scale)
