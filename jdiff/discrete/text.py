"""Text for discrete diffusion: tokenizers (WordPiece, character level) and corpus loading.

    corpus = load_text_corpus("train.txt", "test.txt", tokenizer="wordpiece", vocab_size=8000,
                              seq_len=64)
    corpus.train.tokens      # int32 (N, 64), pad_id where corpus.train.mask is False
    corpus.counts            # int64 (vocab_size,), token counts of the training split (spindle)
    tok = corpus.tokenizer   # .encode / .decode / .vocab_size / .mask_id / .pad_id

Tokenizers share one interface (:class:`TextTokenizer`): ``encode(text) -> list[int]``,
``encode_batch(texts)``, ``decode(ids, skip_special=True) -> str``, ``decode_batch``,
``vocab_size`` (N, [MASK] included), ``pad_id``, ``unk_id``, ``cls_id``, ``sep_id``, ``mask_id``
and ``token_counts(texts) -> int64 (N,)``. Both carry the BERT special tokens [PAD], [UNK],
[CLS], [SEP], [MASK] (ids 0..4 when trained here; read from the file for a BERT ``vocab.txt``,
e.g. 0, 100, 101, 102, 103 for bert-base-uncased).

* :class:`WordPieceTokenizer`: HuggingFace ``tokenizers`` WordPiece with BERT's normaliser
  (lower-casing and accent stripping by default) and pre-tokeniser (whitespace and punctuation
  splits), trained on the corpus (``WordPieceTrainer``) or loaded from a local ``vocab.txt``.
  ``decode`` joins "##" continuation pieces and, like BERT's decode, removes the space before
  punctuation, so it returns the normalised text (``"Hello, World!" -> "hello, world!"``; words
  split off by the pre-tokeniser such as WikiText's ``@-@`` come back as ``@ - @``).
* :class:`CharTokenizer`: one id per character seen in the training text (newlines included);
  unseen characters map to [UNK].

Corpus files are read strictly: a missing path raises ``FileNotFoundError``, a directory
``IsADirectoryError`` (both ``OSError``), and an empty (or whitespace-only), binary (NUL bytes)
or non-UTF-8 file a ``ValueError``; each message is one line naming the file. A single file is
split contiguously at a line boundary (the last ``test_fraction`` of the characters is the test
split: no sentence of the test text is seen in training, and neighbouring sentences do not leak
across the split), or train and test files are given separately (WikiText-2).

Packing into fixed-length rows (:func:`encode_corpus`): ``"concat"`` concatenates the token ids of
all lines (the language-modelling convention for WikiText / tiny shakespeare) and cuts them into
rows of ``seq_len``; ``"line"`` keeps one line per row as DiffusionBERT does with LM1B sentences,
splitting lines longer than ``seq_len`` into several rows. No token is dropped: the last row of
each line / of the corpus is padded, and ``mask`` marks the real tokens. ``num_words`` counts
whitespace-separated words of the source text, the denominator of the per-word perplexity
(:func:`jdiff.metrics.text.perplexity_per_word`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, List, Sequence, Tuple, Union

import numpy as np

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PACKINGS = ("concat", "line")


# -------------------------------------------------------------------------------------- tokenizers

class TextTokenizer:
    """Shared interface. Subclasses define ``_encode_batch``, ``_decode``, ``vocab_size`` and the
    special ids."""

    vocab_size: int
    pad_id: int
    unk_id: int
    cls_id: int
    sep_id: int
    mask_id: int

    def encode(self, text: str) -> List[int]:
        """Token ids of ``text`` (no [CLS] / [SEP] added)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return self._encode_batch(list(texts))

    def decode(self, ids, skip_special: bool = True) -> str:
        """Text of ``ids``; with ``skip_special`` the [PAD], [CLS] and [SEP] ids are dropped
        ([MASK] and [UNK] are kept visible: a sample with [MASK] left is a sampler bug)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if skip_special:
            drop = {self.pad_id, self.cls_id, self.sep_id}
            ids = [i for i in ids if i not in drop]
        return self._decode(ids)

    def decode_batch(self, ids, skip_special: bool = True) -> List[str]:
        """One string per row of an int (B, L) array."""
        return [self.decode(row, skip_special) for row in np.asarray(ids)]

    def token_counts(self, texts: Union[str, Iterable[str]]) -> np.ndarray:
        """Occurrences of every token id in ``texts`` (a string or lines): int64 (vocab_size,)."""
        if isinstance(texts, str):
            texts = texts.splitlines()
        ids = [i for row in self.encode_batch(list(texts)) for i in row]
        return np.bincount(np.asarray(ids, np.int64), minlength=self.vocab_size).astype(np.int64)

    @property
    def special_ids(self) -> Tuple[int, ...]:
        return (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)

    def _set_special_ids(self, lookup):
        missing = [t for t in SPECIAL_TOKENS if lookup(t) is None]
        if missing:
            raise ValueError(f"vocabulary lacks the special token(s) {', '.join(missing)}")
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            int(lookup(t)) for t in SPECIAL_TOKENS)


class WordPieceTokenizer(TextTokenizer):
    """WordPiece through HuggingFace ``tokenizers`` (BERT normaliser and pre-tokeniser).

    Build with :meth:`train` (on lines of text) or :meth:`from_vocab` (a BERT ``vocab.txt``);
    :meth:`save_vocab` writes a ``vocab.txt`` that :meth:`from_vocab` reads back identically.
    """

    def __init__(self, tokenizer, lowercase: bool = True):
        self._tok = tokenizer
        self.lowercase = lowercase
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        self._set_special_ids(tokenizer.token_to_id)

    @staticmethod
    def _pipeline(model, lowercase: bool):
        from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
        tok = Tokenizer(model)
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        return tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2,
              lowercase: bool = True, limit_alphabet: int = 1000) -> "WordPieceTokenizer":
        """Train on ``texts`` (an iterable of lines); specials get ids 0..4 in
        :data:`SPECIAL_TOKENS` order. The vocabulary may come out smaller than ``vocab_size`` on
        a small corpus."""
        from tokenizers import models, trainers
        if vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, "
                             f"got {vocab_size}")
        tok = cls._pipeline(models.WordPiece(unk_token="[UNK]"), lowercase)
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=list(SPECIAL_TOKENS),
                                            limit_alphabet=limit_alphabet, show_progress=False)
        tok.train_from_iterator(texts, trainer)
        # The trainer orders pieces of equal count by hash-map iteration, which differs from run
        # to run (same pieces, other ids): renumber them canonically, specials first, then the
        # rest in sorted order, so that the same text always gives the same ids.
        vocab = tok.get_vocab(with_added_tokens=True)
        rest = sorted(t for t in vocab if t not in SPECIAL_TOKENS)
        canonical = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + rest)}
        return cls(cls._special(cls._pipeline(models.WordPiece(canonical, unk_token="[UNK]"), lowercase)),
                   lowercase)

    @staticmethod
    def _special(tok):
        """Register the specials the vocabulary has as special tokens (a literal ``[UNK]`` in text
        is that token, as after training); missing ones are left missing (an error later)."""
        tok.add_special_tokens([t for t in SPECIAL_TOKENS if tok.token_to_id(t) is not None])
        return tok

    @classmethod
    def from_vocab(cls, path: Union[str, os.PathLike], lowercase: bool = True) -> "WordPieceTokenizer":
        """Load a BERT-style ``vocab.txt`` (one token per line, the line number is the id)."""
        from tokenizers import models
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"vocabulary file {path!r} does not exist")
        with open(path, encoding="utf-8") as f:
            tokens = [line.rstrip("\n") for line in f]
        while tokens and tokens[-1] == "":
            tokens.pop()
        vocab = {}
        for i, t in enumerate(tokens):
            vocab.setdefault(t, i)
        if len(vocab) != len(tokens):
            raise ValueError(f"vocabulary file {path!r} has duplicate tokens")
        try:
            return cls(cls._special(cls._pipeline(models.WordPiece(vocab, unk_token="[UNK]"), lowercase)),
                       lowercase)
        except ValueError as e:
            raise ValueError(f"vocabulary file {path!r}: {e}") from None

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the whole pipeline (vocabulary, normaliser, pre-tokeniser, decoder, special
        tokens) as a HuggingFace ``tokenizer.json``; :func:`load_tokenizer` reads it back with the
        same ids."""
        self._tok.save(os.fspath(path))

    @classmethod
    def from_json(cls, path: Union[str, os.PathLike]) -> "WordPieceTokenizer":
        """Load a ``tokenizer.json`` written by :meth:`save` (or any HuggingFace WordPiece
        tokenizer file with the five BERT specials)."""
        from tokenizers import Tokenizer
        path = os.fspath(path)
        try:
            tok = Tokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception
            raise ValueError(f"{path!r} is not a readable tokenizer.json ({e})") from None
        spec = json.loads(tok.to_str())
        if (spec.get("model") or {}).get("type") != "WordPiece":
            raise ValueError(f"{path!r} is not a WordPiece tokenizer file")
        lowercase = bool((spec.get("normalizer") or {}).get("lowercase", True))
        try:
            return cls(tok, lowercase)
        except ValueError as e:
            raise ValueError(f"tokenizer file {path!r}: {e}") from None

    def save_vocab(self, path: Union[str, os.PathLike]) -> None:
        """Write ``vocab.txt`` (tokens in id order)."""
        vocab = self._tok.get_vocab(with_added_tokens=True)
        tokens = [None] * len(vocab)
        for t, i in vocab.items():
            tokens[i] = t
        with open(path, "w", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in tokens))

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(int(i))

    def _encode_batch(self, texts):
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def _decode(self, ids):
        return self._tok.decode(ids, skip_special_tokens=False)


