"""Parity of jdiff's DPM-Solver family, Euler and Heun with diffusers and k-diffusion.

Reads only the fixtures written by ``tests/fixtures/make_dpm_fixtures.py`` (torch, diffusers and
k-diffusion are never imported here); see that script for every case. jdiff runs the same cases
from the same starting points on the same discretisation and must agree to ``TOL`` = 1e-4 (max abs
difference of the final samples, float32):

* diffusers ``DPMSolverMultistepScheduler`` dpmsolver++ (orders 2, 3, midpoint / heun, trailing)
  = ``dpm_solver_multistep`` on ``make_grid(vp, "trailing", n)``;
* ``DPMSolverSinglestepScheduler`` dpmsolver++ = ``dpm_solver_singlestep`` on the scheduler's
  timesteps ``(ts + 1) / 1000`` (+ 0), with the scheduler's final ``lower_order_final`` flag;
* ``sde-dpmsolver++`` order 2 with zero ``variance_noise`` = ``dpm_solver_multistep(2, eta=1,
  s_noise=0)``;
* ``EulerDiscreteScheduler`` (Karras) and ``HeunDiscreteScheduler`` (trailing, Karras) = ``euler``
  / ``heun`` on the grid ``t = t_of_log_snr(-log sigma)`` of the scheduler's sigmas;
* k-diffusion ``sample_dpmpp_2m``, ``sample_dpmpp_2s_ancestral(eta=0)``, ``sample_dpmpp_3m_sde``
  with eta = 0 and with eta = 1 and zero noise, on Karras sigmas = ``dpmpp_2m``, ``dpmpp_2s``,
  ``dpm_solver_multistep(3, solver_type="heun", lower_order_final=False)`` and the same with
  ``eta=1, s_noise=0``; ``sample_lms(order=o)``, o = 2, 3, 4 (``kdiff_lms.npz``, written by
  ``make_lms_fixtures.py``) = ``lms(o)`` (its default order 4 = ``get_solver("lms")``).
  k-diffusion's denoiser is the exact x0 prediction, so jdiff runs these with
  the testbed's x0 model (``prediction="x0"``). (With the eps model, jdiff's conversion
  ``x0 = (x - sigma eps) / alpha`` at sigma_hat = 157, alpha = 0.0064, multiplies the rounding of
  eps by 157; the 3M differences carry that to the end: up to 2.5e-4 at n = 5, against <= 3e-6
  with the x0 model, while jdiff in float64 matches k-diffusion in float64 to 1e-6.)

The model is the fixtures' model: the exact mixture evaluated in float64 on the float32 input and
rounded to float32 (jdiff's testbed traced under ``jax.enable_x64``), so that both sides see model
outputs correct to half an ulp and the comparison isolates the solvers; jdiff's float32 testbed
model is a few ulps off, which a trajectory through a sharp decision boundary can amplify past
``TOL`` (mix2d, 3M SDE, n = 20: 1.02e-4). The solver arithmetic stays float32: x64 mode leaves a
float32 run bit-identical (:func:`test_x64_mode_leaves_float32_runs_unchanged`).

Third-order multistep: diffusers and k-diffusion use the published D2 coefficient ``phi_3`` (jdiff
``reference_d2=True``); jdiff's default ``2 phi_3`` is tested elsewhere.

Documented exceptions, where jdiff is checked against the maths instead:

1. **Noise form** (``algorithm_type="dpmsolver"``). Both libraries implement the same update (in
   float64 they agree to ~3e-6), but the float32 result is dominated by amplified rounding: a
   singlestep group update ``x_s = (alpha_s / alpha_g) x_g - sigma_s h [phi_1 D0 + ...]`` that
   starts near t = 1 multiplies the model outputs at the group's intermediate points by
   coefficients up to ~50 (``alpha_s / alpha_g`` up to ~70 for a 3-step group at n = 5), without
   the compensating ``x_g`` term that rounding at those points would have in a multistep update.
   One-ulp rounding of the model input/output then moves the result by up to ~8e-3 (order 3,
   midpoint, n = 5), in diffusers exactly as in jdiff; the data form is unaffected (< 1e-5). The
   fixture stores diffusers' float64 singlestep runs: jdiff in float64 must match them to ``TOL``,
   and jdiff in float32 must be within ``max(TOL, BAND x diffusers' own float32 error)`` of them.
   The multistep noise form is milder (diffusers' own float32 error <= 8.5e-5, jdiff vs
   diffusers <= 9e-5) and is held to ``max(TOL, BAND x diffusers' float32 error)`` too.
2. **SDE-DPM-Solver++ order 3** (diffusers 0.42.1 ``multistep_dpm_solver_third_order_update``,
   ``sde-dpmsolver++`` branch). With ``g = 2 h`` its D2 term is ``alpha_t ((1 - e^{-g} - g) / g^2
   - 0.5) D2``; the published coefficient (the ODE branch of the same function and k-diffusion's
   ``sample_dpmpp_3m_sde``) is ``alpha_t g phi_3(-g) = alpha_t ((1 - e^{-g} - g) / g^2 + 0.5)``.
   A float64 NumPy implementation of diffusers' multistep SDE step with the constant as a
   parameter reproduces diffusers with -0.5 and jdiff (``reference_d2=True``) with +0.5, and
   k-diffusion's 3M SDE (eta = 1, zero noise) agrees with jdiff.

Compilation dominates the runtime (~0.3-0.7 s of XLA per solver program), so all float32 runs of
one (testbed, n) are traced into one jitted program (``jdiff.sample`` inlined once per solver,
vmapped over the cases that share it), the float64 runs into another; solvers and model functions
are built once. mix16d at n = 10 and 20 is marked ``slow`` (``pytest -m slow``): the default run
covers mix2d at every n and mix16d at n = 5 (~70 s on 2 busy cores), ``-m slow`` the rest (~40 s).
"""

