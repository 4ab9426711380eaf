"""Every bad input a user can give the command line is one line ``PROG: error: ...``, status 2,
no traceback, and no work done (no output written, no work directory claimed).

The table below is the list to extend as commands grow: ``(command, argv, text the error must
contain)``. ``FILE`` is replaced by the path of an existing regular file, ``RUN`` by a work
directory holding a run's ``config.json``, ``SPEC`` by a malformed testbed spec and ``NOISE`` by
noise of the wrong shape; everything runs in an empty temporary directory.
"""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_one_line_error, load_script

from jdiff.cli import main as jdiff_main

REPO = Path(__file__).resolve().parents[1]

BAD_INPUTS = [
    # jdiff sample
    ("jdiff", ["sample", "--solver", "nope"], "unknown solver 'nope'"),
    ("jdiff", ["sample", "--testbed", "nope"], "unknown testbed"),
    ("jdiff", ["sample", "--schedule", "vpp"], "unknown schedule 'vpp'"),
    ("jdiff", ["sample", "--grid", "fancy"], "unknown grid 'fancy'"),
    ("jdiff", ["sample", "--nfe", "ten"], "invalid int value"),
    ("jdiff", ["sample", "--solver", "heun", "--nfe", "2"], "needs NFE >= 3"),
    ("jdiff", ["sample", "--steps", "-3"], "--steps must be at least 1"),
    ("jdiff", ["sample", "--n", "0"], "--n must be at least 1"),
    ("jdiff", ["sample", "--out", "missing-dir/x.npy"], "does not exist"),
    ("jdiff", ["sample", "--out", "."], "is a directory"),
    ("jdiff", ["sample", "--noise", "missing.npy"], "missing.npy"),
    ("jdiff", ["sample", "--testbed", "mix16d", "--noise", "NOISE"], "(n, 16)"),
    ("jdiff", ["sample", "--final", "middle"], "invalid choice"),
    ("jdiff", ["sample", "--denoise-to-zero"], "--final t_min"),
    ("jdiff", ["sample", "--testbed", "SPEC"], "field 'stds' must be positive"),
    ("jdiff", ["sample", "--prng", "mt19937"], "invalid choice"),
    ("jdiff", ["sample", "--out", "/proc/samples.npy"], "cannot write in folder"),
    ("jdiff", ["samplex"], "invalid choice"),
    ("jdiff", ["sample", "--teleport", "1.5"], "--teleport must be a fraction in [0, 1) or 'auto'"),
    ("jdiff", ["sample", "--teleport", "auto", "--teleport-tol", "0"], "tolerance must be positive"),
    ("jdiff", ["sample", "--teleport", "0.2", "--teleport-tol", "0.1"], "applies to --teleport auto only"),
    ("jdiff", ["sample", "--teleport", "0.2", "--grid", "linspace"], "needs a continuous grid"),
    ("jdiff", ["sample", "--dualfast", "ramp=cosine"], "unknown DualFast ramp 'cosine'"),
    ("jdiff", ["sample", "--dualfast", "strength=2"], "--dualfast takes k=v options"),
    ("jdiff", ["sample", "--testbed", "classes2d", "--labels", "0,4"],
     "class label 4 is out of range: valid labels are 0..2 or the null class 3"),
    ("jdiff", ["sample", "--testbed", "classes2d", "--labels", "1", "--cfg", "nan"], "--cfg must be a finite number"),
    ("jdiff", ["sample", "--testbed", "classes2d", "--labels", "3", "--cfg", "1"], "valid labels are 0..2"),
    ("jdiff", ["sample", "--testbed", "classes2d", "--labels", "a"], "--labels must be a comma list of integers"),
    ("jdiff", ["sample", "--testbed", "classes2d", "--cfg", "2"], "need --labels"),
    ("jdiff", ["sample", "--labels", "0"], "needs a labelled testbed"),
    ("jdiff", ["sample", "--testbed", "classes2d", "--labels", "0", "--cfg", "1", "--classifier-guidance", "1"],
     "give one of --cfg and --classifier-guidance"),
    # jdiff bench guidance
    ("jdiff", ["bench", "guidance", "--scales", "0,inf"], "--scales must be finite numbers"),
    ("jdiff", ["bench", "guidance", "--scales", "0,x"], "--scales must be a comma list of numbers"),
    ("jdiff", ["bench", "guidance", "--methods", "cfg,dps"], "unknown guidance method 'dps'"),
    ("jdiff", ["bench", "guidance", "--testbed", "mix2d"], "has no component labels"),
    ("jdiff", ["bench", "guidance", "--n-per-class", "1"], "--n-per-class must be at least 2"),
    ("jdiff", ["bench", "guidance", "--solvers", "heun", "--nfe", "2"], "needs NFE >= 3"),
    ("jdiff", ["bench", "guidance", "--out", "FILE"], "is not a directory"),
    # jdiff bench restore
    ("jdiff", ["bench", "restore", "--sigma-y", "-0.1"], "--sigma-y values must be finite and >= 0"),
    ("jdiff", ["bench", "restore", "--methods", "ddnm,nope"], "unknown restoration method(s) 'nope'"),
    ("jdiff", ["bench", "restore", "--operator", "matrix:missing.npy"], "missing.npy"),
    ("jdiff", ["bench", "restore", "--operator", "mask:1.5"], "mask"),
    ("jdiff", ["bench", "restore", "--operator", "sr:2"], "needs image data"),
    ("jdiff", ["bench", "restore", "--n-per-measurement", "1"], "--n-per-measurement is too small"),
    ("jdiff", ["bench", "restore", "--noise", "NOISE"], "(n, 16)"),
    ("jdiff", ["bench", "restore", "--noise", "missing.npy"], "missing.npy"),
    # jdiff bench steps
    ("jdiff", ["bench"], "required"),
    ("jdiff", ["bench", "steps", "--solvers", "ddim,nope"], "unknown solver 'nope'"),
    ("jdiff", ["bench", "steps", "--nfe", "0"], "positive"),
    ("jdiff", ["bench", "steps", "--nfe", "5,x"], "--nfe"),
    ("jdiff", ["bench", "steps", "--solvers", "heun", "--nfe", "2,10"], "needs NFE >= 3"),
    ("jdiff", ["bench", "steps", "--out", "FILE"], "is not a directory"),
    ("jdiff", ["bench", "steps", "--n", "0"], "--n must be at least 1"),
    ("jdiff", ["bench", "steps", "--out", "/proc/bench"], "cannot create it in"),
    ("jdiff", ["bench", "steps", "--testbed", ""], "--testbed is empty"),
    ("jdiff", ["bench", "steps", "--nfe", "5,5"], "lists a budget twice"),
    ("jdiff", ["bench", "steps", "--grid", "all,fancy"], "'all' stands alone"),
    ("jdiff", ["bench", "steps", "--grid", "fancy"], "unknown grid 'fancy'"),
    ("jdiff", ["bench", "steps", "--testbed", "mix2d,nope"], "unknown testbed 'nope'"),
    ("jdiff", ["bench", "steps", "--testbed", "mix2d", "--noise", "NOISE"], "(n, 2)"),
    ("jdiff", ["bench", "steps", "--teleport", "half"], "--teleport must be a fraction"),
    ("jdiff", ["bench", "steps", "--dualfast", "scale=-1"], "scale must be >= 0"),
    ("jdiff", ["bench", "steps", "--teleport", "0.3", "--grid", "logsnr,trailing"], "needs a continuous grid"),
    # jdiff train
    ("jdiff", ["train"], "--workdir"),
    ("jdiff", ["train", "--workdir", "w", "--steps", "-10"], "--steps must be at least 0"),
    ("jdiff", ["train", "--workdir", "w", "--batch-size", "0"], "--batch-size must be at least 1"),
    ("jdiff", ["train", "--workdir", "w", "--lr", "-1"], "--lr must be non-negative"),
    ("jdiff", ["train", "--workdir", "w", "--ema-decay", "1.5"], "--ema-decay must be below 1"),
    ("jdiff", ["train", "--workdir", "FILE"], "exists and is not a directory"),
    ("jdiff", ["train", "--workdir", "w", "--data", "cifar10:missing-cifar"], "not found: missing-cifar"),
    ("jdiff", ["train", "--workdir", "w", "--data", "mix2d"], "needs images"),
    ("jdiff", ["train", "--workdir", "w", "--data", "mix2d", "--model", "mlp", "--conditional", "true"],
     "has no labels"),
    ("jdiff", ["train", "--workdir", "w", "--data", "imagenet"], "unknown image data"),
    ("jdiff", ["train", "--workdir", "w", "--model", "unet_huge"], "unknown model 'unet_huge'"),
    ("jdiff", ["train", "--workdir", "w", "--lr-decay", "step"], "unknown lr_decay 'step'"),
    ("jdiff", ["train", "--workdir", "w", "--compute-dtype", "float99"], "unknown compute_dtype"),
    ("jdiff", ["train", "--workdir", "w", "--schedule", "vpp"], "unknown schedule"),
    ("jdiff", ["train", "--workdir", "w", "--flip", "maybe"], "expected true/false"),
    ("jdiff", ["train", "--workdir", "w", "--data", "mix2d", "--model", "mlp", "--weighting", "p2"],
     "unknown weighting 'p2'"),
    ("jdiff", ["train", "--workdir", "RUN", "--lr", "0.5"], "--lr 0.5 (run: 0.0002)"),
    ("jdiff", ["train", "--workdir", "w", "--model-kwargs", '{"chans": 8}'], "unknown UNetConfig field(s) chans"),
    ("jdiff", ["train", "--workdir", "w", "--model-kwargs", "{ch: 8}"], "not valid JSON"),
    ("jdiff", ["train", "--workdir", "w", "--data", "mix2d", "--model", "mlp", "--model-kwargs", "[1, 2]"],
     "model_kwargs applies to UNet models"),
    # experiments/cifar10_sampling.py
    ("experiment", ["--config", "imagenet"], "invalid choice"),
    ("experiment", ["--config", "cifar10"], "needs --data-path"),
    ("experiment", ["--config", "cifar10", "--data-path", "missing-cifar"], "does not exist"),
    ("experiment", ["--solvers", "ddim,nope"], "unknown solver 'nope'"),
    ("experiment", ["--nfe", "0"], "positive"),
    ("experiment", ["--repeats", "0"], "--repeats must be at least 1"),
    ("experiment", ["--n-samples", "0"], "--n-samples must be at least 1"),
    ("experiment", ["--grid", "fancy"], "unknown grid 'fancy'"),
    ("experiment", ["--out", "FILE"], "exists and is not a directory"),
    ("experiment", ["--workdir", "empty", "--no-train"], "holds no trained run"),
    ("experiment", ["--inception", "missing.npz"], "is not a file"),
    ("experiment", ["--steps", "-1"], "--steps must be at least 0"),
    ("experiment", ["--inception", "FILE"], "is not an .npz of Inception weights"),
    ("experiment", ["--sample-seed", "-1"], "--sample-seed must be non-negative"),
    ("experiment", ["--solvers", "heun", "--nfe", "2,5"], "needs NFE >= 3"),
    ("experiment", ["--data-path", "FILE"], "--data-path applies to the cifar10 configs"),
]


