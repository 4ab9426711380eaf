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

**Guidance-aligned loss** (``guidance_loss='aligned'``; after Patel, Salamanca & Barba, "Bridging
the Gap: Addressing Discrepancies in Diffusion Model Training for Classifier-Free Guidance",
arXiv 2311.00938): instead of training the conditional and unconditional predictions separately,
train the classifier-free-guided combination itself,

    L = E [ w(t) * mean_d ( target - [(1 + s) F(x_t, c~) - s F(x_t, null)] )^2 ],

with ``s`` the guidance scale in the Ho & Salimans convention used throughout jdiff (``s = 0`` is
purely conditional; diffusers' ``guidance_scale = 1 + s``), ``c~`` the label after label dropout,
``F`` the network's own output (eps, x0 or v: the combination has weights summing to 1, so it is
the same in every prediction space) and ``w(t)`` the same weighting as the standard loss. Where a
label was dropped (``c~ = null``) the bracket is ``F(x_t, null)``: those examples get the standard
unconditional loss. The paper's method section was not consulted and no official code exists,
so this is an **unverified reconstruction** and its open details are options:
``align_scale`` (``s``), ``align_scale_sampling`` (``fixed``: ``s = align_scale``; ``uniform``:
``s ~ U(0, align_scale)`` per example), ``align_stop_grad`` (stop the gradient through the
unconditional branch ``F(x_t, null)``; default on) and ``align_mix`` (the loss is
``align_mix * L_standard + (1 - align_mix) * L_aligned``, ``L_standard`` the standard conditional
loss from the same forward pass). The conditional and unconditional predictions come from one
network call on the concatenated batch (2B examples), so a training step costs about twice the
standard loss's. ``metrics`` then also hold ``mse_cond``, the standard (conditional) MSE.

The EDM loss is ``denoising_loss(net, edm(), parameterization='edm', weighting='edm',
time_sampling='lognormal')``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from .network import apply_parameterized, check_parameterization, sampling_prediction
from .prediction import from_x0_eps

WEIGHTINGS = ("uniform", "snr", "min_snr", "edm")
TIME_SAMPLINGS = ("continuous", "discrete", "lognormal")
GUIDANCE_LOSSES = ("standard", "aligned")
ALIGN_SCALE_SAMPLINGS = ("fixed", "uniform")


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
    guidance_loss: str = "standard"  # or 'aligned' (train the CFG-guided prediction)
    align_scale: float = 1.0  # guidance scale w of the aligned loss (w = 0: purely conditional)
    align_scale_sampling: str = "fixed"  # 'fixed': w = align_scale; 'uniform': w ~ U(0, align_scale)
    align_stop_grad: bool = True  # stop the gradient through the unconditional branch
    align_mix: float = 0.0  # weight of the standard conditional loss mixed into the aligned one


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


def check_guidance_loss(cfg: LossConfig) -> bool:
    """Check the guidance-loss fields of ``cfg``; ``True`` for the aligned loss."""
    if cfg.guidance_loss not in GUIDANCE_LOSSES:
        raise ValueError(f"unknown guidance_loss {cfg.guidance_loss!r}; valid: {', '.join(GUIDANCE_LOSSES)}")
    if cfg.align_scale_sampling not in ALIGN_SCALE_SAMPLINGS:
        raise ValueError(f"unknown align_scale_sampling {cfg.align_scale_sampling!r}; valid: "
                         f"{', '.join(ALIGN_SCALE_SAMPLINGS)}")
    scale = float(cfg.align_scale)
    if not (math.isfinite(scale) and scale >= 0.0):
        raise ValueError(f"align_scale must be finite and non-negative (the CFG scale w, 0: purely "
                         f"conditional), got {cfg.align_scale}")
    mix = float(cfg.align_mix)
    if not 0.0 <= mix <= 1.0:  # also rejects nan
        raise ValueError(f"align_mix must be in [0, 1] (the weight of the standard loss), got {cfg.align_mix}")
    aligned = cfg.guidance_loss == "aligned"
    if aligned and cfg.null_label is None:
        raise ValueError("guidance_loss='aligned' needs a class-conditional network: give null_label "
                         "(the null class index) and labels batch['y']")
    return aligned


