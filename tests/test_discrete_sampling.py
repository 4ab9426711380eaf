"""Absorbing-diffusion sampler: no mask left, determinism, filtering, convergence to the exact law."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import discrete as D


@pytest.fixture(scope="module")
def tb():
    return D.get_discrete_testbed("k3l4v5")


@pytest.fixture(scope="module")
def proc(tb):
    return D.absorbing(D.linear(), tb.num_states, tb.mask_id)


def run(tb, proc, key, n=512, steps=4, **kw):
    return np.asarray(D.sample(D.denoiser_apply, tb, proc, key, (n, tb.L), steps, **kw))


def test_no_mask_left_and_determinism(tb, proc):
    a = run(tb, proc, jax.random.key(0), T=16)
    b = run(tb, proc, jax.random.key(0), T=16)
    c = run(tb, proc, jax.random.key(1), T=16)
    assert a.dtype == np.int32 and a.shape == (512, tb.L)
    assert not np.any(a == tb.mask_id) and np.all((a >= 0) & (a < tb.V))
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)
    assert D.sampler_nfe(4) == 4


@pytest.mark.parametrize("kw", [{"top_k": 2, "temperature": 0.7, "top_p": 0.9},
                                pytest.param({"top_p": 0.5, "filter_on": "x0"}, marks=pytest.mark.slow)])
def test_spindle_and_filtered_samplers_leave_no_mask(tb, kw):
    sp = D.absorbing(D.spindle(np.arange(1.0, tb.V + 2), mask_id=tb.mask_id), tb.num_states, tb.mask_id)
    x = run(tb, sp, jax.random.key(2), n=256, steps=3, **kw)
    assert not np.any(x == tb.mask_id) and np.all(x >= 0), kw


@jax.jit
def greedy_path(tb, proc):
    """Hand-written top-k = 1 path (3 steps): at each step the argmax of the posterior logits."""
    steps = 3
    grid = D.discrete_times(None, steps)
    x = jnp.full((1, tb.L), tb.mask_id, jnp.int32)
    for i in range(steps):
        logp0 = D.x0_log_probs(tb.denoiser(x), tb.mask_id)
        a_s, a_t = proc.model_alphas(grid[i + 1], grid[i], x, logp0)
        post = proc.posterior_logits(x, logp0, a_s, a_t)
        x = jnp.where(x == tb.mask_id, jnp.argmax(post, -1).astype(jnp.int32), x)
    return x[0]


@pytest.mark.parametrize("kw", [{"top_k": 1}, {"top_p": 1e-6}])
def test_top_k_1_and_tiny_top_p_give_the_argmax_path(tb, proc, kw):
    steps = 3
    want = np.asarray(greedy_path(tb, proc))
    for seed in (0, 1):
        x = run(tb, proc, jax.random.key(seed), n=8, steps=steps, **kw)
        assert np.all(x == want[None]), (x, want)


def test_filter_logits():
    lg = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    f = np.asarray(D.filter_logits(lg, top_k=2))
    assert np.all(np.isfinite(f[0, :2])) and np.all(np.isneginf(f[0, 2:]))
    f = np.asarray(D.filter_logits(lg, top_p=0.7))  # mass before: 0, 0.5, 0.8 -> keep 2
    assert np.all(np.isfinite(f[0, :2])) and np.all(np.isneginf(f[0, 2:]))
    f = np.asarray(D.filter_logits(lg[:, ::-1], top_p=0.81))  # order-independent: keep 3
    assert np.isfinite(f[0]).sum() == 3 and np.isneginf(f[0, 0])
    np.testing.assert_array_equal(D.filter_logits(lg), lg)


def test_tv_falls_toward_the_floor_as_steps_grow(tb, proc):
    p = tb.all_probs()
    n = 6000
    floor = D.tv_distance(np.asarray(tb.sample(jax.random.key(9), n)), p, tb.V)
    tv = {k: D.tv_distance(run(tb, proc, jax.random.key(3), n=n, steps=k), p, tb.V) for k in (1, 32)}
    assert tv[1] > 3 * floor  # one step samples the product of marginals: far off
    assert tv[32] < 1.25 * floor  # near the Monte-Carlo floor


@pytest.mark.slow
def test_tv_decreases_monotonically_with_steps(tb, proc):
    p = tb.all_probs()
    tv = [D.tv_distance(run(tb, proc, jax.random.key(3), n=20000, steps=k), p, tb.V) for k in (1, 2, 4, 8, 16)]
    assert np.all(np.diff(tv) < 0), tv


def test_one_step_with_T_and_stride(tb, proc):
    """The grid reads t from floor(T (steps - i) / steps): with T = 8 and 4 steps the model sees
    u = 1, 0.75, 0.5, 0.25 (stride 2)."""
    seen = []

    def spy(params, x_t, u):
        jax.debug.callback(lambda v: seen.append(float(v[0])), u)
        return D.denoiser_apply(params, x_t, u)

    jax.block_until_ready(D.sample(spy, tb, proc, jax.random.key(0), (2, tb.L), 4, T=8))
    jax.effects_barrier()
    assert seen == [1.0, 0.75, 0.5, 0.25]


def test_inverse_cdf_draw_matches_the_probabilities():
    """Frequencies of 400k draws within 4.5 standard errors of the probabilities; entries of
    probability 0 (-inf logits, first, inner and last) are never drawn."""
    logits = jnp.log(jnp.array([0.0, 0.5, 0.2, 0.0, 0.25, 1e-3, 0.049, 0.0]))
    n = 400_000
    x = np.asarray(D.categorical_inverse_cdf(jax.random.key(0), jnp.broadcast_to(logits, (n, 8))))
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    freq = np.bincount(x, minlength=8) / n
    assert np.all(freq[p == 0] == 0)
    np.testing.assert_array_less(np.abs(freq - p), 4.5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_infilling_samples_the_exact_conditional(tb, proc):
    """x_init fixes positions 0 and 2: the given tokens never change, and the samples converge to
    the closed-form conditional p(x_1, x_3 | x_0, x_2) (one step: the product of its marginals)."""
    n, given = 20000, {0: 1, 2: 3}
    x_init = np.full((n, tb.L), tb.mask_id, np.int32)
    for i, v in given.items():
        x_init[:, i] = v
    seqs, p = tb.all_sequences(), tb.all_probs()
    keep = np.all([seqs[:, i] == v for i, v in given.items()], 0)
    cond = np.where(keep, p, 0.0) / p[keep].sum()
    floor = np.mean([D.tv_distance(seqs[np.random.default_rng(r).choice(len(p), size=n, p=cond)], cond, tb.V)
                     for r in range(4)])  # TV of n exact samples, averaged over 4 draws
    tv = {}
    for steps in (1, 32):
        x = np.asarray(D.sample(D.denoiser_apply, tb, proc, jax.random.key(0), None, steps, x_init=jnp.asarray(x_init)))
        assert np.all(x[:, [0, 2]] == [1, 3]) and not np.any(x == tb.mask_id)
        tv[steps] = D.tv_distance(x, cond, tb.V)
    # 8 keys gave tv[32] / floor 0.76-1.48 (sampling noise of both); one step gives ~5x
    assert tv[1] > 3 * floor and tv[32] < 1.6 * floor, (tv, floor)


def test_forbidden_ids_and_gumbel_draw(tb, proc):
    plain = run(tb, proc, jax.random.key(5), n=256, draw="gumbel")
    assert np.any(plain == 0) and np.any(plain == 3)
    x = run(tb, proc, jax.random.key(5), n=256, forbidden=(0, 3))
    assert not np.any(np.isin(x, [0, 3, tb.mask_id])) and np.all(x < tb.V)


def test_bad_sampler_arguments(tb, proc):
    x_bad = jnp.full((2, tb.L), tb.num_states, jnp.int32)
    for kw, msg in (({"steps": 0}, "steps"), ({"T": 2}, "T must be"), ({"top_p": 0.0}, "top_p"),
                    ({"temperature": 0.0}, "temperature"), ({"filter_on": "logits"}, "filter_on"),
                    ({"draw": "argmax"}, "draw"), ({"forbidden": (tb.mask_id,)}, "forbidden"),
                    ({"forbidden": tuple(range(tb.V))}, "no token"), ({"x_init": x_bad}, "outside"),
                    ({"x_init": jnp.zeros((3, tb.L), jnp.int32)}, "disagrees"),
                    ({"x_init": jnp.zeros((2, tb.L))}, "integer array")):
        args = {"steps": 4, **kw}
        with pytest.raises(ValueError, match=msg):
            D.sample(D.denoiser_apply, tb, proc, jax.random.key(0), (2, tb.L), **args)


def test_kth_largest_counts_ties_and_minus_infinity_like_lax_top_k():
    from jdiff.discrete.sampling import kth_largest

    x = jax.random.normal(jax.random.key(0), (3, 4, 50))
    x = x.at[..., :5].set(-jnp.inf).at[0, 0, 10:20].set(3.0).at[1, 1, :48].set(-jnp.inf)  # ties, few finite
    for k in (1, 2, 7, 30):
        np.testing.assert_array_equal(kth_largest(x, k), jax.lax.top_k(x, k)[0][..., -1:])