from __future__ import annotations

import functools
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff.grids import check_grid, make_grid
from jdiff.solvers.dpm_solver import dpm_solver_multistep
from jdiff.solvers.dpm_solver_single import dpm_solver_singlestep, dpmpp_2s, singlestep_orders
from jdiff.solvers.lms import lms

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TOL = 1e-4
BAND = 4.0  # noise form: jdiff float32 error at most BAND x diffusers' own float32 error
TESTBEDS = ("mix16d", "mix2d")
NFES = (5, 10, 20)
SLOW_NFES = (10, 20)  # these n only with -m slow (see cases())
ORDERS = (2, 3)
STYPES = ("midpoint", "heun")
ALGOS = ("dpmsolver++", "dpmsolver")
EH_KINDS = ("euler_karras", "heun_trailing", "heun_karras")
KD_SAMPLERS = ("dpmpp_2m", "dpmpp_2s_ancestral", "dpmpp_3m_sde", "dpmpp_3m_sde_eta1")
HAVE_KDIFF = os.path.exists(os.path.join(FIXTURES, "kdiff_dpm.npz"))
LMS_ORDERS = (2, 3, 4)
HAVE_LMS = os.path.exists(os.path.join(FIXTURES, "kdiff_lms.npz"))

SCHEDULE = jdiff.schedules.vp_discrete()

# Solvers, built once (jdiff.sample compiles per solver object).
MS = {(a, o, st): dpm_solver_multistep(o, predict_x0=a == "dpmsolver++", solver_type=st,
                                       reference_d2=True)
      for a in ALGOS for o in ORDERS for st in STYPES}
SDE = {o: dpm_solver_multistep(o, predict_x0=True, solver_type="midpoint", eta=1.0, s_noise=0.0,
                               reference_d2=True)
       for o in ORDERS}
