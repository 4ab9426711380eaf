"""Split callables and configurations into traced arrays and a static, hashable rest.

``jax.jit`` must tell what in an argument is data (traced: a new value reuses the compiled
program) and what is code (static: part of the cache key). :func:`partition` does it for any
pytree, as equinox's ``filter_jit`` does: array leaves are traced, every other leaf is static and
compared by value (``==`` / ``hash``). So

* a ``jax.tree_util.Partial(fn, params)`` keeps ``params`` traced and ``fn`` static;
* a frozen dataclass (a solver, a hook, :class:`jdiff.thresholding.DynamicThresholding`) is one
  static leaf that compares by its fields: re-creating it does not recompile;
* a ``flax.struct`` dataclass (a schedule, a mixture) has its arrays traced;
* a plain function is one static leaf compared by identity: a *new closure* compiles anew, and
  arrays it closes over are baked into the program as constants. :func:`check_no_captured_arrays`
  warns about the latter.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import numpy as np

_LARGE = 1024  # elements: closed-over arrays at least this large trigger the warning


def _is_array(leaf) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


class Static(NamedTuple):
    """The static part of a pytree: its structure and its non-array leaves (hashable)."""

    treedef: Any
    leaves: tuple  # (is_array, value-or-None) per leaf


def partition(tree) -> tuple[list, Static]:
    """``(arrays, static)``: the array leaves of ``tree`` (to trace) and the rest (to hash)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    arrays = [leaf for leaf in leaves if _is_array(leaf)]
    static = tuple((True, None) if _is_array(leaf) else (False, leaf) for leaf in leaves)
    return arrays, Static(treedef, static)


def combine(arrays, static: Static):
    """Inverse of :func:`partition`."""
    it = iter(arrays)
    leaves = [next(it) if is_array else value for is_array, value in static.leaves]
    return jax.tree_util.tree_unflatten(static.treedef, leaves)


def _closure_arrays(fn):
    cells = getattr(fn, "__closure__", None) or ()
    out = []
    for cell in cells:
        try:
            v = cell.cell_contents
        except ValueError:  # empty cell
            continue
        for leaf in jax.tree_util.tree_leaves(v):
            if _is_array(leaf) and np.size(leaf) >= _LARGE:
                out.append(np.shape(leaf))
    return out


def check_no_captured_arrays(static: Static, what: str) -> None:
    """Warn when a static leaf is a function closing over large arrays (they would be baked into
    the compiled program as constants and a new value would recompile)."""
    for is_array, value in static.leaves:
        if is_array or not callable(value):
            continue
        shapes = _closure_arrays(value)
        if shapes:
            warnings.warn(
                f"{what} {getattr(value, '__name__', type(value).__name__)!r} closes over arrays of "
                f"shapes {shapes}: they are compiled in as constants and a new closure recompiles. "
                "Pass them as leaves of a jax.tree_util.Partial or in args.",
                stacklevel=4,
            )


__all__ = ["Static", "partition", "combine", "check_no_captured_arrays"]
