"""Zero-shot restoration: linear degradation operators and exact posteriors.

* :mod:`jdiff.restoration.operators`: operators ``y = A x`` as pytrees with ``A``, ``AT``,
  ``pinv`` and the SVD in factored form (identity, masks, average-pooling and bicubic
  super-resolution, separable blur, colorization, general matrices), :func:`measure` and
  :func:`parse_operator`.
* :mod:`jdiff.restoration.posterior`: the closed-form posterior of a Gaussian-mixture prior under
  ``y = A x + sigma_y n`` (the reference that restoration methods are measured against).
* Methods, each ``restore_<name>(model_fn, schedule, op, y, sigma_y, nfe, key, prediction=...)``
  (one sample per row of ``y``; :data:`METHODS` by name, :func:`method_nfe` the realised model
  evaluations per sample; the common option ``z``, standard-normal draws (B, *op.in_shape),
  replaces the key's initial draw, except for SMC, which refuses it):
  :mod:`~jdiff.restoration.projection` (DDNM, DDNM+, DDRM; the DDNM
  projection also as a hook for any solver), :mod:`~jdiff.restoration.repaint` (RePaint),
  :mod:`~jdiff.restoration.guided` (DPS, PiGDM), :mod:`~jdiff.restoration.smc` (sequential
  Monte Carlo: asymptotically exact as the particles grow). The measurement travels in ``args``
  as ``{"measurement": y, "operator": op, "sigma_y": s}`` (:func:`restoration_args`).
"""

from .operators import (
    BOUNDARIES,
    OPERATOR_SPECS,
    AvgPoolSR,
    BicubicSR,
    Colorization,
    Identity,
    LinearOperator,
    Mask,
    Matrix,
    SeparableBlur,
    box_mask,
    check_sigma_y,
    gaussian_kernel,
    measure,
    parse_operator,
    random_mask,
    rng_from_key,
    uniform_kernel,
)
from .posterior import (
    PosteriorParams,
    exact_posterior,
    posterior_cov,
    posterior_mean,
    posterior_params,
    prior_arrays,
    sample_posterior,
)

from . import guided, projection, repaint, smc
from .projection import (DDNM, MEASUREMENT, OPERATOR, SIGMA_Y, DDNMPlus, DDNMStep, ddnm_nfe, ddnm_plus_sample,
                         ddnm_projection, ddnm_sample, ddrm_sample, restoration_args, restore_ddnm,
                         restore_ddnm_plus, restore_ddrm)
from .guided import (dps_gradient, dps_guidance, dps_sample, pigdm_guidance, pigdm_sample, pigdm_vector,
                     restore_dps, restore_pigdm)
from .repaint import RePaintInject, repaint_nfe, repaint_sample, restore_repaint
from .smc import SMCResult, restore_smc, smc_draw, smc_mean, smc_sample

METHODS = {**projection.METHODS, **repaint.METHODS, **guided.METHODS, **smc.METHODS}


def method_nfe(name: str, schedule, nfe: int, solver=None, **options) -> float:
    """Model evaluations per returned sample of method ``name`` at budget ``nfe``."""
    if name not in METHODS:
        raise ValueError(f"unknown restoration method {name!r}; valid: {', '.join(METHODS)}")
    for module in (projection, repaint, guided):
        if name in module.METHODS:
            return module.nfe_of(name, schedule, nfe, solver, **options)
    return smc.nfe_of(schedule, nfe, solver, **options)


__all__ = [
    "METHODS", "method_nfe", "restoration_args", "MEASUREMENT", "OPERATOR", "SIGMA_Y", "DDNM", "DDNMPlus",
    "DDNMStep", "ddnm_nfe", "ddnm_plus_sample", "ddnm_projection", "ddnm_sample", "ddrm_sample",
    "restore_ddnm", "restore_ddnm_plus", "restore_ddrm", "RePaintInject", "repaint_nfe", "repaint_sample",
    "restore_repaint", "dps_gradient", "dps_guidance", "dps_sample", "pigdm_guidance", "pigdm_sample",
    "pigdm_vector", "restore_dps", "restore_pigdm", "SMCResult", "restore_smc", "smc_draw", "smc_mean",
    "smc_sample",
    "BOUNDARIES", "OPERATOR_SPECS", "AvgPoolSR", "BicubicSR", "Colorization", "Identity",
    "LinearOperator", "Mask", "Matrix", "SeparableBlur", "box_mask", "check_sigma_y",
    "gaussian_kernel", "measure", "parse_operator", "random_mask", "rng_from_key", "uniform_kernel",
    "PosteriorParams", "exact_posterior", "posterior_cov", "posterior_mean", "posterior_params",
    "prior_arrays", "sample_posterior",
]
