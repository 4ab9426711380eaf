"""Analytic testbeds: Gaussian mixtures with exact model functions at every noise level.

Built-in testbeds (parameters fixed by seeded NumPy generators, identical on every machine):

* ``gauss16d``: one Gaussian in 16-D with a full covariance (eigenvalues 0.01..1): its
  probability-flow ODE has a closed-form solution (:func:`gaussian_ode_solution`).
* ``mix2d``: 8 equal components on a circle of radius 1, std 0.1 (sharp modes).
* ``mix16d``: 10 components in 16-D with diagonal covariances (stds 0.05..0.3).
* ``mix64d``: 6 components in 64-D with full covariances (eigenvalues 1e-3..0.25).
* ``classes2d``: 6 components on a circle of radius 1, std 0.35, in 3 classes of two opposite
  modes each; the classes overlap (the exact Bayes classifier labels 84% of class samples right).
* ``classes16d``: 12 components in 16-D (means 0.1 N(0, I), stds 0.1..0.3), component k in class
  ``k % 4``; Bayes accuracy 80%.

Your own mixture: a JSON file
``{"weights": [...], "means": [[...]], "stds": [[...]]}`` (diagonal; ``stds`` may also give one
std per component) or with ``"covs": [[[...]]]`` (full), loaded by :func:`load_spec`. An optional
``"labels": [...]`` (one integer class per component, classes 0..C-1) makes it a guidance testbed
with exact class-conditional models and an exact classifier.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .mixture import GaussianMixture, from_arrays, gaussian_ode_solution


def _orthogonal(rng: np.random.RandomState, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _gauss16d() -> GaussianMixture:
    rng = np.random.RandomState(16)
    u = _orthogonal(rng, 16)
    lam = np.logspace(-2, 0, 16)
    cov = (u * lam) @ u.T
    return from_arrays([1.0], 0.3 * rng.standard_normal((1, 16)), covs=cov[None], name="gauss16d")


def _mix2d() -> GaussianMixture:
    ang = 2 * np.pi * np.arange(8) / 8
    means = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    return from_arrays(np.ones(8), means, stds=np.full(8, 0.1), name="mix2d")


def _mix16d() -> GaussianMixture:
    rng = np.random.RandomState(1616)
    w = rng.dirichlet(np.full(10, 3.0))
    means = 0.6 * rng.standard_normal((10, 16))
    stds = rng.uniform(0.05, 0.3, size=(10, 16))
    return from_arrays(w, means, stds=stds, name="mix16d")


def _mix64d() -> GaussianMixture:
    rng = np.random.RandomState(6464)
    K, D = 6, 64
    w = rng.dirichlet(np.full(K, 4.0))
    means = 0.5 * rng.standard_normal((K, D))
    covs = []
    for _ in range(K):
        u = _orthogonal(rng, D)
        lam = rng.permutation(np.logspace(-3, np.log10(0.25), D))
        covs.append((u * lam) @ u.T)
    covs = np.stack(covs)
    covs = 0.5 * (covs + np.swapaxes(covs, 1, 2))
    return from_arrays(w, means, covs=covs, name="mix64d")


def _classes2d() -> GaussianMixture:
    ang = 2 * np.pi * np.arange(6) / 6
    means = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    return from_arrays(np.ones(6), means, stds=np.full(6, 0.35), labels=[0, 1, 2, 0, 1, 2], name="classes2d")


def _classes16d() -> GaussianMixture:
    rng = np.random.RandomState(1717)
    w = rng.dirichlet(np.full(12, 3.0))
    means = 0.1 * rng.standard_normal((12, 16))
    stds = rng.uniform(0.1, 0.3, size=(12, 16))
    return from_arrays(w, means, stds=stds, labels=[k % 4 for k in range(12)], name="classes16d")


BUILTIN = {"gauss16d": _gauss16d, "mix2d": _mix2d, "mix16d": _mix16d, "mix64d": _mix64d,
           "classes2d": _classes2d, "classes16d": _classes16d}


def load_spec(path: str) -> GaussianMixture:
    """Load a mixture from a JSON spec file; ``ValueError`` names the bad field and why."""
    name = os.path.splitext(os.path.basename(path))[0]
    try:
        with open(path) as f:
            spec = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"testbed spec {path!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"testbed spec {path!r} is not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise ValueError(f"testbed spec {path!r} must be a JSON object with fields weights, means, stds|covs")
    unknown = set(spec) - {"weights", "means", "stds", "covs", "name", "labels"}
    if unknown:
        raise ValueError(f"testbed spec {path!r}: unknown field(s) {sorted(unknown)}; "
                         "valid: weights, means, stds, covs, labels, name")
    for field in ("weights", "means"):
        if field not in spec:
            raise ValueError(f"testbed spec {path!r}: missing field {field!r}")
    return from_arrays(
        spec["weights"], spec["means"], spec.get("stds"), spec.get("covs"),
        name=str(spec.get("name", name)), labels=spec.get("labels"),
    )


def get_testbed(name_or_path: str) -> GaussianMixture:
    """A built-in testbed by name, or a mixture from a ``.json`` spec path."""
    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path]()
    if name_or_path.endswith(".json"):
        return load_spec(name_or_path)
    raise ValueError(
        f"unknown testbed {name_or_path!r}; valid: {', '.join(BUILTIN)} or a path to a .json spec"
    )


__all__ = ["GaussianMixture", "from_arrays", "gaussian_ode_solution", "load_spec", "get_testbed",
           "BUILTIN"]
