"""First-order samplers: DDIM (eta), DDPM ancestral, Euler and Euler ancestral.

Notation: a step goes from t (alpha_t, sigma_t) to s < t (alpha_s, sigma_s);
``x0, eps = denoise(x_t)``.

* DDIM (Song et al. 2021, eq. 12), generalised to any (alpha, sigma):
  ``x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z`` with
  ``c^2 = eta^2 sigma_s^2 (sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2) / sigma_t^2``.
  eta = 0 is the deterministic DDIM ODE step; eta = 1 is exactly the DDPM ancestral step with the
  posterior ("fixed small") variance, which is how ``ddpm`` is defined here.
* Euler (Karras et al. 2022, k-diffusion) on the scaled variable ``x_hat = x / alpha`` against
  ``sigma_hat = sigma / alpha``: ``x_hat_s = x_hat_t + (sigma_hat_s - sigma_hat_t) eps``. On the
  same grid this is mathematically the DDIM (eta = 0) step; it is kept separate because it is
  computed in the sigma_hat form that k-diffusion and diffusers' ``EulerDiscreteScheduler`` use.
* Euler ancestral (k-diffusion ``sample_euler_ancestral``): in sigma_hat,
  ``sigma_up = min(sigma_hat_s, eta sqrt(sigma_hat_s^2 (sigma_hat_t^2 - sigma_hat_s^2) / sigma_hat_t^2))``,
  ``sigma_down = sqrt(sigma_hat_s^2 - sigma_up^2)``, an Euler step to sigma_down, then
  ``sigma_up z`` fresh noise.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .base import Evaluation, Solver, State, step_key


@dataclasses.dataclass(frozen=True)
class DDIM(Solver):
    """DDIM with stochasticity ``eta`` (0: deterministic ODE sampler; 1: DDPM ancestral)."""

    eta: float = 0.0
    label: str | None = None

    def default_name(self) -> str:
        return "ddim" if self.eta == 0.0 else f"ddim_eta{self.eta:g}"

    def step(self, denoise, state, grid, i, to_zero=False):
        t, a_t, s_t = grid.t[i], grid.alpha[i], grid.sigma[i]
        a_s, s_s = grid.alpha[i + 1], grid.sigma[i + 1]
        x0, eps = denoise(state.x, t, a_t, s_t)
        out = (Evaluation(x0, eps),)
        if self.eta == 0.0 or to_zero:  # at sigma_s = 0 the noise has weight 0: no draw
            return State(x=a_s * x0 + s_s * eps, key=state.key), out
        r = a_t / a_s * s_s
        c2 = self.eta**2 * s_s**2 * jnp.maximum(s_t**2 - r**2, 0.0) / s_t**2
        c = jnp.sqrt(c2)
        z = jax.random.normal(step_key(state, i), state.x.shape, state.x.dtype)
        x = a_s * x0 + jnp.sqrt(jnp.maximum(s_s**2 - c2, 0.0)) * eps + c * z
        return State(x=x, key=state.key), out


def ddim(eta: float = 0.0, name: str | None = None) -> DDIM:
    """DDIM with stochasticity ``eta`` (0: deterministic ODE sampler; 1: DDPM ancestral)."""
    return DDIM(eta=float(eta), label=name)


def ddpm() -> DDIM:
    """DDPM ancestral sampling (Ho et al. 2020) with the posterior variance: DDIM at eta = 1."""
    return DDIM(eta=1.0, label="ddpm")


@dataclasses.dataclass(frozen=True)
class Euler(Solver):
    """Euler on the probability-flow ODE in the (x / alpha, sigma / alpha) variables."""

    label: str | None = None

    def step(self, denoise, state, grid, i, to_zero=False):  # noqa: ARG002
        t, a_t, s_t = grid.t[i], grid.alpha[i], grid.sigma[i]
        x0, eps = denoise(state.x, t, a_t, s_t)
        x_hat = state.x / a_t + (grid.sigma_hat[i + 1] - grid.sigma_hat[i]) * eps
        return State(x=grid.alpha[i + 1] * x_hat, key=state.key), (Evaluation(x0, eps),)


def euler() -> Euler:
    """Euler on the probability-flow ODE in the (x / alpha, sigma / alpha) variables."""
    return Euler()


@dataclasses.dataclass(frozen=True)
class EulerAncestral(Solver):
    """Euler ancestral sampler (k-diffusion), stochastic with ``eta`` in [0, 1]."""

    eta: float = 1.0
    label: str | None = None

    def default_name(self) -> str:
        return "euler_ancestral"

    def step(self, denoise, state, grid, i, to_zero=False):
        t, a_t, s_t = grid.t[i], grid.alpha[i], grid.sigma[i]
        x0, eps = denoise(state.x, t, a_t, s_t)
        out = (Evaluation(x0, eps),)
        sh_t, sh_s = grid.sigma_hat[i], grid.sigma_hat[i + 1]
        if to_zero:  # sigma_s = 0: up = down = 0, the Euler step to the data prediction, no draw
            return State(x=grid.alpha[i + 1] * (state.x / a_t - sh_t * eps), key=state.key), out
        up = jnp.minimum(sh_s, self.eta * jnp.sqrt(sh_s**2 * (sh_t**2 - sh_s**2) / sh_t**2))
        down = jnp.sqrt(jnp.maximum(sh_s**2 - up**2, 0.0))
        z = jax.random.normal(step_key(state, i), state.x.shape, state.x.dtype)
        x_hat = state.x / a_t + (down - sh_t) * eps + up * z
        return State(x=grid.alpha[i + 1] * x_hat, key=state.key), out


def euler_ancestral(eta: float = 1.0) -> EulerAncestral:
    """Euler ancestral sampler (k-diffusion), stochastic with ``eta`` in [0, 1]."""
    return EulerAncestral(eta=float(eta))
