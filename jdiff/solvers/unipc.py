"""UniPC: the unified predictor-corrector multistep sampler (Zhao et al. 2023, NeurIPS).

Sources: the paper (arXiv 2302.04867, Algorithms 1-3 and Sec. 3.2 "B(h)"), the official
implementation ``uni_pc.py`` (wl-zhao/UniPC, ``multistep_uni_pc_bh_update`` and ``sample``), and
diffusers' ``UniPCMultistepScheduler`` (``multistep_uni_p_bh_update``,
``multistep_uni_c_bh_update``, ``step``). The update formulas below are those of the official code
and of diffusers, operation for operation (see ``tests/test_unipc.py`` for the parity check).

Notation
--------
``lambda = log(alpha / sigma)`` (log-SNR, ``grid.lam``). One step goes from ``s0 = t_i`` to
``t = t_{i+1}`` with ``h = lambda_t - lambda_s0 > 0``. ``m_j`` is the model output at ``t_j`` in
the chosen form: the data prediction ``x0`` (``predict_x0=True``, the default of diffusers and of
the official code, "UniPC with data prediction") or the noise ``eps`` (``predict_x0=False``).
With ``hh = -h`` (data form) or ``hh = h`` (noise form)::

    h phi_1   = expm1(hh)
    B(h)      = hh                 (variant "bh1")
              = expm1(hh)          (variant "bh2")
    r_k       = (lambda_{s0-k} - lambda_s0) / h,      D_k = (m_{s0-k} - m_{s0}) / r_k
    phi-terms : g_1 = h phi_1 / hh - 1,  g_{k+1} = g_k / hh - 1 / (k+1)!
    b_k       = g_k k! / B(h),  k = 1..p

Base (first-order, DDIM / DPM-Solver(++)-1) update, data form / noise form::

    x_t^base = (sigma_t / sigma_s0) x_s0 - alpha_t h phi_1 m_s0          (data)
    x_t^base = (alpha_t / alpha_s0) x_s0 - sigma_t h phi_1 m_s0          (noise)

**UniP-p** (predictor, order p, uses m_s0 and the p - 1 previous outputs)::

    x_t = x_t^base - c_t B(h) sum_{k=1}^{p-1} rho^p_k D_k          c_t = alpha_t (data), sigma_t (noise)
    rho^p = [1/2] for p = 2;  R_{p-1} rho^p = b_{1..p-1} for p >= 3,  (R_q)_{jk} = r_k^{j}, j = 0..q-1

**UniC-p** (corrector; re-uses the model output ``m_t`` evaluated at the *predicted* ``x_t``)::

    x_t^c = x_t^base - c_t B(h) (sum_{k=1}^{p-1} rho^c_k D_k + rho^c_p (m_t - m_s0))
    rho^c = [1/2] for p = 1;  R_p rho^c = b_{1..p} with r_p = 1 for p >= 2

Here ``x_s0`` is the *corrected* sample at ``s0``, and the model output that enters the history
is always the one at the *uncorrected* point: the corrector costs no model call. The corrected
``x^c_{t_i}`` is computed at step i, right after the model call at ``x_{t_i}``, and the next
predictor starts from it (diffusers' ``step``: correct ``last_sample``, then predict).

B(h) cancels from every order whose rho is solved from the linear system (``B(h) rho`` is then
independent of B(h)); bh1 and bh2 differ only through the fixed ``rho = 1/2`` of UniP-2 and UniC-1,
i.e. in every step of UniPC-2 but only in the warm-up / ``lower_order_final`` steps of UniPC-3.

Schedule of orders (diffusers' ``step``; the official ``sample`` is the same except that its
warm-up ignores ``lower_order_final``): step ``i = 0..n-1`` uses the predictor order

    p_i = min(order, i + 1 [warm-up], n - i [if lower_order_final])

and the corrector applied at step i (to the point produced by step i - 1) has order ``p_{i-1}``;
there is no corrector at step 0, and none after the last step (that would cost one more model
call), so the final sample is the predictor's output. NFE = number of steps.

``lower_order_final``: diffusers' ``UniPCMultistepScheduler`` and the official code lower the order
on the last steps for *every* step count (``min(order, n - i)``); the diffusers docstring says
"only valid for < 15 inference steps", but only ``DPMSolverMultistepScheduler`` implements that
test. ``lower_order_final_below=N`` applies it only when ``n < N`` (15: the DPM-Solver rule);
``None`` (default) always applies it, as UniPC in diffusers and the official code do.

Final step to sigma = 0 (``to_zero``): ``h = +inf`` and the formula degenerates. Its limit is
first order: in the data form ``x_0 = m_{s0}`` (the data prediction at the uncorrected
``x_{t_{n-1}}``; the corrected point gets weight ``sigma_t / sigma_s0 = 0``); in the noise form
``x_0 = (x^c_{s0} - sigma_s0 eps_s0) / alpha_s0``. This is what diffusers computes with
``final_sigmas_type="zero"`` for ``bh2`` in the data form (``lower_order_final`` forces order 1
there). diffusers returns NaN for ``bh1`` (``B(h) = -inf`` times a residual of ``0``), for the
noise form (``0 * inf``), and for any order > 1 at that step (``r_k = 0``); jdiff returns the limit.

Nominal order (``Solver.order``): UniC-p raises UniP-p from order p to p + 1, but the multistep
warm-up starts with a first-order predictor step, whose corrected local error is O(h^3); so the
global order is ``min(order + 1, 3)`` with the corrector and ``min(order, 2)`` without. With
``lower_order_final`` the last step is an uncorrected first-order step (local error O(h^2)), which
caps the observed order at 2 on grids ending at ``t_min``; on grids ending at 0 the final
denoising step has an error that does not shrink with n at all (as for every solver here).

UniC after any predictor: :func:`unic` (diffusers' ``solver_p``), see its docstring.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax.numpy as jnp

from .base import (Evaluation, Solver, default_key, lagrange_basis, multistep_order, ring_read,
                   ring_write)

VARIANTS = ("bh1", "bh2")
DEFAULT_ORDER = 2  # diffusers' UniPCMultistepScheduler default ``solver_order``


class UniPCState(NamedTuple):
    """State of :func:`unipc` before step i.

    x: predictor output at t_i (uncorrected); x_prev: corrected sample at t_{i-1} (x_T at i = 0);
    hist: (order + 1, *x.shape) ring buffer of the model outputs: ``hist[j % (order + 1)] = m_j``
    (zeros for j < 0; ``.base.ring_write``). Step i stores m_i first and then reads m_{i-1}, ...,
    m_{i-order}: with one spare slot the write never touches a slot still to be read, so inside
    ``lax.scan`` XLA updates the buffer in place (reading m_{i-order} before overwriting its slot
    made XLA copy the whole buffer every step).
    """

    x: jnp.ndarray
    key: Any
    x_prev: jnp.ndarray
    hist: jnp.ndarray
    start: jnp.ndarray  # () int32, grid index the run started at


class UniCState(NamedTuple):
    """State of :func:`unic`: as :class:`UniPCState` plus the predictor's own state."""

    x: jnp.ndarray
    key: Any
    x_prev: jnp.ndarray
    hist: jnp.ndarray
    start: jnp.ndarray
    inner: Any