class CharTokenizer(TextTokenizer):
    """Character-level tokenizer: ids 0..4 are the specials, then one id per character."""

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("chars must be distinct single characters")
        self.chars = tuple(chars)
        self._itos = list(SPECIAL_TOKENS) + chars
        self._stoi = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(chars)}
        self.vocab_size = len(self._itos)
        self._set_special_ids({t: i for i, t in enumerate(SPECIAL_TOKENS)}.get)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """All distinct characters of ``text``, sorted."""
        return cls(sorted(set(text)))

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write ``{"type": "char", "chars": ...}`` (JSON); :func:`load_tokenizer` reads it back."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"type": "char", "chars": "".join(self.chars)}, f)

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "CharTokenizer":
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        if spec.get("type") != "char":
            raise ValueError(f"{os.fspath(path)!r} is not a character tokenizer file")
        return cls(list(spec["chars"]))

    def id_to_token(self, i: int) -> str:
        return self._itos[int(i)]

    def _encode_batch(self, texts):
        unk = self.unk_id
        return [[self._stoi.get(c, unk) for c in text] for text in texts]

    def _decode(self, ids):
        return "".join(self._itos[i] for i in ids)


def load_tokenizer(path: Union[str, os.PathLike]) -> TextTokenizer:
    """A tokenizer saved by ``.save`` (either kind: JSON, told apart by its content) or a BERT
    ``vocab.txt`` (any file that is not JSON). One-line errors for a missing or unreadable file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file {path!r} does not exist")
    with open(path, encoding="utf-8", errors="replace") as f:
        is_json = f.read(4096).lstrip().startswith("{")
    if not is_json:
        return WordPieceTokenizer.from_vocab(path)
    with open(path, encoding="utf-8") as f:
        try:
            spec = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"tokenizer file {path!r} is not valid JSON ({e})") from None
    if spec.get("type") == "char":
        return CharTokenizer.load(path)
    return WordPieceTokenizer.from_json(path)


# ------------------------------------------------------------------------------------------ corpus

def read_corpus(path: Union[str, os.PathLike]) -> str:
    """The UTF-8 text of a corpus file, with one-line errors for missing / empty / binary files."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"corpus file {path!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"corpus file {path!r} is a directory, not a text file")
    with open(path, "rb") as f:
        data = f.read()
    nul = data.find(b"\x00")
    if nul >= 0:
        raise ValueError(f"corpus file {path!r} is binary (NUL byte at offset {nul}), not UTF-8 text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"corpus file {path!r} is not UTF-8 text (invalid byte at offset "
                         f"{e.start})") from None
    if not text.strip():
        raise ValueError(f"corpus file {path!r} is empty" + (" (only whitespace)" if data else ""))
    return text


def split_text(text: str, test_fraction: float) -> Tuple[str, str]:
    """Contiguous split at the line boundary nearest to ``(1 - test_fraction) * len(text)``:
    ``(train_text, test_text)``, both non-empty."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    target = int(round((1.0 - test_fraction) * len(text)))
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 < len(text)]
    content = [i for i, c in enumerate(text) if not c.isspace()]
    first, last = (content[0], content[-1]) if content else (len(text), -1)
    ok = [s for s in starts if first < s <= last]      # non-blank text on both sides
    if not ok:
        raise ValueError(f"cannot hold out {test_fraction:g} of a corpus of "
                         f"{len(text.splitlines())} line(s): give a separate test file")
    cut = min(ok, key=lambda s: abs(s - target))
    return text[:cut], text[cut:]


def count_words(text: Union[str, Iterable[str]]) -> int:
    """Number of whitespace-separated words (the per-word perplexity denominator)."""
    if isinstance(text, str):
        return len(text.split())
    return sum(len(t.split()) for t in text)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenChunks:
    """Fixed-length rows of token ids.

    Attributes:
      tokens: int32 (N, L); ``pad_id`` where ``mask`` is False.
      mask: bool (N, L), True on real tokens.
      num_words: whitespace-separated words of the text the rows were made from.
    """

    tokens: np.ndarray
    mask: np.ndarray
    num_words: int

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum())

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def pack(ids: Sequence[Sequence[int]], seq_len: int, pad_id: int, packing: str = "concat"):
    """Rows of ``seq_len`` from token-id lists: ``(tokens int32 (N, L), mask bool (N, L))``."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {PACKINGS}, got {packing!r}")
    if packing == "concat":
        pieces = [np.concatenate([np.asarray(r, np.int64) for r in ids] + [np.zeros(0, np.int64)])]
    else:
        pieces = [np.asarray(r, np.int64) for r in ids if len(r)]
    rows = []
    for p in pieces:
        rows += [p[i:i + seq_len] for i in range(0, len(p), seq_len)]
    tokens = np.full((len(rows), seq_len), pad_id, np.int32)
    mask = np.zeros((len(rows), seq_len), bool)
    for k, r in enumerate(rows):
        tokens[k, :len(r)] = r
        mask[k, :len(r)] = True
    return tokens, mask


