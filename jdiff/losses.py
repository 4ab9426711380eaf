"""Denoising score-matching losses as pure functions ``loss(params, batch, key) -> (loss, metrics)``.

For data ``x_0``, noise ``eps ~ N(0, I)`` and a noise level drawn per sample,
``x_t = alpha_t x_0 + sigma_t eps``; the network (through a parameterization of
:mod:`jdiff.network`) predicts its target ``eps``, ``x_0`` or ``v = alpha eps - sigma x_0`` and the
loss is the weighted mean squared error

    L = E_{t, x_0, eps} [ w(t) * mean_d (pred - target)^2 ].

**Weightings** are given as the weight they put on the *data* error ``|x0_hat - x_0|^2`` (the
common currency: ``|eps_hat - eps|^2 = SNR |x0_hat - x_0|^2`` and
``|v_hat - v|^2 = ((alpha^2 + sigma^2)^2 / sigma^2) |x0_hat - x_0|^2``, which is
``(1 + SNR) |x0_hat - x_0|^2`` on VP schedules, with ``SNR = alpha^2 / sigma^2``) and converted
to a weight on the network's own target, so ``weighting='uniform'`` is the plain MSE of that target:

* ``uniform``: plain MSE of the network's own target (DDPM's "simple" loss for eps);
* ``snr``: data weight ``SNR`` (equals uniform eps-MSE, whatever the parameterization);
* ``min_snr``: data weight ``min(SNR, gamma)`` (Min-SNR-gamma, Hang et al. 2023, gamma = 5);
* ``edm``: data weight ``(s^2 + sd^2) / (s sd)^2`` with ``s = sigma / alpha`` (Karras et al.
  2022, Eq. 8 / Table 1), which makes the preconditioned network's effective target unit-weighted.

**Noise levels** (``time_sampling``): ``continuous`` draws ``t ~ U[t_min, t_max]`` (default on VP
schedules); ``discrete`` draws the DDPM table index ``k ~ U{0..N-1}`` and ``t = (k+1)/N``
(``vp_discrete`` only); ``lognormal`` draws ``log s ~ N(p_mean, p_std^2)`` (EDM, defaults -1.2 and
1.2) and maps ``s`` to the schedule's time through its log-SNR (default on sigma schedules).

**Classifier-free guidance**: with ``label_dropout = p`` each label is replaced by the null class
``null_label`` with probability ``p`` (Ho & Salimans 2022), so one network learns both the
conditional and the unconditional model.

The EDM loss is ``denoising_loss(net, edm(), parameterization='edm', weighting='edm',
time_sampling='lognormal')``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from .network import apply_parameterized, check_parameterization, sampling_prediction
from .prediction import from_x0_eps

WEIGHTINGS = ("uniform", "snr", "min_snr", "edm")
TIME_SAMPLINGS = ("continuous", "discrete", "lognormal")


class LossConfig(NamedTuple):
    """Static description of a denoising loss (see the module docstring)."""

    parameterization: str = "eps"
    weighting: str = "uniform"
    time_sampling: str | None = None  # None: 'lognormal' on sigma schedules, else 'continuous'
    min_snr_gamma: float = 5.0
    p_mean: float = -1.2
    p_std: float = 1.2
    label_dropout: float = 0.0
    null_label: int | None = None


def _resolve_time_sampling(schedule, kind):
    if kind is None:
        return "lognormal" if getattr(schedule, "kind", "vp") == "sigma" else "continuous"
    if kind not in TIME_SAMPLINGS:
        raise ValueError(f"unknown time_sampling {kind!r}; valid: {', '.join(TIME_SAMPLINGS)}")
    if kind == "discrete" and not hasattr(schedule, "num_train_timesteps"):
        raise ValueError("time_sampling='discrete' needs a discrete schedule (vp_discrete)")
    return kind


def sample_times(schedule, key, n: int, kind: str, p_mean: float = -1.2, p_std: float = 1.2):
    """``n`` training times of ``schedule`` drawn by rule ``kind`` (float32, shape (n,))."""
    if kind == "continuous":
        return jax.random.uniform(key, (n,), jnp.float32, schedule.t_min, schedule.t_max)
    if kind == "discrete":
        num = schedule.num_train_timesteps
        return (jax.random.randint(key, (n,), 0, num) + 1).astype(jnp.float32) / num
    log_s = p_mean + p_std * jax.random.normal(key, (n,), jnp.float32)
    t = schedule.t_of_log_snr(-log_s)
    return jnp.clip(t, schedule.t_min, schedule.t_max)


def data_weight(weighting: str, log_snr, gamma: float = 5.0, sigma_data: float = 0.5):
    """Weight on the data error ``|x0_hat - x_0|^2`` at ``log_snr`` (see module docstring).

    ``log_snr`` is jdiff's ``lambda = log(alpha / sigma)`` (DPM-Solver's convention), so
    ``SNR = alpha^2 / sigma^2 = exp(2 lambda)``.
    """
    snr = jnp.exp(2.0 * log_snr)
    if weighting == "uniform":
        raise ValueError("'uniform' is defined on the network's own target; use target_weight")
    if weighting == "snr":
        return snr
    if weighting == "min_snr":
        return jnp.minimum(snr, gamma)
    if weighting == "edm":
        s2 = jnp.exp(-2.0 * log_snr)  # (sigma / alpha)^2
        return (s2 + sigma_data**2) / (s2 * sigma_data**2)
    raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")


def target_weight(weighting: str, prediction: str, log_snr, gamma: float = 5.0,
                  sigma_data: float = 0.5, alpha=None):
    """Weight on the MSE of target ``prediction`` that realises ``weighting`` (data-space weights).

    ``log_snr`` is ``lambda = log(alpha / sigma)``; ``SNR = exp(2 lambda)``.

    ``|eps err|^2 = SNR |x0 err|^2``, and since ``x0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2)``
    on any schedule, ``|v err|^2 = ((alpha^2 + sigma^2)^2 / sigma^2) |x0 err|^2
    = alpha^2 (2 cosh lambda)^2 |x0 err|^2``, so the data weight is divided by ``SNR`` resp. that
    factor. ``alpha`` (same shape as ``log_snr``) is needed for ``v`` only; ``None`` means a VP
    schedule (``alpha^2 = sigmoid(2 lambda)``, where the factor is ``1 + SNR``).
    """
    if weighting == "uniform":
        return jnp.ones_like(log_snr)
    w = data_weight(weighting, log_snr, gamma, sigma_data)
    if prediction == "eps":
        return w * jnp.exp(-2.0 * log_snr)
    if prediction == "v":
        if alpha is None:
            return w / (1.0 + jnp.exp(2.0 * log_snr))
        return w / (jnp.square(alpha) * jnp.square(2.0 * jnp.cosh(log_snr)))
    return w


def drop_labels(key, y, p: float, null_label: int):
    """Replace each label by ``null_label`` with probability ``p`` (classifier-free guidance)."""
    if p <= 0.0:
        return y
    drop = jax.random.bernoulli(key, p, y.shape)
    return jnp.where(drop, jnp.asarray(null_label, y.dtype), y)


def denoising_loss(net_apply: Callable, schedule, config: LossConfig | None = None, **kwargs) -> Callable:
    """``loss_fn(params, batch, key) -> (loss, metrics)`` for denoising score matching.

    Args:
      net_apply: network function ``(params, x, c_noise, y, train, key) -> out``
        (:func:`jdiff.network.flax_net`).
      schedule: a :mod:`jdiff.schedules` schedule.
      config: a :class:`LossConfig`; keyword arguments override its fields.

    ``batch`` is a dict with ``"x"`` (B, ...) data and optionally ``"y"`` (B,) int labels.
    ``metrics`` holds ``loss`` and the unweighted ``mse`` of the target.
    """
    cfg = (config or LossConfig())._replace(**kwargs)
    check_parameterization(cfg.parameterization)
    if cfg.weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {cfg.weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    if cfg.label_dropout > 0.0 and cfg.null_label is None:
        raise ValueError("label_dropout > 0 needs null_label (the null class index)")
    time_kind = _resolve_time_sampling(schedule, cfg.time_sampling)
    prediction = sampling_prediction(cfg.parameterization)
    sigma_data = getattr(schedule, "sigma_data", 0.5)

    def loss_fn(params, batch, key):
        x0 = batch["x"]
        y = batch.get("y")
        b = x0.shape[0]
        k_t, k_eps, k_drop, k_net = jax.random.split(key, 4)
        t = sample_times(schedule, k_t, b, time_kind, cfg.p_mean, cfg.p_std)
        bshape = (b,) + (1,) * (x0.ndim - 1)
        alpha = schedule.alpha(t).astype(x0.dtype).reshape(bshape)
        sigma = schedule.sigma(t).astype(x0.dtype).reshape(bshape)
        eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
        x_t = alpha * x0 + sigma * eps
        if y is not None and cfg.label_dropout > 0.0:
            y = drop_labels(k_drop, y, cfg.label_dropout, cfg.null_label)
        pred = apply_parameterized(net_apply, params, schedule, cfg.parameterization, x_t, t, y,
                                   train=True, key=k_net)
        target = from_x0_eps(x0, eps, alpha, sigma, prediction)
        mse = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)),
                       axis=tuple(range(1, x0.ndim)))
        w = target_weight(cfg.weighting, prediction, schedule.log_snr(t).astype(jnp.float32),
                          cfg.min_snr_gamma, sigma_data, schedule.alpha(t).astype(jnp.float32))
        loss = jnp.mean(w * mse)
        return loss, {"loss": loss, "mse": jnp.mean(mse)}

    return loss_fn
