"""Denoising losses: weighting conversions, time sampling, label dropout, EDM preconditioning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import losses, network, schedules
from jdiff.prediction import edm_scalings, to_x0_eps


def _eps_net(params, x, c_noise, y=None, train=False, key=None):
    """A fixed nonlinear 'network' predicting eps (params: a scale)."""
    c = jnp.broadcast_to(jnp.reshape(c_noise, (-1,) + (1,) * (x.ndim - 1)) if jnp.ndim(c_noise) else c_noise, x.shape)
    return params["a"] * jnp.tanh(x + 1e-3 * c)


def _as(kind, schedule):
    """The same model as _eps_net, expressed as a ``kind``-prediction network."""

    def net(params, x, c_noise, y=None, train=False, key=None):
        eps = _eps_net(params, x, c_noise)
        # invert network.noise_conditioning: 1000 t (VP) or log(sigma) / 4 (sigma schedules)
        t = schedule.t_of_log_snr(-4.0 * c_noise) if schedule.kind == "sigma" else c_noise / 1000.0
        a = schedule.alpha(t).reshape(-1, 1)
        s = schedule.sigma(t).reshape(-1, 1)
        x0 = (x - s * eps) / a
        return {"x0": x0, "v": a * eps - s * x0}[kind]

    return net


@pytest.mark.parametrize("weighting", ["snr", "min_snr"])
@pytest.mark.parametrize("kind,schedule", [("x0", "vp_linear"), ("v", "vp_linear"), ("v", "ve"),
                                           ("v", "edm")])
def test_weighting_is_defined_on_data_error(kind, schedule, weighting):
    """The same model trained as eps / x0 / v with the same data weighting has the same loss
    (v on VE/EDM too, where alpha^2 + sigma^2 != 1)."""
    sched = schedules.get_schedule(schedule)
    x = jax.random.normal(jax.random.key(0), (256, 3))
    params, key = {"a": 0.7}, jax.random.key(1)
    ref, _ = losses.denoising_loss(_eps_net, sched, parameterization="eps", weighting=weighting)(params, {"x": x}, key)
    got, _ = losses.denoising_loss(_as(kind, sched), sched, parameterization=kind, weighting=weighting)(
        params, {"x": x}, key)
    np.testing.assert_allclose(float(got), float(ref), rtol=2e-4)


def test_uniform_is_plain_mse_and_snr_equals_uniform_eps():
    sched = schedules.vp_linear()
    x = jax.random.normal(jax.random.key(0), (128, 4))
    params, key = {"a": 0.3}, jax.random.key(5)
    uni, m = losses.denoising_loss(_eps_net, sched, weighting="uniform")(params, {"x": x}, key)
    snr, _ = losses.denoising_loss(_eps_net, sched, weighting="snr")(params, {"x": x}, key)
    np.testing.assert_allclose(float(uni), float(m["mse"]), rtol=1e-6)
    np.testing.assert_allclose(float(snr), float(uni), rtol=1e-5)
    # and it is the MSE of eps recomputed by hand with the same draws
    k_t, k_eps, _, _ = jax.random.split(key, 4)
    t = jax.random.uniform(k_t, (128,), jnp.float32, sched.t_min, sched.t_max)
    eps = jax.random.normal(k_eps, x.shape)
    a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    pred = _eps_net(params, a * x + s * eps, 1000.0 * t)
    np.testing.assert_allclose(float(uni), float(jnp.mean((pred - eps) ** 2)), rtol=1e-5)


def test_min_snr_weights():
    snr = jnp.array([0.1, 1.0, 5.0, 50.0])
    lam = 0.5 * jnp.log(snr)  # jdiff's log_snr is log(alpha / sigma)
    np.testing.assert_allclose(losses.target_weight("min_snr", "eps", lam), jnp.minimum(snr, 5.0) / snr, rtol=1e-6)
    np.testing.assert_allclose(losses.target_weight("min_snr", "x0", lam), jnp.minimum(snr, 5.0), rtol=1e-6)
    np.testing.assert_allclose(losses.target_weight("min_snr", "v", lam), jnp.minimum(snr, 5.0) / (snr + 1), rtol=1e-6)
    alpha_vp = jnp.sqrt(snr / (1.0 + snr))  # the general v factor reduces to 1 + SNR on VP
    np.testing.assert_allclose(losses.target_weight("min_snr", "v", lam, alpha=alpha_vp),
                               jnp.minimum(snr, 5.0) / (snr + 1), rtol=1e-5)


def test_edm_loss_is_unit_weighted_in_network_space():
    """EDM: weight lambda(s) on |D - x0|^2 equals the plain MSE of the raw network vs its target."""
    sched = schedules.edm()
    x = 0.5 * jax.random.normal(jax.random.key(0), (256, 2))
    key = jax.random.key(3)

    def raw(params, x_in, c_noise, y=None, train=False, key=None):
        return params["a"] * jnp.sin(x_in) + 0.1 * jnp.reshape(c_noise, (-1, 1))

    params = {"a": 0.9}
    loss, _ = losses.denoising_loss(raw, sched, parameterization="edm", weighting="edm")(params, {"x": x}, key)
    k_t, k_eps, _, _ = jax.random.split(key, 4)
    t = losses.sample_times(sched, k_t, 256, "lognormal")
    sig = t[:, None]
    n = jax.random.normal(k_eps, x.shape) * sig
    c_skip, c_out, c_in, c_noise = edm_scalings(sig, 0.5)
    f = raw(params, c_in * (x + n), c_noise[:, 0])
    target = (x - c_skip * (x + n)) / c_out
    np.testing.assert_allclose(float(loss), float(jnp.mean((f - target) ** 2)), rtol=1e-4)


def test_time_sampling_rules():
    key = jax.random.key(0)
    d = schedules.vp_discrete()
    t = np.asarray(losses.sample_times(d, key, 4000, "discrete"))
    k = t * 1000
    np.testing.assert_allclose(k, np.round(k), atol=1e-3)
    assert k.min() >= 1 and k.max() <= 1000 and len(np.unique(np.round(k))) > 900
    e = schedules.edm()
    s = np.asarray(losses.sample_times(e, key, 20000, "lognormal"))
    inside = (s > e.t_min) & (s < e.t_max)
    assert abs(np.log(s[inside]).mean() + 1.2) < 0.05 and abs(np.log(s[inside]).std() - 1.2) < 0.05
    v = schedules.vp_linear()
    s_vp = np.asarray(jnp.exp(-v.log_snr(losses.sample_times(v, key, 20000, "lognormal"))))
    assert abs(np.median(np.log(s_vp)) + 1.2) < 0.05  # sigma/alpha is log-normal on VP too
    with pytest.raises(ValueError, match="discrete"):
        losses.denoising_loss(_eps_net, v, time_sampling="discrete")


def test_label_dropout_rate_and_null_label():
    y = jnp.arange(20000) % 10
    out = np.asarray(losses.drop_labels(jax.random.key(0), y, 0.1, 10))
    dropped = out == 10
    assert abs(dropped.mean() - 0.1) < 0.01
    np.testing.assert_array_equal(out[~dropped], np.asarray(y)[~dropped])
    assert losses.drop_labels(jax.random.key(0), y, 0.0, 10) is y


def test_bad_configurations_raise():
    v = schedules.vp_linear()
    with pytest.raises(ValueError, match="weighting"):
        losses.denoising_loss(_eps_net, v, weighting="bogus")
    with pytest.raises(ValueError, match="parameterization"):
        losses.denoising_loss(_eps_net, v, parameterization="bogus")
    with pytest.raises(ValueError, match="null_label"):
        losses.denoising_loss(_eps_net, v, label_dropout=0.1)


def test_model_fn_matches_prediction_conversion():
    """make_model_fn's output converts to the same (x0, eps) whatever the parameterization."""
    sched = schedules.vp_linear()
    x = jax.random.normal(jax.random.key(2), (8, 3))
    t = jnp.float32(0.4)
    params = {"a": 0.5}
    a, s = sched.alpha(t), sched.sigma(t)
    ref = to_x0_eps(network.make_model_fn(_eps_net, params, sched, "eps")(x, t, None), x, a, s, "eps")
    for kind in ("x0", "v"):
        out = network.make_model_fn(_as(kind, sched), params, sched, kind)(x, t, None)
        got = to_x0_eps(out, x, a, s, network.sampling_prediction(kind))
        np.testing.assert_allclose(got[0], ref[0], atol=2e-5)
        np.testing.assert_allclose(got[1], ref[1], atol=2e-5)


@pytest.mark.parametrize("parameterization,schedule", [("eps", "vp_discrete"), ("edm", "edm")])
def test_bf16_inputs_keep_float32_noise_conditioning(parameterization, schedule):
    """Mixed precision casts the image to bf16, not the time: the network is conditioned on the
    same float32 c_noise as with float32 inputs (bf16 would round 1000 t = 701.3 to 704)."""
    sch = schedules.get_schedule(schedule)
    seen = {}

    def net_apply(params, x, c_noise, y, train, key):  # noqa: ARG001
        seen[str(x.dtype)] = c_noise
        return x

    t = jnp.array([0.7013, 0.9031, 0.5557], jnp.float32)
    x = jnp.ones((3, 4), jnp.float32)
    for dtype in (jnp.float32, jnp.bfloat16):
        out = network.apply_parameterized(net_apply, None, sch, parameterization, x.astype(dtype), t)
        assert out.dtype == dtype
    assert seen["bfloat16"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(seen["bfloat16"]), np.asarray(seen["float32"]))
