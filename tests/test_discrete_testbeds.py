"""Exact discrete testbed: specs, exact law, exact denoiser and exact bound."""

import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import discrete as D


@pytest.fixture(scope="module")
def tb():
    return D.get_discrete_testbed("k3l4v5")


def test_builtins_are_deterministic_and_valid(tb):
    again = D.get_discrete_testbed("k3l4v5")
    np.testing.assert_array_equal(tb.probs, again.probs)
    assert (tb.K, tb.L, tb.V, tb.num_states, tb.mask_id) == (3, 4, 5, 6, 5)
    big = D.get_discrete_testbed("k4l5v6")
    assert (big.K, big.L, big.V) == (4, 5, 6)
    p = tb.all_probs()
    assert p.shape == (5 ** 4,) and abs(p.sum() - 1) < 1e-12 and np.all(p > 0)
    np.testing.assert_allclose(np.exp(tb.log_prob(tb.all_sequences())), p, rtol=1e-10)
    assert tb.entropy() == pytest.approx(-(p * np.log(p)).sum())


def test_exact_samples_follow_the_exact_law(tb):
    p = tb.all_probs()
    x = np.asarray(tb.sample(jax.random.key(0), 40000))
    counts = np.bincount(D.sequence_index(x, tb.V), minlength=p.size)
    # the 20 most likely sequences, each within 5 binomial standard deviations
    top = np.argsort(-p)[:20]
    sd = np.sqrt(40000 * p[top] * (1 - p[top]))
    assert np.all(np.abs(counts[top] - 40000 * p[top]) < 5 * sd)


def test_exact_denoiser_is_bayes_by_enumeration(tb):
    """p(x0^i | x_t) from the enumerated joint, conditioning on the unmasked tokens."""
    seqs, p = tb.all_sequences(), tb.all_probs()
    rng = np.random.RandomState(0)
    x_t = seqs[rng.choice(len(seqs), 6)].copy()
    masks = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0], [0, 1, 0, 1]], bool)
    x_t[masks] = tb.mask_id
    got = np.exp(np.asarray(tb.denoiser(jnp.asarray(x_t, jnp.int32)), np.float64))  # (6, L, N)
    for b in range(6):
        ok = np.all((seqs == x_t[b]) | masks[b], axis=1)
        cond = p * ok / (p * ok).sum()
        for i in range(tb.L):
            want = np.bincount(seqs[:, i], weights=cond, minlength=tb.V)
            np.testing.assert_allclose(got[b, i, :tb.V], want, atol=1e-5)
            assert got[b, i, tb.mask_id] == 0


def test_bound_is_an_upper_bound_that_approaches_the_entropy(tb):
    table = D.nll_table(tb)
    H = tb.entropy()
    Ts = (1, 2, 4, 16, 1024)
    b = np.array([D.exact_bound(tb, D.linear(), T, table=table)[0] for T in Ts])
    assert np.all(b >= H - 1e-9)
    assert np.all(np.diff(b) < 0), b  # monotone in T on this testbed
    assert b[-1] - H < 0.002 * H and b[0] - H > 0.05 * H
    # T = 1: the NLL of the product of the position marginals
    marg = np.einsum("k,klv->lv", np.asarray(tb.weights, np.float64), np.asarray(tb.probs, np.float64))
    seqs, p = tb.all_sequences(), tb.all_probs()
    nll1 = -(p * np.log(marg[np.arange(tb.L), seqs]).sum(-1)).sum()
    assert b[0] == pytest.approx(nll1, rel=1e-6)


def test_mask_weights_sum_to_the_expected_number_of_unmaskings():
    """Sum over patterns: sum_k C(L, k) k W(k) = sum_t E[#masked at t] (1 - c_t) = L (each token
    is unmasked exactly once on the reverse path)."""
    L = 4
    for sched in (D.linear(), D.cosine()):
        W = D.mask_weights(sched, 32, L)
        total = sum(math.comb(L, k) * k * W[k] for k in range(L + 1))
        assert total == pytest.approx(L, rel=1e-5)


def test_monte_carlo_bound_agrees_with_enumeration(tb):
    exact, _ = D.exact_bound(tb, D.cosine(), 8)
    mc, se = D.exact_bound(tb, D.cosine(), 8, n_mc=40000, key=jax.random.key(1))
    assert 0 < se < 0.05 and abs(mc - exact) < 4 * se


def test_tv_distance():
    probs = np.array([0.5, 0.25, 0.25, 0.0])
    assert D.tv_distance(np.array([[0, 0], [0, 1]]), probs, 2) == pytest.approx(0.25)
    np.testing.assert_array_equal(D.sequence_index(np.array(list(itertools.product(range(3), repeat=2))), 3),
                                  np.arange(9))


BAD_SPECS = [
    ({"weights": [1.0]}, "must be an object with fields 'weights' and 'probs'"),
    ({"weights": [0.5, 0.5], "probs": [[[0.5, 0.5]]]}, "must have shape [K][L][V] with K = 2"),
    ({"weights": [1.0], "probs": [[[0.7, 0.7]]]}, "field 'probs' must sum to 1"),
    ({"weights": [1.2], "probs": [[[0.5, 0.5]]]}, "field 'weights' must sum to 1"),
    ({"weights": [1.0], "probs": [[[1.5, -0.5]]]}, "finite and non-negative"),
    ({"weights": [1.0], "probs": [[[1.0]]]}, "V >= 2"),
    ({"weights": [1.0], "probs": [[["a", "b"]]]}, "numeric arrays"),
    ({"weights": [1.0], "probs": [[[0.5, 0.5]]], "means": [0]}, "unknown field(s) means"),
]


@pytest.mark.parametrize("spec,message", BAD_SPECS, ids=[m for _, m in BAD_SPECS])
def test_bad_specs_are_one_clear_line(spec, message, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError) as e:
        D.load_spec(str(path))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_spec_round_trip_and_non_json(tmp_path, tb):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"weights": np.asarray(tb.weights).tolist(), "probs": np.asarray(tb.probs).tolist()}))
    back = D.get_discrete_testbed(str(path))
    assert back.name == "mine"
    np.testing.assert_allclose(back.probs, tb.probs, rtol=1e-6)
    (tmp_path / "bad.json").write_text("{weights: 1")
    with pytest.raises(ValueError, match="not valid JSON"):
        D.load_spec(str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="unknown discrete testbed"):
        D.get_discrete_testbed("k9")
