"""PRNG keys whose Gaussian draws are cheap on CPU: Threefry expanded by XLA's RngBitGenerator.

Stochastic solvers (``ddpm``, ``euler_ancestral``, ``dpmpp_2m_sde``, ``dpmpp_3m_sde``) draw one
Gaussian per element per step with ``jax.random.normal(fold_in(key, i), x.shape)``; they use
whatever key implementation the caller's key carries. With JAX's default key (``threefry2x32``),
XLA:CPU builds the counter-mode stream from JAX's own Threefry graph, which it runs on one thread
with little vectorisation: for a 1024 x 64 batch the draw costs 4-6% of a model call of the MLP
in ``benchmarks/prng_speed.py``; with these keys 35-60% as much (measured there, side by side, on two
2-core VMs).

:func:`key` returns keys of the implementation :data:`THREEFRY_XLA`:

* ``random_bits``: ``lax.rng_bit_generator(key, (n,), uint64, algorithm=RNG_THREE_FRY)``, i.e.
  the same Threefry-2x32 (20 rounds) block cipher as JAX's default (Salmon et al. 2011, "Parallel
  random numbers: as easy as 1, 2, 3") in counter mode, each 64-bit word one block, bitcast to
  32-bit words: for a key state ``(w0, w1, w2, w3)`` the words are, in row-major order, the
  outputs ``(y0, y1)`` of ``threefry2x32(key=(w0, w1), block=c + j)``, j = 0, 1, ..., with ``c``
  the 64-bit counter ``(w2, w3)`` (low word first); tested word for word against
  ``jax.extend.random.threefry_2x32``. XLA's own RngBitGenerator lowering runs it faster than
  JAX's Threefry graph on XLA:CPU. (64-bit integers are enabled only while tracing the draw.)
  On CPU the words are computed into a buffer of their own before they are transformed
  (:func:`_materialized`): inside a sampler's ``lax.scan`` this makes a 1024 x 64 Gaussian draw
  about 30% cheaper; a draw jitted on its own, with nothing to fuse into, is up to about 10%
  slower (measured on a 2-core AVX-512 VM).
* ``seed``, ``split`` and ``fold_in``: those of JAX's ``rbg`` implementation, which hash the two
  64-bit halves of the state with Threefry alike (both halves stay equal: the stream of a key
  ``(a, b, a, b)`` is Threefry under key ``(a, b)`` from counter ``(a, b)``), so keys derived from
  one another have unrelated 64-bit Threefry keys, and two streams share words only if two
  derived keys coincide (chance about 2^-64 per pair, as for JAX's default keys).

Trade-offs:

* the streams differ from ``jax.random.key``'s: the same seed gives other (equally distributed)
  noise;
* JAX does not promise that ``rng_bit_generator`` streams stay the same across backends or
  versions (JAX's documentation of ``rbg``); with the algorithm fixed to Threefry rather than
  the backend default they are fully specified, but samples drawn on CPU and on GPU have not
  been compared here, nor the speed on GPU/TPU (which emulates 64-bit integers);
* under ``jax.vmap`` over keys the draws run as a loop over the keys inside the program (each key
  its own stream, equal to the unbatched draw; see :func:`_threefry_xla_bits`).

Usage::

    key = jdiff.prng.key(0)
    x0 = jdiff.sample(model_fn, schedule, get_solver("dpmpp_2m_sde"), grid, x_T, key=key)
"""

from __future__ import annotations

import math

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
from jax import lax

_UINT = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32, 64: jnp.uint64}