def encode_corpus(tokenizer: TextTokenizer, text: str, seq_len: int,
                  packing: str = "concat") -> TokenChunks:
    """Tokenise ``text`` line by line and pack it into rows (see module docstring). In
    ``"concat"`` mode each line keeps its newline, which a character tokenizer encodes (WordPiece
    drops it as whitespace); ``"line"`` mode skips blank lines. Special tokens written literally
    in the text ("[MASK]", "[PAD]", "[CLS]", "[SEP]", which WordPiece matches as specials) become
    [UNK]: a clean sequence x_0 never holds the absorbing state or padding."""
    lines = text.splitlines()
    if packing == "concat":
        lines = [line + "\n" for line in lines]
    else:
        lines = [line for line in lines if line.strip()]
    tokens, mask = pack(tokenizer.encode_batch(lines), seq_len, tokenizer.pad_id, packing)
    if not len(tokens):
        raise ValueError("the text encodes to no tokens")
    # literal "[MASK]" / "[PAD]" / "[CLS]" / "[SEP]" in the text must not reach x_0 as specials
    reserved = [tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id]
    tokens[mask & np.isin(tokens, reserved)] = tokenizer.unk_id
    return TokenChunks(tokens, mask, count_words(text))


@dataclasses.dataclass(frozen=True, eq=False)
class TextCorpus:
    """A tokenised train/test corpus.

    Attributes:
      tokenizer: the :class:`TextTokenizer` used.
      train, test: :class:`TokenChunks`.
      counts: int64 (vocab_size,), occurrences of each token id in the training rows (specials
        included where they occur; padding excluded), for the spindle schedule.
    """

    tokenizer: TextTokenizer
    train: TokenChunks
    test: TokenChunks
    counts: np.ndarray


