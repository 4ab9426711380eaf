"""High-accuracy reference solve of the probability-flow ODE with diffrax.

In the scaled variables ``x_hat = x / alpha`` and ``sigma_hat = sigma / alpha = exp(-log_snr)``
the PF-ODE of any schedule is (Karras et al. 2022, eq. 4; Lu et al. 2022)

    d x_hat / d sigma_hat = eps(alpha(t) x_hat, t),      t = t_of_log_snr(-log sigma_hat),

which stays smooth down to ``sigma_hat = 0`` for models whose eps is finite there (the analytic
testbeds compute eps without dividing by sigma). We integrate it with an adaptive 8th-order
Dormand-Prince method under a max-norm PID controller, in float64, from ``t_start`` to ``t_end``
(which may be 0). This is the ground truth that solver error is measured against.
"""

from __future__ import annotations

from functools import partial

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from .prediction import check_prediction, to_x0_eps
from .statics import check_no_captured_arrays, combine, partition


def _max_norm(y):
    return jnp.max(jnp.abs(y))


@partial(jax.jit, static_argnames=("model_static", "prediction", "rtol", "atol", "max_steps"))
def _solve(model_arrays, schedule, x_T, t_start, t_end, args, *, model_static, prediction, rtol,
           atol, max_steps):
    model_fn = combine(model_arrays, model_static)

    def vector_field(sh, x_hat, args):
        t = schedule.t_of_log_snr(-jnp.log(sh))
        a, s = schedule.alpha(t), schedule.sigma(t)
        x = a * x_hat
        _, eps = to_x0_eps(model_fn(x, t, args), x, a, s, prediction)
        return eps

    at_zero = t_end == 0
    safe_end = jnp.where(at_zero, 1.0, t_end)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        diffrax.Dopri8(),
        t0=schedule.sigma_hat(t_start),
        t1=jnp.where(at_zero, 0.0, schedule.sigma_hat(safe_end)),
        dt0=None,
        y0=x_T / schedule.alpha(t_start),
        args=args,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, norm=_max_norm),
        max_steps=max_steps,
    )
    return jnp.where(at_zero, 1.0, schedule.alpha(safe_end)) * sol.ys[-1]


def reference_solve(
    model_fn,
    schedule,
    x_T,
    t_start: float,
    t_end: float,
    *,
    args=None,
    prediction: str = "eps",
    rtol: float = 1e-10,
    atol: float = 1e-10,
    max_steps: int = 100_000,
) -> np.ndarray:
    """Solve the PF-ODE from ``x_T`` at ``t_start`` to ``t_end`` in float64; returns NumPy float64.

    ``model_fn`` must give a finite prediction in float64 at every visited time; with
    ``prediction="eps"`` it is evaluated at ``t_end`` even when that is 0. ``model_fn(x, t, args)``
    is split as in :func:`jdiff.sample`: the arrays of a ``Partial`` and ``args`` are traced, the
    rest is static (a plain closure compiles once per closure).
    """
    check_prediction(prediction)
    from .sampling import check_model_signature

    check_model_signature(model_fn)
    model_arrays, model_static = partition(model_fn)
    check_no_captured_arrays(model_static, "model_fn")
    t_start, t_end = float(t_start), float(t_end)
    if not t_start > t_end >= 0:
        raise ValueError(f"need t_start > t_end >= 0, got {t_start}, {t_end}")
    with jax.enable_x64(True):
        x = jnp.asarray(np.asarray(x_T, dtype=np.float64))
        out = _solve(
            model_arrays, schedule, x, jnp.float64(t_start), jnp.float64(t_end), args,
            model_static=model_static, prediction=prediction, rtol=rtol, atol=atol,
            max_steps=max_steps,
        )
        return np.asarray(out, dtype=np.float64)