EULER = jdiff.solvers.euler()
HEUN = jdiff.solvers.heun()
KD = {
    "dpmpp_2m": MS["dpmsolver++", 2, "midpoint"],
    "dpmpp_2s_ancestral": dpmpp_2s(),
    "dpmpp_3m_sde": dpm_solver_multistep(3, predict_x0=True, solver_type="heun",
                                         lower_order_final=False, reference_d2=True),
    "dpmpp_3m_sde_eta1": dpm_solver_multistep(3, predict_x0=True, solver_type="heun", eta=1.0,
                                              s_noise=0.0, lower_order_final=False,
                                              reference_d2=True),
}

LMS = {o: lms(o) for o in LMS_ORDERS}


@functools.lru_cache(maxsize=None)
def ss_solver(algo: str, order: int, stype: str, lof: bool):
    return dpm_solver_singlestep(order, predict_x0=algo == "dpmsolver++", solver_type=stype,
                                 lower_order_final=lof)


# --- fixtures --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def fixture(name: str):
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as f:
        return {k: f[k] for k in f.files}


def stored(name: str, family: str, tb: str, case: str):
    """Case ``case`` of a stacked family ``{family}__cases`` / ``{family}__{tb}__x0``."""
    f = fixture(name)
    cases = [str(c) for c in f[f"{family}__cases"]]
    return f[f"{family}__{tb}__x0"][cases.index(case)]


def gap(kind: str, tb: str, case: str) -> float:
    """diffusers' own max |float32 run - float64 run| (``kind`` "ss" or "ms")."""
    return float(stored("diffusers_dpm", f"{kind}_gap", tb, case))


def ss_meta(algo: str, order: int, n: int):
    f = fixture("diffusers_dpm")
    return ([int(k) for k in f[f"ss__{algo}__o{order}__n{n}__order_list"]],
            bool(f[f"ss__{algo}__o{order}__n{n}__lof"]))


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def case_id(case):
    return "-".join(str(c) for c in case)


# --- grids -----------------------------------------------------------------------------------


def ms_grid(n: int, final_zero: bool) -> np.ndarray:
    return make_grid(SCHEDULE, "trailing", n, "zero" if final_zero else "t_min")


def ss_grid(n: int, final_zero: bool) -> np.ndarray:
    ts = fixture("diffusers_dpm")[f"ss__n{n}__timesteps"]
    return np.append((ts + 1) / SCHEDULE.num_train_timesteps, 0.0 if final_zero else SCHEDULE.t_min)


@functools.lru_cache(maxsize=None)
def sigma_grid(name: str, key: str) -> np.ndarray:
    """jdiff times of a sigma_hat grid: ``t = t_of_log_snr(-log sigma)`` in float64, 0 for 0."""
    sig = fixture(name)[key].astype(np.float64)
    assert sig[-1] == 0.0 and np.all(sig[:-1] > 0)
    with jax.enable_x64(True):
        t = np.asarray(SCHEDULE.t_of_log_snr(jnp.asarray(-np.log(sig[:-1]), jnp.float64)))
    grid = np.append(t, 0.0)
    check_grid(grid)
    return grid


# --- jdiff runs ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def model_fn(testbed: str, prediction: str = "eps"):
    """The fixtures' model: jdiff's exact mixture evaluated in float64 on the (float32) input and
    rounded to the input's dtype. Call under ``jax.enable_x64``; one closure per testbed and
    prediction (each new closure would compile anew)."""
    exact = jdiff.testbeds.get_testbed(testbed).model_fn(SCHEDULE, prediction)

    def fn(x, t, args=None):
        return exact(x.astype(jnp.float64), jnp.asarray(t).astype(jnp.float64), args).astype(x.dtype)

    return fn