# ---- coefficients (scalars, cheap) ---------------------------------------------------------


def _b_terms(h, kmax: int, variant: str, predict_x0: bool):
    """``h phi_1``, ``B(h)`` and ``b_1..b_kmax`` exactly as diffusers/official code compute them."""
    hh = -h if predict_x0 else h
    h_phi_1 = jnp.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    B_h = hh if variant == "bh1" else jnp.expm1(hh)
    b, fact = [], 1
    for k in range(1, kmax + 1):
        b.append(h_phi_k * fact / B_h)
        fact *= k + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    return h_phi_1, B_h, b


def _solve_vandermonde(r, b):
    """Solve ``sum_k r_k^j rho_k = b_j`` (j = 0..q-1) for rho, i.e. ``R rho = b`` with
    ``R[j, k] = r_k^j``, in closed form.

    For any polynomial p of degree < q, ``sum_k rho_k p(r_k) = sum_j p_j b_j``; taking for p the
    Lagrange basis polynomial ``L_k(x) = prod_{m != k} (x - r_m) / (r_k - r_m)`` (which is 1 at
    r_k and 0 at the other nodes) gives

        rho_k = sum_j [x^j] L_k(x) b_j,

    e.g. q = 2: ``rho_0 = (b_1 - r_1 b_0) / (r_0 - r_1)``. The systems here are 1x1 to 3x3 with
    scalar entries; this replaces ``jnp.linalg.solve`` (a LAPACK call per system and step) by a
    few fused scalar operations. Same solution in exact arithmetic (distinct nodes r_k).
    """
    return [sum(p[j] * b[j] for j in range(len(r))) / d for p, d in lagrange_basis(r)]


