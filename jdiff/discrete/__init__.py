"""Discrete (absorbing-state / text) diffusion: DiffusionBERT's process, losses and sampler.

* :mod:`.absorbing`: schedules (linear, cosine, spindle), forward marginals, closed-form
  posteriors, the process :class:`Absorbing`;
* :mod:`.losses`: variational bound, hybrid loss, continuous-time masked bound;
* :mod:`.sampling`: x0-parameterised ancestral sampler with step skipping, top-k / top-p;
* :mod:`.testbeds`: mixtures of product distributions with an exact denoiser and exact bound.
"""

from .absorbing import (SCHEDULES, SPINDLE_FORMS, Absorbing, Cosine, Linear, Spindle, absorbing, cosine,
                        discrete_times, get_schedule, linear, predicted_x0, spindle, x0_log_probs)
from .losses import LOSS_KINDS, LossSpec, absorbing_loss, kl_masked, sequence_bound, split_batch
from .sampling import DRAWS, FILTER_ON, categorical_inverse_cdf, filter_logits, sample, sampler_nfe
from .testbeds import (BUILTIN_DISCRETE, MixtureProduct, denoiser_apply, exact_bound, from_arrays,
                       get_discrete_testbed, load_spec, mask_weights, nll_table, sequence_index, tv_distance)

__all__ = ["SCHEDULES", "SPINDLE_FORMS", "Absorbing", "Cosine", "Linear", "Spindle", "absorbing", "cosine",
           "discrete_times", "get_schedule", "linear", "predicted_x0", "spindle", "x0_log_probs",
           "LOSS_KINDS", "LossSpec", "absorbing_loss", "kl_masked", "sequence_bound", "split_batch",
           "DRAWS", "FILTER_ON", "categorical_inverse_cdf", "filter_logits", "sample", "sampler_nfe",
           "BUILTIN_DISCRETE", "MixtureProduct", "denoiser_apply", "exact_bound", "from_arrays",
           "get_discrete_testbed", "load_spec", "mask_weights", "nll_table", "sequence_index", "tv_distance"]
