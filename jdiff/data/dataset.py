"""The in-memory image data set and ways to cut it down (random subsets, class subsets)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """A labelled image data set held in host memory.

    Attributes:
      images: ``uint8`` array of shape ``(N, H, W, C)`` (NHWC), pixel values 0..255.
      labels: ``int32`` array of shape ``(N,)`` with values in ``[0, num_classes)``.
      num_classes: number of classes (the label space, which may be larger than the set of labels
        present, e.g. after :func:`class_subset` without relabelling).
      name: a short description, e.g. ``"cifar10-train"``.
      class_names: optional names of the classes, ``len(class_names) == num_classes``.

    The fields are validated on construction (shape, dtype, label range), so every
    ``ImageDataset`` in circulation is well formed. ``len(ds)`` is the number of examples.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str = "images"
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if images.ndim != 4:
            raise ValueError(f"ImageDataset {self.name!r}: images must have shape (N, H, W, C), got "
                             f"shape {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"ImageDataset {self.name!r}: images must be uint8, got {images.dtype}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"ImageDataset {self.name!r}: labels must have shape ({images.shape[0]},) to "
                             f"match the images, got shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"ImageDataset {self.name!r}: labels must be integers, got {labels.dtype}")
        num_classes = int(self.num_classes)
        if num_classes < 1:
            raise ValueError(f"ImageDataset {self.name!r}: num_classes must be >= 1, got {num_classes}")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"ImageDataset {self.name!r}: labels must lie in [0, {num_classes}), got "
                             f"range [{labels.min()}, {labels.max()}]")
        class_names = self.class_names
        if class_names is not None:
            class_names = tuple(str(c) for c in class_names)
            if len(class_names) != num_classes:
                raise ValueError(f"ImageDataset {self.name!r}: {len(class_names)} class_names for "
                                 f"{num_classes} classes")
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))
        object.__setattr__(self, "num_classes", num_classes)
        object.__setattr__(self, "class_names", class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        return tuple(int(s) for s in self.images.shape[1:])

    def class_counts(self) -> np.ndarray:
        """Number of examples of each class, shape ``(num_classes,)``."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def take(self, indices, name: str | None = None) -> ImageDataset:
        """The examples at ``indices`` (in that order) as a new data set with the same label space."""
        indices = np.asarray(indices)
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices],
                                   name=self.name if name is None else name)

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, n={len(self)}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes})")


def subset(dataset: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """``n`` examples drawn uniformly without replacement, kept in their original order.

    The draw is a pure function of ``seed`` (``numpy.random.Generator(PCG64(seed))``).
    """
    n = int(n)
    if not 0 <= n <= len(dataset):
        raise ValueError(f"subset: n must be in [0, {len(dataset)}] for {dataset.name!r}, got {n}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(_check_seed(seed))))
    idx = np.sort(rng.choice(len(dataset), size=n, replace=False))
    return dataset.take(idx, name=f"{dataset.name}[subset {n}, seed {seed}]")


def class_subset(dataset: ImageDataset, classes: Sequence[int], relabel: bool = False) -> ImageDataset:
    """Only the examples whose label is in ``classes`` (original order kept).

    With ``relabel=False`` (default) labels keep their meaning and ``num_classes`` is unchanged.
    With ``relabel=True`` the label ``classes[i]`` becomes ``i`` and ``num_classes = len(classes)``
    (class names follow).
    """
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("class_subset: classes must not be empty")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class_subset: repeated classes in {classes}")
    bad = [c for c in classes if not 0 <= c < dataset.num_classes]
    if bad:
        raise ValueError(f"class_subset: classes {bad} are outside [0, {dataset.num_classes}) of "
                         f"{dataset.name!r}")
    keep = np.isin(dataset.labels, classes)
    name = f"{dataset.name}[classes {','.join(map(str, classes))}]"
    out = dataset.take(np.flatnonzero(keep), name=name)
    if not relabel:
        return out
    mapping = np.full(dataset.num_classes, -1, np.int32)
    mapping[classes] = np.arange(len(classes), dtype=np.int32)
    names = None if dataset.class_names is None else tuple(dataset.class_names[c] for c in classes)
    return dataclasses.replace(out, labels=mapping[out.labels], num_classes=len(classes), class_names=names)


def _check_seed(seed) -> int:
    """A seed must be a non-negative Python/numpy integer (what ``SeedSequence`` accepts)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)
