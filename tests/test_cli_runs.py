"""Runs as a user meets them: an interrupted ``jdiff train`` saves its step and resumes to the
same result as an uninterrupted run; a failed start leaves the work directory unclaimed."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jdiff import training
from jdiff.cli import main
from jdiff.run import load_run

# a tiny run: mixture data, a small MLP, every step logged, no periodic checkpoint
def run_args(save_every=100000):
    return ["--data", "mix2d", "--model", "mlp", "--mlp-features", "32", "--mlp-depth", "2", "--batch-size", "64",
            "--log-every", "1", "--save-every", str(save_every), "--warmup-steps", "0", "--quiet"]


RUN = run_args()


def _steps(workdir):
    return [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _params(workdir):
    _, state = load_run(workdir)
    return [np.asarray(a) for a in __import__("jax").tree_util.tree_leaves(state.params)]


@pytest.mark.slow  # ~20 s: a jdiff train subprocess; the in-process SIGTERM test stays in the default set
def test_sigint_saves_the_step_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path, capsys):
    a, b = tmp_path / "interrupted", tmp_path / "straight"
    # without --quiet: stdout is a pipe, so progress comes as plain lines (not a rich bar)
    proc = subprocess.Popen([sys.executable, "-m", "jdiff.cli", "train", "--workdir", str(a), "--steps", "1000000",
                             *RUN[:-1]], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (a / "metrics.jsonl").exists() and len((a / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert out.startswith("train step 1/1000000 loss ") and "\x1b" not in out, out[:300]
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("jdiff: interrupted (SIGINT); checkpoint saved at step ")
    step = int(err.split("checkpoint saved at step ")[1].split(";")[0])
    assert f"resume with: jdiff train --workdir {a}" in err
    assert 3 <= step < 1000000 and (a / "checkpoints" / str(step)).is_dir()
    assert _steps(a)[-1] == step  # the interrupted step was finished and logged

    total = step + 15
    # resume with the run's own configuration: only --steps given
    assert main(["train", "--workdir", str(a), "--steps", str(total), "--quiet"]) == 0
    assert main(["train", "--workdir", str(b), "--steps", str(total), *RUN]) == 0
    capsys.readouterr()
    assert _steps(a) == _steps(b) == list(range(1, total + 1))
    loss = {w: [json.loads(x)["loss"] for x in (w / "metrics.jsonl").read_text().splitlines()] for w in (a, b)}
    np.testing.assert_allclose(loss[a], loss[b], rtol=1e-6)
    for pa, pb in zip(_params(a), _params(b)):
        np.testing.assert_allclose(pa, pb, rtol=1e-6, atol=1e-7)


def test_sigterm_stops_after_the_current_step_with_status_143(tmp_path, capsys, monkeypatch):
    """In process: a SIGTERM raised from inside the loop (at step 7) ends it with a checkpoint
    there, the same line and status 143; the previous handler is back afterwards."""
    fit = training.fit

    def fit_that_gets_a_sigterm(*args, **kwargs):
        kwargs["callbacks"] = [lambda step, state, record: step == 7 and os.kill(os.getpid(), signal.SIGTERM)]
        return fit(*args, **kwargs)

    monkeypatch.setattr(training, "fit", fit_that_gets_a_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    code = main(["train", "--workdir", str(tmp_path / "w"), "--steps", "50", *RUN])
    err = capsys.readouterr().err
    assert code == 143 and err.startswith("jdiff: interrupted (SIGTERM); checkpoint saved at step 7;"), err
    assert (tmp_path / "w" / "checkpoints" / "7").is_dir() and _steps(tmp_path / "w")[-1] == 7
    assert signal.getsignal(signal.SIGTERM) is before


def test_metrics_hold_each_step_once_after_a_resume_from_an_older_checkpoint(tmp_path, capsys):
    """A run killed after logging past its last checkpoint redoes those steps: the file keeps
    the redone records only."""
    w = tmp_path / "w"
    args = ["train", "--workdir", str(w), *run_args(save_every=4)]
    assert main([*args, "--steps", "6"]) == 0  # checkpoints at 4 and 6
    import shutil

    shutil.rmtree(w / "checkpoints" / "6")  # as if killed between the log of step 6 and its save
    assert main([*args, "--steps", "8"]) == 0
    capsys.readouterr()
    assert _steps(w) == list(range(1, 9))
    # asking a finished run for fewer steps than it has is an error, and changes nothing
    config = (w / "config.json").read_text()
    assert main(["train", "--workdir", str(w), "--steps", "6"]) == 2
    assert "holds a run at step 8; steps=6 is below it" in capsys.readouterr().err
    assert (w / "config.json").read_text() == config


def test_a_start_that_fails_in_training_leaves_no_config(tmp_path, capsys, monkeypatch):
    """An error in the first steps (before any checkpoint) must not claim the work directory:
    the corrected command can use it."""
    def broken_fit(*args, **kwargs):
        raise RuntimeError("out of memory in the first step")

    monkeypatch.setattr(training, "fit", broken_fit)
    with pytest.raises(RuntimeError):
        main(["train", "--workdir", str(tmp_path / "w"), "--steps", "5", *RUN])
    assert not (tmp_path / "w").exists()
    monkeypatch.undo()
    assert main(["train", "--workdir", str(tmp_path / "w"), "--steps", "3", *RUN, "--lr", "1e-3"]) == 0
    capsys.readouterr()