def jobs(tb: str, n: int):
    """``(label, solver, grid, x_T, prediction)`` of every float32 run of one testbed and n."""
    noise = fixture("diffusers_dpm")[f"{tb}__noise"]
    out = []
    for algo, o, st in itertools.product(ALGOS, ORDERS, STYPES):
        fz = algo == "dpmsolver++"
        case = f"{algo}__o{o}__{st}__n{n}"
        out.append((("ms", case), MS[algo, o, st], ms_grid(n, fz), noise, "eps"))
        out.append((("ss", case), ss_solver(algo, o, st, ss_meta(algo, o, n)[1]), ss_grid(n, fz),
                    noise, "eps"))
    for o in ORDERS:
        out.append((("sde", f"o{o}__n{n}"), SDE[o], ms_grid(n, True), noise, "eps"))
    eh = fixture("diffusers_dpm_eulerheun")
    for kind in EH_KINDS:
        out.append((("eh", f"{kind}__n{n}"), EULER if kind.startswith("euler") else HEUN,
                    sigma_grid("diffusers_dpm_eulerheun", f"{kind}__n{n}__sigmas"),
                    eh[f"{kind}__{tb}__x_T"], "eps"))
    if HAVE_KDIFF:
        kd = fixture("kdiff_dpm")
        for s in KD_SAMPLERS:
            out.append((("kd", f"{s}__n{n}"), KD[s], sigma_grid("kdiff_dpm", f"kd__n{n}__sigmas"),
                        kd[f"kd__{tb}__x_T"], "x0"))
    if HAVE_LMS:
        f = fixture("kdiff_lms")
        for o in LMS_ORDERS:
            out.append((("lms", f"o{o}__n{n}"), LMS[o],
                        sigma_grid("kdiff_lms", f"lms__n{n}__sigmas"), f[f"lms__{tb}__x_T"], "x0"))
    return out


def run_batch(tb: str, batch, dtype):
    """Run a list of jobs as ONE jitted program.

    Jobs with the same solver, model, final point and grid length are vmapped over their
    (grid, x_T): one traced ``jdiff.sample`` per distinct solver program.
    """
    groups = {}
    for j in batch:
        groups.setdefault((id(j[1]), j[4], bool(j[2][-1] == 0.0), len(j[2])), []).append(j)
    groups = list(groups.values())
    # model functions are built outside the trace (building a testbed inside it leaks tracers)
    statics = tuple((g[0][1], g[0][4], model_fn(tb, g[0][4]), bool(g[0][2][-1] == 0.0), len(g) > 1)
                    for g in groups)

    def run(grids, xs, key):
        outs = []
        for (solver, pred, model, fz, vm), g, x in zip(statics, grids, xs):
            fn = functools.partial(jdiff.sample, model, SCHEDULE, solver, key=key,
                                   prediction=pred, final_zero=fz)
            outs.append(jax.vmap(fn)(g, x) if vm else fn(g, x)[None])
        return outs

    def stack(k, g):
        return jnp.asarray(np.stack([j[k] for j in g]) if len(g) > 1 else g[0][k], dtype)

    with jax.enable_x64(True):
        outs = jax.jit(run)([stack(2, g) for g in groups], [stack(3, g) for g in groups],
                            jax.random.key(0))
    return {j[0]: np.asarray(o[k]) for g, o in zip(groups, outs) for k, j in enumerate(g)}


@functools.lru_cache(maxsize=None)
def jdiff_f32(tb: str, n: int):
    return run_batch(tb, jobs(tb, n), jnp.float32)


@functools.lru_cache(maxsize=None)
def jdiff_f64_noise_singlestep(tb: str, n: int):
    """The singlestep noise-form cases in float64 (one program)."""
    noise = fixture("diffusers_dpm")[f"{tb}__noise"]
    batch = [(("ss", f"dpmsolver__o{o}__{st}__n{n}"),
              ss_solver("dpmsolver", o, st, ss_meta("dpmsolver", o, n)[1]), ss_grid(n, False),
              noise, "eps")
             for o in ORDERS for st in STYPES]
    return run_batch(tb, batch, jnp.float64)