def _pad(v, size, dtype):
    """Stack the scalars ``v`` into a vector of length ``size`` (zero padded)."""
    v = [jnp.asarray(x, dtype) for x in v]
    return jnp.stack(v + [jnp.zeros((), dtype)] * (size - len(v)))


def _rho_predictor(r, b, k: int, kmax: int, dtype):
    """rho^p of UniP-k, padded to kmax - 1 entries."""
    size = max(kmax - 1, 1)
    if k == 1:
        return jnp.zeros((size,), dtype)
    if k == 2:
        return _pad([0.5], size, dtype)
    return _pad(_solve_vandermonde(r[: k - 1], b[: k - 1]), size, dtype)


def _rho_corrector(r, b, k: int, kmax: int, dtype):
    """(rho^c_1..rho^c_{k-1} padded to kmax - 1, rho^c_k) of UniC-k."""
    size = max(kmax - 1, 1)
    if k == 1:
        return jnp.zeros((size,), dtype), jnp.asarray(0.5, dtype)
    one = jnp.ones((), dtype)
    sol = _solve_vandermonde(list(r[: k - 1]) + [one], b[:k])
    return _pad(sol[:-1], size, dtype), jnp.asarray(sol[-1], dtype)


def _bh_update(x, m0, ms, m_t, grid, s0, t, order, kmax: int, variant: str, predict_x0: bool,
               start=0):
    """One UniP (``m_t is None``) or UniC step from grid index ``s0`` to ``t``.

    ``x``: sample at s0 (the corrected one); ``m0``: model output at s0; ``ms``: sequence of
    (>= kmax - 1) arrays, the outputs at s0 - 1, s0 - 2, ...; ``order``: traced or static
    int in 1..kmax selecting the candidate coefficients (no lax.cond: every candidate's
    coefficients are a handful of scalars, the tensor update is done once).
    """
    dtype = x.dtype
    lam_s0, lam_t = grid.lam[s0], grid.lam[t]
    h = lam_t - lam_s0
    # r_k and D_k for k = 1..kmax-1; points before the start get a harmless r = -k (never
    # selected).
    r = []
    for k in range(1, kmax):
        idx = s0 - k
        rk = (grid.lam[jnp.maximum(idx, 0)] - lam_s0) / h
        r.append(jnp.where(idx >= start, rk, jnp.asarray(-float(k), dtype)))
    h_phi_1, B_h, b = _b_terms(h, kmax, variant, predict_x0)

    if m_t is None:
        cands = [_rho_predictor(r, b, k, kmax, dtype) for k in range(1, kmax + 1)]
        rho = jnp.stack(cands)[order - 1]
        rho_t = None
    else:
        cands = [_rho_corrector(r, b, k, kmax, dtype) for k in range(1, kmax + 1)]
        rho = jnp.stack([c[0] for c in cands])[order - 1]
        rho_t = jnp.stack([c[1] for c in cands])[order - 1]

    res = jnp.zeros_like(x)
    for k in range(1, kmax):
        res = res + rho[k - 1] * ((ms[k - 1] - m0) / r[k - 1])
    if rho_t is not None:
        res = res + rho_t * (m_t - m0)

    if predict_x0:
        c_x, c_t = grid.sigma[t] / grid.sigma[s0], grid.alpha[t]
    else:
        c_x, c_t = grid.alpha[t] / grid.alpha[s0], grid.sigma[t]
    x_base = c_x * x - c_t * h_phi_1 * m0
    return x_base - c_t * B_h * res


def _lof_applies(lower_order_final: bool, below, n: int) -> bool:
    """Whether the lower-order final rule is on for ``n`` steps (``below``: None = always)."""
    return lower_order_final and (below is None or n < below)


def _order_at(i, start, n: int, order: int, lof: bool):
    """Predictor order of step i: min(order, i - start + 1, n - i if lower_order_final)."""
    return multistep_order(order, i, start, n, lof)


