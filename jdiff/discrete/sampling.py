"""x0-parameterised ancestral sampling of absorbing-state diffusion, with step skipping.

Official code ``diffusion_word_freq.discrete_diffusion_predict_fn`` / ``predict.py``; reference
§1.5. From all-mask at u = 1 (t = T), ``steps`` iterations over the grid of
:func:`jdiff.discrete.absorbing.discrete_times` (stride T / steps; ``T=None``: continuous time).
Iteration i (``u_t = grid[i] > u_s = grid[i + 1]``)::

    logits  = apply_fn(params, x, u_t)                       # x0 logits (B, L, N)
    logp0   = log_softmax(logits with mask -> -inf)
    post    = log p_theta(x_s | x_t)                          # closed form, absorbing.py
    post    = filter(post / temperature)                      # top-k, then top-p (nucleus)
    x       = draw(post)                                      # unmasked tokens stay (point mass)

**Fixed tokens** (prompts, infilling, padding): ``x_init`` (B, L) starts the chain from the
given tokens, with ``mask_id`` where tokens are to be generated; the others are never changed
and the model sees them at every step. With an exact, time-independent denoiser (the testbeds)
this samples the exact conditional ``p(x_masked | x_given)`` as steps grow (each step draws
from the conditional given everything visible; tested against the closed form). A trained
network has only seen all-masked sequences at ``u = 1``, so a prompt at ``u = 1`` is off its
training distribution (as for every masked-diffusion prompt); :func:`sample` does not correct
for that. ``forbidden``: ids the sampler must never produce (e.g. [PAD], [CLS], [SEP] for text
packed without them): their x0 probability is set to 0 and the rest renormalised.

**The draw** ``draw='inverse_cdf'`` (default): one uniform per position, ``x = #{j : C_j <
(1 - U) C_N}`` with ``C`` the cumulative sum of ``exp(post - max)``: the entry chosen always
has positive probability; exact up to float32 rounding of the cumulative sum (absolute
probability errors of order N x 1e-7). It is ~4x faster on XLA:CPU than ``draw='gumbel'``
(``jax.random.categorical``, N Gumbel variables per position), which was ~80 % of a step at
N = 2000 (``benchmarks/text_sampling_speed.py``). The two give different tokens for one key.

Filtering is applied, as in the code (``top_k_top_p_filtering`` on the posterior logits), to the
posterior logits over the whole state space, the mask included (``filter_on='posterior'``);
``filter_on='x0'`` filters the x0 distribution before forming the posterior instead. The last
step has ``u_s = 0``: ``alpha_bar_s = 1``, so ``c_mask = 0`` and no mask is left. One compiled
program (``lax.scan``; ``steps``, ``top_k``, ``filter_on``, ``forbidden``, ``draw`` and the shape
are static; params, temperature, top_p (None: off), T, the schedule and ``x_init`` are traced),
batched and keyed (step i uses ``fold_in(key, i)``): a fixed key gives the same tokens.
NFE = ``steps`` exactly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..sampling import scan_steps
from .absorbing import Absorbing, discrete_times, x0_log_probs

__all__ = ["sample", "filter_logits", "sampler_nfe", "categorical_inverse_cdf", "FILTER_ON", "DRAWS"]

FILTER_ON = ("posterior", "x0")
DRAWS = ("inverse_cdf", "gumbel")


def categorical_inverse_cdf(key, logits):
    """One draw per row of ``logits`` (..., N) (unnormalised; ``-inf`` = probability 0) by the
    inverse CDF: int32 (...). ``U ~ U[0, 1)``, target ``(1 - U) C_N`` in ``(0, C_N]``, so the
    index counted is at most N - 1 and its probability is positive."""
    p = jnp.exp(logits - jnp.max(logits, -1, keepdims=True))
    c = jnp.cumsum(p, -1)
    u = jax.random.uniform(key, logits.shape[:-1] + (1,))
    return jnp.sum(c < (1.0 - u) * c[..., -1:], -1).astype(jnp.int32)


def kth_largest(logits, k: int):
    """The k-th largest entry of the last axis, counted with multiplicity, shape (..., 1):
    ``min`` of ``lax.top_k``'s values. Taking the last of them (``top_k(l, k)[0][..., -1:]``) is
    the same number but ~25x slower on XLA:CPU (jax 0.10), where that slice turns the top-k into
    a full sort of every row (``benchmarks/text_sampling_speed.py``)."""
    return jnp.min(jax.lax.top_k(logits, k)[0], axis=-1, keepdims=True)


def filter_logits(logits, top_k: int = 0, top_p=None):
    """Top-k (static k; 0 = off), then nucleus top-p (traced; None = off, static) on the last
    axis: removed entries get -inf; the most likely entry always stays (HF
    ``top_k_top_p_filtering``: an entry is kept while the mass strictly before it is < top_p)."""
    if top_k and top_k < logits.shape[-1]:
        logits = jnp.where(logits < kth_largest(logits, top_k), -jnp.inf, logits)
    if top_p is None:
        return logits
    order = jnp.argsort(-logits, axis=-1)
    sorted_l = jnp.take_along_axis(logits, order, -1)
    probs = jax.nn.softmax(sorted_l, -1)
    before = jnp.cumsum(probs, -1) - probs  # mass strictly before each entry
    keep_sorted = (before < top_p) | (jnp.arange(logits.shape[-1]) == 0)
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), -1)  # back to vocab order
    return jnp.where(keep, logits, -jnp.inf)


def sampler_nfe(steps: int) -> int:
    """Model evaluations of :func:`sample`: one per iteration."""
    return int(steps)


@functools.partial(jax.jit, static_argnames=("apply_fn", "steps", "top_k", "filter_on", "forbidden", "draw"))
def _sample(apply_fn, params, process: Absorbing, key, x, steps, T, temperature, top_k, top_p, filter_on,
            forbidden, draw):
    grid = discrete_times(T, steps)  # (steps + 1,)
    B = x.shape[0]
    mask_id = process.mask_id
    draw_fn = categorical_inverse_cdf if draw == "inverse_cdf" else functools.partial(
        jax.random.categorical, axis=-1)

    def step(x, i):
        u_t, u_s = grid[i], grid[i + 1]
        logp0 = x0_log_probs(apply_fn(params, x, jnp.full((B,), u_t)), mask_id, forbidden)  # (B, L, N)
        if filter_on == "x0":
            logp0 = jax.nn.log_softmax(filter_logits(logp0, top_k, top_p), -1)
        a_s, a_t = process.model_alphas(u_s, u_t, x, logp0)
        post = process.posterior_logits(x, logp0, a_s, a_t) / temperature
        if filter_on == "posterior":
            post = filter_logits(post, top_k, top_p)
        new = draw_fn(jax.random.fold_in(key, i), post).astype(jnp.int32)
        return jnp.where(x == mask_id, new, x)

    x, _ = scan_steps(step, x, 0, steps)
    return x


def sample(apply_fn, params, process: Absorbing, key, shape, steps: int, T=None, temperature=1.0,
           top_k: int = 0, top_p=None, filter_on: str = "posterior", x_init=None, forbidden=(),
           draw: str = "inverse_cdf"):
    """Tokens (B, L) int32 with no mask (module docstring). ``apply_fn`` must be hashable (a
    module-level function or a bound ``Module.apply``); ``T``: the discrete process's step
    count (the grid is ``floor(T (steps - i) / steps) / T``) or None for continuous time.
    ``shape`` (B, L), or None with ``x_init`` (B, L): the fixed tokens, ``mask_id`` elsewhere
    (traced: new prompts do not recompile). ``forbidden``: ids never produced. ``draw``:
    ``'inverse_cdf'`` or ``'gumbel'``."""
    N = process.num_states
    if x_init is None:
        if shape is None or len(tuple(shape)) != 2:
            raise ValueError(f"shape must be (batch, length), got {shape!r}")
        x = jnp.full(tuple(shape), process.mask_id, jnp.int32)
    else:
        x = jnp.asarray(x_init)
        if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"x_init must be an integer array (batch, length), got {x.dtype} {x.shape}")
        if shape is not None and tuple(shape) != x.shape:
            raise ValueError(f"shape {tuple(shape)} disagrees with x_init's {x.shape}")
        if not isinstance(x, jax.core.Tracer) and x.size and (int(x.min()) < 0 or int(x.max()) >= N):
            raise ValueError(f"x_init has ids outside [0, {N})")
        x = x.astype(jnp.int32)
    forbidden = tuple(sorted({int(i) for i in forbidden}))
    if any(not 0 <= i < N for i in forbidden) or process.mask_id in forbidden:
        raise ValueError(f"forbidden ids must be in [0, {N}) and not the mask id {process.mask_id}, got {forbidden}")
    if len(forbidden) >= N - 1:
        raise ValueError("forbidden leaves no token to sample")
    if draw not in DRAWS:
        raise ValueError(f"draw must be one of {', '.join(DRAWS)}, got {draw!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if T is not None and (not isinstance(T, int) or T < steps):
        raise ValueError(f"T must be an integer >= steps ({steps}), got {T!r}")
    if filter_on not in FILTER_ON:
        raise ValueError(f"filter_on must be one of {', '.join(FILTER_ON)}, got {filter_on!r}")
    if not (isinstance(top_k, int) and top_k >= 0):
        raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_p is not None and isinstance(top_p, (int, float)) and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    return _sample(apply_fn, params, process, key, x, steps, T, jnp.float32(temperature),
                   top_k, None if top_p is None else jnp.float32(top_p), filter_on, forbidden, draw)
