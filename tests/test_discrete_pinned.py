"""Closed-form values and edge cases of the discrete core that self-consistent tests cannot see
(each found by a mutation that the rest of the suite let through)."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jdiff import discrete as D
from jdiff.discrete.text import CharTokenizer, encode_corpus
from jdiff.metrics.text import self_bleu_scores

MASK = 5  # ids 0..4 tokens, 5 the mask


def test_schedule_values_and_mask_coefficient_clip():
    z = jnp.zeros((1, 1))
    np.testing.assert_allclose(D.cosine().alpha_bar(jnp.array([0.5]), z), [[math.cos(math.pi / 4)]], rtol=1e-6)
    np.testing.assert_allclose(D.cosine().alpha_bar(jnp.array([1 / 3]), z), [[math.cos(math.pi / 6)]], rtol=1e-6)
    np.testing.assert_allclose(D.linear().alpha_bar(jnp.array([0.3]), z), [[0.7]], rtol=1e-6)
    c = D.Absorbing.mask_coefficient(jnp.array([0.2, 0.5, 0.3]), jnp.array([0.5, 0.2, 1.0]))
    np.testing.assert_allclose(c, [1.0, 0.625, 0.0], rtol=1e-6)  # clipped to 1; 0 where alpha_t = 1


def test_spindle_model_alphas_use_the_predicted_x0():
    proc = D.absorbing(D.spindle(np.arange(1.0, 7.0), mask_id=MASK), MASK + 1, MASK)
    x0 = jnp.array([[0, 1, 2, 3, 4]])
    x_t = x0.at[0, 1].set(MASK).at[0, 3].set(MASK)
    logp0 = D.x0_log_probs(10.0 * jax.nn.one_hot(x0, MASK + 1), MASK)  # confident and right
    a_s, a_t = proc.model_alphas(0.3, 0.6, x_t, logp0)
    np.testing.assert_allclose(a_s, proc.alpha_bar(0.3, x0), rtol=1e-6)
    np.testing.assert_allclose(a_t, proc.alpha_bar(0.6, x0), rtol=1e-6)


def test_kl_masked_against_brute_force():
    """q = (x0: 0.7, other: 0, mask: 0.3); p = (x0: 0.4 x 0.5, other: 0.4 x 0.5, mask: 0.6)."""
    q, p = np.array([0.7, 0.0, 0.3]), np.array([0.2, 0.2, 0.6])
    want = float(np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1) / p), 0.0)))
    np.testing.assert_allclose(D.kl_masked(jnp.float32(0.3), jnp.float32(0.6), jnp.log(jnp.float32(0.5))), want,
                               rtol=1e-5)


def _uniform(params, x, t):
    return jnp.zeros(x.shape + (MASK + 1,), jnp.float32)


def test_bound_per_token_counts_only_valid_tokens():
    proc = D.absorbing(D.linear(), MASK + 1, MASK)
    batch = {"tokens": jnp.array([[0, 1, 2, 0, 0]]), "valid": jnp.array([[True, True, True, False, False]])}
    value, m = D.absorbing_loss(proc, kind="vb", T=4)(None, _uniform, batch, jax.random.key(0))
    np.testing.assert_allclose(m["bound"], m["bound_per_seq"].sum() / 3, rtol=1e-6)
    np.testing.assert_allclose(value, m["bound_per_seq"].sum() / 3, rtol=1e-6)
    assert float(m["bound_per_seq"][0]) > 0


def test_inverse_cdf_draw_is_shift_invariant():
    """Logits shifted by +-1000 give the same law (the max is subtracted before exp)."""
    lp = jnp.log(jnp.array([0.0, 0.5, 0.2, 0.3]))
    for shift in (1000.0, -1000.0):
        x = np.asarray(D.categorical_inverse_cdf(jax.random.key(1), jnp.broadcast_to(lp + shift, (20000, 4))))
        np.testing.assert_allclose(np.bincount(x, minlength=4) / x.size, [0, 0.5, 0.2, 0.3], atol=0.015)


def test_top_p_boundary_is_strict():
    """Masses before the four equal entries are exactly 0, .25, .5, .75: top_p = 0.5 keeps 2."""
    assert int(np.isfinite(np.asarray(D.filter_logits(jnp.zeros((1, 4)), top_p=0.5))).sum()) == 2


B_TEMP = np.log(np.array([0.6, 0.3, 0.1, 1e-9]))


def _fixed_x0(params, x, t):
    """The same x0 law at every position: p = (.6, .3, .1, ~0) over ids 0..3 (id 4 the mask)."""
    return jnp.broadcast_to(jnp.append(jnp.asarray(B_TEMP, jnp.float32), 0.0), x.shape + (5,))


def test_temperature_sharpens_the_draw():
    """One step from all-mask draws from p^(1 / temperature), renormalised."""
    proc = D.absorbing(D.linear(), 5, 4)
    x = np.asarray(D.sample(_fixed_x0, None, proc, jax.random.key(2), (20000, 1), 1, temperature=0.5))
    p2 = np.exp(B_TEMP) ** 2
    np.testing.assert_allclose(np.bincount(x[:, 0], minlength=4) / x.size, p2 / p2.sum(), atol=0.015)


def test_char_concat_packing_keeps_newlines():
    text = "ab\ncd\n"
    tok = CharTokenizer.from_text(text)
    chunks = encode_corpus(tok, text, 8)
    assert chunks.num_tokens == 6
    assert tok.decode(chunks.tokens[0][chunks.mask[0]]) == text


def test_self_bleu_matches_sacrebleu_with_repeated_ngrams():
    from sacrebleu.metrics import BLEU

    hyps = ["a b c d", "a b c d a b c d", "x y z w"]
    bleu = BLEU(tokenize="none", smooth_method="none", effective_order=False)
    want = [bleu.sentence_score(h, hyps[:i] + hyps[i + 1:]).score for i, h in enumerate(hyps)]
    np.testing.assert_allclose(self_bleu_scores(hyps), want, atol=1e-9)
    assert max(want) > 0