def _select(cond, a, b):
    """``a if cond else b`` for a Python bool (final step) or a traced one (scan steps)."""
    if isinstance(cond, bool):
        return a if cond else b
    return jnp.where(cond, a, b)


def _check(order, variant, lower_order_final_below):
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive integer, got {order!r}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown UniPC variant {variant!r}; valid: {', '.join(VARIANTS)}")
    if lower_order_final_below is not None and (
        not isinstance(lower_order_final_below, int) or lower_order_final_below < 1
    ):
        raise ValueError(f"lower_order_final_below must be None or a positive integer, "
                         f"got {lower_order_final_below!r}")


def _past(hist, i):
    """``[m_{i-1}, ..., m_{i-order}]`` from the ring buffer of ``order + 1`` slots."""
    return [ring_read(hist, i - j) for j in range(1, hist.shape[0])]


def _corrected(state, past, m_t, grid, i, n, order, lof, variant, predict_x0):
    """UniC at step i: correct x_{t_i} (from x^c_{t_{i-1}}) with the new output m_t; x at the
    start step.

    ``past = _past(hist, i)``: m_{i-1}, ..., m_{i-order}, read after m_i was stored."""
    s0 = jnp.maximum(i - 1, 0)  # at i = 0: a finite dummy step (0 -> 1), discarded below
    c_order = jnp.maximum(_order_at(i - 1, state.start, n, order, lof), 1)
    xc = _bh_update(state.x_prev, past[0], past[1:], m_t, grid, s0, s0 + 1, c_order,
                    order, variant, predict_x0, state.start)
    return _select(i > state.start, xc, state.x)


def _init_state(order, x_T, key, start):
    hist = jnp.zeros((order + 1,) + x_T.shape, x_T.dtype)
    return UniPCState(x=x_T, key=default_key(key), x_prev=x_T, hist=hist,
                      start=jnp.asarray(start, jnp.int32))


@dataclasses.dataclass(frozen=True)
class UniPC(Solver):
    """UniPC-p (``solver_order`` = p, the predictor order); see :func:`unipc`."""

    solver_order: int = DEFAULT_ORDER
    variant: str = "bh2"
    corrector: bool = True
    lower_order_final: bool = True
    predict_x0: bool = True
    lower_order_final_below: int | None = None
    label: str | None = None

    def __post_init__(self):
        _check(self.solver_order, self.variant, self.lower_order_final_below)

    @property
    def order(self) -> int:
        return min(self.solver_order + 1, 3) if self.corrector else min(self.solver_order, 2)

    def default_name(self) -> str:
        name = f"unipc_{self.variant}"
        if self.solver_order != DEFAULT_ORDER:
            name += f"_o{self.solver_order}"
        if not self.corrector:
            name += "_noc"
        if not self.lower_order_final:
            name += "_nolof"
        elif self.lower_order_final_below is not None:
            name += f"_lof{self.lower_order_final_below}"
        if not self.predict_x0:
            name += "_eps"
        return name

    def init(self, x_T, grid, key=None, start=0):
        return _init_state(self.solver_order, x_T, key, start)

    def step(self, denoise, state, grid, i, to_zero=False):
        order, variant, predict_x0 = self.solver_order, self.variant, self.predict_x0
        n = grid.t.shape[0] - 1
        lof = _lof_applies(self.lower_order_final, self.lower_order_final_below, n)
        x0, eps = denoise(state.x, grid.t[i], grid.alpha[i], grid.sigma[i])
        out = (Evaluation(x0, eps),)
        m = x0 if predict_x0 else eps
        if to_zero and predict_x0:
            return state._replace(x=x0), out
        hist = ring_write(state.hist, m, i)  # overwrites m_{i-order-1}, no longer needed
        past = _past(hist, i)
        xc = (_corrected(state, past, m, grid, i, n, order, lof, variant, predict_x0)
              if self.corrector else state.x)
        if to_zero:  # noise form: limit h -> inf of the first-order update
            return state._replace(x=(xc - grid.sigma[i] * eps) / grid.alpha[i]), out
        p = _order_at(i, state.start, n, order, lof)
        x_next = _bh_update(xc, m, past[:-1], None, grid, i, i + 1, p, order, variant, predict_x0,
                            state.start)
        return state._replace(x=x_next, x_prev=xc, hist=hist), out


