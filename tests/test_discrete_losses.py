"""Absorbing-diffusion losses: exactness at T = 1, agreement with the exact bound, gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import discrete as D

V, L = 4, 3
N, MASK = V + 1, V


def tiny_apply(params, x_t, u):
    """Position-wise tiny model: logits = b[i] + E[x_t^i] (B, L, N); u unused."""
    del u
    return params["b"][None] + params["E"][x_t]


def tiny_params(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return {"b": jax.random.normal(k1, (L, N)), "E": 0.5 * jax.random.normal(k2, (N, N))}


@pytest.fixture(scope="module")
def proc():
    return D.absorbing(D.linear(), N, MASK)


def jit_loss(loss):
    return jax.jit(loss, static_argnums=1)


def test_T1_bound_is_the_exact_nll_of_the_one_step_model(proc):
    """With T = 1, x_1 is all mask and the model is the product of its all-mask marginals: the
    bound is its exact negative log-likelihood."""
    params = tiny_params()
    x0 = jnp.array([[0, 1, 2], [3, 3, 0]], jnp.int32)
    loss = jit_loss(D.absorbing_loss(proc, kind="vb", T=1, reduction="sequence"))
    _, m = loss(params, tiny_apply, x0, jax.random.key(0))
    logp = jax.nn.log_softmax(tiny_apply(params, jnp.full_like(x0, MASK), None)[..., :V], -1)
    nll = -np.take_along_axis(np.asarray(logp), np.asarray(x0)[..., None], -1)[..., 0].sum(-1)
    np.testing.assert_allclose(m["bound_per_seq"], nll, rtol=1e-6)
    # and the one-step sampler draws from exactly that product distribution
    x = np.asarray(D.sample(tiny_apply, params, proc, jax.random.key(1), (20000, L), 1))
    emp = np.stack([np.bincount(x[:, i], minlength=V) for i in range(L)]) / x.shape[0]
    np.testing.assert_allclose(emp, np.exp(np.asarray(logp[0])), atol=0.015)


@pytest.fixture(scope="module")
def testbed():
    return D.get_discrete_testbed("k3l4v5")


@pytest.mark.parametrize("T", [pytest.param(1, marks=pytest.mark.slow), 3])
def test_monte_carlo_bound_of_the_exact_denoiser_matches_the_exact_bound(testbed, T):
    """The loss's unbiased estimate T * L_t (t ~ U{1..T}) agrees with the enumerated bound."""
    proc = D.absorbing(D.linear(), testbed.num_states, testbed.mask_id)
    loss = D.absorbing_loss(proc, kind="vb", T=T)
    f = jax.jit(lambda k, x: loss(testbed, D.denoiser_apply, x, k)[1]["bound_per_seq"])
    v = np.concatenate([np.asarray(f(jax.random.key(i), testbed.sample(jax.random.key(50 + i), 20000)))
                        for i in range(3)])
    exact, _ = D.exact_bound(testbed, D.linear(), T)
    se = v.std() / math.sqrt(v.size)
    assert abs(v.mean() - exact) < 4 * se + 1e-4, (v.mean(), exact, se)


def test_sequence_bound_evaluates_every_term(testbed):
    """Every t once per sequence (perplexity evaluation): unbiased for the exact bound; T = 1 exact."""
    proc = D.absorbing(D.cosine(), testbed.num_states, testbed.mask_id)
    f = jax.jit(D.sequence_bound, static_argnums=(1, 5))
    x0 = testbed.sample(jax.random.key(60), 30000)
    v = np.asarray(f(testbed, D.denoiser_apply, proc, x0, jax.random.key(61), 4))
    exact, _ = D.exact_bound(testbed, D.cosine(), 4)
    se = v.std() / math.sqrt(v.size)
    assert abs(v.mean() - exact) < 4 * se + 1e-4, (v.mean(), exact, se)


def test_continuous_bound_matches_the_large_T_limit(testbed):
    proc = D.absorbing(D.linear(), testbed.num_states, testbed.mask_id)
    loss = D.absorbing_loss(proc, kind="continuous")
    f = jax.jit(lambda k, x: loss(testbed, D.denoiser_apply, x, k)[1]["bound_per_seq"])
    v = np.concatenate([np.asarray(f(jax.random.key(i), testbed.sample(jax.random.key(80 + i), 20000)))
                        for i in range(3)])
    exact, _ = D.exact_bound(testbed, D.linear(), 4096)
    se = v.std() / math.sqrt(v.size)
    assert abs(v.mean() - exact) < 4 * se + 2e-3, (v.mean(), exact, se)


