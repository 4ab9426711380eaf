"""Parity of jdiff's DDRM and DPS with an independent implementation: deepinv 0.5.0's
``deepinv.sampling.DDRM`` and ``deepinv.sampling.DPS``, on a small problem with the same exact
Gaussian-mixture denoiser and the same noises (``tests/fixtures/restoration_deepinv.npz``, written
by ``python tests/fixtures/make_restoration_fixtures.py``; torch and deepinv are needed only
there). Problem: a 2-component Gaussian mixture on R^8, a (5, 8) matrix operator with singular
values 1.6 ... 0.35, 3 measurements, jdiff's ``vp_linear`` schedule (= deepinv's VP SDE, beta 0.1
-> 20), 10 steps, float64.

**How the conventions map** (details in the generator's docstring):

* DDRM. deepinv runs on VE noise levels ``sigmas`` with its denoiser ``D(x, sigma)``; it is given
  ``sigma_hat(t)`` of jdiff's grid (logsnr, ending at 0) and the SVD factors of jdiff's
  ``Matrix``. Its draws are fed ``sqrt(2) z`` (deepinv divides every draw by sqrt(2), which is in
  neither the paper nor the official code), z the draws of jdiff's documented streams. Then
  jdiff's output equals deepinv's to float64 rounding (observed 4e-15; asserted 1e-12; jdiff's VP
  state ``alpha_t V xbar`` is ``alpha_t`` times deepinv's VE state ``V xbar``). deepinv returns
  ``D(V xbar, sigmas[-1])``, one more denoiser call at sigma = 0 than jdiff's (and the official
  code's) step count; the exact denoiser is the identity there.
* One convention differs: deepinv counts ``s_i sigma_t >= sigma_y`` as "before" (jdiff and the
  official code: ``>``; equality falls under "missing"). It matters only at ``sigma_y = 0`` on the
  final step (sigma = 0): deepinv returns the measured spectral coordinates as ``ybar`` (exactly
  consistent), jdiff (as the official code) the model's data prediction ``x0bar``. Tested as such
  (:func:`test_ddrm_noiseless_last_step_convention`). deepinv also decides the measured set once,
  as ``s_i > sigma_y`` (correct only when its first sigma is 1; jdiff: ``s_i sigma_T > sigma_y``):
  equal here, since every s_i > sigma_y.
* DPS. deepinv's DPS puts ``-weight * grad_x ||A D(x) - y||`` into the score of an ancestral DDPM
  step, so its displacement is ``k_i * weight * grad`` with the step's score coefficient k_i; the
  official DPS (jdiff's ``dps_sample``) subtracts ``zeta * grad`` after the step. (a) With
  deepinv's weight set to ``zeta / k_i`` before each step, deepinv is the official DPS and equals
  ``dps_sample``; (b) deepinv's native constant weight lambda equals jdiff's ``dps_guidance``
  transform (a score term) under the ``ddpm`` solver with ``zeta = lambda k_i``, checked one step
  at a time from deepinv's states. deepinv's k_i equals jdiff's ``ddim_score_coefficient``
  (eta = 1). deepinv casts the denoiser's input to float32 (the rest is float64), hence an
  absolute tolerance of 1e-7 there (observed 1.4e-8 on outputs of size 0.4).

:func:`test_fixture_premises` checks that jax still draws the stored noises from jdiff's
documented key streams (if jax's random bits ever change, regenerate the fixture) and that
jdiff's exact mixture denoiser equals the torch one given to deepinv (to 1e-13).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff.restoration import guided as G
from jdiff.restoration import projection as P
from jdiff.restoration.operators import Matrix
from jdiff.schedules import vp_linear
from jdiff.solvers import get_solver

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "restoration_deepinv.npz")
N_STEPS = 10


@pytest.fixture(scope="module")
def fx():
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def setup(fx):
    """(schedule, exact mixture model (eps), mixture, operator), float64."""
    with jax.enable_x64(True):
        sch = vp_linear()
        mix = jdiff.testbeds.from_arrays(fx["weights"], fx["means"], covs=fx["covs"],
                                         dtype=jnp.float64)
        op = Matrix.create(fx["A"], dtype=jnp.float64)
        if not (np.allclose(op.Vm, fx["Vm"], atol=1e-12) and np.allclose(op.Ur, fx["Ur"], atol=1e-12)):
            # another LAPACK may flip singular-vector signs: the noises are drawn in spectral
            # coordinates, so use the stored factors (the same operator)
            op = dataclasses.replace(op, Ur=jnp.asarray(fx["Ur"]), Vm=jnp.asarray(fx["Vm"]))
        return sch, mix.model_fn(sch), mix, op


def _normal(key, n_rows=3, dim=8):
    return np.asarray(jax.random.normal(key, (n_rows, dim), jnp.float64))


def test_fixture_premises(fx, setup):
    """The stored noises are jdiff's documented streams (jax reproduces them), and jdiff's exact
    mixture denoiser equals the torch one given to deepinv."""
    sch, _, mix, op = setup
    with jax.enable_x64(True):
        for case in ("ddrm_a", "ddrm_b", "ddrm_c"):
            key = jax.random.key(int(fx[f"{case}__seed"]))
            np.testing.assert_array_equal(_normal(jax.random.fold_in(key, 0)), fx[f"{case}__z_init"])
            ks = jax.random.fold_in(key, 1)
            for i in (0, N_STEPS - 1):
                np.testing.assert_array_equal(_normal(jax.random.fold_in(ks, i)), fx[f"{case}__z_steps"][i])
        key = jax.random.key(int(fx["dps_a__seed"]))
        for i in (0, N_STEPS - 2):
            np.testing.assert_array_equal(_normal(jax.random.fold_in(jax.random.fold_in(key, 0), i)),
                                          fx["dps_a__z"][i])
        # the denoisers: x = x0 + sigma_hat n (VE) is alpha x0 + sigma n in VP
        x0_fn = jax.jit(mix.x0)
        x0 = []
        for x, s in zip(fx["probe_x"], fx["probe_sigma"]):
            a = 1.0 / np.sqrt(1.0 + s * s)
            x0.append(np.asarray(x0_fn(jnp.asarray(a * x[None]), a, a * s))[0])
    np.testing.assert_allclose(np.stack(x0), fx["probe_x0"], rtol=0, atol=1e-13)
    np.testing.assert_allclose(np.asarray(op.s), fx["s"], rtol=0, atol=1e-13)


def _ddrm(fx, setup, case, grid):
    sch, model, _, op = setup
    g = lambda k: fx[f"{case}__{k}"]  # noqa: E731
    with jax.enable_x64(True):
        out = P.ddrm_sample(model, sch, op, jnp.asarray(g("y")), jnp.asarray(grid),
                            jax.random.key(int(g("seed"))), sigma_y=float(g("sigma_y")),
                            eta=float(g("eta")), eta_b=float(g("eta_b")))
    assert out.dtype == jnp.float64
    return np.asarray(out)


@pytest.mark.parametrize("case", ["ddrm_a", "ddrm_b"])
def test_ddrm_matches_deepinv_float64(fx, setup, case):
    """sigma_y = 0.1 (all three DDRM cases occur), (eta, eta_b) = (0.85, 1) and (0.5, 0.7):
    jdiff's output equals deepinv's to 1e-12 (every step's noise enters it)."""
    grid = fx["ddrm_grid"]
    # the noise levels handed to deepinv are jdiff's sigma_hat on the grid
    np.testing.assert_allclose(fx[f"{case}__sigmas"], np.r_[_vp(grid[:-1])[2], 0.0],
                               rtol=1e-13, atol=0)
    out = _ddrm(fx, setup, case, grid)
    np.testing.assert_allclose(out, fx[f"{case}__out"], rtol=0, atol=1e-12)


def _vp(t):
    """(alpha, sigma, sigma_hat) of the VP SDE beta 0.1 -> 20 in NumPy (deepinv's B(t); jdiff's
    vp_linear)."""
    t = np.asarray(t, np.float64)
    alpha = np.exp(-0.5 * (0.1 * t + 0.5 * t**2 * (20.0 - 0.1)))
    sigma = np.sqrt(1.0 - alpha**2)
    return alpha, sigma, sigma / alpha


def test_ddrm_noiseless_last_step_convention(fx, setup):
    """sigma_y = 0: on the last step (sigma -> 0) the unmeasured spectral coordinates agree, and
    the measured ones are deepinv's ybar (its ``>=``) and jdiff's data prediction x0bar at
    deepinv's state one step earlier (the official code's ``>``: equality is "missing", with
    eta * 0 noise), so the trajectories agree up to the last step."""
    case, grid = "ddrm_c", fx["ddrm_grid"]
    sch, model, _, op = setup
    out = _ddrm(fx, setup, case, grid)
    V, s = fx["Vm"], fx["s"]
    measured = s > 0
    bar_j, bar_d = out @ V, fx[f"{case}__out"] @ V
    np.testing.assert_allclose(bar_j[:, ~measured], bar_d[:, ~measured], rtol=0, atol=1e-12)
    ybar = (fx[f"{case}__y"] @ fx["Ur"]) / s[measured]
    np.testing.assert_allclose(bar_d[:, measured], ybar, rtol=0, atol=1e-12)
    k = N_STEPS - 1
    a, sg, _ = _vp(grid[k])
    state = a * fx[f"{case}__states_ve"][k]  # deepinv's state at grid[k], VP scale
    with jax.enable_x64(True):
        eps = np.asarray(jax.jit(model)(jnp.asarray(state), jnp.asarray(grid[k]), None))
    x0 = (state - sg * eps) / a
    np.testing.assert_allclose(bar_j[:, measured], (x0 @ V)[:, measured], rtol=0, atol=1e-12)
    assert np.abs(bar_j[:, measured] - ybar).max() > 1e-3  # the convention is visible here


def test_dps_matches_deepinv(fx, setup):
    """The official DPS (zeta = 0.5, 10 DDPM steps on deepinv's timesteps linspace(1, 0, 11)):
    jdiff's ``dps_sample`` equals deepinv's DPS with weight zeta / k_i on each step; deepinv's
    k_i is jdiff's ``ddim_score_coefficient`` (eta = 1)."""
    sch, model, _, op = setup
    t = fx["dps_a__timesteps"]
    a, sg, _ = _vp(t)
    a[-1], sg[-1] = 1.0, 0.0
    with jax.enable_x64(True):
        k = jax.jit(G.ddim_score_coefficient, static_argnums=4)(a[:-1], sg[:-1], a[1:], sg[1:], 1.0)
        np.testing.assert_allclose(np.asarray(k), fx["dps_a__k"], rtol=1e-12)
        run = lambda zeta: np.asarray(G.dps_sample(  # noqa: E731
            model, sch, op, jnp.asarray(fx["dps_a__y"]), jnp.asarray(t),
            jax.random.key(int(fx["dps_a__seed"])), zeta=zeta, x_T=jnp.asarray(fx["dps_a__x_T"])))
        out = run(float(fx["dps_a__zeta"]))
        unguided = run(0.0)
    ref = fx["dps_a__out"]
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-7)
    np.testing.assert_allclose(fx["dps_a__traj"][-1], ref, rtol=0, atol=0)
    assert np.abs(unguided - ref).max() > 1e-2  # the guidance is a visible part of the output


