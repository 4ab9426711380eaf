"""jdiff.prng: Threefry keys expanded by XLA's RngBitGenerator (the cipher, the distribution,
independence of derived keys, jit/vmap behaviour)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

import jdiff
from jdiff import prng


def test_bits_are_threefry2x32_counter_blocks():
    """The words are threefry2x32(key=(w0, w1), block=(w2, w3) + j), j = 0, 1, ... (64-bit
    counter, low word first), including a carry of the low counter word into the high one, in
    row-major (y0, y1) pairs whatever the shape."""
    w = np.array([0x01234567, 0x89ABCDEF, 0xFFFFFFFA, 0x00000007], np.uint32)  # carries at j = 6
    k = jax.random.wrap_key_data(jnp.asarray(w), impl=prng.THREEFRY_XLA)
    counter = int(w[2]) + (int(w[3]) << 32)
    blocks = [counter + j for j in range(12)]
    x = jnp.asarray([c & 0xFFFFFFFF for c in blocks] + [c >> 32 for c in blocks], jnp.uint32)
    ref = np.asarray(threefry_2x32(jnp.asarray(w[:2]), x))  # (x0's..., x1's...) -> (y0's, y1's)
    expected = np.stack([ref[:12], ref[12:]], axis=1).reshape(-1)
    np.testing.assert_array_equal(np.asarray(jax.random.bits(k, (24,), jnp.uint32)), expected)
    two_d = np.asarray(jax.random.bits(k, (4, 6), jnp.uint32))
    np.testing.assert_array_equal(two_d, expected.reshape(4, 6))
    odd = np.asarray(jax.random.bits(k, (23,), jnp.uint32))
    np.testing.assert_array_equal(odd, expected[:23])
    low = np.asarray(jax.random.bits(k, (24,), jnp.uint8))
    np.testing.assert_array_equal(low, (expected & 0xFF).astype(np.uint8))


def _norm_cdf(z):
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def test_normal_draws_are_standard_gaussian():
    n = 2_000_000
    z = np.asarray(jax.random.normal(prng.key(3), (n,), jnp.float32), np.float64)
    se = 1.0 / math.sqrt(n)
    assert abs(z.mean()) < 6 * se
    assert abs(z.var() - 1.0) < 6 * math.sqrt(2.0) * se
    assert abs(np.mean(z ** 3)) < 6 * math.sqrt(15.0) * se
    assert abs(np.mean(z ** 4) - 3.0) < 6 * math.sqrt(96.0) * se
    # Kolmogorov-Smirnov statistic on a grid of points; 1.95 / sqrt(n) is its 0.1% quantile
    zs = np.sort(z)
    pts = np.linspace(-4.0, 4.0, 161)
    emp = np.searchsorted(zs, pts) / n
    assert np.max(np.abs(emp - np.array([_norm_cdf(p) for p in pts]))) < 1.95 * se
    # uint32 words: every byte value equally likely (chi-square, 255 dof, 0.1% quantile 330.5)
    words = np.asarray(jax.random.bits(prng.key(4), (250_000,), jnp.uint32))
    counts = np.bincount(words.view(np.uint8), minlength=256)
    expected = words.size * 4 / 256
    assert np.sum((counts - expected) ** 2 / expected) < 330.5


def test_derived_keys_give_unrelated_streams():
    """Keys from fold_in and split give uncorrelated normals. (fold_in(k, i) and split(k, n)[i]
    may coincide, as with JAX's default keys: fold_in(k, 0) == split(k)[0]; so the two families
    come from different roots here.)"""
    keys = ([jax.random.fold_in(prng.key(11), i) for i in range(6)]
            + list(jax.random.split(prng.key(12), 6)))
    n = 100_000
    draws = np.stack([np.asarray(jax.random.normal(k, (n,))) for k in keys])
    corr = np.corrcoef(draws)
    off = corr[~np.eye(len(keys), dtype=bool)]
    assert np.max(np.abs(off)) < 5.0 / math.sqrt(n)
    data = np.stack([np.asarray(jax.random.key_data(k)) for k in keys])
    assert len({tuple(r[:2]) for r in data}) == len(keys)  # distinct Threefry keys, not shifts
    # other seeds, other streams; the same seed, the same stream
    a, b = (np.asarray(jax.random.normal(prng.key(s), (8,))) for s in (1, 2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, np.asarray(jax.random.normal(prng.key(1), (8,))))


def test_jit_and_vmap_agree_with_eager():
    """vmap over keys draws each key's own stream (lax.rng_bit_generator's batching rule alone
    would give every batch member a slice of the first key's stream)."""
    keys = jax.random.split(prng.key(5), 4)
    eager = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(k, 2), (3, 5))) for k in keys])
    f = jax.jit(jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 2), (3, 5))))
    np.testing.assert_array_equal(np.asarray(f(keys)), eager)
    nested = jax.jit(jax.vmap(jax.vmap(lambda k: jax.random.normal(k, (7,)))))
    grid = jnp.stack([jax.random.split(k, 3) for k in keys])  # (4, 3) keys
    np.testing.assert_array_equal(
        np.asarray(nested(grid)),
        np.stack([[np.asarray(jax.random.normal(k, (7,))) for k in row] for row in grid]))