def load_text_corpus(train_path, test_path=None, *, tokenizer: Union[str, TextTokenizer] = "wordpiece",
                     vocab_size: int = 8000, vocab_file=None, min_frequency: int = 2,
                     lowercase: bool = True, seq_len: int = 64, test_fraction: float = 0.05,
                     packing: str = "concat", unk_marker: str | None = None) -> TextCorpus:
    """Read, split, tokenise and pack a corpus.

    Args:
      train_path: text file (the whole corpus when ``test_path`` is None).
      test_path: separate test file, or None to hold out ``test_fraction`` of ``train_path``.
      tokenizer: ``"wordpiece"`` (trained on the training split, or loaded from ``vocab_file``),
        ``"char"`` (characters of the training split), or a ready :class:`TextTokenizer`.
      vocab_size, min_frequency, lowercase: WordPiece training options.
      seq_len, packing: see :func:`encode_corpus`.
      unk_marker: the corpus's own unknown-word marker (WikiText: ``"<unk>"``), replaced by
        "[UNK]" before tokenising so that it is one [UNK] token rather than ``< unk >`` (three
        wordpieces); word counts are unchanged. WordPiece only.
    """
    train_text = read_corpus(train_path)
    if test_path is None:
        train_text, test_text = split_text(train_text, test_fraction)
    else:
        test_text = read_corpus(test_path)
    if unk_marker:
        if tokenizer == "char" or isinstance(tokenizer, CharTokenizer):
            raise ValueError("unk_marker applies to WordPiece tokenizers only")
        train_text = train_text.replace(unk_marker, "[UNK]")
        test_text = test_text.replace(unk_marker, "[UNK]")
    if isinstance(tokenizer, str):
        if tokenizer == "wordpiece":
            tokenizer = (WordPieceTokenizer.from_vocab(vocab_file, lowercase) if vocab_file
                         else WordPieceTokenizer.train(train_text.splitlines(), vocab_size,
                                                       min_frequency, lowercase))
        elif tokenizer == "char":
            tokenizer = CharTokenizer.from_text(train_text)
        else:
            raise ValueError(f"tokenizer must be 'wordpiece', 'char' or a TextTokenizer, got "
                             f"{tokenizer!r}")
    train = encode_corpus(tokenizer, train_text, seq_len, packing)
    test = encode_corpus(tokenizer, test_text, seq_len, packing)
    counts = np.bincount(train.tokens[train.mask].astype(np.int64),
                         minlength=tokenizer.vocab_size).astype(np.int64)
    return TextCorpus(tokenizer, train, test, counts)


__all__ = ["SPECIAL_TOKENS", "PACKINGS", "TextTokenizer", "WordPieceTokenizer", "CharTokenizer",
           "read_corpus", "split_text", "count_words", "TokenChunks", "pack", "encode_corpus",
           "TextCorpus", "load_text_corpus", "load_tokenizer"]
