"""Deterministic, resumable, shardable mini-batches: every batch is a pure function of (seed, step).

There is no iterator state to checkpoint. A training run that saves its step counter and restarts
at step ``k`` sees exactly the batches an uninterrupted run would have seen from step ``k`` on, and
every process of a multi-host job computes the same global batch and keeps its own contiguous
slice of it.

Randomness (numpy ``Generator(PCG64)``, seeded through ``SeedSequence`` so nearby seeds give
independent streams):

* the order of epoch ``e = step // steps_per_epoch`` is ``permutation(N)`` of
  ``SeedSequence([seed, 0, e])``; step ``step % steps_per_epoch`` takes the next ``batch_size``
  entries of it, so each epoch visits every example once (up to the dropped remainder);
* horizontal flips of step ``s`` are ``random(b) < 0.5`` of ``SeedSequence([seed, 1, s])``, drawn for
  the whole global batch (so a process's slice flips the same images the global batch does).

The middle entries 0 and 1 keep the two streams apart (``[seed, e]`` and ``[seed, s]`` would
coincide whenever ``e == s``).
"""

from __future__ import annotations

import operator
from collections.abc import Iterator

import numpy as np

from .dataset import ImageDataset, _check_seed
from .transforms import to_model_range

_PERMUTATION_STREAM = 0
_FLIP_STREAM = 1


def _rng(*entropy: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(entropy))))


def _as_index(value, what: str) -> int:
    """A non-negative integer from a Python/NumPy/JAX integer scalar."""
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{what} must be >= 0, got {value}")
    return value


class BatchSampler:
    """Mini-batches of an :class:`ImageDataset` as a pure function of ``(seed, step)``.

    Args:
      dataset: the images (uint8 NHWC) and labels.
      batch_size: the global batch size (all processes together).
      seed: non-negative integer seeding the epoch orders and the flips.
      flip: random horizontal flips with probability 1/2 (turn off for digits, text, ...).
      drop_last: drop the ``N % batch_size`` examples left at the end of each epoch's order, so
        every batch has ``batch_size`` examples (one compiled shape). With ``False`` the last step
        of each epoch returns the smaller remainder batch.

    ``batch(step)`` returns ``(images float32 (B, H, W, C) in [-1, 1], labels int32 (B,))`` as NumPy
    arrays; ``iterate(start_step)`` yields ``batch(start_step), batch(start_step + 1), ...``.

    Example::

        sampler = BatchSampler(load_cifar10(path), batch_size=128, seed=0)
        for step in range(start_step, num_steps):      # start_step restored from a checkpoint
            images, labels = sampler.batch(step, jax.process_index(), jax.process_count())
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, seed: int = 0, flip: bool = True,
                 drop_last: bool = True):
        if not isinstance(dataset, ImageDataset):
            raise TypeError(f"BatchSampler needs an ImageDataset, got {type(dataset).__name__}")
        batch_size = _as_index(batch_size, "batch_size")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(dataset)
        if n == 0:
            raise ValueError(f"BatchSampler: data set {dataset.name!r} is empty")
        if drop_last and batch_size > n:
            raise ValueError(f"BatchSampler: batch_size {batch_size} exceeds the {n} examples of {dataset.name!r} "
                             "(with drop_last=True no batch could be formed)")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = _check_seed(seed)
        self.flip = bool(flip)
        self.drop_last = bool(drop_last)
        self._perm_cache: tuple[int, np.ndarray] | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Steps per pass over the data: ``N // batch_size`` (``drop_last``) or ``ceil(N / batch_size)``."""
        n, b = len(self.dataset), self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def epoch(self, step: int) -> int:
        """The epoch that ``step`` belongs to."""
        return _as_index(step, "step") // self.steps_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the examples in ``epoch`` (a permutation of ``range(N)``)."""
        epoch = _as_index(epoch, "epoch")
        cached = self._perm_cache
        if cached is not None and cached[0] == epoch:
            return cached[1]
        perm = _rng(self.seed, _PERMUTATION_STREAM, epoch).permutation(len(self.dataset))
        perm.setflags(write=False)
        self._perm_cache = (epoch, perm)
        return perm

    def global_indices(self, step: int) -> np.ndarray:
        """Indices into the data set of the whole global batch of ``step``."""
        step = _as_index(step, "step")
        spe = self.steps_per_epoch
        epoch, i = divmod(step, spe)
        return self.permutation(epoch)[i * self.batch_size:(i + 1) * self.batch_size]

    def flips(self, step: int) -> np.ndarray:
        """Boolean flip flags of the whole global batch of ``step`` (all ``False`` when ``flip=False``)."""
        step = _as_index(step, "step")
        b = len(self.global_indices(step))
        if not self.flip:
            return np.zeros(b, bool)
        return _rng(self.seed, _FLIP_STREAM, step).random(b) < 0.5

    def _slice(self, b: int, process_index, process_count) -> slice:
        process_count = _as_index(process_count, "process_count")
        process_index = _as_index(process_index, "process_index")
        if process_count < 1:
            raise ValueError(f"process_count must be >= 1, got {process_count}")
        if process_index >= process_count:
            raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
        if self.batch_size % process_count:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by process_count {process_count}")
        return slice(b * process_index // process_count, b * (process_index + 1) // process_count)

    def batch(self, step: int, process_index: int = 0, process_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """This process's part of the global batch of ``step``.

        The global batch is split contiguously: process ``p`` of ``P`` gets rows
        ``[p * B / P, (p + 1) * B / P)``, so the slices are disjoint and concatenate (in process
        order) to ``batch(step)``. ``batch_size`` must be divisible by ``process_count``; a smaller
        last batch (``drop_last=False``) is split as evenly as possible.

        Returns:
          ``(images, labels)``: float32 ``(B / P, H, W, C)`` in ``[-1, 1]`` and int32 ``(B / P,)``.
        """
        idx = self.global_indices(step)
        flips = self.flips(step)
        part = self._slice(len(idx), process_index, process_count)
        idx, flips = idx[part], flips[part]
        images = self.dataset.images[idx]
        if flips.any():
            images[flips] = images[flips, :, ::-1]
        return to_model_range(images), self.dataset.labels[idx]

    def iterate(self, start_step: int = 0, num_steps: int | None = None, process_index: int = 0,
                process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``batch(s, process_index, process_count)`` for ``s = start_step, start_step + 1, ...``.

        Endless unless ``num_steps`` is given. Resuming a run at step ``k`` is ``iterate(k)``.
        """
        step = _as_index(start_step, "start_step")
        stop = None if num_steps is None else step + _as_index(num_steps, "num_steps")
        while stop is None or step < stop:
            yield self.batch(step, process_index, process_count)
            step += 1

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Endless iteration from step 0 (use :meth:`iterate` to start elsewhere)."""
        return self.iterate(0)

    def __repr__(self) -> str:
        return (f"BatchSampler({self.dataset.name!r}, batch_size={self.batch_size}, seed={self.seed}, "
                f"flip={self.flip}, drop_last={self.drop_last}, steps_per_epoch={self.steps_per_epoch})")
