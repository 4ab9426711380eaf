"""Text metrics: bound-based perplexity conversions, BLEU and self-BLEU through sacrebleu."""

import math

import numpy as np
import pytest
from sacrebleu.metrics import BLEU

from jdiff.metrics import text as tm

REFS = ["the cat sat on the mat by the door", "a dog ran across the green park today",
        "she reads a long book every night", "the old man walked to the market slowly"]


def test_perplexity_conversions_hand_computed():
    # the maintainer's worked example: 110 nats over 26 words -> exp(4.2308)
    assert tm.perplexity_per_word(110.0, 26) == pytest.approx(math.exp(110 / 26))
    assert tm.perplexity_per_word(110.0, 26) == pytest.approx(68.78, abs=0.01)
    # 1000 nats over 500 tokens: 2 nats/token -> e^2 = 7.389; 2/ln 2 = 2.885 bits
    assert tm.perplexity_per_token(1000.0, 500) == pytest.approx(7.389056, rel=1e-6)
    assert tm.bits_per_token(1000.0, 500) == pytest.approx(2.0 / math.log(2))
    # a uniform model over V tokens has bound L log V per sequence: PPL_token = V
    assert tm.perplexity_per_token(64 * math.log(50.0), 64) == pytest.approx(50.0)
    r = tm.perplexity_report(1000.0, 500, 250)
    assert r["ppl_word"] == pytest.approx(math.exp(4.0)) and r["nats_per_token"] == 2.0
    with pytest.raises(ValueError, match="positive"):
        tm.perplexity_per_word(1.0, 0)


def test_bleu_identical_and_perturbed():
    assert tm.bleu(REFS[:2], REFS) == pytest.approx(100.0)
    perturbed = ["the cat sat on a mat by the window", "a dog ran across the park today"]
    scores = tm.bleu_scores(perturbed, REFS)
    assert np.all((scores > 0) & (scores < 100))
    assert tm.bleu(["zebra quantum violin"], REFS) == 0.0


def test_bleu_fast_path_equals_sacrebleu_sentence_score():
    rng = np.random.RandomState(0)
    words = "the a cat dog sat ran on mat park book night old man".split()
    hyps = [" ".join(rng.choice(words, size=rng.randint(3, 12))) for _ in range(6)] + REFS[:1]
    ref = BLEU(tokenize="none", smooth_method="none", effective_order=False)
    np.testing.assert_allclose(tm.bleu_scores(hyps, REFS),
                               [ref.sentence_score(h, REFS).score for h in hyps], atol=1e-9)
    np.testing.assert_allclose(tm.self_bleu_scores(hyps),
                               [ref.sentence_score(h, hyps[:i] + hyps[i + 1:]).score
                                for i, h in enumerate(hyps)], atol=1e-9)


def test_self_bleu_identical_vs_diverse():
    same = ["the cat sat on the mat by the door"] * 4
    assert tm.self_bleu(same) == pytest.approx(100.0)
    assert tm.self_bleu(REFS) < 20.0
    with pytest.raises(ValueError, match="at least 2"):
        tm.self_bleu(REFS[:1])
    with pytest.raises(ValueError, match="non-empty sequence of strings"):
        tm.bleu("just one string", REFS)
