"""Small helpers shared by the test modules."""

import functools
import importlib.util

import numpy as np


def load_script(path, name):
    """Import a script that is not part of a package (experiments/, scripts/) as a module."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@functools.lru_cache(maxsize=None)
def load_npz(path):
    """All arrays of a committed fixture, read once per test session."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def order_slope(errors, steps):
    """Measured convergence order: least-squares slope of log(error) against log(1 / N)."""
    return np.polyfit(np.log(1.0 / np.asarray(steps)), np.log(errors), 1)[0]


def rms(x, ref):
    return float(np.sqrt(np.mean((np.asarray(x, np.float64) - np.asarray(ref, np.float64)) ** 2)))


def assert_one_line_error(main, argv, prog: str, message: str, root, capsys, no_stdout: bool = True):
    """``main(argv)`` (a script's or the CLI's entry point) fails as the project's one error path
    says: status 2, one stderr line ``PROG: error: ...`` containing ``message``, no traceback, no
    stdout (unless ``no_stdout=False``: a check that needs a progress-reporting step first), and no
    file written or removed under ``root``."""
    before = sorted(root.rglob("*"))
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert "Traceback" not in err and (out == "" or not no_stdout), (out, err)
    assert sorted(root.rglob("*")) == before, "a failed command wrote or removed files"
