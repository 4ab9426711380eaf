"""Parity with diffusers' DDIM and Euler schedulers, from stored fixtures (no torch/diffusers here).

The fixtures are written by ``tests/fixtures/make_diffusers_fixtures.py`` (which needs torch and
diffusers): diffusers' ``DDIMScheduler`` (eta = 0) and ``EulerDiscreteScheduler`` run the exact
Gaussian-mixture eps model of the ``mix16d`` and ``mix2d`` testbeds from fixed noise. Here jdiff
runs the same cases on ``make_grid(schedule, spacing, n)`` and must agree to 1e-4 in float32.

DDIM on ``linspace`` is the exception: diffusers' DDIM step takes the previous timestep as
``t - 1000 // n``, which is not the next grid point on that spacing (diffusers issues 9261,
14357); jdiff reads it from the grid. :func:`test_ddim_linspace_documents_diffusers_offgrid_step`
shows the two differ by a non-trivial amount and that each is reproduced by a plain NumPy DDIM loop
that differs only in where it reads the previous timestep.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
import pytest

import jdiff
from jdiff.grids import make_grid

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TOL = 1e-4
TESTBEDS = ("mix16d", "mix2d")
NFES = (5, 10, 20)
DDIM_CASES = [(tb, sp, n) for tb in TESTBEDS for sp in ("trailing", "leading") for n in NFES]
EULER_CASES = [(tb, sp, n) for tb in TESTBEDS for sp in ("trailing", "leading") for n in NFES]
LINSPACE_CASES = [(tb, "linspace", n) for tb in TESTBEDS for n in NFES]

SCHEDULE = jdiff.schedules.vp_discrete()
SOLVERS = {"ddim": jdiff.solvers.get_solver("ddim"), "euler": jdiff.solvers.get_solver("euler")}


@functools.lru_cache(maxsize=None)
def fixture(kind: str):
    with np.load(os.path.join(FIXTURES, f"diffusers_{kind}.npz")) as f:
        return {k: f[k] for k in f.files}


@functools.lru_cache(maxsize=None)
def model_fn(testbed: str):
    """One closure per testbed: each new closure would compile ``jdiff.sample`` anew."""
    return jdiff.testbeds.get_testbed(testbed).model_fn(SCHEDULE)


@functools.lru_cache(maxsize=None)
def jitted_model_fn(testbed: str):
    return jax.jit(model_fn(testbed))


@functools.lru_cache(maxsize=None)
def run_jdiff(kind: str, testbed: str, spacing: str, n: int) -> np.ndarray:
    x_T = fixture(kind)[f"{testbed}__{spacing}__n{n}__x_T"]
    grid = make_grid(SCHEDULE, spacing, n)
    return np.asarray(jdiff.sample(model_fn(testbed), SCHEDULE, SOLVERS[kind], grid, x_T))


def case_id(case):
    return "{}-{}-n{}".format(*case)


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# --- schedule tables and metadata ------------------------------------------------------------


def test_fixture_metadata():
    for kind in ("schedule", "ddim", "euler"):
        f = fixture(kind)
        for key in ("diffusers_version", "torch_version", "model_precision"):
            assert str(f[key]), (kind, key)


def test_alphas_cumprod_bit_identical_to_pytorch():
    """jdiff's float32 table equals diffusers' (PyTorch's) bit for bit, betas included."""
    f = fixture("schedule")
    assert np.array_equal(jdiff.schedules.ddpm_betas(), f["betas"])
    ac = np.asarray(SCHEDULE.alphas_cumprod)
    assert ac.dtype == np.float32 and f["alphas_cumprod"].dtype == np.float32
    assert np.array_equal(ac, f["alphas_cumprod"])


@pytest.mark.parametrize("kind", ["ddim", "euler"])
def test_grids_match_diffusers_timesteps(kind):
    f = fixture(kind)
    spacings = ("trailing", "leading", "linspace") if kind == "ddim" else ("trailing", "leading")
    for tb in TESTBEDS:
        for sp in spacings:
            for n in NFES:
                grid = make_grid(SCHEDULE, sp, n)
                ts = f[f"{tb}__{sp}__n{n}__timesteps"]
                assert grid[-1] == 0.0 and grid.shape == (n + 1,)
                np.testing.assert_array_equal(np.round(grid[:-1] * 1000 - 1).astype(np.int64), ts)


# --- parity ----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", DDIM_CASES, ids=case_id)
def test_ddim_matches_diffusers(case):
    tb, sp, n = case
    f = fixture("ddim")
    key = f"{tb}__{sp}__n{n}__"
    np.testing.assert_array_equal(f[key + "x_T"], f[f"{tb}__noise"])  # init_noise_sigma = 1
    err = max_abs(run_jdiff("ddim", tb, sp, n), f[key + "x0"])
    assert err <= TOL, f"ddim {case}: max abs diff {err:.3g}"


@pytest.mark.parametrize("case", EULER_CASES, ids=case_id)
def test_euler_matches_diffusers(case):
    tb, sp, n = case
    f = fixture("euler")
    key = f"{tb}__{sp}__n{n}__"
    # The stored x-space start is noise * init_noise_sigma / sqrt(sigma_max^2 + 1): about
    # noise * sqrt(1 - abar_999) for trailing (init_noise_sigma = sigma_max) and noise for leading.
    ratio = f[key + "x_T"] / f[f"{tb}__noise"]
    if sp == "trailing":
        expected = np.sqrt(1.0 - float(SCHEDULE.alphas_cumprod[-1]))
    else:
        expected = 1.0
    np.testing.assert_allclose(ratio, expected, rtol=1e-6)
    err = max_abs(run_jdiff("euler", tb, sp, n), f[key + "x0"])
    assert err <= TOL, f"euler {case}: max abs diff {err:.3g}"


# --- DDIM on linspace: diffusers leaves the grid --------------------------------------------


def numpy_ddim(testbed: str, x_T, timesteps, prev_timesteps) -> np.ndarray:
    """Plain float32 DDIM (eta = 0) loop on the alphas_cumprod table; prev < 0 means abar = 1.

    The model is jdiff's exact eps at t = (timestep + 1) / 1000; the update is diffusers' formula
    ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps``, ``x0 = (x - sqrt(1 - abar) eps) /
    sqrt(abar)``. Only ``prev_timesteps`` decides where each step lands.
    """
    ac = np.asarray(SCHEDULE.alphas_cumprod)
    fn = jitted_model_fn(testbed)
    x = np.asarray(x_T, np.float32)
    one = np.float32(1.0)
    for t, p in zip(timesteps, prev_timesteps):
        a_t = ac[t]
        a_p = ac[p] if p >= 0 else one
        eps = np.asarray(fn(x, np.float32((t + 1) / 1000), None))
        x0 = (x - np.sqrt(one - a_t) * eps) / np.sqrt(a_t)
        x = np.sqrt(a_p) * x0 + np.sqrt(one - a_p) * eps
    return x


@pytest.mark.parametrize("case", LINSPACE_CASES, ids=case_id)
def test_ddim_linspace_documents_diffusers_offgrid_step(case):
    """jdiff follows the linspace grid; diffusers' DDIM steps to ``t - 1000 // n`` instead.

    (a) the two results differ by far more than the parity tolerance;
    (b) a NumPy DDIM loop whose previous timestep is the next grid point reproduces jdiff, and the
        same loop with diffusers' ``t - 1000 // n`` reproduces diffusers: the difference is that
        rule alone, not the model, the schedule table or the update formula.
    """
    tb, sp, n = case
    f = fixture("ddim")
    key = f"{tb}__{sp}__n{n}__"
    x_T, ref, ts, prev_diffusers = (f[key + k] for k in ("x_T", "x0", "timesteps", "prev_timesteps"))
    grid = make_grid(SCHEDULE, sp, n)
    prev_grid = np.round(grid[1:] * 1000 - 1).astype(np.int64)  # -1 for the final t = 0
    assert prev_grid[-1] == -1
    off_grid = prev_grid != prev_diffusers
    assert off_grid.sum() >= n - 2, (prev_grid, prev_diffusers)  # e.g. n=5: 749 vs 799, 500 vs 549

    x_jdiff = run_jdiff("ddim", tb, sp, n)
    gap = max_abs(x_jdiff, ref)
    assert gap > 100 * TOL, f"expected a clear difference, got {gap:.3g}"  # (a)

    assert max_abs(numpy_ddim(tb, x_T, ts, prev_grid), x_jdiff) <= TOL  # (b) on the grid
    assert max_abs(numpy_ddim(tb, x_T, ts, prev_diffusers), ref) <= TOL  # (b) diffusers' rule