def unipc(
    order: int = DEFAULT_ORDER,
    variant: str = "bh2",
    corrector: bool = True,
    lower_order_final: bool = True,
    predict_x0: bool = True,
    lower_order_final_below: int | None = None,
    name: str | None = None,
) -> UniPC:
    """UniPC-p (``order`` = p, the predictor order; diffusers' ``solver_order``, default 2).

    Args:
      order: UniP order p >= 1 (1..3 are tested; higher orders use the same formulas).
      variant: ``"bh1"`` (B(h) = h) or ``"bh2"`` (B(h) = e^h - 1), diffusers' ``solver_type``.
      corrector: apply UniC (free: it reuses the next model evaluation). False gives UniP alone.
      lower_order_final: lower the order on the last steps (``p_i <= n - i``).
      predict_x0: data-prediction form (default, as diffusers) or noise-prediction form.
      lower_order_final_below: only lower the final orders when n < this (None: always).
      name: override the solver name (default ``unipc_<variant>`` plus suffixes ``_o<order>``,
        ``_noc``, ``_nolof``, ``_eps``, ``_lof<N>`` for non-default settings).
    """
    return UniPC(order, variant, corrector, lower_order_final, predict_x0, lower_order_final_below,
                 name)


@dataclasses.dataclass(frozen=True)
class _Cached:
    """``denoise`` for the predictor inside :class:`UniC`: the step's evaluation re-expressed at
    the corrected point with one prediction held fixed (``reuse``)."""

    x0: Any
    eps: Any
    reuse: str

    def __call__(self, x, t, alpha, sigma):  # noqa: ARG002
        if self.reuse == "x0":
            return self.x0, (x - alpha * self.x0) / sigma
        return (x - sigma * self.eps) / alpha, self.eps


@dataclasses.dataclass(frozen=True)
class UniC(Solver):
    """``predictor`` followed by UniC (see :func:`unic`)."""

    predictor: Solver = None
    corrector_order: int = DEFAULT_ORDER
    variant: str = "bh2"
    lower_order_final: bool = True
    predict_x0: bool = True
    reuse: str = "x0"
    lower_order_final_below: int | None = None
    label: str | None = None

    @property
    def order(self) -> int:
        return min(min(self.predictor.order, self.corrector_order) + 1, 3)

    def default_name(self) -> str:
        name = f"{self.predictor.name}_unic{self.corrector_order}_{self.variant}"
        if not self.lower_order_final:
            name += "_nolof"
        if not self.predict_x0:
            name += "_eps"
        if self.reuse != ("x0" if self.predict_x0 else "eps"):
            name += f"_reuse{self.reuse}"
        return name

    def init(self, x_T, grid, key=None, start=0):
        inner = self.predictor.init(x_T, grid, key, start)
        base = _init_state(self.corrector_order, x_T, inner.key, start)
        return UniCState(x=x_T, key=inner.key, x_prev=x_T, hist=base.hist, start=base.start,
                         inner=inner)

    def step(self, denoise, state, grid, i, to_zero=False):
        order, variant, predict_x0 = self.corrector_order, self.variant, self.predict_x0
        n = grid.t.shape[0] - 1
        lof = _lof_applies(self.lower_order_final, self.lower_order_final_below, n)
        x0, eps = denoise(state.x, grid.t[i], grid.alpha[i], grid.sigma[i])
        m = x0 if predict_x0 else eps
        hist = ring_write(state.hist, m, i)
        xc = _corrected(state, _past(hist, i), m, grid, i, n, order, lof, variant, predict_x0)
        inner, _ = self.predictor.step(_Cached(x0, eps, self.reuse), state.inner._replace(x=xc),
                                       grid, i, to_zero)
        new = state._replace(x=inner.x, x_prev=xc, hist=hist, inner=inner)
        return new, (Evaluation(x0, eps),)