@pytest.mark.parametrize("kind,sched", [pytest.param("vb", "cosine", marks=pytest.mark.slow), ("vb", "spindle"),
                                        ("hybrid", "linear"), ("continuous", "linear"),
                                        pytest.param("continuous", "spindle", marks=pytest.mark.slow)])
def test_losses_finite_and_gradient_raises_the_true_token(kind, sched):
    s = D.spindle([50.0, 20.0, 5.0, 1.0, 0.0], mask_id=MASK) if sched == "spindle" else D.get_schedule(sched)
    proc = D.absorbing(s, N, MASK)
    vg = jax.jit(jax.value_and_grad(D.absorbing_loss(proc, kind=kind, T=16), has_aux=True), static_argnums=1)
    params = tiny_params(1)
    x0 = jnp.zeros((64, L), jnp.int32).at[:, 1].set(2)
    (val, m), g = vg(params, tiny_apply, x0, jax.random.key(3))
    assert np.isfinite(float(val)) and float(val) > 0
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(g))
    gb = np.asarray(g["b"])
    assert gb[0, 0] < 0 and gb[1, 2] < 0  # raising the true token's logit lowers the loss
    assert np.all(gb[0, 1:V] > 0) and gb[0, MASK] == 0  # the mask logit is not used
    # one gradient step lowers the loss on the same draw
    new = jax.tree_util.tree_map(lambda p, d: p - 0.05 * d, params, g)
    assert float(vg(new, tiny_apply, x0, jax.random.key(3))[0][0]) < float(val)


def test_padding_is_excluded(proc):
    params = tiny_params(2)
    loss = jit_loss(D.absorbing_loss(proc, kind="hybrid", T=8))
    x0 = jnp.array([[0, 1, 2], [3, 2, 1]], jnp.int32)
    valid = jnp.array([[True, True, False], [True, False, False]])
    a = loss(params, tiny_apply, {"tokens": x0, "valid": valid}, jax.random.key(4))
    b = loss(params, tiny_apply, {"tokens": x0.at[0, 2].set(3).at[1, 1:].set(0), "valid": valid},
             jax.random.key(4))
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    full = loss(params, tiny_apply, {"tokens": x0, "valid": jnp.ones_like(valid)}, jax.random.key(4))
    assert float(full[1]["ce"]) != pytest.approx(float(a[1]["ce"]))


def test_hybrid_is_the_single_t_term_plus_coef_times_ce(proc):
    params = tiny_params(3)
    x0 = jax.random.randint(jax.random.key(5), (32, L), 0, V)
    key = jax.random.key(6)
    run = lambda **kw: jit_loss(D.absorbing_loss(proc, T=8, **kw))(params, tiny_apply, x0, key)  # noqa: E731
    l1, m1 = run(kind="hybrid", hybrid_coef=0.5)
    lv, mv = run(kind="vb")
    # the bound enters as L_t = bound / T
    np.testing.assert_allclose(float(l1) - float(lv) / 8, 0.5 * float(m1["ce"]), rtol=1e-5)
    np.testing.assert_allclose(float(mv["bits_per_token"]), float(mv["bound"]) / math.log(2), rtol=1e-6)


def test_one_t_per_batch_option(proc):
    seen = []

    def spy(params, x_t, u):
        jax.debug.callback(lambda v: seen.append(np.asarray(v)), u)
        return tiny_apply(params, x_t, u)

    x0 = jnp.zeros((256, L), jnp.int32)
    for per_batch in (False, True):
        out = jit_loss(D.absorbing_loss(proc, kind="vb", T=64, t_per_batch=per_batch))(
            tiny_params(), spy, x0, jax.random.key(7))
        jax.block_until_ready(out)
        jax.effects_barrier()
    assert len(np.unique(seen[0])) > 10 and len(np.unique(seen[1])) == 1
    assert np.all((seen[0] > 0) & (seen[0] <= 1)) and np.allclose(seen[0] * 64, np.round(seen[0] * 64))


def test_bad_loss_spec():
    with pytest.raises(ValueError, match="unknown discrete loss"):
        D.LossSpec(kind="elbo")
    with pytest.raises(ValueError, match="T must be"):
        D.LossSpec(T=0)
