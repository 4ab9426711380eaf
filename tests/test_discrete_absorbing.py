"""Absorbing process: closed-form marginals and posteriors against brute-force |V| x |V| matrices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import discrete as D

N, MASK, L, T = 6, 5, 5, 8  # 5 real tokens + mask
COUNTS = np.array([500.0, 120.0, 30.0, 7.0, 1.0, 0.0])


def schedules():
    return {"linear": D.linear(), "cosine": D.cosine(),
            "spindle": D.spindle(COUNTS, lam=0.3, mask_id=MASK),
            "spindle_ratio": D.spindle([40.0, 30.0, 25.0, 20.0, 15.0, 0.0], lam=0.3, form="ratio", mask_id=MASK)}


def q_step(a_s, a_t):
    """Brute-force transition matrix Q_{s->t} (N, N) of one token whose keep probability goes from
    a_s to a_t: rows are x_s, columns x_t (D3PM absorbing)."""
    Q = np.zeros((N, N))
    Q[MASK, MASK] = 1.0
    for i in range(N):
        if i != MASK:
            Q[i, i] = a_t / a_s
            Q[i, MASK] = 1.0 - a_t / a_s
    return Q


@pytest.fixture(scope="module")
def x0():
    return jnp.array([[0, 1, 2, 3, 4], [4, 4, 0, 1, 0], [2, 2, 2, 2, 2]], jnp.int32)  # (3, L)


@pytest.mark.parametrize("name", ["linear", "cosine", "spindle", "spindle_ratio"])
def test_marginals_equal_products_of_one_step_matrices(name, x0):
    sched = schedules()[name]
    proc = D.absorbing(sched, N, MASK)
    A = np.stack([np.asarray(proc.alpha_bar(jnp.full((3,), t / T), x0)) for t in range(T + 1)])  # (T+1, B, L)
    assert np.all(A[0] == 1.0) and np.all(A[-1] == 0.0)
    assert np.all(np.diff(A, axis=0) <= 1e-7), "keep probability must not increase with t"
    got = np.stack([np.asarray(proc.marginal_probs(x0, jnp.asarray(A[t]))) for t in range(T + 1)])
    for b in range(3):
        for i in range(L):
            Qbar = np.eye(N)
            for t in range(1, T + 1):
                Qbar = Qbar @ q_step(A[t - 1, b, i], A[t, b, i]) if A[t - 1, b, i] > 0 else Qbar @ q_step(1, 0)
                np.testing.assert_allclose(got[t, b, i], Qbar[int(x0[b, i])], atol=2e-6)


@pytest.mark.parametrize("name", ["linear", "cosine", "spindle", "spindle_ratio"])
@pytest.mark.parametrize("s,t", [(0, 1), (2, 6), (5, 8)])
def test_posterior_equals_bayes_with_matrices(name, s, t, x0):
    """q(x_s | x_t, x0) ∝ Q_{s->t}[x_s, x_t] Qbar_s[x0, x_s] for every x_t, stride t - s."""
    proc = D.absorbing(schedules()[name], N, MASK)
    a_s = np.asarray(proc.alpha_bar(jnp.full((3,), s / T), x0))
    a_t = np.asarray(proc.alpha_bar(jnp.full((3,), t / T), x0))
    for xt_kind in ("masked", "kept"):
        x_t = jnp.full_like(x0, MASK) if xt_kind == "masked" else x0
        got = np.asarray(proc.posterior_probs(x_t, x0, jnp.asarray(a_s), jnp.asarray(a_t)))
        for b in range(3):
            for i in range(L):
                prior = q_step(1.0, a_s[b, i])[int(x0[b, i])]  # q(x_s | x0)
                lik = q_step(a_s[b, i], a_t[b, i])[:, int(x_t[b, i])] if a_s[b, i] > 0 else np.eye(N)[:, MASK]
                post = prior * lik
                if post.sum() == 0:  # x_t kept at t = T: an impossible observation
                    continue
                np.testing.assert_allclose(got[b, i], post / post.sum(), atol=2e-6)


@pytest.mark.parametrize("name", ["linear", "cosine", "spindle"])
def test_x0_parameterised_posterior_is_the_mixture_over_x0(name):
    """exp(posterior_logits) = sum_{x0} q(x_s | x_t, x0) p(x0 | x_t) at fixed per-token alphas."""
    proc = D.absorbing(schedules()[name], N, MASK)
    key = jax.random.key(0)
    logits = jax.random.normal(key, (2, L, N)) * 2
    logp0 = D.x0_log_probs(logits, MASK)
    assert np.all(np.isneginf(np.asarray(logp0[..., MASK])))
    x_t = jnp.array([[MASK, 1, MASK, MASK, 0], [MASK] * L], jnp.int32)
    a_s, a_t = proc.model_alphas(jnp.float32(2 / T), jnp.float32(5 / T), x_t, logp0)
    got = np.exp(np.asarray(proc.posterior_logits(x_t, logp0, a_s, a_t)))
    want = np.zeros_like(got)
    for v in range(N - 1):
        x0v = jnp.where(x_t == MASK, v, x_t)
        want += np.asarray(proc.posterior_probs(x_t, x0v, a_s, a_t)) * np.where(
            np.asarray(x_t == MASK)[..., None], np.exp(np.asarray(logp0[..., v]))[..., None], 1.0 / (N - 1))
    np.testing.assert_allclose(got, want, atol=2e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)


def test_sampled_marginal_frequencies_and_padding():
    proc = D.absorbing(D.linear(), N, MASK)
    x0 = jnp.zeros((20000, 2), jnp.int32)
    valid = jnp.array([True, False])[None].repeat(20000, 0)
    a = proc.alpha_bar(jnp.full((20000,), 0.3), x0)
    xt = np.asarray(proc.sample_marginal(jax.random.key(1), x0, a, valid))
    assert abs((xt[:, 0] == MASK).mean() - 0.3) < 0.015
    assert np.all(xt[:, 1] == 0), "padding is never masked"


def test_schedules_are_pytrees_that_compare_by_value_and_trace():
    a, b = D.spindle(COUNTS, lam=0.3, mask_id=MASK), D.spindle(COUNTS, lam=0.3, mask_id=MASK)
    assert D.linear() == D.linear() and D.cosine() != D.linear()
    leaves = jax.tree_util.tree_leaves(a)
    assert len(leaves) == 3 and all(isinstance(x, jax.Array) for x in leaves)
    traces = []

    @jax.jit
    def f(sched, x0):
        traces.append(1)
        return sched.alpha_bar(jnp.float32(0.5), sched.weights(x0))

    x0 = jnp.array([[0, 4, 2]])
    f(a, x0)
    f(b.replace(lam=jnp.float32(0.1)), x0)  # a new lambda: no recompilation
    assert len(traces) == 1
    lam0 = f(b.replace(lam=jnp.float32(0.0)), x0)
    np.testing.assert_allclose(lam0, D.linear().alpha_bar(0.5, jnp.zeros((1, 3))), atol=1e-7)


def test_spindle_difference_form_matches_the_code_formula():
    """keep_i = clip(1 - u + lam sin(pi u) (f_i - mean f), 0, 0.999), f = log(c + 1) / max log(c + 1)."""
    sched = D.spindle(COUNTS, lam=0.3, mask_id=MASK)
    x0 = jnp.array([[0, 3, 4, 1], [0, 0, 0, 0]])
    valid = jnp.array([[True, True, True, False], [True] * 4])
    f = np.log(COUNTS + 1) / np.log(COUNTS + 1).max()
    for u in (0.1, 0.5, 0.97):
        got = np.asarray(sched.alpha_bar(jnp.float32(u), sched.weights(x0, valid)))
        fx = f[np.asarray(x0)]
        w = fx - (fx * np.asarray(valid)).sum(-1, keepdims=True) / np.asarray(valid).sum(-1, keepdims=True)
        w = np.where(np.asarray(valid), w, 0.0)
        want = np.clip(1 - u + 0.3 * np.sin(np.pi * u) * w, 0, 0.999)
        np.testing.assert_allclose(got, want, atol=1e-6)
    # frequent tokens are kept longer (the paper's and the code's sign)
    mid = np.asarray(sched.alpha_bar(jnp.float32(0.5), sched.weights(x0, valid)))
    assert mid[0, 0] > mid[0, 1] > mid[0, 2]


def test_spindle_ratio_form_blows_up_for_very_frequent_tokens():
    """Paper eq. 12: w_i = mean H / H_i - 1 is unbounded as H_i -> 0 (a very frequent token)."""
    counts = np.array([1e6, 10.0, 10.0, 10.0, 1.0, 0.0])  # token 0: frequency ~ 1, H ~ 4e-5
    ratio = D.spindle(counts, lam=0.3, form="ratio", mask_id=MASK)
    diff = D.spindle(counts, lam=0.3, mask_id=MASK)
    x0 = jnp.array([[0, 1, 2, 4]])
    w_ratio, w_diff = np.asarray(ratio.weights(x0)), np.asarray(diff.weights(x0))
    assert w_ratio[0, 0] > 1e3 and np.all(np.abs(w_diff) <= 1.0)
    a = np.asarray(ratio.alpha_bar(jnp.float32(0.9), ratio.weights(x0)))
    assert a[0, 0] == pytest.approx(0.999)  # saturated at the clip late in the trajectory


def test_discrete_grid_stride_and_ends():
    np.testing.assert_allclose(D.discrete_times(8, 4), [1, 0.75, 0.5, 0.25, 0])
    np.testing.assert_allclose(D.discrete_times(10, 4), [1, 0.7, 0.5, 0.2, 0])  # floor(T (k - i) / k) / T
    np.testing.assert_allclose(D.discrete_times(None, 2), [1, 0.5, 0])


def test_bad_process_and_schedule_arguments():
    with pytest.raises(ValueError, match="mask_id"):
        D.absorbing(D.linear(), 5, 5)
    with pytest.raises(ValueError, match="unknown spindle form"):
        D.spindle(COUNTS, form="log")
    with pytest.raises(ValueError, match="non-negative"):
        D.spindle([1.0, -2.0])
    with pytest.raises(ValueError, match="unknown discrete schedule"):
        D.get_schedule("sqrt")
