"""DiffusionBERT's text study at small scale: noise schedule x time design at equal training compute.

    python experiments/text_diffusion.py                   # WikiText-2 (train: valid split, test: test split)
    python experiments/text_diffusion.py --quick           # smoke run (< 60 s)
    python experiments/text_diffusion.py --data tinyshakespeare.txt --tokenizer char --test-fraction 0.1

The question (He et al., "DiffusionBERT", arXiv 2211.15029, Table 2; reference
``text_brain_restoration.md`` section 1): does the token-information-aware **spindle** schedule
beat the linear (D3PM absorbing) one, and which way of feeding the time step to a BERT-style
denoiser is best: none (**agnostic**, TAD), a **layerwise** embedding (LTE) or a **prefix** time
token (PTE)? The paper (bert-base, pretrained, LM1B, 1.9 M steps) finds spindle + TAD best, PPL
63.78 against 82.34 for D3PM (linear, LTE, from scratch).

1. Corpus: ``--data`` (any UTF-8 text file) is the training text; ``--test-data`` the held-out
   text, or else the last ``--test-fraction`` of ``--data`` (a contiguous split at a line
   boundary). Tokenizer ``wordpiece`` (HuggingFace ``tokenizers``, trained on the training text,
   ``--vocab-size``) or ``char``; rows of ``--seq-len`` tokens (``concat`` packing, the
   language-modelling convention). With WordPiece, the literal ``--unk-literal`` (default
   ``<unk>``, WikiText's marker) is read as the tokenizer's [UNK] (one token instead of
   ``< unk >``); word counts are unchanged. Token counts of the training rows give the spindle's
   per-token weights (``--lam`` 0.3, the official code's ``difference`` form by default).
2. Every configuration ``<schedule>_<time mode>`` of ``--schedules`` x ``--time-modes`` trains a
   fresh BERT-style encoder (:mod:`jdiff.models.transformer`, post-LN, ``--layers`` x
   ``--hidden``) from the same initial key, on the same batches (rows drawn by a function of the
   seed and the step), for the same ``--steps`` x ``--batch-size``: **equal training compute**
   (the prefix design runs one extra position). Loss: the hybrid loss of the official code
   (``L_t + 1e-2 CE``, :func:`jdiff.discrete.losses.absorbing_loss`, ``--loss``) with T =
   ``--T`` discrete steps; AdamW with linear warm-up and cosine decay, gradient clipping, EMA
   (evaluated). Runs live in ``<workdir>/<config>`` (orbax checkpoints; an interrupted or
   finished run is resumed / reused by the same command). The WordPiece tokenizer is saved as
   ``<workdir>/tokenizer.json`` and reused: its training is not deterministic across processes
   (equally frequent pieces get other ids), and a run refuses a vocabulary it was not trained on.
3. Evaluation of each configuration (EMA parameters):

   * **bound-based perplexity** on held-out rows: the variational bound of every sequence with
     all ``--eval-terms`` terms of a coarsened chain (the official ``compute_elbo.py`` evaluates
     T / eval_step_size = 2048 / 16 terms; here T / eval-terms is the stride), through
     :func:`jdiff.discrete.losses.sequence_bound`, as perplexity per token and per
     whitespace-separated word (the paper's PPL, :mod:`jdiff.metrics.text`). ``--eval-rows``
     evenly spaced held-out rows (all of them with ``--eval-rows 0``); the per-word count of a
     subset is its share of tokens times the held-out words per token (exact with all rows).
     Every configuration uses the same rows and the same key.
   * **samples**: ``--n-samples`` sequences of ``--seq-len`` tokens with ``--sample-steps``
     ancestral steps (x0-parameterised, step skipping, top-k ``--top-k`` 30 on the posterior
     logits as the paper; [PAD], [CLS] and [SEP] forbidden: they never occur in a packed row),
     the same key for every configuration; BLEU-4 of each sample against
     all held-out rows (decoded the same way) and self-BLEU among the samples (sacrebleu, 0..100;
     the paper's Table 2 is 0..1).
   * **sampling time vs steps** (first configuration): compiled sampler, warm-up call, median of
     ``--speed-repeats`` timed calls, per ``--speed-steps``.

Outputs in ``--out`` (default ``<workdir>/out``): ``results.json`` (everything),
``text_table.md`` (configuration x {bound PPL per token and per word, BLEU, self-BLEU, train loss,
seconds}), ``samples_<config>.txt`` and ``text_diffusion.png`` (training curves and PPL per
configuration). Bad input (missing, empty or binary corpus, unknown schedule or time mode, ...)
is one line ``text_diffusion.py: error: ...`` and status 2, before any work.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jdiff.cli import Parser, check_output_dir, run_command

PROG = "text_diffusion.py"
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_TRAIN = SHARED / "wikitext2_tok_valid.txt"
DEFAULT_TEST = SHARED / "wikitext2_tok_test.txt"
SCHEDULE_CHOICES = ("linear", "cosine", "spindle")
TIME_MODE_CHOICES = ("agnostic", "layerwise", "prefix")
TOKENIZERS = ("wordpiece", "char")

# CPU default: 6 configurations in 11 minutes on 2 free cores (benchmarks/results/text_diffusion.md).
DEFAULTS = dict(steps=800, batch_size=32, seq_len=64, vocab_size=2000, layers=2, hidden=128, heads=4,
                intermediate=None, dropout=0.1, T=256, lr=1e-3, warmup=60, weight_decay=0.01,
                eval_rows=256, eval_terms=32, eval_batch=64, n_samples=64, sample_steps=64,
                speed_steps="4,16,64", speed_repeats=2, log_every=10,
                schedules="linear,spindle", time_modes="agnostic,layerwise,prefix")
QUICK = dict(steps=3, batch_size=4, seq_len=16, vocab_size=120, layers=1, hidden=32, heads=2, T=16,
             warmup=1, eval_rows=8, eval_terms=4, eval_batch=8, n_samples=4, sample_steps=4,
             speed_steps="2,4", speed_repeats=1, log_every=1,
             schedules="spindle", time_modes="agnostic,layerwise")


def parse_args(argv=None):
    p = Parser(prog=PROG, description=__doc__)
    d = p.add_argument_group("data")
    d.add_argument("--data", default=None,
                   help=f"training text file (default: WikiText-2 valid split {DEFAULT_TRAIN}, tested on its test split)")
    d.add_argument("--test-data", default=None, help="held-out text file (default: the last --test-fraction of --data)")
    d.add_argument("--test-fraction", type=float, default=0.1, help="held-out share of --data without --test-data")
    d.add_argument("--tokenizer", default="wordpiece", help="wordpiece (trained on the training text) or char")
    d.add_argument("--vocab-size", type=int, default=None, help=f"WordPiece vocabulary ({DEFAULTS['vocab_size']})")
    d.add_argument("--unk-literal", default="<unk>",
                   help="text read as the tokenizer's [UNK] (WordPiece only; '' disables)")
    d.add_argument("--seq-len", type=int, default=None, help=f"tokens per row ({DEFAULTS['seq_len']})")
    m = p.add_argument_group("model and diffusion")
    m.add_argument("--layers", type=int, default=None, help=f"Transformer layers ({DEFAULTS['layers']})")
    m.add_argument("--hidden", type=int, default=None, help=f"hidden size ({DEFAULTS['hidden']})")
    m.add_argument("--heads", type=int, default=None, help=f"attention heads ({DEFAULTS['heads']})")
    m.add_argument("--intermediate", type=int, default=None, help="FFN width (default 2 x hidden)")
    m.add_argument("--dropout", type=float, default=None, help=f"dropout ({DEFAULTS['dropout']})")
    m.add_argument("--T", type=int, default=None, help=f"discrete diffusion steps ({DEFAULTS['T']})")
    m.add_argument("--loss", default="hybrid", help="hybrid (official code), vb (the bound) or continuous")
    m.add_argument("--hybrid-coef", type=float, default=1e-2, help="cross-entropy coefficient of the hybrid loss")
    m.add_argument("--schedules", default=None,
                   help=f"comma list of {', '.join(SCHEDULE_CHOICES)} (linear,spindle; quick: spindle)")
    m.add_argument("--lam", type=float, default=0.3, help="spindle lambda (official code 0.3)")
    m.add_argument("--spindle-form", default="difference", help="difference (official code) or ratio (paper eqs. 10-12)")
    m.add_argument("--time-modes", default=None,
                   help=f"comma list of {', '.join(TIME_MODE_CHOICES)} (agnostic,layerwise,prefix; quick: "
                        "agnostic,layerwise)")
    t = p.add_argument_group("training (identical for every configuration)")
    t.add_argument("--steps", type=int, default=None, help=f"optimiser steps ({DEFAULTS['steps']})")
    t.add_argument("--batch-size", type=int, default=None, help=f"rows per step ({DEFAULTS['batch_size']})")
    t.add_argument("--lr", type=float, default=None, help=f"peak learning rate ({DEFAULTS['lr']})")
    t.add_argument("--warmup", type=int, default=None, help=f"linear warm-up steps ({DEFAULTS['warmup']})")
    t.add_argument("--weight-decay", type=float, default=None, help=f"AdamW weight decay ({DEFAULTS['weight_decay']})")
    t.add_argument("--seed", type=int, default=0, help="initialisation, batches and noise seed")
    t.add_argument("--log-every", type=int, default=None, help=f"steps between logged metrics ({DEFAULTS['log_every']})")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-rows", type=int, default=None,
                   help=f"held-out rows for the bound, evenly spaced; 0 = all ({DEFAULTS['eval_rows']})")
    e.add_argument("--eval-terms", type=int, default=None,
                   help=f"terms of the evaluated bound (stride T / eval-terms) ({DEFAULTS['eval_terms']})")
    e.add_argument("--eval-batch", type=int, default=None, help=f"rows per bound evaluation call ({DEFAULTS['eval_batch']})")
    e.add_argument("--n-samples", type=int, default=None, help=f"samples per configuration ({DEFAULTS['n_samples']})")
    e.add_argument("--sample-steps", type=int, default=None, help=f"sampler iterations ({DEFAULTS['sample_steps']})")
    e.add_argument("--top-k", type=int, default=30, help="top-k filter of the sampler (paper: 30; 0 = off)")
    e.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    e.add_argument("--sample-seed", type=int, default=1234, help="sampling and evaluation key")
    e.add_argument("--speed-steps", default=None,
                   help=f"sampler steps timed on the first configuration; '' = none ({DEFAULTS['speed_steps']})")
    e.add_argument("--speed-repeats", type=int, default=None, help=f"timed calls per step count ({DEFAULTS['speed_repeats']})")
    o = p.add_argument_group("output")
    o.add_argument("--workdir", default=None,
                   help="training runs (default runs/text_diffusion; runs/text_diffusion_quick with --quick)")
    o.add_argument("--out", default=None, help="output directory (default <workdir>/out)")
    o.add_argument("--quick", action="store_true",
                   help="smoke run: 3 steps of a 1-layer hidden-32 model on 16-token rows, spindle x {agnostic, layerwise}, "
                        "4 samples (explicit flags win)")
    o.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def _split(value: str, flag: str, valid) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ValueError(f"{flag} is empty")
    if len(set(items)) != len(items):
        raise ValueError(f"{flag} lists a value twice: {value!r}")
    bad = [v for v in items if v not in valid]
    if bad:
        what = flag.lstrip("-").replace("-", " ").rstrip("s")
        raise ValueError(f"unknown {what}(s) {', '.join(map(repr, bad))}; valid: {', '.join(valid)}")
    return items


def _int_list(value: str, flag: str) -> list[int]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    try:
        out = [int(v) for v in items]
    except ValueError:
        raise ValueError(f"{flag} must be a comma list of positive integers, got {value!r}") from None
    if any(v < 1 for v in out):
        raise ValueError(f"{flag} must be a comma list of positive integers, got {value!r}")
    return sorted(set(out))


def fill_defaults(args):
    """--quick presets, then the defaults, for every option left unset."""
    for name, value in {**DEFAULTS, **(QUICK if args.quick else {})}.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.intermediate is None:
        args.intermediate = 2 * args.hidden
    args.workdir = args.workdir or ("runs/text_diffusion_quick" if args.quick else "runs/text_diffusion")
    return args


def check_args(args):
    """Every input error before any work; returns ``(schedules, time_modes, speed_steps)``."""
    from jdiff.discrete.losses import LOSS_KINDS

    schedules = _split(args.schedules, "--schedules", SCHEDULE_CHOICES)
    modes = _split(args.time_modes, "--time-modes", TIME_MODE_CHOICES)
    if args.tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {args.tokenizer!r}; valid: {', '.join(TOKENIZERS)}")
    if args.loss not in LOSS_KINDS:
        raise ValueError(f"unknown loss {args.loss!r}; valid: {', '.join(LOSS_KINDS)}")
    if args.spindle_form not in ("difference", "ratio"):
        raise ValueError(f"unknown spindle form {args.spindle_form!r}; valid: difference, ratio")
    for name in ("steps", "batch_size", "seq_len", "layers", "hidden", "heads", "intermediate", "T", "eval_terms",
                 "eval_batch", "n_samples", "sample_steps", "speed_repeats", "log_every"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.tokenizer == "wordpiece" and args.vocab_size < 10:
        raise ValueError(f"--vocab-size must be at least 10, got {args.vocab_size}")
    if args.hidden % args.heads:
        raise ValueError(f"--hidden ({args.hidden}) must be a multiple of --heads ({args.heads})")
    if args.eval_rows < 0:
        raise ValueError(f"--eval-rows must be non-negative (0 = all), got {args.eval_rows}")
    if args.n_samples < 2:
        raise ValueError(f"--n-samples must be at least 2 (self-BLEU), got {args.n_samples}")
    if args.sample_steps > args.T:
        raise ValueError(f"--sample-steps ({args.sample_steps}) must not exceed --T ({args.T})")
    if args.eval_terms > args.T:
        raise ValueError(f"--eval-terms ({args.eval_terms}) must not exceed --T ({args.T})")
    speed = _int_list(args.speed_steps, "--speed-steps") if args.speed_steps.strip() else []
    if any(s > args.T for s in speed):
        raise ValueError(f"--speed-steps must not exceed --T ({args.T}), got {args.speed_steps!r}")
    for name in ("lr", "temperature"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"--{name} must be a positive number, got {v}")
    for name in ("dropout", "weight_decay", "hybrid_coef", "lam"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a non-negative number, got {v}")
    if args.dropout >= 1:
        raise ValueError(f"--dropout must be below 1, got {args.dropout}")
    if args.warmup < 0 or args.warmup >= args.steps and args.steps > 1:
        raise ValueError(f"--warmup must be in [0, --steps), got {args.warmup}")
    if args.top_k < 0:
        raise ValueError(f"--top-k must be non-negative, got {args.top_k}")
    if args.seed < 0 or args.sample_seed < 0:
        raise ValueError("--seed and --sample-seed must be non-negative")
    if args.test_data is None and not 0 < args.test_fraction < 1:
        raise ValueError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    if args.data is None:
        if args.test_data is not None:
            raise ValueError("--test-data needs --data")
        if not (DEFAULT_TRAIN.exists() and DEFAULT_TEST.exists()):
            raise ValueError(f"no --data given and the default WikiText-2 files are missing ({SHARED}); give --data PATH")
    check_output_dir(args.workdir)
    check_output_dir(args.out or str(Path(args.workdir) / "out"), "--out")
    return schedules, modes, speed


# ---------------------------------------------------------------------------------------- corpus

class Corpus:
    """Tokenizer, train / test :class:`jdiff.discrete.text.TokenChunks`, training token counts.
    (A plain class: a dataclass would need this script registered in ``sys.modules``.)"""

    def __init__(self, tokenizer, train, test, counts, train_path, test_path, test_fraction):
        self.tokenizer, self.train, self.test, self.counts = tokenizer, train, test, counts
        self.train_path, self.test_path, self.test_fraction = train_path, test_path, test_fraction
        self.tokenizer_source = "given"


def read_texts(args):
    """``(train_text, test_text, train_path, test_path)``; the corpus errors (missing, empty,
    binary, not UTF-8) are raised here, before any work."""
    from jdiff.discrete.text import read_corpus, split_text

    # the defaults relative to the working directory: results record no machine's absolute path
    train_path = os.path.relpath(DEFAULT_TRAIN) if args.data is None else args.data
    test_path = os.path.relpath(DEFAULT_TEST) if args.data is None else args.test_data
    train_text = read_corpus(train_path)
    if test_path is None:
        train_text, test_text = split_text(train_text, args.test_fraction)
    else:
        test_text = read_corpus(test_path)
    return train_text, test_text, train_path, test_path


TOKENIZER_FILE, TOKENIZER_META = "tokenizer.json", "tokenizer_settings.json"


def tokenizer_settings(args, train_path: str, test_path) -> dict:
    return {"tokenizer": args.tokenizer, "vocab_size": args.vocab_size, "unk_literal": args.unk_literal,
            "data": train_path, "test_data": test_path, "test_fraction": None if test_path else args.test_fraction}


def _cached_wordpiece(workdir: Path, settings: dict):
    """The WordPiece tokenizer saved in ``workdir`` by an earlier run with the same settings, else
    None. WordPiece training is not deterministic across processes (the ids of equally frequent
    pieces change from run to run), so a resumed or reused run must use the saved one."""
    from jdiff.discrete.text import load_tokenizer

    path, meta = workdir / TOKENIZER_FILE, workdir / TOKENIZER_META
    if not (path.exists() and meta.exists()):
        return None
    try:
        if json.loads(meta.read_text()) != settings:
            return None
        return load_tokenizer(path)
    except Exception as err:  # noqa: BLE001 - a broken file: train a new tokenizer (runs then refuse it)
        print(f"ignoring {path} ({type(err).__name__}: {err})", file=sys.stderr)
        return None


def save_tokenizer(corpus: Corpus, workdir: Path, settings: dict) -> None:
    """Save a trained WordPiece tokenizer (HuggingFace JSON, special tokens included) for later runs."""
    if corpus.tokenizer_source != "trained":
        return
    workdir.mkdir(parents=True, exist_ok=True)
    corpus.tokenizer.save(workdir / TOKENIZER_FILE)
    (workdir / TOKENIZER_META).write_text(json.dumps(settings, indent=1) + "\n")


def vocab_digest(tok) -> str:
    return hashlib.sha1("\n".join(tok.id_to_token(i) for i in range(tok.vocab_size)).encode()).hexdigest()


def build_corpus(args, train_text, test_text, train_path, test_path, workdir: Path | None = None) -> Corpus:
    from jdiff.discrete.text import CharTokenizer, WordPieceTokenizer, encode_corpus

    source = "characters"
    if args.tokenizer == "wordpiece":
        if args.unk_literal:  # a plain word of the text becomes the tokenizer's [UNK] (word counts unchanged)
            train_text = train_text.replace(args.unk_literal, "[UNK]")
            test_text = test_text.replace(args.unk_literal, "[UNK]")
        settings = tokenizer_settings(args, train_path, test_path)
        tok = _cached_wordpiece(workdir, settings) if workdir is not None else None
        source = "cached"
        if tok is None:
            tok, source = WordPieceTokenizer.train(train_text.splitlines(), args.vocab_size), "trained"
    else:
        tok = CharTokenizer.from_text(train_text)
    train = encode_corpus(tok, train_text, args.seq_len)
    test = encode_corpus(tok, test_text, args.seq_len)
    counts = np.bincount(train.tokens[train.mask].astype(np.int64), minlength=tok.vocab_size)
    corpus = Corpus(tok, train, test, counts, train_path, test_path,
                    None if test_path is not None else args.test_fraction)
    corpus.tokenizer_source = source
    return corpus


def unigram_baseline(corpus: Corpus, rows, words_per_token: float) -> dict:
    """Held-out NLL of a unigram model from the training counts (add-one smoothed over the
    vocabulary less [MASK] and [PAD]) on the same rows: what a model that ignores context scores."""
    tok = corpus.tokenizer
    c = corpus.counts.astype(np.float64) + 1.0
    c[[tok.mask_id, tok.pad_id]] = 0.0
    ids = corpus.test.tokens[rows][corpus.test.mask[rows]]
    nll = float(-np.log(c[ids] / c.sum()).sum())
    words = len(ids) * words_per_token
    return {"nll_nats": nll, "nats_per_token": nll / len(ids), "ppl_token": math.exp(nll / len(ids)),
            "ppl_word": math.exp(nll / words)}


def eval_subset(chunks, n_rows: int):
    """Evenly spaced row indices (all with ``n_rows`` 0 or >= the number of rows)."""
    n = len(chunks)
    if n_rows == 0 or n_rows >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, n_rows).round().astype(int))


# ------------------------------------------------------------------------------------ model, loss

def model_config(args, vocab_size: int, time_mode: str):
    from jdiff.models.transformer import TransformerConfig

    return TransformerConfig(vocab_size=vocab_size, hidden=args.hidden, num_layers=args.layers,
                             num_heads=args.heads, intermediate=args.intermediate,
                             max_len=args.seq_len + 1, dropout=args.dropout, attention_dropout=args.dropout,
                             time_mode=time_mode, num_timesteps=args.T, cls_id=None)


def make_process(args, corpus: Corpus, schedule: str):
    from jdiff.discrete import absorbing, get_schedule

    tok = corpus.tokenizer
    kw = dict(counts=corpus.counts, lam=args.lam, form=args.spindle_form, mask_id=tok.mask_id) if schedule == "spindle" else {}
    return absorbing(get_schedule(schedule, **kw), tok.vocab_size, tok.mask_id)


def run_settings(args, corpus: Corpus, schedule: str, time_mode: str) -> dict:
    """What determines a trained run (stored as ``config.json``; a mismatch refuses reuse)."""
    return {"schedule": schedule, "time_mode": time_mode, "lam": args.lam if schedule == "spindle" else None,
            "spindle_form": args.spindle_form if schedule == "spindle" else None,
            "model": dataclasses.asdict(model_config(args, corpus.tokenizer.vocab_size, time_mode)),
            "loss": args.loss, "hybrid_coef": args.hybrid_coef, "T": args.T, "batch_size": args.batch_size,
            "lr": args.lr, "warmup": args.warmup, "weight_decay": args.weight_decay, "seed": args.seed,
            "data": corpus.train_path, "test_data": corpus.test_path, "tokenizer": args.tokenizer,
            "vocab_size": corpus.tokenizer.vocab_size, "vocab_sha1": vocab_digest(corpus.tokenizer),
            "seq_len": args.seq_len,
            "train_rows": len(corpus.train), "train_tokens": corpus.train.num_tokens,
            "unk_literal": args.unk_literal if args.tokenizer == "wordpiece" else None}


def check_existing(rdir: Path, settings: dict, steps: int) -> None:
    path = rdir / "config.json"
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        raise ValueError(f"{path} is not valid JSON; remove {rdir} or use another --workdir") from None
    diff = sorted(k for k in set(old) | set(settings) if k != "steps" and old.get(k) != settings.get(k))
    if diff:
        raise ValueError(f"{rdir} holds a run with different settings ({', '.join(diff)}); use another --workdir")
    ckpt = rdir / "checkpoints"
    done = sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit()) if ckpt.is_dir() else []
    if done and done[-1] > steps:
        raise ValueError(f"{rdir} holds a run at step {done[-1]}, beyond the {steps} steps asked; give more "
                         "--steps or another --workdir")


def train_config(args, corpus: Corpus, schedule: str, time_mode: str, rdir: Path, log):
    """Train (or resume / reuse) one configuration: ``(state, history, seconds, model)``."""
    from jdiff.discrete import LossSpec, absorbing_loss
    from jdiff.models.transformer import Transformer, bind_dropout, init_params, make_train_apply_fn
    from jdiff.training import (Checkpointer, TrainingInterrupted, create_train_state, fit, jit_train_step,
                                make_optimizer, make_train_step, stop_on_signals)

    tok = corpus.tokenizer
    model = Transformer(model_config(args, tok.vocab_size, time_mode))
    params = init_params(model, jax.random.key(args.seed), seq_len=args.seq_len)
    process = make_process(args, corpus, schedule)
    loss = absorbing_loss(process, LossSpec(kind=args.loss, T=args.T, hybrid_coef=args.hybrid_coef))
    train_fn = make_train_apply_fn(model, pad_id=tok.pad_id)

    def loss_fn(p, batch, key):
        k_drop, k_loss = jax.random.split(key)
        value, metrics = loss(p, bind_dropout(train_fn, k_drop), batch, k_loss)
        metrics = {k: v for k, v in metrics.items() if k != "bound_per_seq"}
        return value, metrics

    decay = max(args.steps - args.warmup, 1)
    opt = make_optimizer(args.lr, warmup_steps=args.warmup, decay_steps=decay, weight_decay=args.weight_decay,
                         grad_clip=1.0)
    state = create_train_state(params, opt, seed=args.seed)
    step = jit_train_step(make_train_step(loss_fn, opt, ema_decay=0.999, ema_warmup=True))
    tokens, valid = corpus.train.tokens, corpus.train.mask
    n_rows = len(tokens)

    def batch_fn(s):  # a pure function of the step: every configuration sees the same rows
        idx = np.random.default_rng([args.seed, s]).integers(0, n_rows, args.batch_size)
        return {"tokens": jnp.asarray(tokens[idx]), "valid": jnp.asarray(valid[idx])}

    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "config.json").write_text(json.dumps(run_settings(args, corpus, schedule, time_mode), indent=1) + "\n")
    ckpt = Checkpointer(rdir / "checkpoints", save_every=max(args.steps // 4, 1), keep=1)
    t0 = time.perf_counter()
    try:
        with stop_on_signals() as stop:
            res = fit(state, step, batch_fn, args.steps, checkpointer=ckpt, log_every=args.log_every,
                      metrics_file=rdir / "metrics.jsonl", progress=not args.quiet, stop=stop)
    except TrainingInterrupted as err:
        err.resume = "run the same command again"
        raise
    finally:
        ckpt.close()
    seconds = time.perf_counter() - t0
    history = [json.loads(x) for x in (rdir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    if res.resumed_from is not None:
        log(f"  resumed from step {res.resumed_from}")
        if res.resumed_from >= args.steps and history:  # nothing trained now: report the run's own time
            seconds = float(history[-1].get("time", seconds))
    return res.state, history, seconds, model


# ------------------------------------------------------------------------------------ evaluation

@functools.partial(jax.jit, static_argnames=("apply_fn", "terms"))
def _bound_batch(apply_fn, params, process, tokens, valid, key, terms):
    from jdiff.discrete import sequence_bound

    return sequence_bound(params, apply_fn, process, {"tokens": tokens, "valid": valid}, key, terms)


def held_out_bound(apply_fn, params, process, chunks, rows, terms: int, batch: int, key):
    """Sum of the per-sequence bounds (nats) over ``rows`` of ``chunks``, in full batches (the last
    padded with empty rows, which contribute 0)."""
    tokens, valid = chunks.tokens[rows], chunks.mask[rows]
    batch = min(batch, len(rows))
    pad = -len(rows) % batch
    if pad:
        tokens = np.concatenate([tokens, np.full((pad, tokens.shape[1]), 0, tokens.dtype)])
        valid = np.concatenate([valid, np.zeros((pad, valid.shape[1]), bool)])
    total = 0.0
    per_seq = []
    for i in range(0, len(tokens), batch):
        b = _bound_batch(apply_fn, params, process, jnp.asarray(tokens[i:i + batch]),
                         jnp.asarray(valid[i:i + batch]), jax.random.fold_in(key, i), terms)
        per_seq.append(np.asarray(b, np.float64))
    per_seq = np.concatenate(per_seq)[:len(rows)]
    total = float(per_seq.sum())
    return total, per_seq


def never_sampled(tok):
    """[PAD], [CLS] and [SEP]: never in a packed training row, so the sampler may not draw them."""
    return (tok.pad_id, tok.cls_id, tok.sep_id)


def evaluate(args, corpus: Corpus, model, params, schedule: str, rows, words_per_token: float, refs, log, tag):
    from jdiff.discrete import sample
    from jdiff.metrics.text import bleu_scores, perplexity_report, self_bleu_scores
    from jdiff.models.transformer import make_apply_fn

    tok = corpus.tokenizer
    process = make_process(args, corpus, schedule)
    apply_fn = make_apply_fn(model, pad_id=tok.pad_id)
    key = jax.random.key(args.sample_seed)
    t0 = time.perf_counter()
    total, per_seq = held_out_bound(apply_fn, params, process, corpus.test, rows, args.eval_terms, args.eval_batch,
                                    jax.random.fold_in(key, 1))
    n_tok = int(corpus.test.mask[rows].sum())
    n_words = n_tok * words_per_token
    ppl = perplexity_report(total, n_tok, max(int(round(n_words)), 1))
    ppl["words"] = n_words  # the estimate itself (exact with all rows)
    ppl["ppl_word"] = math.exp(total / n_words)
    ppl["nats_per_word"] = total / n_words
    eval_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    x = sample(apply_fn, params, process, jax.random.fold_in(key, 2), (args.n_samples, args.seq_len),
               args.sample_steps, T=args.T, temperature=args.temperature, top_k=args.top_k,
               forbidden=never_sampled(tok))
    x = np.asarray(jax.block_until_ready(x))
    sample_s = time.perf_counter() - t0
    masks_left = int((x == tok.mask_id).sum())
    specials = int(np.isin(x, never_sampled(tok)).sum())  # forbidden: 0 unless the sampler is broken
    texts = tok.decode_batch(x)
    bl = bleu_scores(texts, refs)
    sbl = self_bleu_scores(texts)
    distinct = len({tuple(r) for r in x.tolist()})
    log(f"{tag:>20s}: bound {ppl['nats_per_token']:.3f} nats/token, PPL/token {ppl['ppl_token']:.1f}, "
        f"PPL/word {ppl['ppl_word']:.1f}; BLEU {bl.mean():.2f}, self-BLEU {sbl.mean():.2f} "
        f"(eval {eval_s:.0f} s, sampling {sample_s:.0f} s)")
    return {"ppl": ppl, "bound_per_seq_mean": float(per_seq.mean()), "bound_per_seq_sd": float(per_seq.std(ddof=1))
            if len(per_seq) > 1 else None, "bound_per_row": [round(float(v), 4) for v in per_seq],
            "bleu": float(bl.mean()), "bleu_sd": float(bl.std()), "self_bleu": float(sbl.mean()),
            "self_bleu_sd": float(sbl.std()), "masks_left": masks_left, "special_tokens_in_samples": specials,
            "distinct_samples": distinct,
            "eval_seconds": round(eval_s, 1), "sample_seconds_incl_compile": round(sample_s, 1)}, texts


def sampling_speed(args, corpus: Corpus, model, params, schedule: str, steps_list, log):
    """Seconds per call of the compiled sampler per step count: a warm-up call (compilation), then
    the median of ``--speed-repeats`` timed calls (``block_until_ready``)."""
    from jdiff.discrete import sample
    from jdiff.models.transformer import make_apply_fn

    process = make_process(args, corpus, schedule)
    apply_fn = make_apply_fn(model, pad_id=corpus.tokenizer.pad_id)
    shape = (args.n_samples, args.seq_len)
    out = []
    for steps in steps_list:
        call = lambda r: sample(apply_fn, params, process, jax.random.key(10_000 + r), shape, steps, T=args.T,  # noqa: E731
                                temperature=args.temperature, top_k=args.top_k,
                                forbidden=never_sampled(corpus.tokenizer))
        t0 = time.perf_counter()
        jax.block_until_ready(call(0))
        first = time.perf_counter() - t0
        times = []
        for r in range(args.speed_repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(call(r + 1))
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        out.append({"steps": steps, "seconds": med, "first_call_seconds": first, "times": times,
                    "tokens_per_second": shape[0] * shape[1] / med})
        log(f"  sampling {shape[0]} x {shape[1]} tokens, {steps:>4d} steps: {med:.3f} s "
            f"({shape[0] * shape[1] / med:,.0f} tokens/s; first call {first:.1f} s)")
    return out


# --------------------------------------------------------------------------------------- outputs

def _tail_mean(history, key, n=10):
    vals = [h[key] for h in history if key in h][-n:]
    return float(np.mean(vals)) if vals else float("nan")


def markdown(res) -> str:
    s = res["settings"]
    c = res["corpus"]
    lines = ["# DiffusionBERT study: schedule x time design at equal training compute", "",
             f"Command: `{res['command']}`", "",
             f"Machine: {res['machine']}; total {res['total_seconds']:.0f} s.", "",
             f"Corpus: train `{c['train_path']}` ({c['train_rows']} rows, {c['train_tokens']:,} tokens, "
             f"{c['train_words']:,} words); held out "
             + (f"`{c['test_path']}`" if c['test_path'] else f"the last {c['test_fraction']:g} of it")
             + f" ({c['test_rows']} rows, {c['test_tokens']:,} tokens, {c['test_words']:,} words). Tokenizer "
             f"{s['tokenizer']} (vocabulary {c['vocab_size']} with [MASK]), rows of {s['seq_len']} tokens.", "",
             f"Model: BERT-style post-LN encoder, {s['layers']} layers, hidden {s['hidden']}, {s['heads']} heads, FFN "
             f"{s['intermediate']}, dropout {s['dropout']}, {res['configs'][0]['parameters']:,} parameters (agnostic), "
             f"from scratch. Diffusion: absorbing, T = {s['T']}, loss `{s['loss']}`"
             + (f" (coefficient {s['hybrid_coef']:g})" if s['loss'] == 'hybrid' else "")
             + f"; spindle lambda {s['lam']} ({s['spindle_form']} form).", "",
             f"Training (identical for every configuration: same seed, initial key, batches): {s['steps']} steps x "
             f"batch {s['batch_size']} x {s['seq_len']} tokens, AdamW lr {s['lr']:g} (warm-up {s['warmup']}, cosine "
             f"decay), weight decay {s['weight_decay']:g}, EMA evaluated.", "",
             f"Evaluation: bound over {res['eval']['rows']} evenly spaced held-out rows ({res['eval']['tokens']:,} tokens), "
             f"{s['eval_terms']} terms (stride {s['T'] // s['eval_terms'] if s['T'] % s['eval_terms'] == 0 else s['T'] / s['eval_terms']:g}); "
             f"PPL = exp(bound / tokens) and exp(bound / words) (words: whitespace-separated, "
             f"{res['eval']['words_per_token']:.4f} per token on the held-out text). {s['n_samples']} samples of "
             f"{s['seq_len']} tokens, {s['sample_steps']} steps, top-k {s['top_k']}, temperature {s['temperature']:g}; "
             "BLEU-4 against all held-out rows and self-BLEU (sacrebleu, 0..100, whitespace tokens, no smoothing).", "",
             "| configuration | bound nats/token | PPL/token | PPL/word | BLEU | self-BLEU | train loss | train bound (nats/token) | train s | eval s | sampling s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cfg in res["configs"]:
        p = cfg["ppl"]
        lines.append(f"| {cfg['name']} | {p['nats_per_token']:.3f} | {p['ppl_token']:.2f} | {p['ppl_word']:.1f} | "
                     f"{cfg['bleu']:.2f} | {cfg['self_bleu']:.2f} | {cfg['train_loss']:.4f} | {cfg['train_bound']:.3f} | "
                     f"{cfg['train_seconds']:.0f} | {cfg['eval_seconds']:.0f} | {cfg['sample_seconds_incl_compile']:.0f} |")
    if res.get("unigram_baseline"):
        u = res["unigram_baseline"]
        lines.append(f"| unigram baseline (training counts, add-one; no context) | {u['nats_per_token']:.3f} | "
                     f"{u['ppl_token']:.2f} | {u['ppl_word']:.1f} | | | | | | | |")
    lines += paired_lines(res["configs"], res["eval"]["tokens"])
    best = min(res["configs"], key=lambda r: r["ppl"]["ppl_word"])
    lines += ["", f"Best bound: **{best['name']}** (PPL/word {best['ppl']['ppl_word']:.1f}). Train loss / bound: mean of "
              "the last 10 logged values (single-t estimates). Sampling s includes compilation.", ""]
    if res.get("speed"):
        lines += [f"Sampling time vs steps ({res['speed_config']}, {s['n_samples']} x {s['seq_len']} tokens; median of "
                  f"{s['speed_repeats']} after a warm-up call):", "",
                  "| steps | seconds | tokens/s |", "|---|---|---|"]
        lines += [f"| {r['steps']} | {r['seconds']:.3f} | {r['tokens_per_second']:,.0f} |" for r in res["speed"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def paired_lines(configs, n_tokens: int) -> list:
    """Differences of the held-out bound against the first configuration, paired over the same rows
    and key: mean per token and its standard error from the per-row differences."""
    base = configs[0]
    if len(configs) < 2 or not base.get("bound_per_row") or len(base["bound_per_row"]) < 2:
        return []
    b0 = np.asarray(base["bound_per_row"])
    out = ["", f"Paired differences of the held-out bound against {base['name']} (same rows and key; nats/token, "
           "± standard error from the per-row differences):", "", "| configuration | difference |", "|---|---|"]
    for cfg in configs[1:]:
        d = (np.asarray(cfg["bound_per_row"]) - b0) * len(b0) / n_tokens  # per-row nats -> per-token share
        out.append(f"| {cfg['name']} | {d.mean():+.4f} ± {d.std(ddof=1) / np.sqrt(d.size):.4f} |")
    return out


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for cfg in res["configs"]:
        h = cfg["history"]
        steps = np.array([r["step"] for r in h])
        bound = np.array([r["bound"] for r in h])
        k = max(1, min(10, len(bound)))
        smooth = np.convolve(bound, np.ones(k) / k, mode="valid")
        ls = "-" if cfg["schedule"] == "spindle" else "--"
        axes[0].plot(steps[k - 1:], smooth, ls, label=cfg["name"])
    axes[0].set_xlabel("training step")
    axes[0].set_ylabel(f"bound estimate, nats/token (moving mean of {k})")
    axes[0].legend(fontsize=7)
    names = [c["name"] for c in res["configs"]]
    # characters: nats per token (a character model's per-word perplexity is in the millions)
    key, label = (("nats_per_token", "held-out bound, nats/token") if res["settings"].get("tokenizer") == "char"
                  else ("ppl_word", "held-out bound PPL per word"))
    vals = [c["ppl"][key] for c in res["configs"]]
    colors = ["tab:red" if c["schedule"] == "spindle" else "tab:blue" for c in res["configs"]]
    axes[1].bar(range(len(vals)), vals, color=colors)
    lo, hi = min(vals), max(vals)
    if res.get("unigram_baseline"):
        u = res["unigram_baseline"][key]
        axes[1].axhline(u, color="k", ls="--", lw=1, label="unigram baseline (no context)")
        axes[1].legend(fontsize=7)
        lo, hi = min(lo, u), max(hi, u)
    axes[1].set_ylim(lo - 0.15 * (hi - lo + 1e-9), hi + 0.15 * (hi - lo + 1e-9))
    axes[1].set_xticks(range(len(vals)))
    axes[1].set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    axes[1].set_ylabel(f"{label} (lower is better)")
    fig.suptitle(f"{res['settings']['steps']} steps x batch {res['settings']['batch_size']}, "
                 f"{res['settings']['layers']}x{res['settings']['hidden']} encoder, T = {res['settings']['T']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{platform.machine()} {platform.system()}, {cpus} CPU cores available, JAX {jax.__version__} "
            f"({jax.devices()[0].platform}), load average at the end {load}")


# ------------------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    args = parse_args(argv)
    return run_command(_main, args, prog=PROG)


def _main(args) -> int:
    fill_defaults(args)
    schedules, modes, speed_steps = check_args(args)
    texts = read_texts(args)  # corpus errors: before any work
    workdir = Path(args.workdir)
    out = Path(args.out or workdir / "out")
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    script = sys.argv[0].replace(str(Path.cwd()) + "/", "") if sys.argv and sys.argv[0] else PROG
    command = "python " + " ".join(shlex.quote(a) for a in [script] + (sys.argv[1:] if sys.argv else []))
    t_start = time.perf_counter()

    log("tokenising ...")
    corpus = build_corpus(args, *texts, workdir=workdir)
    tok = corpus.tokenizer
    plan = [(s, m, workdir / f"{s}_{m}") for s in schedules for m in modes]
    for s, m, rdir in plan:
        check_existing(rdir, run_settings(args, corpus, s, m), args.steps)
    save_tokenizer(corpus, workdir, tokenizer_settings(args, *texts[2:]))
    rows = eval_subset(corpus.test, args.eval_rows)
    words_per_token = corpus.test.num_words / corpus.test.num_tokens
    refs = tok.decode_batch(corpus.test.tokens)
    log(f"corpus: vocabulary {tok.vocab_size} ({corpus.tokenizer_source} tokenizer); train {len(corpus.train)} rows ({corpus.train.num_tokens:,} tokens), "
        f"held out {len(corpus.test)} rows ({corpus.test.num_tokens:,} tokens, {corpus.test.num_words:,} words); "
        f"bound on {len(rows)} rows")
    out.mkdir(parents=True, exist_ok=True)

    configs, speed, speed_config = [], [], None
    for s, m, rdir in plan:
        name = rdir.name
        log(f"training {name}: {args.steps} steps x batch {args.batch_size} x {args.seq_len} tokens -> {rdir}")
        state, history, train_s, model = train_config(args, corpus, s, m, rdir, log)
        params = state.ema_params
        n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
        ev, texts_out = evaluate(args, corpus, model, params, s, rows, words_per_token, refs, log, name)
        (out / f"samples_{name}.txt").write_text("".join(t.replace("\n", " ") + "\n" for t in texts_out))
        if speed_steps and not speed:
            speed = sampling_speed(args, corpus, model, params, s, speed_steps, log)
            speed_config = name
        configs.append({"name": name, "schedule": s, "time_mode": m, "parameters": n_params,
                        "train_steps": int(state.step), "train_seconds": round(train_s, 1),
                        "train_log_seconds": history[-1].get("time") if history else None,
                        "train_loss": _tail_mean(history, "loss"), "train_bound": _tail_mean(history, "bound"),
                        "train_ce": _tail_mean(history, "ce"), "history": history, **ev})

    settings = {k: getattr(args, k) for k in (
        "tokenizer", "vocab_size", "unk_literal", "seq_len", "layers", "hidden", "heads", "intermediate", "dropout",
        "T", "loss", "hybrid_coef", "lam", "spindle_form", "steps", "batch_size", "lr", "warmup", "weight_decay",
        "seed", "eval_rows", "eval_terms", "eval_batch", "n_samples", "sample_steps", "top_k", "temperature",
        "sample_seed", "speed_repeats")}
    results = {
        "command": command, "machine": machine(), "settings": settings, "schedules": schedules, "time_modes": modes,
        "corpus": {"train_path": corpus.train_path, "test_path": corpus.test_path,
                   "test_fraction": corpus.test_fraction, "vocab_size": tok.vocab_size,
                   "tokenizer_source": corpus.tokenizer_source, "vocab_sha1": vocab_digest(tok),
                   "train_rows": len(corpus.train), "train_tokens": corpus.train.num_tokens,
                   "train_words": corpus.train.num_words, "test_rows": len(corpus.test),
                   "test_tokens": corpus.test.num_tokens, "test_words": corpus.test.num_words},
        "eval": {"rows": int(len(rows)), "tokens": int(corpus.test.mask[rows].sum()),
                 "words_per_token": words_per_token, "terms": args.eval_terms},
        "unigram_baseline": unigram_baseline(corpus, rows, words_per_token),
        "configs": configs, "speed": speed, "speed_config": speed_config,
        "total_seconds": round(time.perf_counter() - t_start, 1)}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    (out / "text_table.md").write_text(table)
    plot(results, out / "text_diffusion.png")
    log(table)
    log(f"wrote {out} ({results['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