def _threefry_xla_bits(key_data: jax.Array, bit_width: int, shape, *,
                       materialize: bool = True) -> jax.Array:
    """``bit_width``-bit random integers of ``shape`` from a uint32[4] key state.

    XLA generates 64-bit words (one Threefry block each: ``y0 | y1 << 32``), bitcast to pairs
    of 32-bit words ``(y0, y1)`` in row-major order, so ``bits(k, (a, b))`` equals
    ``bits(k, (a * b,)).reshape(a, b)``. (Asking XLA for 32-bit words directly lets it fuse its
    Threefry expansion into the consumers, where every block is computed twice, once per half:
    up to 2x slower than JAX's own Threefry inside multistep SDE solvers; measured with
    ``benchmarks/prng_speed.py``.) 8- and 16-bit draws keep the low bits of 32-bit words.

    Under ``jax.vmap`` over keys each key draws its own stream (a loop over the keys):
    ``lax.rng_bit_generator``'s own batching rule would draw every batch member's bits from the
    first key's stream.

    ``materialize=False`` skips :func:`_materialized` (the same words; kept for the side-by-side
    timing in ``benchmarks/prng_speed.py``).
    """
    if key_data.shape != (4,) or key_data.dtype != jnp.uint32:
        raise TypeError(f"threefry_xla keys are uint32[4], got {key_data.dtype}{list(key_data.shape)}")
    if bit_width not in _UINT:
        raise TypeError(f"bit width must be 8, 16, 32 or 64, got {bit_width}")
    shape = tuple(shape)
    size = math.prod(shape)

    def blocks(kd, n):  # n 64-bit Threefry blocks
        with jax.enable_x64(True):
            _, b = lax.rng_bit_generator(kd, (n,), dtype=jnp.uint64,
                                         algorithm=lax.RandomAlgorithm.RNG_THREE_FRY)
            return b if bit_width == 64 else lax.bitcast_convert_type(b, jnp.uint32).reshape(-1)

    @jax.custom_batching.custom_vmap
    def draw(kd):
        if bit_width == 64:
            return blocks(kd, size).reshape(shape)
        n = (size + 1) // 2
        if materialize:
            words = lax.platform_dependent(kd, cpu=lambda k: _materialized(blocks, k, n),
                                           default=lambda k: blocks(k, n))
        else:
            words = blocks(kd, n)
        words = words if size % 2 == 0 else words[:size]
        return words.reshape(shape).astype(_UINT[bit_width])

    @draw.def_vmap
    def _draw_batched(axis_size, in_batched, kd):  # noqa: ARG001
        if not in_batched[0]:
            return draw(kd), False
        return lax.map(draw, kd), True

    return draw(key_data)


def _materialized(words_fn, kd: jax.Array, n: int) -> jax.Array:
    """``words_fn(kd, n)``, computed by XLA:CPU into a buffer of its own before any consumer runs.

    XLA:CPU otherwise fuses the Threefry expansion into the kernel that consumes the words
    (e.g. the uniform-to-Gaussian transform and a solver's update), where each output element
    extracts its word from its 64-bit block by index parity: every block is computed twice and
    the consumer's loop vectorises worse. Returning the words from a ``lax.cond`` keeps them
    out of the consumer's fusion. Its predicate is always true (``x + 1 != x`` in wrapping
    uint32 arithmetic) but is not folded by XLA. Measured in ``benchmarks/prng_speed.py``'s
    micro-benchmarks: a 1024 x 64 Gaussian draw inside ``lax.scan`` takes about 30% less time;
    the words are unchanged. Used on CPU only (``lax.platform_dependent``): a conditional
    costs a host round trip on GPU.
    """
    return lax.cond(kd[0] != kd[0] + jnp.uint32(1), lambda k: words_fn(k, n),
                    lambda k: jnp.zeros((2 * n,), jnp.uint32), kd)


_RBG = jex_random.rbg_prng_impl

THREEFRY_XLA = jex_random.define_prng_impl(
    key_shape=(4,),
    seed=_RBG.seed,
    split=_RBG.split,
    random_bits=_threefry_xla_bits,
    fold_in=_RBG.fold_in,
    name="threefry_xla",
    tag="tfx",
)
"""The key implementation of :func:`key` (pass as ``impl=`` to ``jax.random.key`` or
``jax.random.wrap_key_data``)."""


def key(seed) -> jax.Array:
    """A typed PRNG key of :data:`THREEFRY_XLA` from an integer seed (like ``jax.random.key``)."""
    return jax.random.key(seed, impl=THREEFRY_XLA)