def test_dps_guidance_matches_deepinv_native_weight(fx, setup):
    """deepinv's own DPS (constant weight lambda = 0.05 on the score): each step, from deepinv's
    state, equals ``jdiff.sample`` of ``dps_guidance(zeta = lambda k_i)`` under ``ddpm`` on the
    one-step grid [t_i, t_i+1] (noise from ``key = fold_in(seed, i)``). The last step (to t = 0,
    no noise) is left out: a grid ending at 0 compiles another program, and that step is
    the same update as in :func:`test_dps_matches_deepinv`."""
    sch, model, _, op = setup
    t, traj, lam = fx["dps_b__timesteps"], fx["dps_b__traj"], float(fx["dps_b__lambda"])
    ks = fx["dps_b__k"]
    key = jax.random.key(int(fx["dps_b__seed"]))
    solver = get_solver("ddpm")
    errs = []
    with jax.enable_x64(True):
        args = G.measurement_args(op, jnp.asarray(fx["dps_b__y"]))
        for i in range(N_STEPS - 1):  # the last (noiseless) step: one more compile
            g2 = jnp.asarray(t[i: i + 2])
            guided = G.dps_guidance(model, sch, jnp.asarray(lam * ks[i]), g2, eta=1.0)
            x = jdiff.sample(guided, sch, solver, g2, jnp.asarray(traj[i]),
                             jax.random.fold_in(key, i), args=args)
            errs.append(np.abs(np.asarray(x) - traj[i + 1]).max())
    assert max(errs) < 1e-7, errs
