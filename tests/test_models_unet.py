"""Checks of the DDPM++-style UNet (jdiff.models.unet).

Cost control: shapes, dtypes and parameter counts come from ``jax.eval_shape`` (tracing only, no
compilation). Values come from a handful of jitted programs on the tiny preset (8x8x3 inputs,
batch 4), each compiled once per module: ``eval_vec`` (t and y of shape (B,)), ``eval_scalar``
(scalar t), ``eval_null`` (scalar t, y=None), ``train_vjp`` (train mode with dropout: output and
the gradient of a loss) and ``eval_bf16``. Parameters are random normal (drawn with NumPy), not
the network's initialisation, whose zero-initialised last layers would make the output
identically zero and hide the dropout, label and time paths. Dropout keys use the ``rbg`` PRNG
(XLA's RngBitGenerator; threefry bits cost several seconds of CPU compilation). The programs are
compiled with LLVM optimisation level 0 and XLA:CPU's loop emitters instead of its fusion
emitters (``_FAST_COMPILE``): the same HLO program, about a third of the compile time.
"""

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.models import (UNet, UNetConfig, count_params, fourier_embedding, init_shapes,
                          unet_cifar10, unet_digits, unet_tiny)

B, S, K = 4, 8, 3  # batch, image size, classes of the conditional tiny model
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _jit(f):
    return jax.jit(f, compiler_options=_FAST_COMPILE)


def _random_params(shapes, seed=0):
    """Normal random parameters: kernels N(0, 1/fan_in), embeddings N(0, 1), norm scales
    1 + N(0, 0.1^2), biases N(0, 0.1^2)."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            std = 1.0 / math.sqrt(np.prod(s.shape[:-1]))
            return jnp.asarray(rng.normal(0.0, std, s.shape), s.dtype)
        if "embedding" in name:
            return jnp.asarray(rng.normal(0.0, 1.0, s.shape), s.dtype)
        if "scale" in name:
            return jnp.asarray(1.0 + rng.normal(0.0, 0.1, s.shape), s.dtype)
        return jnp.asarray(rng.normal(0.0, 0.1, s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.fixture(scope="module")
def setup():
    cfg = unet_tiny(num_classes=K)
    model = UNet(cfg)
    params = _random_params(init_shapes(cfg, S))
    x = np.random.default_rng(1).normal(size=(B, S, S, 3)).astype(np.float32)
    y = np.array([0, 1, 2, 0], np.int32)

    def eval_vec(p, x, t, y, key):  # train=False with a dropout key: must be ignored
        return model.apply(p, x, t, y, train=False, rngs={"dropout": key})

    def train_vjp(p, x, t, y, key):
        def f(p):
            return model.apply(p, x, t, y, train=True, rngs={"dropout": key})
        out, vjp = jax.vjp(f, p)
        (grads,) = vjp(out)  # gradient of 0.5 * sum(out ** 2)
        return out, grads

    fns = dict(
        eval_vec=_jit(eval_vec),
        eval_scalar=_jit(lambda p, x, t, y: model.apply(p, x, t, y)),
        eval_null=_jit(lambda p, x, t: model.apply(p, x, t)),
        train_vjp=_jit(train_vjp),
    )
    return dict(cfg=cfg, model=model, params=params, x=x, y=y, **fns)


def _key(seed):
    return jax.random.key(seed, impl="rbg")


# ----------------------------------------------------------------------------- shapes (traced)

@pytest.mark.parametrize("cfg, y, x_dtype, t_shape", [
    (unet_tiny(num_classes=K), jnp.zeros((B,), jnp.int32), jnp.float32, ()),
    (unet_tiny(num_classes=K), None, jnp.bfloat16, (B,)),
    (unet_tiny(embedding="fourier"), None, jnp.float32, (B,)),
    (unet_tiny(resample="conv", skip_rescale=False, out_channels=6, num_heads=2), None, jnp.float32, ()),
    (unet_tiny(dtype=jnp.bfloat16), None, jnp.float32, ()),
])
def test_output_shape_and_dtype(cfg, y, x_dtype, t_shape):
    """Traced only (``eval_shape``); train mode's shapes are checked by the jitted tests."""
    model = UNet(cfg)
    shapes = init_shapes(cfg, S)
    x = jax.ShapeDtypeStruct((B, S, S, 3), x_dtype)
    t = jax.ShapeDtypeStruct(t_shape, jnp.float32)
    out = jax.eval_shape(lambda p, x, t: model.apply(p, x, t, y), shapes, x, t)
    assert out.shape == (B, S, S, cfg.out_ch) and out.dtype == x_dtype