def denoising_loss(net_apply: Callable, schedule, config: LossConfig | None = None, **kwargs) -> Callable:
    """``loss_fn(params, batch, key) -> (loss, metrics)`` for denoising score matching.

    Args:
      net_apply: network function ``(params, x, c_noise, y, train, key) -> out``
        (:func:`jdiff.network.flax_net`).
      schedule: a :mod:`jdiff.schedules` schedule.
      config: a :class:`LossConfig`; keyword arguments override its fields.

    ``batch`` is a dict with ``"x"`` (B, ...) data and optionally ``"y"`` (B,) int labels.
    ``metrics`` holds ``loss`` and the unweighted ``mse`` of the target; with
    ``guidance_loss='aligned'`` (labels required) ``mse`` is that of the guided prediction and
    ``mse_cond`` that of the conditional one, and the network is called once on a batch of 2B.
    """
    cfg = (config or LossConfig())._replace(**kwargs)
    check_parameterization(cfg.parameterization)
    if cfg.weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {cfg.weighting!r}; valid: {', '.join(WEIGHTINGS)}")
    if cfg.label_dropout > 0.0 and cfg.null_label is None:
        raise ValueError("label_dropout > 0 needs null_label (the null class index)")
    aligned = check_guidance_loss(cfg)
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
        if aligned:
            if y is None:
                raise ValueError("guidance_loss='aligned' needs labels: the batch has no 'y'")
            return _aligned_loss(params, key, x0, y, t, alpha, sigma, eps, x_t, k_net)
        pred = apply_parameterized(net_apply, params, schedule, cfg.parameterization, x_t, t, y,
                                   train=True, key=k_net)
        target = from_x0_eps(x0, eps, alpha, sigma, prediction)
        mse = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)),
                       axis=tuple(range(1, x0.ndim)))
        w = target_weight(cfg.weighting, prediction, schedule.log_snr(t).astype(jnp.float32),
                          cfg.min_snr_gamma, sigma_data, schedule.alpha(t).astype(jnp.float32))
        loss = jnp.mean(w * mse)
        return loss, {"loss": loss, "mse": jnp.mean(mse)}

    def _aligned_loss(params, key, x0, y, t, alpha, sigma, eps, x_t, k_net):
        # one network call on [x_t, x_t] with labels [y, null]: conditional and unconditional
        b = x0.shape[0]
        bshape = (b,) + (1,) * (x0.ndim - 1)
        null = jnp.full_like(y, cfg.null_label)
        out = apply_parameterized(net_apply, params, schedule, cfg.parameterization,
                                  jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]),
                                  jnp.concatenate([y, null]), train=True, key=k_net)
        pred_c, pred_u = out[:b].astype(jnp.float32), out[b:].astype(jnp.float32)
        if cfg.align_stop_grad:
            pred_u = jax.lax.stop_gradient(pred_u)
        if cfg.align_scale_sampling == "uniform":
            scale = cfg.align_scale * jax.random.uniform(jax.random.fold_in(key, 1), (b,), jnp.float32)
        else:
            scale = jnp.full((b,), cfg.align_scale, jnp.float32)
        scale = jnp.where(y == cfg.null_label, 0.0, scale).reshape(bshape)  # dropped: standard loss
        guided = (1.0 + scale) * pred_c - scale * pred_u
        target = from_x0_eps(x0, eps, alpha, sigma, prediction).astype(jnp.float32)
        axes = tuple(range(1, x0.ndim))
        mse = jnp.mean(jnp.square(guided - target), axis=axes)
        mse_cond = jnp.mean(jnp.square(pred_c - target), axis=axes)
        if cfg.align_mix == 0.0:
            per_example = mse
        elif cfg.align_mix == 1.0:
            per_example = mse_cond
        else:
            per_example = cfg.align_mix * mse_cond + (1.0 - cfg.align_mix) * mse
        w = target_weight(cfg.weighting, prediction, schedule.log_snr(t).astype(jnp.float32),
                          cfg.min_snr_gamma, sigma_data, schedule.alpha(t).astype(jnp.float32))
        loss = jnp.mean(w * per_example)
        return loss, {"loss": loss, "mse": jnp.mean(mse), "mse_cond": jnp.mean(mse_cond)}

    return loss_fn
