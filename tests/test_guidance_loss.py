"""The guidance-aligned training loss (``LossConfig.guidance_loss='aligned'``, after arXiv
2311.00938): reduction to the standard loss at w = 0, a hand-written reference on a tiny linear
network, the stop-gradient, dropped labels, bad inputs, and the run / CLI wiring."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import losses, schedules
from jdiff.cli import build_parser, main, train_config
from jdiff.run import RunConfig

D, NUM_CLASSES, B = 3, 4, 64
NULL = NUM_CLASSES  # the null class


def _net(params, x, c_noise, y=None, train=False, key=None):
    """A tiny class-conditional linear 'network': ``F(x, y) = a * x + emb[y]``. The conditional
    and unconditional branches differ only by the label embedding row (``emb[NULL]``: null)."""
    return params["a"] * x + params["emb"][y]


def _params():
    emb = jax.random.normal(jax.random.key(7), (NUM_CLASSES + 1, D))
    return {"a": jnp.asarray(0.6), "emb": emb}


def _batch(null_every=None):
    x = jax.random.normal(jax.random.key(1), (B, D))
    y = jax.random.randint(jax.random.key(2), (B,), 0, NUM_CLASSES)
    if null_every:
        y = y.at[::null_every].set(NULL)
    return {"x": x, "y": y}


KEY = jax.random.key(11)


def _loss(sched=None, **kw):
    kw.setdefault("null_label", NULL)
    return losses.denoising_loss(_net, sched or schedules.vp_linear(), **kw)


def _reference(params, batch, key, w, stop_grad=True, p_drop=0.0, prediction="eps", weighting="uniform",
               w_per_example=None):
    """``mean_b weight(t) mean_d (target - [(1 + w) F(x_t, c~) - w F(x_t, null)])^2`` with the
    loss's own draws of t, eps and dropped labels, and ``w = 0`` where the label is null."""
    sched = schedules.vp_linear()
    x0, y = batch["x"], batch["y"]
    k_t, k_eps, k_drop, _ = jax.random.split(key, 4)
    t = jax.random.uniform(k_t, (B,), jnp.float32, sched.t_min, sched.t_max)
    eps = jax.random.normal(k_eps, x0.shape)
    a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    x_t = a * x0 + s * eps
    if p_drop:
        y = losses.drop_labels(k_drop, y, p_drop, NULL)
    cond = params["a"] * x_t + params["emb"][y]
    uncond = params["a"] * x_t + params["emb"][NULL]
    if stop_grad:
        uncond = jax.lax.stop_gradient(uncond)
    ws = jnp.full((B,), w) if w_per_example is None else w_per_example
    ws = jnp.where(y == NULL, 0.0, ws)[:, None]
    guided = (1.0 + ws) * cond - ws * uncond
    target = eps if prediction == "eps" else a * eps - s * x0
    weight = losses.target_weight(weighting, prediction, sched.log_snr(t), alpha=sched.alpha(t))
    return jnp.mean(weight * jnp.mean(jnp.square(target - guided), axis=1))


def _value_and_grad(loss_fn, params, batch, key=KEY):
    (value, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
    return value, metrics, grads


def _assert_trees_close(a, b, **tol):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), **tol)


@pytest.mark.parametrize("parameterization,weighting,sched", [
    ("eps", "uniform", "vp_linear"), ("v", "min_snr", "vp_linear"), ("edm", "edm", "edm")])