def cases(*axes):
    """Test cases: the product of ``axes`` (testbed first, n last); n = 10 and 20 are marked slow (``-m slow``; compilation makes the whole set take ~2 minutes on 2 cores)."""
    out = []
    for c in itertools.product(*axes):
        slow = c[-1] in SLOW_NFES  # n = 5 for both testbeds in the default set
        out.append(pytest.param(c, marks=pytest.mark.slow, id=case_id(c)) if slow
                   else pytest.param(c, id=case_id(c)))
    return out


# --- metadata, grids and order lists ---------------------------------------------------------


def test_fixture_metadata():
    names = (["diffusers_dpm", "diffusers_dpm_eulerheun"] + (["kdiff_dpm"] if HAVE_KDIFF else [])
             + (["kdiff_lms"] if HAVE_LMS else []))
    for name in names:
        f = fixture(name)
        for key in ("diffusers_version", "torch_version", "model_precision"):
            assert str(f[key]), (name, key)
        for tb in TESTBEDS:  # the draws of make_diffusers_fixtures.py
            np.testing.assert_array_equal(f[f"{tb}__noise"],
                                          fixture("diffusers_euler")[f"{tb}__noise"])
    for name in ("kdiff_dpm",) * HAVE_KDIFF + ("kdiff_lms",) * HAVE_LMS:
        assert str(fixture(name)["kdiffusion_version"])


def test_multistep_timesteps_are_the_trailing_grid():
    f = fixture("diffusers_dpm")
    for n in NFES:
        for fz in (True, False):
            grid = ms_grid(n, fz)
            np.testing.assert_array_equal(np.round(grid[:-1] * 1000 - 1).astype(np.int64),
                                          f[f"ms__n{n}__timesteps"])
            assert grid[-1] == (0.0 if fz else SCHEDULE.t_min)


@pytest.mark.parametrize("algo", ALGOS)
def test_singlestep_timesteps_and_order_lists(algo):
    """diffusers' timesteps, and its ``order_list`` from jdiff's ``singlestep_orders`` with the
    ``lower_order_final`` flag the scheduler ends up with (it switches it on when n is not a
    multiple of the order or the final sigma is zero)."""
    fz = algo == "dpmsolver++"
    for n in NFES:
        np.testing.assert_array_equal(
            fixture("diffusers_dpm")[f"ss__n{n}__timesteps"],
            np.linspace(0, 999, n + 1).round()[::-1][:-1].astype(np.int64))
        for o in ORDERS:
            orders, lof = ss_meta(algo, o, n)
            assert lof == (fz or n % o != 0), (algo, o, n)
            assert singlestep_orders(n, o, lof, fz) == orders, (algo, o, n)


def test_sigma_grids_round_trip():
    """The mapped grids reproduce the stored sigmas; trailing Heun's is make_grid's trailing grid;
    the x-space starts are ``noise sigma_max / sqrt(sigma_max^2 + 1)``."""
    eh = fixture("diffusers_dpm_eulerheun")
    keys = [("diffusers_dpm_eulerheun", f"{k}__n{n}__sigmas") for k in EH_KINDS for n in NFES]
    if HAVE_KDIFF:
        keys += [("kdiff_dpm", f"kd__n{n}__sigmas") for n in NFES]
    if HAVE_LMS:
        keys += [("kdiff_lms", f"lms__n{n}__sigmas") for n in NFES]
    for name, key in keys:
        grid = sigma_grid(name, key)
        sig = fixture(name)[key].astype(np.float64)
        with jax.enable_x64(True):
            back = np.asarray(SCHEDULE.sigma_hat(jnp.asarray(grid[:-1], jnp.float64)))
        np.testing.assert_allclose(back, sig[:-1], rtol=2e-6, err_msg=key)
    for n in NFES:
        trailing = make_grid(SCHEDULE, "trailing", n)
        np.testing.assert_allclose(
            sigma_grid("diffusers_dpm_eulerheun", f"heun_trailing__n{n}__sigmas"), trailing,
            atol=1e-6)
        np.testing.assert_array_equal(eh[f"heun_trailing__n{n}__timesteps"],
                                      np.round(trailing[:-1] * 1000 - 1))
    starts = [(eh, f"{k}__n5__sigmas", f"{k}__{{}}__x_T") for k in EH_KINDS]
    if HAVE_KDIFF:
        starts.append((fixture("kdiff_dpm"), "kd__n5__sigmas", "kd__{}__x_T"))
    if HAVE_LMS:
        starts.append((fixture("kdiff_lms"), "lms__n5__sigmas", "lms__{}__x_T"))
    for f, sig_key, x_key in starts:
        s = float(f[sig_key][0])
        for tb in TESTBEDS:
            np.testing.assert_allclose(f[x_key.format(tb)] / f[f"{tb}__noise"],
                                       s / np.sqrt(s * s + 1), rtol=1e-6)


