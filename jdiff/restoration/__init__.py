"""Zero-shot restoration: linear degradation operators and exact posteriors.

* :mod:`jdiff.restoration.operators`: operators ``y = A x`` as pytrees with ``A``, ``AT``,
  ``pinv`` and the SVD in factored form (identity, masks, average-pooling and bicubic
  super-resolution, separable blur, colorization, general matrices), :func:`measure` and
  :func:`parse_operator`.
* :mod:`jdiff.restoration.posterior`: the closed-form posterior of a Gaussian-mixture prior under
  ``y = A x + sigma_y n`` (the reference that restoration methods are measured against).
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

__all__ = [
    "BOUNDARIES", "OPERATOR_SPECS", "AvgPoolSR", "BicubicSR", "Colorization", "Identity",
    "LinearOperator", "Mask", "Matrix", "SeparableBlur", "box_mask", "check_sigma_y",
    "gaussian_kernel", "measure", "parse_operator", "random_mask", "rng_from_key", "uniform_kernel",
    "PosteriorParams", "exact_posterior", "posterior_cov", "posterior_mean", "posterior_params",
    "prior_arrays", "sample_posterior",
]
