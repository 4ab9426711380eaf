"""Tokenizers (WordPiece through `tokenizers`, character level) and corpus loading / packing."""

import numpy as np
import pytest

from jdiff.discrete import text as tx

WORDS = "the cat sat on mat dog ran in park a big red house near river ,".split()


def _corpus(n_lines=60, seed=0):
    rng = np.random.RandomState(seed)
    return "\n".join(" ".join(rng.choice(WORDS, size=rng.randint(3, 10))) for _ in range(n_lines)) + "\n"


@pytest.fixture(scope="module")
def wordpiece():
    return tx.WordPieceTokenizer.train(_corpus().splitlines(), vocab_size=200, min_frequency=1)


def test_wordpiece_train_save_load_round_trip(wordpiece, tmp_path):
    tok = wordpiece
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    text = "the big red dog ran in the park"
    ids = tok.encode(text)
    assert all(i > 4 for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode([tok.cls_id] + ids + [tok.sep_id, tok.pad_id]) == text     # framing dropped
    assert "[MASK]" in tok.decode(ids[:2] + [tok.mask_id])                       # mask stays visible
    assert tok.decode(tok.encode("The Big, RED dog")) == "the big, red dog"      # normalised
    path = tmp_path / "vocab.txt"
    tok.save_vocab(path)
    assert len(path.read_text().splitlines()) == tok.vocab_size
    again = tx.WordPieceTokenizer.from_vocab(path)
    assert again.vocab_size == tok.vocab_size and again.mask_id == tok.mask_id
    lines = _corpus(seed=1).splitlines()
    assert again.encode_batch(lines) == tok.encode_batch(lines)
    assert tok.decode_batch(np.array([ids, ids])) == [text, text]


def test_wordpiece_bert_style_vocab(tmp_path):
    """A bert-base-uncased-like layout: specials at 0 and 100..103, '##' continuation pieces."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                                "the", "cat", "play", "##ing", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = tx.WordPieceTokenizer.from_vocab(tmp_path / "vocab.txt")
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
    assert tok.encode("The cats playing dog") == [104, 105, 108, 106, 107, 100]
    assert tok.decode([104, 105, 108, 106, 107]) == "the cats playing"
    (tmp_path / "bad.txt").write_text("the\ncat\n[PAD]\n")
    with pytest.raises(ValueError, match=r"lacks the special token\(s\) \[UNK\], \[CLS\], \[SEP\], \[MASK\]"):
        tx.WordPieceTokenizer.from_vocab(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tx.WordPieceTokenizer.from_vocab(tmp_path / "nope.txt")


def test_char_tokenizer_round_trip_and_counts(tmp_path):
    text = "to be, or not to be\nthat is the question\n"
    tok = tx.CharTokenizer.from_text(text)
    assert tok.vocab_size == 5 + len(set(text)) and tok.mask_id == 4 and tok.pad_id == 0
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("z") == [tok.unk_id]
    counts = tok.token_counts(text.splitlines())
    assert counts.dtype == np.int64 and counts.shape == (tok.vocab_size,)
    assert counts[tok.encode("t")[0]] == text.count("t") and counts[tok.encode("b")[0]] == 2
    assert counts.sum() == len(text.replace("\n", ""))
    tok.save(tmp_path / "chars.json")
    assert tx.CharTokenizer.load(tmp_path / "chars.json").encode(text) == tok.encode(text)


def test_wordpiece_counts(wordpiece):
    lines = ["the cat the dog", "the red house"]
    counts = wordpiece.token_counts(lines)
    the = wordpiece.encode("the")[0]
    assert counts[the] == 3 and counts.sum() == 7 and counts[wordpiece.pad_id] == 0


def test_pack_concat_and_line():
    ids = [[5, 6, 7], [8], [9, 10, 11, 12, 13]]
    tokens, mask = tx.pack(ids, 4, pad_id=0, packing="concat")
    np.testing.assert_array_equal(tokens, [[5, 6, 7, 8], [9, 10, 11, 12], [13, 0, 0, 0]])
    np.testing.assert_array_equal(mask.sum(1), [4, 4, 1])
    tokens, mask = tx.pack(ids, 4, pad_id=0, packing="line")
    np.testing.assert_array_equal(tokens, [[5, 6, 7, 0], [8, 0, 0, 0], [9, 10, 11, 12], [13, 0, 0, 0]])
    assert tokens.dtype == np.int32 and mask.dtype == bool and mask.sum() == 9


def test_load_corpus_split_and_files(tmp_path):
    text = _corpus(80)
    (tmp_path / "all.txt").write_text(text)
    c = tx.load_text_corpus(tmp_path / "all.txt", tokenizer="wordpiece", vocab_size=200,
                            min_frequency=1, seq_len=16, test_fraction=0.25)
    assert c.train.tokens.shape[1] == 16 and c.test.tokens.shape[1] == 16
    assert c.train.num_words + c.test.num_words == len(text.split())
    assert 0.15 < c.test.num_words / len(text.split()) < 0.35
    # every word of the text is a token here (all words are in the vocabulary): nothing dropped
    assert c.train.num_tokens == c.train.num_words and c.test.num_tokens == c.test.num_words
    np.testing.assert_array_equal(c.counts, np.bincount(c.train.tokens[c.train.mask],
                                                        minlength=c.tokenizer.vocab_size))
    assert np.all(c.train.tokens[~c.train.mask] == c.tokenizer.pad_id)
    # explicit train / test files, character level, one line per row
    (tmp_path / "test.txt").write_text("the cat sat\n\nthe dog ran far away from the house\n")
    c2 = tx.load_text_corpus(tmp_path / "all.txt", tmp_path / "test.txt", tokenizer="char",
                             seq_len=12, packing="line")
    assert c2.test.tokens.shape == (1 + 3, 12)     # 11 chars -> 1 row; 35 chars -> 3 rows
    assert c2.tokenizer.decode(c2.test.tokens[0]) == "the cat sat"
    assert c2.test.num_words == 11


@pytest.mark.parametrize("content,exc,message", [
    (None, FileNotFoundError, r"corpus file '.*missing\.txt' does not exist"),
    (b"", ValueError, r"corpus file '.*bad\.txt' is empty$"),
    (b"  \n\n\t\n", ValueError, r"corpus file '.*bad\.txt' is empty \(only whitespace\)"),
    (b"some text\x00\x01\x02 more", ValueError, r"is binary \(NUL byte at offset 9\), not UTF-8 text"),
    (b"caf\xe9 latin-1", ValueError, r"is not UTF-8 text \(invalid byte at offset 3\)"),
])
def test_corpus_errors_one_clear_line(tmp_path, content, exc, message):
    path = tmp_path / ("missing.txt" if content is None else "bad.txt")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(exc, match=message) as info:
        tx.load_text_corpus(path, tokenizer="char")
    assert "\n" not in str(info.value) and info.value.__cause__ is None
    assert isinstance(info.value, (ValueError, OSError))


def test_other_errors(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        tx.read_corpus(tmp_path)
    (tmp_path / "one.txt").write_text("a single line\n")
    with pytest.raises(ValueError, match="cannot hold out 0.1 of a corpus of 1 line"):
        tx.load_text_corpus(tmp_path / "one.txt", tokenizer="char", test_fraction=0.1)
    with pytest.raises(ValueError, match="tokenizer must be"):
        tx.load_text_corpus(tmp_path / "one.txt", tmp_path / "one.txt", tokenizer="bpe")


def test_literal_specials_and_unk_marker(tmp_path):
    (tmp_path / "train.txt").write_text("the cat sat on the mat\n" * 5 + "a <unk> sat on the mat\n")
    (tmp_path / "test.txt").write_text("the [MASK] cat [PAD] <unk> sat\n")
    c = tx.load_text_corpus(tmp_path / "train.txt", tmp_path / "test.txt", vocab_size=100,
                            min_frequency=1, seq_len=8, unk_marker="<unk>")
    tok = c.tokenizer
    row = c.test.tokens[0][c.test.mask[0]]
    assert tok.mask_id not in row and tok.pad_id not in row       # literal specials -> [UNK]
    assert tok.decode(row) == "the [UNK] cat [UNK] [UNK] sat" and c.test.num_words == 6
    assert c.counts[tok.unk_id] == 1                               # the train <unk>: one token
    with pytest.raises(ValueError, match="WordPiece tokenizers only"):
        tx.load_text_corpus(tmp_path / "train.txt", tmp_path / "test.txt", tokenizer="char",
                            unk_marker="<unk>")


def test_wordpiece_training_gives_the_same_ids_every_time():
    """tokenizers' trainer orders equal-count pieces by hash-map iteration (other ids from run to
    run, same pieces); train() renumbers them canonically, and [UNK] written in text is [UNK]."""
    words = [f"w{a}{b}" for a in "abcdefgh" for b in "ijklmnop"]  # many pieces of equal count
    lines = [" ".join(words)] * 3
    vocabs = [tx.WordPieceTokenizer.train(lines, vocab_size=120)._tok.get_vocab() for _ in range(4)]
    assert all(v == vocabs[0] for v in vocabs[1:])
    tok = tx.WordPieceTokenizer.train(lines, vocab_size=120)
    assert tok.encode("wai [UNK]")[-1] == tok.unk_id


def test_save_and_load_tokenizer_any_kind(wordpiece, tmp_path):
    """``save`` + ``load_tokenizer``: the whole pipeline comes back with the same ids (WordPiece
    tokenizer.json, character JSON, BERT vocab.txt), with one-line errors for bad files."""
    lines = _corpus(seed=2).splitlines() + ["The Big, RED dog [UNK] [MASK]"]
    wordpiece.save(tmp_path / "tokenizer.json")
    wordpiece.save_vocab(tmp_path / "vocab.txt")
    char = tx.CharTokenizer.from_text("".join(lines))
    char.save(tmp_path / "chars.json")
    for path, tok, kind in [("tokenizer.json", wordpiece, tx.WordPieceTokenizer),
                            ("vocab.txt", wordpiece, tx.WordPieceTokenizer), ("chars.json", char, tx.CharTokenizer)]:
        again = tx.load_tokenizer(tmp_path / path)
        assert type(again) is kind and again.special_ids == tok.special_ids
        assert again.vocab_size == tok.vocab_size
        assert again.encode_batch(lines) == tok.encode_batch(lines)
        ids = tok.encode(lines[-1])
        assert again.decode(ids) == tok.decode(ids)
    cased = tx.WordPieceTokenizer.from_vocab(tmp_path / "vocab.txt", lowercase=False)
    cased.save(tmp_path / "cased.json")
    assert tx.load_tokenizer(tmp_path / "cased.json").lowercase is False
    (tmp_path / "broken.json").write_text('{"model": ')
    (tmp_path / "other.json").write_text('{"model": {"type": "BPE"}}')
    for name, err, msg in [("nope.json", FileNotFoundError, "does not exist"),
                           ("broken.json", ValueError, "not valid JSON"),
                           ("other.json", ValueError, "tokenizer")]:
        with pytest.raises(err, match=msg) as e:
            tx.load_tokenizer(tmp_path / name)
        assert "\n" not in str(e.value)
