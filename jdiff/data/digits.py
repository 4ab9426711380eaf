"""The scikit-learn 8x8 handwritten digits (1,797 images, shipped inside scikit-learn: no download).

A tiny real image data set for tests and laptop-sized training runs. Do not train on it with
horizontal flips (``BatchSampler(..., flip=False)``): a mirrored digit is a different symbol.
"""

from __future__ import annotations

import numpy as np

from .dataset import ImageDataset, _check_seed


def _sklearn_digits():
    """``(images float64 (1797, 8, 8) in 0..16, labels (1797,))`` from scikit-learn, imported lazily."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:
        raise ImportError("jdiff.data.load_digits needs scikit-learn, which ships the digits data: "
                          "pip install scikit-learn") from e
    bunch = sk_load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target)


def digits_to_uint8(images) -> np.ndarray:
    """Digits grey levels ``0..16`` -> ``uint8`` ``0..255`` as ``round(x * 255 / 16)`` (halves up)."""
    images = np.asarray(images, dtype=np.float64)
    return np.floor(images * (255.0 / 16.0) + 0.5).astype(np.uint8)


def stratified_split(labels, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split -> ``(train_indices, test_indices)``, each sorted ascending.

    For each class ``c`` with ``n_c`` examples, ``floor(n_c * test_fraction + 0.5)`` of them, drawn by
    a permutation from ``Generator(PCG64(SeedSequence([seed, c])))``, go to the test side. The result
    depends only on ``(labels, test_fraction, seed)``.
    """
    seed = _check_seed(seed)
    labels = np.asarray(labels)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_test = int(np.floor(len(idx) * test_fraction + 0.5))
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, int(c)])))
        test.append(rng.permutation(idx)[:n_test])
    test = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def load_digits(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """The scikit-learn digits as an :class:`ImageDataset`: uint8 ``(N, 8, 8, 1)``, 10 classes.

    Args:
      split: ``"train"``, ``"test"`` or ``"all"`` (all 1,797 images in scikit-learn's order).
      test_fraction: share of each class held out for ``"test"`` (stratified, rounded per class).
        With the default 0.2 and ``seed=0`` the split is 1,438 train / 359 test images; the two
        splits are disjoint and together are the whole set for any seed.
      seed: seeds the split (see :func:`stratified_split`); the same seed gives the same split.

    Pixels are ``round(x * 255 / 16)`` of scikit-learn's grey levels ``0..16``.

    Raises:
      ImportError: scikit-learn is not installed (``pip install scikit-learn``).
      ValueError: bad ``split`` or ``test_fraction`` outside ``(0, 1)``.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"load_digits: split must be 'train', 'test' or 'all', got {split!r}")
    if split != "all" and not 0.0 < test_fraction < 1.0:
        raise ValueError(f"load_digits: test_fraction must lie in (0, 1), got {test_fraction!r}")
    raw, labels = _sklearn_digits()
    images = digits_to_uint8(raw)[..., None]
    if split == "all":
        idx = np.arange(len(labels))
        name = "digits"
    else:
        train, test = stratified_split(labels, test_fraction, seed)
        idx = train if split == "train" else test
        name = f"digits-{split}"
    return ImageDataset(images=images[idx], labels=labels[idx].astype(np.int32), num_classes=10, name=name,
                        class_names=tuple(str(i) for i in range(10)))