def test_param_tree_layout():
    p = init_shapes(unet_tiny(num_classes=K), S)["params"]
    # label table: K real classes + the null class, added to the 4*ch time embedding
    assert p["label_embed"]["embedding"].shape == (K + 1, 32)
    assert p["time_dense_0"]["kernel"].shape == (8, 32)
    # channel change 8 -> 16 at level 1 needs a 1x1 skip; same channels do not
    assert p["down_1_0"]["skip"]["kernel"].shape == (1, 1, 8, 16)
    assert "skip" not in p["down_0_0"]
    # DDPM++ resampling blocks always project the skip; attention only at 4x4 (level 1) + middle
    assert "skip" in p["down_0_resample"] and "skip" in p["up_1_resample"]
    assert {k for k in p if "attn" in k} == {"down_1_attn_0", "mid_attn", "up_1_attn_0", "up_1_attn_1"}
    # up path: R + 1 = 2 blocks per level, input = concat(h, skip)
    assert p["up_0_1"]["conv_0"]["kernel"].shape == (3, 3, 16, 8)
    # Fourier frequencies are a constant, not a parameter
    pf = init_shapes(unet_tiny(embedding="fourier"), S)["params"]
    assert count_params(pf) == count_params(init_shapes(unet_tiny(), S)["params"])


def test_param_counts_of_presets():
    """Exact counts (documented in the module) and the published DDPM CIFAR-10 size."""
    cifar = count_params(init_shapes(unet_cifar10(), 32)["params"])
    assert 34_000_000 <= cifar <= 37_000_000
    assert cifar == 35_652_611
    # Ho et al. 2020 report 35.7M parameters for their CIFAR-10 network
    ddpm = unet_cifar10(ch_mult=(1, 2, 2, 2), resample="conv", skip_rescale=False)
    assert round(count_params(init_shapes(ddpm, 32)["params"]) / 1e5) == 357
    assert count_params(init_shapes(unet_digits(), 8)["params"]) == 1_065_889


def test_bf16_compute_keeps_float32_params():
    cfg = unet_tiny(num_classes=K, dtype=jnp.bfloat16)
    shapes = init_shapes(cfg, S)
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}
    params = _random_params(shapes)
    jaxpr = jax.make_jaxpr(lambda p, x: UNet(cfg).apply(p, x, 0.5))(params, jnp.zeros((B, S, S, 3)))
    # every convolution (conv_in, 2 per residual block, skips, conv_out) runs in bf16
    conv_out_types = re.findall(r":(\w+)\[[\d,]*\] = conv_general_dilated", str(jaxpr))
    assert len(conv_out_types) > 20 and set(conv_out_types) == {"bf16"}
    assert jaxpr.out_avals[0].dtype == jnp.float32