def test_x64_mode_leaves_float32_runs_unchanged():
    """The parity runs are traced under ``jax.enable_x64`` (for the float64 model); with float32
    inputs and jdiff's float32 model a run is bit-identical to the same run with x64 off."""
    model = jdiff.testbeds.get_testbed("mix2d").model_fn(SCHEDULE)
    solver, grid = MS["dpmsolver++", 3, "heun"], ms_grid(5, True)
    x_T = fixture("diffusers_dpm")["mix2d__noise"]
    off = np.asarray(jdiff.sample(model, SCHEDULE, solver, grid, x_T))
    with jax.enable_x64(True):
        on = np.asarray(jdiff.sample(model, SCHEDULE, solver, jnp.asarray(grid, jnp.float32),
                                     jnp.asarray(x_T, jnp.float32)))
    assert on.dtype == np.float32
    np.testing.assert_array_equal(on, off)


# --- diffusers DPM-Solver --------------------------------------------------------------------

ALL_MS = list(itertools.product(TESTBEDS, ALGOS, ORDERS, STYPES, NFES))
PP_CASES = [c for c in ALL_MS if c[1] == "dpmsolver++"]
NOISE_CASES = [c for c in ALL_MS if c[1] == "dpmsolver"]


def label(case) -> str:
    return "{1}__o{2}__{3}__n{4}".format(*case)


@pytest.mark.parametrize("case", cases(TESTBEDS, ALGOS, ORDERS, STYPES, NFES))
def test_multistep_matches_diffusers(case):
    tb, algo, _, _, n = case
    err = max_abs(jdiff_f32(tb, n)["ms", label(case)],
                  stored("diffusers_dpm", "ms", tb, label(case)))
    # noise form: within diffusers' own float32 error (module docstring, exception 1)
    tol = TOL if algo == "dpmsolver++" else max(TOL, BAND * gap("ms", tb, label(case)))
    assert err <= tol, f"multistep {case}: max abs diff {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("case", cases(TESTBEDS, ALGOS[:1], ORDERS, STYPES, NFES))
def test_singlestep_dpmpp_matches_diffusers(case):
    tb, _, _, _, n = case
    err = max_abs(jdiff_f32(tb, n)["ss", label(case)],
                  stored("diffusers_dpm", "ss", tb, label(case)))
    assert err <= TOL, f"singlestep {case}: max abs diff {err:.3g}"


@pytest.mark.parametrize("case", cases(TESTBEDS, ALGOS[1:], ORDERS, STYPES, NFES))
def test_singlestep_noise_form_float64_matches_diffusers_float64(case):
    """Same maths: jdiff and diffusers, both in float64, agree (measured <= 3e-6)."""
    tb, n = case[0], case[-1]
    err = max_abs(jdiff_f64_noise_singlestep(tb, n)["ss", label(case)],
                  stored("diffusers_dpm", "ss_f64", tb, label(case)))
    assert err <= TOL, f"singlestep noise form float64 {case}: max abs diff {err:.3g}"


