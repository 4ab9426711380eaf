"""Small helpers shared by the test modules."""

import functools

import numpy as np


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