def test_scale_zero_is_the_standard_loss(parameterization, weighting, sched):
    """w = 0 (fixed): the guided prediction is the conditional one, so value, metrics and gradient
    are those of the standard loss (label dropout included)."""
    sched = schedules.get_schedule(sched)
    params, batch = _params(), _batch()
    kw = dict(parameterization=parameterization, weighting=weighting, label_dropout=0.3)
    ref, ref_m, ref_g = _value_and_grad(_loss(sched, **kw), params, batch)
    for stop_grad in (True, False):
        got, m, g = _value_and_grad(_loss(sched, guidance_loss="aligned", align_scale=0.0,
                                          align_stop_grad=stop_grad, **kw), params, batch)
        np.testing.assert_allclose(float(got), float(ref), rtol=1e-6)
        np.testing.assert_allclose(float(m["mse"]), float(ref_m["mse"]), rtol=1e-6)
        np.testing.assert_allclose(float(m["mse_cond"]), float(ref_m["mse"]), rtol=1e-6)
        _assert_trees_close(g, ref_g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("prediction,weighting", [("eps", "uniform"), ("v", "min_snr")])
@pytest.mark.parametrize("w", [0.5, 3.0])
def test_value_matches_the_hand_written_guided_loss(prediction, weighting, w):
    params, batch = _params(), _batch()
    got, metrics = _loss(parameterization=prediction, weighting=weighting, guidance_loss="aligned",
                         align_scale=w)(params, batch, KEY)
    ref = _reference(params, batch, KEY, w, prediction=prediction, weighting=weighting)
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)
    if weighting == "uniform":
        np.testing.assert_allclose(float(metrics["mse"]), float(ref), rtol=1e-5)
    std, std_m = _loss(parameterization=prediction, weighting=weighting)(params, batch, KEY)
    np.testing.assert_allclose(float(metrics["mse_cond"]), float(std_m["mse"]), rtol=1e-6)
    assert abs(float(got) - float(std)) > 1e-3  # the guided loss is another loss


def test_uniform_scale_sampling_draws_w_per_example():
    params, batch = _params(), _batch()
    got, _ = _loss(guidance_loss="aligned", align_scale=4.0, align_scale_sampling="uniform")(params, batch, KEY)
    ws = 4.0 * jax.random.uniform(jax.random.fold_in(KEY, 1), (B,), jnp.float32)  # the loss's draw
    np.testing.assert_allclose(float(got), float(_reference(params, batch, KEY, 0.0, w_per_example=ws)), rtol=1e-5)
    fixed, _ = _loss(guidance_loss="aligned", align_scale=4.0)(params, batch, KEY)
    assert abs(float(got) - float(fixed)) > 1e-3


@pytest.mark.parametrize("w", [0.5, 2.0])
def test_stop_gradient_on_the_unconditional_branch(w):
    """The null embedding row feeds only the unconditional branch (no label is null here): with
    the stop-gradient its gradient is exactly 0; without it, it is ``(2 w / (B D)) sum_b r_b``
    (r = target - guided); every gradient matches jax.grad of the hand-written loss."""
    params, batch = _params(), _batch()
    for stop_grad in (True, False):
        _, _, g = _value_and_grad(_loss(guidance_loss="aligned", align_scale=w, align_stop_grad=stop_grad),
                                  params, batch)
        ref_g = jax.grad(_reference)(params, batch, KEY, w, stop_grad=stop_grad)
        _assert_trees_close(g, ref_g, rtol=1e-5, atol=1e-7)
        if stop_grad:
            assert np.all(np.asarray(g["emb"][NULL]) == 0.0)
            assert np.all(np.abs(np.asarray(g["emb"][:NULL])) > 0)
        else:
            ref = _reference(params, batch, KEY, w)  # residuals by hand
            sched = schedules.vp_linear()
            k_t, k_eps, _, _ = jax.random.split(KEY, 4)
            t = jax.random.uniform(k_t, (B,), jnp.float32, sched.t_min, sched.t_max)
            eps = jax.random.normal(k_eps, (B, D))
            x_t = sched.alpha(t)[:, None] * batch["x"] + sched.sigma(t)[:, None] * eps
            guided = (params["a"] * x_t + (1 + w) * params["emb"][batch["y"]] - w * params["emb"][NULL])
            r = eps - guided
            np.testing.assert_allclose(float(jnp.mean(r**2)), float(ref), rtol=1e-5)
            np.testing.assert_allclose(np.asarray(g["emb"][NULL]), np.asarray(2 * w * r.sum(0) / (B * D)),
                                       rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("stop_grad", [True, False])
def test_dropped_labels_get_the_standard_unconditional_loss(stop_grad):
    params = _params()
    # every label null: exactly the standard loss (value and gradient), whatever w
    batch = dict(_batch(), y=jnp.full((B,), NULL))
    ref, _, ref_g = _value_and_grad(_loss(), params, batch)
    got, _, g = _value_and_grad(_loss(guidance_loss="aligned", align_scale=3.0, align_stop_grad=stop_grad),
                                params, batch)
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-6)
    _assert_trees_close(g, ref_g, rtol=1e-5, atol=1e-7)
    # some labels dropped by label_dropout, some null in the batch: per example, the dropped ones
    # are trained as F(x_t, null) and the others with the guided bracket
    batch = _batch(null_every=5)
    kw = dict(guidance_loss="aligned", align_scale=2.0, align_stop_grad=stop_grad, label_dropout=0.4)
    got, _, g = _value_and_grad(_loss(**kw), params, batch)
    ref, ref_g = jax.value_and_grad(_reference)(params, batch, KEY, 2.0, stop_grad=stop_grad, p_drop=0.4)
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-5)
    _assert_trees_close(g, ref_g, rtol=1e-5, atol=1e-7)


