"""experiments/text_diffusion.py: DiffusionBERT's schedule x time-design study.

Default set: bad inputs are one line ``text_diffusion.py: error: ...``, status 2, no files written;
every configuration trains with the same settings (equal compute); held-out rows and the padded
bound. Slow: the ``--quick`` run end to end.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "text_diffusion.py"
TEXT = "".join(f"the cat number {i % 7} sat on the mat . a dog <unk> barked at {i % 5} birds .\n" for i in range(60))


@pytest.fixture(scope="module")
def mod():
    return load_script(SCRIPT, "text_diffusion")


BAD_INPUTS = [
    (["--data", "MISSING.txt"], "corpus file 'MISSING.txt' does not exist"),
    (["--data", "EMPTY.txt"], "corpus file 'EMPTY.txt' is empty"),
    (["--data", "BLANK.txt"], "is empty (only whitespace)"),
    (["--data", "BIN.txt"], "corpus file 'BIN.txt' is binary"),
    (["--data", "DIR"], "is a directory"),
    (["--data", "OK.txt", "--test-data", "EMPTY.txt"], "corpus file 'EMPTY.txt' is empty"),
    (["--data", "OK.txt", "--schedules", "linear,zigzag"], "unknown schedule(s) 'zigzag'; valid: linear, cosine, spindle"),
    (["--data", "OK.txt", "--schedules", ""], "--schedules is empty"),
    (["--data", "OK.txt", "--schedules", "linear,linear"], "lists a value twice"),
    (["--data", "OK.txt", "--time-modes", "agnostic,clock"],
     "unknown time mode(s) 'clock'; valid: agnostic, layerwise, prefix"),
    (["--data", "OK.txt", "--tokenizer", "bpe"], "unknown tokenizer 'bpe'"),
    (["--data", "OK.txt", "--loss", "l2"], "unknown loss 'l2'"),
    (["--data", "OK.txt", "--spindle-form", "sum"], "unknown spindle form 'sum'"),
    (["--data", "OK.txt", "--T", "32", "--sample-steps", "64"], "--sample-steps (64) must not exceed --T (32)"),
    (["--data", "OK.txt", "--hidden", "100", "--heads", "3"], "must be a multiple of --heads"),
    (["--data", "OK.txt", "--n-samples", "1"], "--n-samples must be at least 2"),
    (["--data", "OK.txt", "--steps", "0"], "--steps must be at least 1"),
    (["--data", "OK.txt", "--speed-steps", "4,x"], "--speed-steps must be a comma list of positive integers"),
    (["--data", "OK.txt", "--lr", "nan"], "--lr must be a positive number"),
    (["--data", "OK.txt", "--test-fraction", "1.5"], "--test-fraction must be in (0, 1)"),
    (["--test-data", "OK.txt"], "--test-data needs --data"),
    (["--data", "OK.txt", "--workdir", "FILE"], "exists and is not a directory"),
    (["--data", "OK.txt", "--quick", "--workdir", "OLD"], "holds a run with different settings"),
    (["--data", "OK.txt", "--steps", "x"], "invalid int value: 'x'"),
]


def _prepare(tmp_path):
    (tmp_path / "OK.txt").write_text(TEXT)
    (tmp_path / "EMPTY.txt").write_text("")
    (tmp_path / "BLANK.txt").write_text("  \n\n")
    (tmp_path / "BIN.txt").write_bytes(b"abc\x00\x01def")
    (tmp_path / "DIR").mkdir()
    (tmp_path / "FILE").write_text("not a directory")
    (tmp_path / "OLD" / "spindle_agnostic").mkdir(parents=True)  # a run with other settings
    (tmp_path / "OLD" / "spindle_agnostic" / "config.json").write_text(json.dumps({"schedule": "spindle", "T": 99}))


@pytest.mark.parametrize("argv,message", BAD_INPUTS, ids=[" ".join(a) or "empty" for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_status_2(argv, message, mod, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _prepare(tmp_path)
    assert_one_line_error(mod.main, argv, "text_diffusion.py", message, tmp_path, capsys,
                          no_stdout=False)  # the run-settings check follows "tokenising ..."


def test_bad_input_from_the_shell_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--data", "nope.txt"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == "text_diffusion.py: error: corpus file 'nope.txt' does not exist\n"
    assert not any(tmp_path.iterdir())


def _corpus(mod, tmp_path, *extra):
    (tmp_path / "c.txt").write_text(TEXT)
    args = mod.fill_defaults(mod.parse_args(["--data", str(tmp_path / "c.txt"), "--quick", *extra]))
    mod.check_args(args)
    return args, mod.build_corpus(args, *mod.read_texts(args))


def test_configurations_share_every_training_setting(mod, tmp_path):
    args, corpus = _corpus(mod, tmp_path)
    own = {"schedule", "time_mode", "lam", "spindle_form"}
    settings = {(s, m): mod.run_settings(args, corpus, s, m)
                for s in ("linear", "spindle") for m in ("agnostic", "layerwise", "prefix")}
    ref = settings[("linear", "agnostic")]
    for (s, m), cfg in settings.items():
        assert (cfg["schedule"], cfg["time_mode"]) == (s, m)
        assert {k: v for k, v in cfg.items() if k not in own | {"model"}} == {
            k: v for k, v in ref.items() if k not in own | {"model"}}  # steps, batch, seed, lr, data, ...
        assert {k: v for k, v in cfg["model"].items() if k != "time_mode"} == {
            k: v for k, v in ref["model"].items() if k != "time_mode"}
    assert settings[("spindle", "prefix")]["lam"] == 0.3 and ref["lam"] is None


def test_unk_literal_is_one_token_and_word_counts_are_unchanged(mod, tmp_path):
    args, corpus = _corpus(mod, tmp_path)
    tok = corpus.tokenizer
    assert corpus.counts[tok.unk_id] > 0 and corpus.counts[tok.mask_id] == 0
    _, plain = _corpus(mod, tmp_path, "--unk-literal", "")
    assert corpus.train.num_words == plain.train.num_words
    assert corpus.train.num_tokens < plain.train.num_tokens  # '<unk>' is '< unk >' without the mapping


def test_wordpiece_tokenizer_is_saved_and_reused(mod, tmp_path):
    args, corpus = _corpus(mod, tmp_path)
    texts = mod.read_texts(args)
    settings = mod.tokenizer_settings(args, *texts[2:])
    assert corpus.tokenizer_source == "trained"
    mod.save_tokenizer(corpus, tmp_path / "w", settings)
    again = mod.build_corpus(args, *texts, workdir=tmp_path / "w")
    assert again.tokenizer_source == "cached"
    assert mod.vocab_digest(again.tokenizer) == mod.vocab_digest(corpus.tokenizer)
    assert np.array_equal(again.train.tokens, corpus.train.tokens) and np.array_equal(again.counts, corpus.counts)
    other = mod.fill_defaults(mod.parse_args(["--data", args.data, "--quick", "--vocab-size", "100"]))
    assert mod.build_corpus(other, *texts, workdir=tmp_path / "w").tokenizer_source == "trained"


def test_eval_subset_is_even_and_all_with_zero(mod):
    class C:
        def __len__(self):
            return 10

    assert mod.eval_subset(C(), 0).tolist() == list(range(10))
    assert mod.eval_subset(C(), 50).tolist() == list(range(10))
    assert mod.eval_subset(C(), 3).tolist() == [0, 4, 9]  # linspace(0, 9, 3) rounded


def test_held_out_bound_pads_the_last_batch_with_empty_rows(mod):
    import jax
    import jax.numpy as jnp

    from jdiff.discrete import absorbing, linear
    from jdiff.discrete.text import TokenChunks

    V, L = 6, 5  # ids 0..4 tokens, 5 the mask

    def uniform(params, x, t):
        return jnp.zeros(x.shape + (V,), jnp.float32)

    process = absorbing(linear(), V, 5)
    rng = np.random.default_rng(0)
    chunks = TokenChunks(rng.integers(0, 5, (3, L)).astype(np.int32), np.ones((3, L), bool), 3)
    total, per_seq = mod.held_out_bound(uniform, None, process, chunks, np.arange(3), 4, 2, jax.random.key(0))
    assert per_seq.shape == (3,) and np.isclose(total, per_seq.sum())
    # a uniform x0 model: each masked token pays (1 - c) log 5 per term, at most L log 5 per sequence
    assert np.all(per_seq > 0) and np.all(per_seq <= L * math.log(5) * 4 + 1e-4)
    empty = mod._bound_batch(uniform, None, process, jnp.zeros((2, L), jnp.int32), jnp.zeros((2, L), bool),
                             jax.random.key(1), 4)
    assert np.asarray(empty).tolist() == [0.0, 0.0]  # the padding rows of the last batch add nothing


def test_paired_differences_per_token(mod):
    """Per-row bounds (nats) of 4 rows, 8 tokens: the difference per token is the mean per-row
    difference x rows / tokens, its standard error from the per-row differences."""
    base = {"name": "a", "bound_per_row": [10.0, 12.0, 11.0, 9.0]}
    other = {"name": "b", "bound_per_row": [11.0, 12.0, 12.0, 11.0]}  # differences 1, 0, 1, 2
    lines = mod.paired_lines([base, other], 8)
    d = np.array([1.0, 0.0, 1.0, 2.0]) * 4 / 8
    assert lines[-1] == f"| b | {d.mean():+.4f} ± {d.std(ddof=1) / 2:.4f} |" == "| b | +0.5000 ± 0.2041 |"
    assert mod.paired_lines([base], 8) == [] and mod.paired_lines([{"name": "a"}, other], 8) == []


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT * 3)
    work, out_dir = tmp_path / "work", tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--quiet", "--data", str(tmp_path / "c.txt"),
           "--workdir", str(work), "--out", str(out_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((out_dir / "results.json").read_text())
    assert [c["name"] for c in res["configs"]] == ["spindle_agnostic", "spindle_layerwise"]
    for c in res["configs"]:
        assert c["train_steps"] == 3 and c["masks_left"] == 0 and len(c["bound_per_row"]) == res["eval"]["rows"]
        assert math.isfinite(c["ppl"]["ppl_token"]) and math.isfinite(c["ppl"]["ppl_word"])
        assert 0 <= c["bleu"] <= 100 and 0 <= c["self_bleu"] <= 100
        lines = (out_dir / f"samples_{c['name']}.txt").read_text().splitlines()
        assert len(lines) == res["settings"]["n_samples"] == 4
    assert [r["steps"] for r in res["speed"]] == [2, 4]
    assert (out_dir / "text_diffusion.png").stat().st_size > 0
    assert "| spindle_layerwise |" in (out_dir / "text_table.md").read_text()
    # the same command reuses the finished runs (no training step redone)
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    res2 = json.loads((out_dir / "results.json").read_text())
    assert [c["ppl"]["nll_nats"] for c in res2["configs"]] == [c["ppl"]["nll_nats"] for c in res["configs"]]