def test_bad_inputs_raise(setup):
    model, x = setup["model"], setup["x"]
    shapes = init_shapes(setup["cfg"], S)

    def trace(*args, **kw):
        return jax.eval_shape(lambda p: model.apply(p, *args, **kw), shapes)

    with pytest.raises(ValueError, match="shape"):
        trace(x[0], 0.5)                                  # no batch axis
    with pytest.raises(ValueError, match="shape"):
        trace(x[..., :1], 0.5)                            # wrong channel count
    with pytest.raises(ValueError, match="divisible"):
        trace(jnp.zeros((B, 7, 7, 3)), 0.5)               # 2 levels: H, W must be even
    with pytest.raises(ValueError, match="t must"):
        trace(x, jnp.zeros((B + 1,)))
    with pytest.raises(ValueError, match="y must"):
        trace(x, 0.5, jnp.zeros((B,)))                    # float labels
    with pytest.raises(ValueError, match="y must"):
        trace(x, 0.5, jnp.zeros((B, 1), jnp.int32))
    uncond = UNet(unet_tiny())
    with pytest.raises(ValueError, match="unconditional"):
        jax.eval_shape(lambda p: uncond.apply(p, x, 0.5, jnp.zeros((B,), jnp.int32)),
                       init_shapes(unet_tiny(), S))
    for bad in (dict(ch=7), dict(ch=136), dict(embedding="learned"), dict(resample="pool"), dict(num_heads=3),
                dict(num_classes=0), dict(dropout=1.0), dict(num_res_blocks=0)):
        with pytest.raises(ValueError):
            unet_tiny(**bad)


def test_config_is_frozen_and_hashable():
    cfg = UNetConfig(ch=8, ch_mult=[1, 2], attn_resolutions=[4], in_channels=1)
    assert cfg.ch_mult == (1, 2) and cfg.attn_resolutions == (4,)     # lists become tuples
    assert hash(cfg) == hash(UNetConfig(ch=8, ch_mult=(1, 2), attn_resolutions=(4,), in_channels=1))
    assert cfg.out_ch == 1 and cfg.emb_dim == 32
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ch = 16
    assert UNetConfig() == unet_cifar10()                               # defaults = CIFAR preset


def test_fourier_embedding():
    t = jnp.array([0.0, 0.5, -1.0])
    e = fourier_embedding(t, 16, scale=16.0)
    assert e.shape == (3, 16)
    np.testing.assert_array_equal(e[0], np.r_[np.zeros(8), np.ones(8)])   # sin 0, cos 0
    np.testing.assert_allclose(e[:, :8] ** 2 + e[:, 8:] ** 2, 1.0, rtol=1e-6)
    np.testing.assert_array_equal(e, fourier_embedding(t, 16, scale=16.0))  # fixed constant
    assert not np.allclose(e, fourier_embedding(t, 16, scale=16.0, seed=1))


# ----------------------------------------------------------------------------- values (jitted)

def _maxabs(a):
    """max |a| on the host (NumPy: no eager JAX ops to compile)."""
    return float(np.max(np.abs(np.asarray(a, np.float32))))


def _np(f):
    """Call a jitted program and bring every output to the host as NumPy."""
    return lambda *a: jax.tree_util.tree_map(np.asarray, f(*a))


def test_scalar_and_batched_t_agree(setup):
    s = setup
    p, x, y = s["params"], s["x"], s["y"]
    t = np.float32(370.0)
    out_scalar = _np(s["eval_scalar"])(p, x, t, y)
    out_vec = _np(s["eval_vec"])(p, x, np.full((B,), t), y, _key(0))
    assert out_scalar.shape == (B, S, S, 3) and out_scalar.dtype == np.float32
    assert np.std(out_scalar) > 0.1                             # not a degenerate constant
    np.testing.assert_allclose(out_scalar, out_vec, rtol=1e-5, atol=1e-5)
    # per-example times: each row sees its own t
    ts = np.array([10.0, 370.0, 700.0, 990.0], np.float32)
    out_mixed = _np(s["eval_vec"])(p, x, ts, y, _key(0))
    np.testing.assert_allclose(out_mixed[1], out_vec[1], rtol=1e-5, atol=1e-5)
    for i in (0, 2, 3):
        assert _maxabs(out_mixed[i] - out_vec[i]) > 1e-2