@pytest.mark.parametrize("case", cases(TESTBEDS, ALGOS[1:], ORDERS, STYPES, NFES))
def test_singlestep_noise_form_float32_within_rounding_band(case):
    """jdiff in float32 is about as close to the float64 result as diffusers' own float32 run."""
    tb, _, _, _, n = case
    own = gap("ss", tb, label(case))
    err = max_abs(jdiff_f32(tb, n)["ss", label(case)],
                  stored("diffusers_dpm", "ss_f64", tb, label(case)))
    assert err <= max(TOL, BAND * own), f"{case}: jdiff {err:.3g}, diffusers' own {own:.3g}"


def test_noise_form_float32_rounding_is_documented():
    """The documented behaviour (module docstring, exception 1): diffusers' own float32
    noise-form singlestep result is far from its float64 result for n = 5, order 3, while every
    data-form run (singlestep and multistep) is within 0.1 TOL of float64."""
    noise = [gap("ss", c[0], label(c)) for c in NOISE_CASES]
    data = [gap(k, c[0], label(c)) for k in ("ss", "ms") for c in PP_CASES]
    assert gap("ss", "mix16d", "dpmsolver__o3__midpoint__n5") > 10 * TOL
    assert max(noise) > 10 * TOL and max(data) < 0.1 * TOL, (max(noise), max(data))
    assert max(gap("ms", c[0], label(c)) for c in NOISE_CASES) < TOL


@pytest.mark.parametrize("case", cases(TESTBEDS, NFES))
def test_sde_dpmpp_2m_matches_diffusers(case):
    tb, n = case
    err = max_abs(jdiff_f32(tb, n)["sde", f"o2__n{n}"],
                  stored("diffusers_dpm", "sde", tb, f"o2__n{n}"))
    assert err <= TOL, f"sde-dpmsolver++ order 2 {case}: max abs diff {err:.3g}"


# --- SDE-DPM-Solver++ order 3: diffusers' D2 coefficient ---------------------------------------


@functools.lru_cache(maxsize=None)
def jitted_model_fn(testbed: str):
    return jax.jit(model_fn(testbed))