def test_align_mix_blends_with_the_standard_conditional_loss():
    params, batch = _params(), _batch()
    std, _ = _loss()(params, batch, KEY)
    al, _ = _loss(guidance_loss="aligned", align_scale=2.0)(params, batch, KEY)
    full, _ = _loss(guidance_loss="aligned", align_scale=2.0, align_mix=1.0)(params, batch, KEY)
    half, m = _loss(guidance_loss="aligned", align_scale=2.0, align_mix=0.25)(params, batch, KEY)
    np.testing.assert_allclose(float(full), float(std), rtol=1e-6)
    np.testing.assert_allclose(float(half), 0.25 * float(std) + 0.75 * float(al), rtol=1e-5)
    np.testing.assert_allclose(float(m["mse"]), float(al), rtol=1e-5)  # mse: the guided prediction's


def test_defaults_keep_the_standard_loss():
    cfg = losses.LossConfig()
    assert (cfg.guidance_loss, cfg.align_scale, cfg.align_scale_sampling, cfg.align_stop_grad, cfg.align_mix) == (
        "standard", 1.0, "fixed", True, 0.0)
    _, m = _loss()(_params(), _batch(), KEY)
    assert set(m) == {"loss", "mse"}


@pytest.mark.parametrize("kw,match", [
    (dict(guidance_loss="guided"), "unknown guidance_loss 'guided'; valid: standard, aligned"),
    (dict(guidance_loss="aligned", align_scale_sampling="normal"), "unknown align_scale_sampling 'normal'"),
    (dict(guidance_loss="aligned", align_scale=-1.0), "align_scale must be finite and non-negative"),
    (dict(guidance_loss="aligned", align_scale=math.inf), "align_scale must be finite"),
    (dict(guidance_loss="aligned", align_scale=math.nan), "align_scale must be finite"),
    (dict(guidance_loss="aligned", align_mix=1.5), r"align_mix must be in \[0, 1\]"),
    (dict(guidance_loss="aligned", align_mix=-0.1), r"align_mix must be in \[0, 1\]"),
    (dict(guidance_loss="aligned", align_mix=math.nan), r"align_mix must be in \[0, 1\]"),
    (dict(guidance_loss="aligned", null_label=None), "needs a class-conditional network"),
])
def test_bad_loss_settings_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        _loss(**kw)


def test_aligned_loss_without_labels_in_the_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="the batch has no 'y'"):
        _loss(guidance_loss="aligned")(_params(), {"x": _batch()["x"]}, KEY)


def test_run_config_fields_and_errors():
    with pytest.raises(ValueError, match="needs a class-conditional run: set conditional=True"):
        RunConfig(guidance_loss="aligned")
    with pytest.raises(ValueError, match="align_scale, align_mix apply only to the aligned loss"):
        RunConfig(conditional=True, align_scale=2.0, align_mix=0.5)
    with pytest.raises(ValueError, match="align_stop_grad applies only to the aligned loss"):
        RunConfig(align_stop_grad=False)
    for bad, match in ((dict(guidance_loss="bogus"), "unknown guidance_loss"),
                       (dict(guidance_loss="aligned", align_scale=-2.0), "align_scale must be"),
                       (dict(guidance_loss="aligned", align_mix=2.0), "align_mix must be"),
                       (dict(guidance_loss="aligned", align_scale_sampling="x"), "unknown align_scale_sampling")):
        with pytest.raises(ValueError, match=match):
            RunConfig(conditional=True, **bad)
    # a config.json written before these fields existed loads with the defaults (standard loss)
    old = {k: v for k, v in RunConfig().to_json().items()
           if k not in ("guidance_loss", "align_scale", "align_scale_sampling", "align_stop_grad", "align_mix")}
    assert RunConfig.from_json(json.loads(json.dumps(old))) == RunConfig()
    # the run's loss configuration carries the fields (build_run uses RunConfig.loss_config;
    # the slow test below trains through it)
    cfg = RunConfig(data="digits", model="unet_tiny", conditional=True, guidance_loss="aligned", align_scale=2,
                    align_scale_sampling="uniform", align_stop_grad=False, align_mix=0.1, label_dropout=0.2)
    assert RunConfig.from_json(json.loads(json.dumps(cfg.to_json()))) == cfg
    lc = cfg.loss_config(10)
    assert (lc.guidance_loss, lc.align_scale, lc.align_scale_sampling, lc.align_stop_grad, lc.align_mix,
            lc.label_dropout, lc.null_label) == ("aligned", 2, "uniform", False, 0.1, 0.2, 10)
    assert RunConfig().loss_config(None) == losses.LossConfig(label_dropout=0.0)


