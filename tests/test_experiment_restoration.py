"""experiments/restoration.py: bad input is one error line before any work; the outputs, DDNM's
noiseless consistency on the real operators and the pseudo-inverse baseline's PSNR, with a cheap
analytic model in place of the trained UNet (nothing is trained here)."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import assert_one_line_error, load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "restoration.py"


@pytest.fixture(scope="module")
def mod():
    return load_script(SCRIPT, "restoration_experiment")


BAD_INPUTS = [
    (["--tasks", "inpaint_box,denoise"], "unknown task(s) 'denoise'"),
    (["--methods", "ddnm,magic"], "unknown method(s) 'magic'"),
    (["--methods", ""], "--methods is empty"),
    (["--sigma-y", "0,-0.1"], "--sigma-y values must be finite and >= 0"),
    (["--sigma-y", "0,x"], "--sigma-y must be a comma list of numbers"),
    (["--nfe", "0"], "--nfe must be at least 1"),
    (["--n-images", "100000"], "is more than the 359 test images"),
    (["--tasks", "color"], "the color task needs RGB data"),
    (["--out", "FILE"], "--out 'FILE' exists and is not a directory"),
    (["--no-train"], "holds no trained run"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_status_2(argv, message, mod, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("not a directory")
    assert_one_line_error(mod.main, argv + ["--workdir", str(tmp_path / "run")], "restoration.py", message, tmp_path, capsys)


def _toy_model(x, t, args=None):  # noqa: ARG001 - an eps prediction, no arrays captured
    return 0.5 * x


def test_outputs_consistency_and_pinv_psnr(mod, tmp_path, monkeypatch):
    from jdiff.data import load_digits, to_model_range
    from jdiff.schedules import get_schedule

    train, test = load_digits("train"), load_digits("test")

    def fake_load_model(args, log):  # noqa: ARG001 - the trained UNet's place
        info = {"workdir": "toy", "train_steps": 0, "config": {"model": "toy"}}
        return (lambda batch: _toy_model), get_schedule("vp_linear"), "eps", info, train, test

    monkeypatch.setattr(mod, "load_model", fake_load_model)
    out = tmp_path / "out"
    code = mod.main(["--quiet", "--out", str(out), "--workdir", str(tmp_path / "run"), "--n-images", "6",
                     "--nfe", "3", "--tasks", "sr2,color", "--methods", "pinv,ddnm",
                     "--sigma-y", "0,0.05", "--grid-images", "2"])
    assert code == 0
    res = json.loads((out / "restoration.json").read_text())
    for key in ("command", "machine", "rows", "skipped", "tasks", "methods", "sigma_y", "n_images", "wall_s"):
        assert key in res, key
    runs = {(r["task"], r["sigma_y"], r["method"]): r for r in res["rows"]}
    # a truth row per problem; color skipped for grayscale digits
    assert sorted(runs) == sorted(("sr2", s, m) for s in (0.0, 0.05) for m in ("truth", "pinv", "ddnm"))
    assert any(s["task"] == "color" and "channel" in s["reason"] for s in res["skipped"])
    for (_, _, m), r in runs.items():
        if m != "truth":
            assert {"psnr", "ssim", "consistency", "nfe", "seconds", "finite"} <= set(r) and r["finite"]
    assert runs[("sr2", 0.0, "ddnm")]["nfe"] == 3 and runs[("sr2", 0.0, "pinv")]["nfe"] == 0
    # DDNM's noiseless outputs satisfy A x = y on the real operator (2x average pooling)
    assert runs[("sr2", 0.0, "ddnm")]["consistency"] < 1e-5
    assert runs[("sr2", 0.0, "truth")]["consistency"] < 1e-6 < 0.01 < runs[("sr2", 0.05, "truth")]["consistency"]
    # the pseudo-inverse baseline's PSNR, recomputed in NumPy from the same images: A^+ y repeats
    # each 2 x 2 block's mean
    x = to_model_range(test.images[:6]).astype(np.float64)
    pinv = x.reshape(6, 4, 2, 4, 2, 1).mean(axis=(2, 4)).repeat(2, axis=1).repeat(2, axis=2)
    u, v = (np.clip(pinv, -1, 1) + 1) / 2, (x + 1) / 2
    psnr = np.mean(-10 * np.log10(np.mean((u - v) ** 2, axis=(1, 2, 3))))
    assert runs[("sr2", 0.0, "pinv")]["psnr"] == pytest.approx(psnr, abs=1e-3)
    table = (out / "restoration_table.md").read_text()
    assert "| sr2 | 0 | pinv | 0 |" in table and "color" in table
    for name in ("grid_sr2_sy0.png", "grid_sr2_sy0.05.png"):
        assert (out / name).stat().st_size > 0
    assert not any(out.glob("grid_color*"))
    jax.clear_caches()