def unic(
    predictor: Solver,
    order: int = DEFAULT_ORDER,
    variant: str = "bh2",
    lower_order_final: bool = True,
    predict_x0: bool = True,
    reuse: str | None = None,
    lower_order_final_below: int | None = None,
    name: str | None = None,
) -> UniC:
    """``predictor`` followed by UniC-``order`` (diffusers' ``UniPCMultistepScheduler(solver_p=...)``).

    ``order`` defaults to 2, diffusers' ``solver_order`` default (which sets the UniC order when a
    ``solver_p`` is given).

    Semantics, step i (t_i -> t_{i+1}), with one model call:

    1. ``x0_i, eps_i = denoise(x_i)`` at the predictor's output ``x_i`` (uncorrected);
       ``m_i = x0_i`` (``predict_x0``) or ``eps_i``.
    2. UniC (same formula and order schedule as :func:`unipc`, order ``min(order, i,
       n - i + 1 [lower_order_final])``) corrects ``x_i`` into ``x^c_i`` from ``x^c_{i-1}``,
       ``m_{i-1}, m_{i-2}, ...`` and ``m_i`` (no correction at i = 0).
    3. ``predictor.step`` runs from ``x^c_i`` (its state with ``x`` replaced) with a ``denoise``
       that returns the cached evaluation instead of calling the model, re-expressed at the
       corrected point with one prediction held fixed:

       * ``reuse="x0"`` (default when ``predict_x0``): ``(x0_i, (x - alpha x0_i) / sigma)``. For
         DDIM this makes the predictor exactly the data-form UniP-1 / DPM-Solver++(1) step, so
         ``unic(ddim(), p) == unipc(order=1)`` when p = 1 (tested); it is the natural choice
         for data-prediction (DDIM / DPM-Solver++-style) predictors.
       * ``reuse="eps"`` (default when not ``predict_x0``): ``((x - sigma eps_i) / alpha, eps_i)``.
         This is what diffusers does (it passes the raw eps ``model_output`` to
         ``solver_p.step`` together with the corrected sample); tested against diffusers with
         ``solver_p=DDIMScheduler``.

    The predictor must be deterministic and call the model exactly once per step, at its own
    ``state.x`` and ``grid.t[i]`` (DDIM, Euler, DPM-Solver++-style multistep solvers); its state
    must be a NamedTuple with an ``x`` field. The final sample is the predictor's output of the last
    step (uncorrected). NFE = number of steps. The corrector is also applied at a final step to
    sigma = 0 (it matters there with ``reuse="eps"``).

    Grouped singlestep predictors (``dpm_solver_k_single``) pass these checks, but inside a group
    of k > 1 steps they update from the group's start point kept in their state
    (``x_start``), not from ``state.x``: the correction of a step that is not a group start is
    discarded. Use multistep predictors with UniC.

    Nominal order ``min(predictor.order, order) + 1``, capped at 3 (the warm-up) - e.g. 2 for DDIM:
    UniC-p needs an order-p predictor to reach order p + 1.
    """
    _check(order, variant, lower_order_final_below)
    if not isinstance(predictor, Solver):
        raise ValueError(f"predictor must be a jdiff Solver, got {type(predictor).__name__}")
    if predictor.stochastic:
        raise ValueError(f"UniC corrects an ODE solver; {predictor.name!r} is stochastic")
    for n_ in (1, 2, 3, 5):
        for fz in (False, True):
            if predictor.nfe(n_, fz) != n_:
                raise ValueError(f"UniC needs a predictor with one model call per step; "
                                 f"{predictor.name!r} makes {predictor.nfe(n_, fz)} in {n_} steps")
    if reuse is None:
        reuse = "x0" if predict_x0 else "eps"
    if reuse not in ("x0", "eps"):
        raise ValueError(f"reuse must be 'x0' or 'eps', got {reuse!r}")
    return UniC(predictor, order, variant, lower_order_final, predict_x0, reuse,
                lower_order_final_below, name)


def unipc_bh1() -> Solver:
    """UniPC-2 with B(h) = h, data prediction, corrector, lower_order_final (diffusers defaults)."""
    return unipc(variant="bh1")


def unipc_bh2() -> Solver:
    """UniPC-2 with B(h) = e^h - 1 (diffusers' default ``UniPCMultistepScheduler``)."""
    return unipc(variant="bh2")


UNIPC_SOLVERS = {"unipc_bh1": unipc_bh1, "unipc_bh2": unipc_bh2}

__all__ = ["UniPC", "UniC", "unipc", "unic", "unipc_bh1", "unipc_bh2", "UNIPC_SOLVERS", "UniPCState", "UniCState",
           "VARIANTS", "DEFAULT_ORDER"]