@pytest.fixture(scope="module")
def experiment_main():
    return load_script(REPO / "experiments" / "cifar10_sampling.py", "cifar10_sampling_cli").main


def _prepare(argv, tmp_path):
    from jdiff.run import RunConfig

    (tmp_path / "FILE").write_text("not a directory")
    (tmp_path / "spec.json").write_text(json.dumps({"weights": [1.0], "means": [[0.0]], "stds": [[0.0]]}))
    np.save(tmp_path / "noise.npy", np.zeros((10, 3), np.float32))
    (tmp_path / "RUN").mkdir()
    (tmp_path / "RUN" / "config.json").write_text(json.dumps(dataclasses.asdict(RunConfig())))
    (tmp_path / "empty").mkdir()
    return [{"SPEC": "spec.json", "NOISE": "noise.npy"}.get(a, a) for a in argv]


@pytest.mark.parametrize("command,argv,message", BAD_INPUTS, ids=[" ".join(c[1]) for c in BAD_INPUTS])
def test_bad_input_is_one_line_and_status_2(command, argv, message, tmp_path, monkeypatch, capsys,
                                            experiment_main):
    monkeypatch.chdir(tmp_path)
    argv = _prepare(argv, tmp_path)
    main, prog = (jdiff_main, "jdiff") if command == "jdiff" else (experiment_main, "cifar10_sampling.py")
    assert_one_line_error(main, argv, prog, message, tmp_path, capsys)


