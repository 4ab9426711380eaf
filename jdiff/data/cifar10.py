"""CIFAR-10 from the files users download themselves (nothing is fetched here).

Accepted layouts (``load_cifar10(path, split)``):

* the official ``cifar-10-batches-py`` directory (``data_batch_1`` .. ``data_batch_5`` for
  ``split="train"``, ``test_batch`` for ``split="test"``, optional ``batches.meta``), or a directory
  that contains it (e.g. where ``cifar-10-python.tar.gz`` was extracted);
* one batch pickle: a dict with ``data`` ``(N, 3072)`` uint8 in channel-planar order (1024 red,
  then 1024 green, then 1024 blue values, each row-major 32x32) and ``labels`` (N ints). Keys may be
  ``bytes`` (the official files, pickled by Python 2) or ``str``;
* an ``.npz`` with ``data`` (``(N, 3072)`` channel-planar or ``(N, 32, 32, 3)``) and ``labels``.

Pickles are read with a restricted unpickler that only constructs NumPy arrays and plain Python
values, so a tampered file cannot run code.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from .dataset import ImageDataset

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
_SIDE = 32

# The globals a pickled dict of NumPy arrays, lists, numbers and strings needs (Python 2 and 3
# pickles, NumPy 1 and 2 module names). Anything else is refused.
_ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
})


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}: a CIFAR batch holds only "
                                         "NumPy arrays, lists, numbers and strings")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):  # NumPy 2 renamed numpy.core
            module = "numpy._core." + module[len("numpy.core."):]
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    """Unpickle a CIFAR file into a dict with ``str`` keys (``bytes`` keys decoded)."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError,
            IndexError, KeyError) as e:
        raise ValueError(f"{path}: not a readable CIFAR-10 batch pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict with 'data' and 'labels', got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _to_nhwc(data, where: str) -> np.ndarray:
    """``(N, 3072)`` channel-planar or ``(N, 32, 32, 3)`` pixels -> contiguous uint8 ``(N, 32, 32, 3)``."""
    data = np.asarray(data)
    if data.ndim == 2 and data.shape[1] == 3 * _SIDE * _SIDE:
        data = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    elif not (data.ndim == 4 and data.shape[1:] == (_SIDE, _SIDE, 3)):
        raise ValueError(f"{where}: 'data' must have shape (N, 3072) (channel-planar) or (N, 32, 32, 3), got "
                         f"shape {data.shape}")
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer):
            raise ValueError(f"{where}: 'data' must hold integer pixels 0..255, got dtype {data.dtype}")
        if data.size and (data.min() < 0 or data.max() > 255):
            raise ValueError(f"{where}: 'data' values must lie in 0..255, got [{data.min()}, {data.max()}]")
    return np.ascontiguousarray(data, dtype=np.uint8)


def _to_labels(labels, n: int, where: str) -> np.ndarray:
    """Labels as int32 ``(n,)`` in ``[0, 10)``."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"{where}: 'labels' must have shape ({n},) to match 'data', got shape {labels.shape}")
    if n and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: 'labels' must be integers, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise ValueError(f"{where}: 'labels' must lie in [0, 10), got [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int32)


def _require(d, key: str, where: str):
    if key not in d:
        raise ValueError(f"{where}: missing key {key!r} (keys present: {sorted(map(str, d))})")
    return d[key]


def read_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch pickle or ``.npz`` -> ``(images uint8 (N, 32, 32, 3), labels int32 (N,))``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR-10 batch file not found: {path}")
    where = str(path)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in ("data", "labels") if k in z.files}
                present = z.files
        except (ValueError, OSError) as e:
            raise ValueError(f"{path}: not a readable .npz file ({e})") from e
        for key in ("data", "labels"):
            if key not in d:
                raise ValueError(f"{where}: missing key {key!r} (keys present: {sorted(present)})")
    else:
        d = _load_pickle(path)
    images = _to_nhwc(_require(d, "data", where), where)
    labels = _to_labels(_require(d, "labels", where), images.shape[0], where)
    return images, labels


def read_label_names(path) -> tuple[str, ...]:
    """The ``label_names`` of a ``batches.meta`` pickle (10 names)."""
    path = Path(path)
    meta = _load_pickle(path)
    names = _require(meta, "label_names", str(path))
    names = tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)
    if len(names) != len(CIFAR10_CLASSES):
        raise ValueError(f"{path}: 'label_names' must hold {len(CIFAR10_CLASSES)} names, got {len(names)}")
    return names


def load_cifar10(path, split: str = "train") -> ImageDataset:
    """Load CIFAR-10 as an :class:`ImageDataset` (uint8 NHWC ``(N, 32, 32, 3)``, int32 labels, 10 classes).

    Args:
      path: the ``cifar-10-batches-py`` directory (or a directory containing it), a single batch
        pickle, or an ``.npz`` with ``data`` and ``labels`` (see the module docstring).
      split: ``"train"`` (``data_batch_1..5``, 50,000 images in the official set) or ``"test"``
        (``test_batch``, 10,000). Only used to pick files from a directory; a single file is loaded
        whatever ``split`` says.

    Class names come from ``batches.meta`` next to the batches when present, else the standard
    CIFAR-10 names.

    Raises:
      FileNotFoundError: ``path`` or one of the split's batch files does not exist.
      ValueError: bad ``split``, a file that is not a CIFAR batch, a missing key, or data/labels of
        the wrong shape, dtype or range (the message names the file and the key).
    """
    if split not in ("train", "test"):
        raise ValueError(f"load_cifar10: split must be 'train' or 'test', got {split!r}")
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"CIFAR-10 path not found: {path}")
    if path.is_dir():
        names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
        if not (path / names[0]).exists() and (path / "cifar-10-batches-py").is_dir():
            path = path / "cifar-10-batches-py"
        missing = [str(path / n) for n in names if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(f"CIFAR-10 {split} batch files not found: {', '.join(missing)} (expected the "
                                    "official cifar-10-batches-py directory)")
        parts = [read_batch(path / n) for n in names]
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        name = f"cifar10-{split}"
        meta = path / "batches.meta"
    else:
        images, labels = read_batch(path)
        name = f"cifar10:{path.name}"
        meta = path.parent / "batches.meta"
    class_names = read_label_names(meta) if meta.is_file() else CIFAR10_CLASSES
    return ImageDataset(images=images, labels=labels, num_classes=len(CIFAR10_CLASSES), name=name,
                        class_names=class_names)