def test_null_class(setup):
    s = setup
    p, x, y = s["params"], s["x"], s["y"]
    t = np.float32(500.0)
    out_none = _np(s["eval_null"])(p, x, t)
    out_null = _np(s["eval_scalar"])(p, x, t, np.full((B,), K, np.int32))
    np.testing.assert_allclose(out_none, out_null, rtol=1e-5, atol=1e-5)
    out_y = _np(s["eval_scalar"])(p, x, t, y)
    for i in range(B):                                          # every row's label matters
        assert _maxabs(out_y[i] - out_null[i]) > 1e-2
    # labels act per row: rows 0 and 3 share label 0, so swapping x rows swaps outputs
    perm = np.array([3, 1, 2, 0])
    out_perm = _np(s["eval_scalar"])(p, x[perm], t, y)
    np.testing.assert_allclose(out_perm, out_y[perm], rtol=1e-5, atol=1e-5)


def test_dropout(setup):
    s = setup
    args = (s["params"], s["x"], np.full((B,), 250.0, np.float32), s["y"])
    out_a, _ = _np(s["train_vjp"])(*args, _key(1))
    out_a2, _ = _np(s["train_vjp"])(*args, _key(1))
    out_b, _ = _np(s["train_vjp"])(*args, _key(2))
    np.testing.assert_array_equal(out_a, out_a2)                # same key: same mask
    assert _maxabs(out_a - out_b) > 1e-2                        # different key: different mask
    eval_1 = _np(s["eval_vec"])(*args, _key(1))
    eval_2 = _np(s["eval_vec"])(*args, _key(2))
    np.testing.assert_array_equal(eval_1, eval_2)               # train=False ignores the key
    assert _maxabs(out_a - eval_1) > 1e-2                       # and differs from train mode


def test_gradient_is_finite_and_reaches_every_layer(setup):
    s = setup
    _, grads = _np(s["train_vjp"])(s["params"], s["x"], np.full((B,), 250.0, np.float32), s["y"],
                                   _key(3))
    flat = jax.tree_util.tree_leaves_with_path(grads)
    assert len(flat) == len(jax.tree_util.tree_leaves(s["params"]))
    for path, g in flat:
        assert np.all(np.isfinite(g)), jax.tree_util.keystr(path)
        if "kernel" in jax.tree_util.keystr(path):             # every kernel gets a gradient
            assert _maxabs(g) > 0, jax.tree_util.keystr(path)
    # only the label rows in use (0, 1, 2) get a gradient; the null row K does not
    emb_g = np.abs(grads["params"]["label_embed"]["embedding"]).sum(axis=1)
    assert np.all(emb_g[:K] > 0) and emb_g[K] == 0


def test_bf16_compute_is_close_to_float32(setup):
    s = setup
    model16 = UNet(unet_tiny(num_classes=K, dtype=jnp.bfloat16))
    out16 = _np(_jit(lambda p, x: model16.apply(p, x, 300.0, s["y"])))(s["params"], s["x"])
    out32 = _np(s["eval_scalar"])(s["params"], s["x"], np.float32(300.0), s["y"])
    assert out16.dtype == np.float32
    err = _maxabs(out16 - out32) / _maxabs(out32)
    assert 0 < err < 0.05                                       # bf16 rounding, not a bug


@pytest.mark.slow
def test_init_zero_output_and_determinism():
    """The network's own initialisation: zero-initialised output conv -> output exactly 0
    (score_sde init_scale=0); same key, same parameters."""
    cfg = unet_tiny(num_classes=K)
    model = UNet(cfg)
    x = jax.random.normal(jax.random.key(1), (B, S, S, 3))
    init = jax.jit(model.init)
    p1 = init(jax.random.key(0), x, 0.5)
    p2 = init(jax.random.key(0), x, 0.5)
    jax.tree_util.tree_map(np.testing.assert_array_equal, p1, p2)
    assert _maxabs(model.apply(p1, x, 0.5)) == 0.0
    assert _maxabs(p1["params"]["conv_out"]["kernel"]) == 0.0
    assert np.std(np.asarray(p1["params"]["conv_in"]["kernel"])) > 0.0