def test_the_table_covers_every_command_with_at_least_30_inputs():
    commands = {(c, a[0] if c == "jdiff" else "") for c, a, _ in BAD_INPUTS}
    assert {("jdiff", "sample"), ("jdiff", "bench"), ("jdiff", "train"), ("experiment", "")} <= commands
    assert len({(c, tuple(a)) for c, a, _ in BAD_INPUTS}) == len(BAD_INPUTS) >= 30


def test_out_of_memory_and_interrupts_are_one_line(capsys):
    """A request too large for memory (--n, --batch-size) is one line and status 2, host or device;
    an interrupted training run one line and 128 + the signal."""
    from jdiff.cli import run_command

    def host():
        raise MemoryError("Unable to allocate 29.8 GiB")

    def device():
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 144000001024 bytes.")

    for fn, what in ((host, "out of memory"), (device, "out of device memory")):
        assert run_command(fn) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"jdiff: error: {what}") and err.count("\n") == 1, err

    def interrupted():  # a training run stopped by SIGTERM inside any command (the experiment's)
        from jdiff.training import TrainingInterrupted

        raise TrainingInterrupted(12, 15, True)

    assert run_command(interrupted, prog="cifar10_sampling.py") == 143
    err = capsys.readouterr().err
    assert err == ("cifar10_sampling.py: interrupted (SIGTERM); checkpoint saved at step 12; resume with: run "
                   "the same command again\n"), err

    def bug():
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):  # other errors are not hidden
        run_command(bug)
