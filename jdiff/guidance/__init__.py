"""Guidance: model-function transforms that steer sampling, and what they need.

* :func:`classifier_free`: classifier-free guidance (Ho & Salimans convention, ``w = 0`` is
  conditional), with an optional guidance interval and rescale.
* :func:`classifier_guidance`: the gradient of any differentiable ``log p(c | x_t)``.
* :func:`objective_guidance`: the gradient of any differentiable per-sample objective of the
  predicted clean image, through the model (BrainDiVE's update by default).
* :mod:`jdiff.guidance.brain`: BrainDiVE's voxel-wise linear encoder (ridge, AdamW), region
  objectives, re-ranking and simulated voxels.

Each returns a model function of the same prediction type, so it runs with every solver of
:func:`jdiff.sample` and composes with the others (``objective_guidance(classifier_free(m, ...),
...)``). Exact guidance testbeds are labelled Gaussian mixtures (:mod:`jdiff.testbeds`:
``classes2d``, ``classes16d``, or a spec with ``"labels"``).
"""

from . import brain
from .cfg import classifier_free
from .common import check_labels, check_scale
from .gradient import PREVIEWS, classifier_guidance, objective_guidance, preview_image

__all__ = ["brain", "classifier_free", "classifier_guidance", "objective_guidance", "preview_image",
           "check_labels", "check_scale", "PREVIEWS"]