def test_cli_flags_and_help(capsys, tmp_path):
    argv = ["train", "--workdir", str(tmp_path / "run"), "--data", "digits", "--model", "unet_tiny",
            "--conditional", "true", "--guidance-loss", "aligned", "--align-scale", "2",
            "--align-scale-sampling", "uniform", "--align-stop-grad", "false", "--align-mix", "0.2"]
    cfg = train_config(build_parser().parse_args(argv))
    assert (cfg.guidance_loss, cfg.align_scale, cfg.align_scale_sampling, cfg.align_stop_grad, cfg.align_mix) == (
        "aligned", 2.0, "uniform", False, 0.2)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--guidance-loss", "one of standard, aligned", "--align-scale", "--align-scale-sampling",
                 "one of fixed, uniform", "--align-stop-grad", "--align-mix"):
        assert text in out, text


@pytest.mark.parametrize("extra,match", [
    (["--guidance-loss", "aligned"], "needs a class-conditional run"),
    (["--conditional", "true", "--guidance-loss", "bogus"], "unknown guidance_loss 'bogus'"),
    (["--conditional", "true", "--guidance-loss", "aligned", "--align-mix", "2"], "--align-mix must be at most 1"),
    (["--conditional", "true", "--guidance-loss", "aligned", "--align-scale", "-1"],
     "--align-scale must be non-negative"),
    (["--conditional", "true", "--guidance-loss", "aligned", "--align-scale", "inf"], "align_scale must be finite"),
    (["--conditional", "true", "--align-scale", "2"], "applies only to the aligned loss"),
])
def test_cli_bad_flags_are_one_line_errors(capsys, tmp_path, extra, match):
    workdir = tmp_path / "run"
    code = main(["train", "--workdir", str(workdir), "--data", "digits", "--model", "unet_tiny", *extra])
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (workdir / "config.json").exists()


def test_twenty_jitted_training_steps_with_the_aligned_loss_are_finite_and_learn():
    """The aligned loss under jit (uniform w, label dropout) drives 20 SGD steps of the tiny net."""
    loss_fn = _loss(guidance_loss="aligned", align_scale=2.0, align_scale_sampling="uniform", label_dropout=0.2)

    @jax.jit
    def step(params, batch, key):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        return jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads), metrics

    params, batch, history = _params(), _batch(), []
    for i in range(20):
        params, metrics = step(params, batch, jax.random.key(i))
        history.append({k: float(v) for k, v in metrics.items()})
    assert all(math.isfinite(h[k]) for h in history for k in ("loss", "mse", "mse_cond"))
    assert np.mean([h["loss"] for h in history[-5:]]) < 0.5 * np.mean([h["loss"] for h in history[:5]])


@pytest.mark.slow  # a UNet init and train-step compile (13-30 s on 2 cores)
def test_jdiff_train_with_the_aligned_loss(capsys, tmp_path):
    workdir = tmp_path / "run"
    argv = ["train", "--workdir", str(workdir), "--data", "digits", "--model", "unet_tiny", "--conditional", "true",
            "--guidance-loss", "aligned", "--align-scale", "2", "--steps", "20", "--batch-size", "8",
            "--warmup-steps", "0", "--log-every", "10", "--save-every", "20", "--quiet",
            "--model-kwargs", '{"num_res_blocks": 1, "attn_resolutions": [], "ch_mult": [1]}']
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "trained to step 20" in out and "nan" not in out, out
    stored = json.loads((workdir / "config.json").read_text())
    assert stored["guidance_loss"] == "aligned" and stored["align_scale"] == 2.0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 20 and all(math.isfinite(rows[-1][k]) for k in ("loss", "mse", "mse_cond"))
