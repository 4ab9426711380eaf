"""Sample-quality metrics: Frechet distance, streaming feature statistics, feature networks.

* :mod:`jdiff.metrics.frechet`: ``frechet_distance`` (float64, symmetric form), ``FeatureStats``
  (streaming mean/covariance), ``compute_stats`` (feature function over an image set).
* :mod:`jdiff.metrics.inception`: the FID Inception-v3 network (pytorch-fid's weights, converted
  to .npz by ``scripts/convert_inception_weights.py``); FID = Frechet distance of its features.
* :mod:`jdiff.metrics.feature_net`: a small classifier trained by jdiff on your data, for a
  "Frechet distance in own-feature space" when the Inception weights are not available.
* :mod:`jdiff.metrics.text`: bound-based perplexity (per token, per word), BLEU-4 and self-BLEU
  of text samples (through sacrebleu).
"""

from .feature_net import (
    OWN_FEATURE_LABEL,
    FeatureNet,
    FeatureNetResult,
    accuracy,
    feature_fn,
    load_feature_net,
    predict_logits,
    save_feature_net,
    train_feature_net,
)
from .frechet import (
    FeatureStats,
    compute_stats,
    frechet_distance,
    frechet_distance_from_features,
    frechet_distance_from_stats,
    load_mu_sigma,
    trace_sqrt_product,
)
from .inception import (
    InceptionV3,
    inception_feature_fn,
    inception_state_dict_shapes,
    load_inception_params,
    resize_bilinear,
    save_inception_npz,
    state_dict_to_variables,
    variables_to_state_dict,
)
from .text import (
    bits_per_token,
    bleu,
    bleu_scores,
    perplexity_per_token,
    perplexity_per_word,
    perplexity_report,
    self_bleu,
    self_bleu_scores,
)

__all__ = [
    "OWN_FEATURE_LABEL",
    "FeatureNet",
    "FeatureNetResult",
    "FeatureStats",
    "InceptionV3",
    "accuracy",
    "bits_per_token",
    "bleu",
    "bleu_scores",
    "compute_stats",
    "feature_fn",
    "frechet_distance",
    "frechet_distance_from_features",
    "frechet_distance_from_stats",
    "inception_feature_fn",
    "inception_state_dict_shapes",
    "load_feature_net",
    "load_inception_params",
    "load_mu_sigma",
    "perplexity_per_token",
    "perplexity_per_word",
    "perplexity_report",
    "predict_logits",
    "resize_bilinear",
    "save_feature_net",
    "save_inception_npz",
    "self_bleu",
    "self_bleu_scores",
    "state_dict_to_variables",
    "trace_sqrt_product",
    "train_feature_net",
    "variables_to_state_dict",
]