def numpy_sde_dpmpp(tb: str, n: int, order: int, d2_const: float) -> np.ndarray:
    """diffusers' multistep ``sde-dpmsolver++`` (midpoint, zero noise, trailing, final sigma 0,
    ``lower_order_final``) in float64 NumPy. ``d2_const`` is the constant of the third-order D2
    coefficient ``alpha_t ((1 - e^{-g} - g) / g^2 + d2_const)``, g = 2 h: diffusers 0.42.1 uses
    -0.5, the published coefficient ``alpha_t g phi_3(-g)`` (k-diffusion) is +0.5. The model is
    :func:`model_fn` (eps) on the float32 sample at t = (timestep + 1) / 1000."""
    ts = fixture("diffusers_dpm")[f"ms__n{n}__timesteps"]
    abar = np.append(np.asarray(SCHEDULE.alphas_cumprod, np.float64)[ts], 1.0)
    alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
    lam = np.log(alpha[:-1]) - np.log(sigma[:-1])
    fn = jitted_model_fn(tb)
    x = fixture("diffusers_dpm")[f"{tb}__noise"].astype(np.float64)
    hist = []
    for i, t in enumerate(ts):
        with jax.enable_x64(True):
            eps = np.asarray(fn(x.astype(np.float32), np.float32((t + 1) / 1000), None), np.float64)
        hist.append((x - sigma[i] * eps) / alpha[i])
        if i == n - 1:  # final sigma 0: the first-order step returns x0
            return hist[-1]
        h = np.log(alpha[i + 1]) - np.log(sigma[i + 1]) - lam[i]
        g, a = 2.0 * h, alpha[i + 1]
        k = 1 if i == 0 else (2 if (order == 2 or i == 1 or (i == n - 2 and n < 15)) else 3)
        x = sigma[i + 1] / sigma[i] * np.exp(-h) * x - a * np.expm1(-g) * hist[-1]
        if k == 2:
            r0 = (lam[i] - lam[i - 1]) / h
            x = x - 0.5 * a * np.expm1(-g) * (hist[-1] - hist[-2]) / r0
        elif k == 3:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            d1_0, d1_1 = (hist[-1] - hist[-2]) / r0, (hist[-2] - hist[-3]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x = (x + a * (np.expm1(-g) / g + 1.0) * d1
                 + a * ((-np.expm1(-g) - g) / g**2 + d2_const) * d2)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("case", cases(TESTBEDS, NFES))
def test_sde_dpmpp_3m_documents_diffusers_d2_coefficient(case):
    """jdiff vs diffusers' ``sde-dpmsolver++`` order 3 (module docstring, exception 2).

    (a) the same NumPy loop reproduces diffusers with the D2 constant -0.5 and jdiff
        (``reference_d2=True``) with +0.5, the published coefficient (k-diffusion agrees, see the
        k-diffusion tests);
    (b) at order 2 (no D2 term) the loop reproduces both diffusers and jdiff;
    (c) from n = 10 on, the two constants give clearly different samples.
    """
    tb, n = case
    ref = stored("diffusers_dpm", "sde", tb, f"o3__n{n}")
    x_jdiff = jdiff_f32(tb, n)["sde", f"o3__n{n}"]
    assert max_abs(numpy_sde_dpmpp(tb, n, 3, -0.5), ref) <= TOL  # (a) diffusers' constant
    assert max_abs(numpy_sde_dpmpp(tb, n, 3, +0.5), x_jdiff) <= TOL  # (a) published constant
    o2 = numpy_sde_dpmpp(tb, n, 2, 0.0)
    assert max_abs(o2, stored("diffusers_dpm", "sde", tb, f"o2__n{n}")) <= TOL  # (b)
    assert max_abs(o2, jdiff_f32(tb, n)["sde", f"o2__n{n}"]) <= TOL
    if n >= 10:
        diff = max_abs(x_jdiff, ref)
        assert diff > 10 * TOL, f"expected a clear difference, got {diff:.3g}"  # (c)


# --- Euler / Heun ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases(TESTBEDS, EH_KINDS, NFES))
def test_euler_heun_match_diffusers(case):
    tb, kind, n = case
    err = max_abs(jdiff_f32(tb, n)["eh", f"{kind}__n{n}"],
                  stored("diffusers_dpm_eulerheun", "eh", tb, f"{kind}__n{n}"))
    assert err <= TOL, f"{case}: max abs diff {err:.3g}"


# --- k-diffusion -----------------------------------------------------------------------------

@pytest.mark.skipif(not HAVE_KDIFF, reason="kdiff_dpm.npz not generated (k-diffusion missing)")
@pytest.mark.parametrize("case", cases(TESTBEDS, KD_SAMPLERS, NFES))
def test_kdiffusion_matches(case):
    tb, sampler, n = case
    err = max_abs(jdiff_f32(tb, n)["kd", f"{sampler}__n{n}"],
                  stored("kdiff_dpm", "kd", tb, f"{sampler}__n{n}"))
    assert err <= TOL, f"k-diffusion {case}: max abs diff {err:.3g}"


@pytest.mark.skipif(not HAVE_LMS, reason="kdiff_lms.npz not generated (k-diffusion missing)")
@pytest.mark.parametrize("case", cases(TESTBEDS, LMS_ORDERS, NFES))
def test_kdiffusion_lms_matches(case):
    """k-diffusion's ``sample_lms`` (scipy-quad coefficients) = jdiff's ``lms`` (closed form)."""
    tb, o, n = case
    err = max_abs(jdiff_f32(tb, n)["lms", f"o{o}__n{n}"],
                  stored("kdiff_lms", "lms", tb, f"o{o}__n{n}"))
    assert err <= TOL, f"k-diffusion sample_lms {case}: max abs diff {err:.3g}"