def test_stochastic_sampler_with_threefry_xla_key(vp):
    """dpmpp_2m_sde with these keys samples a Gaussian testbed's exact moments (the ddpm test in
    test_solvers uses JAX's default keys), and jdiff.sample accepts them like any typed key."""
    tb = jdiff.testbeds.get_testbed("gauss16d")
    mean, cov = tb.mean_cov()
    g = jdiff.grids.make_grid(vp, "logsnr", 60)
    x_T = jax.random.normal(jax.random.key(5), (8000, 16))
    solver = jdiff.solvers.get_solver("dpmpp_2m_sde")
    x = np.asarray(jdiff.sample(tb.model_fn(vp), vp, solver, g, x_T, key=prng.key(6)))
    assert np.max(np.abs(x.mean(0) - mean)) < 0.04
    assert np.max(np.abs(np.cov(x.T) - cov)) < 0.05
    again = np.asarray(jdiff.sample(tb.model_fn(vp), vp, solver, g, x_T, key=prng.key(6)))
    np.testing.assert_array_equal(x, again)


def test_vmap_of_sample_over_keys_equals_per_key_samples(vp):
    """Per-sample keys under jax.vmap of jdiff.sample: each sample gets its own key's noise."""
    tb = jdiff.testbeds.get_testbed("mix2d")
    g = jdiff.grids.make_grid(vp, "logsnr", 4)
    solver = jdiff.solvers.get_solver("ddpm")
    x_T = jax.random.normal(jax.random.key(1), (3, 2))
    keys = jax.random.split(prng.key(9), 3)
    batched = jax.vmap(lambda x, k: jdiff.sample(tb.model_fn(vp), vp, solver, g, x[None], key=k)[0])(
        x_T, keys)
    single = np.stack([np.asarray(jdiff.sample(tb.model_fn(vp), vp, solver, g, x_T[i:i + 1], key=keys[i])[0])
                       for i in range(3)])
    np.testing.assert_allclose(np.asarray(batched), single, atol=1e-6)
    assert not np.allclose(single[0], single[1])


def test_cpu_draw_keeps_words_out_of_the_consumer_fusion():
    """On CPU the 32-bit words come from a conditional (see ``prng._materialized``), so XLA
    cannot fuse the Threefry expansion into the Gaussian transform; inside ``lax.scan`` and
    under ``jit`` the draw equals the one outside, word for word."""
    key = prng.key(11)

    def scanned(key):
        def body(c, i):
            return c, jax.random.normal(jax.random.fold_in(key, i), (8, 4))
        return jax.lax.scan(body, 0, jnp.arange(3))[1]

    compiled = jax.jit(scanned).lower(key).compile().as_text()
    assert "conditional(" in compiled
    inside = np.asarray(jax.jit(scanned)(key))
    for i in range(3):
        outside = np.asarray(jax.random.normal(jax.random.fold_in(key, i), (8, 4)))
        np.testing.assert_array_equal(inside[i].view(np.uint32), outside.view(np.uint32))
    # the always-true predicate of the conditional, at the wrap-around
    kd = jnp.array([0xFFFFFFFF, 0, 0, 0], jnp.uint32)
    words = jax.jit(lambda k: prng._materialized(lambda k, n: jnp.full((2 * n,), 7, jnp.uint32),
                                                 k, 3))(kd)
    np.testing.assert_array_equal(np.asarray(words), np.full(6, 7, np.uint32))
