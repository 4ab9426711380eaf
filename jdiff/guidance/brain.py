"""Brain-encoder guidance (BrainDiVE): voxel-wise linear encoders, ROI objectives, re-ranking.

BrainDiVE (Luo, Henderson, Wehbe, Tarr, NeurIPS 2023, "Brain Diffusion for Visual Exploration",
arXiv 2306.03089; official code ``github.com/aluo-x/BrainDiVE``) synthesises images that a
region of visual cortex is predicted to respond to most. Its three parts, here as pure functions:

**Encoder** (``encoder_model_vit.py::downproject_CLIP_split_linear.forward_higher``): a frozen
image backbone gives a feature vector ``phi(x)`` (OpenCLIP ViT-B/16, 512-d), which is
L2-normalised and mapped linearly to every voxel with a per-voxel bias::

    E(x) = (phi(x) / ||phi(x)||_2) W + b,        W: (F, V),  b: (V,)          (:class:`LinearEncoder`)

fitted to voxel responses by MSE with AdamW (lr 3e-4, weight decay 2e-2 on the head, batch 64,
learning rate decaying exponentially to 0.5x by the end; :func:`fit_adamw`) and evaluated by
per-voxel R^2 on held-out images (:func:`r2_score`). The closed form of the same linear model
under a ridge penalty is :func:`fit_ridge`.

**ROI objective** (``brain_guide_pipeline.py::cond_fn``, ``brain_tweak`` returns its negative as
a loss)::

    S(x) = mean_{v in ROI} E_v(x)                                              (:func:`roi_objective`)

which :func:`jdiff.guidance.objective_guidance` differentiates through the model's predicted
clean image (the residual-noise preview ``z~``) and adds as ``eps~ = eps - sigma s grad_x S``.

**Re-ranking** (project page, following NeuroGen): of many generated images keep the top 20 % by
the encoder's own predicted ROI activation (:func:`rerank`).

Without brain data, :func:`simulated_voxels` builds a *known* response function of images
(category-selective "regions" reading the class probabilities of a separately trained
classifier, plus a random linear mix of its features, plus noise), so a guided sampler can be
judged by the true response rather than by the encoder it was guided with
(``experiments/brain_guidance.py``).

All parameters (encoder weights, feature-network parameters, the ROI) are traced leaves of
``jax.tree_util.Partial`` objects whose static parts are frozen dataclasses compared by value:
fitting a new encoder, or choosing another ROI, reuses the compiled sampler.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "LinearEncoder",
    "SimulatedVoxels",
    "classifier_outputs",
    "fit_adamw",
    "fit_ridge",
    "l2_normalize",
    "linear_features",
    "r2_score",
    "rerank",
    "roi_objective",
    "roi_weights",
    "simulated_voxels",
]

NORM_EPS = 1e-12  # added to ||phi||^2 under the square root: a finite gradient at phi = 0


def l2_normalize(features, eps: float = NORM_EPS):
    """``phi / sqrt(||phi||^2 + eps)`` over the last axis (BrainDiVE's ``x / x.norm(dim=-1)``;
    the ``eps`` keeps the value and its gradient finite at ``phi = 0``)."""
    return features / jnp.sqrt(jnp.sum(features * features, axis=-1, keepdims=True) + eps)


# ----------------------------------------------------------------------------- checks


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_finite(x, what: str) -> None:
    if _is_concrete(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError(f"{what} must be finite, got non-finite values")


def _as_2d(x, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 2-D (samples, {'features' if 'feature' in what else 'voxels'}), "
                         f"got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be finite, got non-finite values")
    return arr


def _check_pair(features, responses, min_samples: int = 2):
    x = _as_2d(features, "features")
    y = _as_2d(responses, "responses")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features and responses must have the same number of samples, got "
                         f"{x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < min_samples:
        raise ValueError(f"need at least {min_samples} samples, got {x.shape[0]}")
    if x.shape[1] < 1 or y.shape[1] < 1:
        raise ValueError(f"need at least one feature and one voxel, got shapes {x.shape} and {y.shape}")
    return x, y


# ----------------------------------------------------------------------------- the encoder


@flax.struct.dataclass
class LinearEncoder:
    """BrainDiVE's voxel-wise linear head: ``E(phi) = n(phi) W + b`` with ``n`` the L2
    normalisation (``normalize=True``, as BrainDiVE) or the identity.

    A pytree: ``weight`` (F, V) and ``bias`` (V,) are traced leaves; ``normalize`` is static.
    ``encoder(features)`` maps features (..., F) to predicted responses (..., V).
    """

    weight: jax.Array
    bias: jax.Array
    normalize: bool = flax.struct.field(pytree_node=False, default=True)

    @property
    def num_features(self) -> int:
        return int(self.weight.shape[0])

    @property
    def num_voxels(self) -> int:
        return int(self.weight.shape[1])

    def __call__(self, features):
        features = jnp.asarray(features)
        if features.shape[-1:] != self.weight.shape[:1]:
            raise ValueError(f"the encoder takes {self.weight.shape[0]} features, got features of shape "
                             f"{features.shape}")
        features = features.astype(jnp.promote_types(features.dtype, jnp.float32))
        f = l2_normalize(features) if self.normalize else features
        return f @ self.weight.astype(f.dtype) + self.bias.astype(f.dtype)

    def check(self) -> "LinearEncoder":
        """``self``, or ``ValueError`` for bad shapes or (concrete) non-finite parameters."""
        if jnp.ndim(self.weight) != 2 or jnp.ndim(self.bias) != 1 or self.bias.shape[0] != self.weight.shape[1]:
            raise ValueError(f"LinearEncoder needs weight (F, V) and bias (V,), got {jnp.shape(self.weight)} "
                             f"and {jnp.shape(self.bias)}")
        _check_finite(self.weight, "encoder weight")
        _check_finite(self.bias, "encoder bias")
        return self


def _prepare_features(features: np.ndarray, normalize: bool) -> np.ndarray:
    x = features.astype(np.float64)
    if normalize:
        x = x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + NORM_EPS)
    return x


def fit_ridge(features, responses, l2: float = 1e-3, *, normalize: bool = True) -> LinearEncoder:
    """Closed-form ridge regression of every voxel on the (L2-normalised) features.

    With ``X`` the (normalised) features (N, F) and ``Y`` the responses (N, V), the bias is not
    penalised::

        (W, b) = argmin  sum_n ||Y_n - X_n W - b||^2 + l2 ||W||_F^2
        W = (Xc^T Xc + l2 I)^{-1} Xc^T Yc,   b = mean(Y) - mean(X) W,

    with ``Xc, Yc`` the column-centred ``X, Y`` (centring removes the bias from the normal
    equations exactly). Solved in float64; with ``N - 1 < F`` the equivalent dual form
    ``W = Xc^T (Xc Xc^T + l2 I)^{-1} Yc`` is used; ``l2 = 0`` gives the minimum-norm least-squares
    solution (``numpy.linalg.lstsq``).

    Args:
      features: (N, F) image features (e.g. a frozen backbone's penultimate layer).
      responses: (N, V) voxel responses (BrainDiVE: z-scored NSD betas).
      l2: the ridge penalty, ``>= 0`` (on the sum of squares, not the mean).
      normalize: L2-normalise the features first (BrainDiVE's head); stored in the encoder.

    Returns:
      A float32 :class:`LinearEncoder`.
    """
    x, y = _check_pair(features, responses)
    if not (isinstance(l2, (int, float, np.integer, np.floating)) and math.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
    x = _prepare_features(x, normalize)
    y = y.astype(np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    n, f = xc.shape
    if l2 == 0:
        w = np.linalg.lstsq(xc, yc, rcond=None)[0]
    elif n - 1 < f:  # dual: an (N, N) system
        w = xc.T @ np.linalg.solve(xc @ xc.T + l2 * np.eye(n), yc)
    else:
        w = np.linalg.solve(xc.T @ xc + l2 * np.eye(f), xc.T @ yc)
    b = my - mx @ w
    return LinearEncoder(jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32), normalize=normalize)


@functools.partial(jax.jit, static_argnames=("steps", "batch_size", "normalize", "lr", "weight_decay",
                                             "final_lr_ratio"))
def _adamw_scan(x, y, key, *, steps, batch_size, normalize, lr, weight_decay, final_lr_ratio):
    n, f = x.shape
    v = y.shape[1]
    k_w, k_b, k_data = jax.random.split(key, 3)
    bound = 1.0 / math.sqrt(f)  # PyTorch nn.Linear's init; BrainDiVE halves the weights
    params = {"weight": 0.5 * jax.random.uniform(k_w, (f, v), jnp.float32, -bound, bound),
              "bias": jax.random.uniform(k_b, (v,), jnp.float32, -bound, bound)}
    schedule = optax.exponential_decay(lr, transition_steps=steps, decay_rate=final_lr_ratio)
    opt = optax.adamw(schedule, weight_decay=weight_decay)
    xn = l2_normalize(x) if normalize else x

    def loss_fn(p, xb, yb):
        return jnp.mean((xb @ p["weight"] + p["bias"] - yb) ** 2)

    def step(carry, idx):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p, xn[idx], y[idx])
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), loss

    # all minibatch indices drawn at once: one random op outside the loop compiles much faster
    # on CPU than a key split and a draw per step inside it
    batches = jax.random.randint(k_data, (steps, batch_size), 0, n)
    (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), batches)
    return params, losses


def fit_adamw(features, responses, steps: int = 2000, lr: float = 3e-4, weight_decay: float = 2e-2,
              batch_size: int = 64, key=None, *, normalize: bool = True, final_lr_ratio: float = 0.5,
              return_losses: bool = False):
    """BrainDiVE's encoder training: MSE, ``optax.adamw``, one jitted ``lax.scan``.

    Minimises ``mean_{n in batch, v} (n(X_n) W + b - Y_nv)^2`` with AdamW (decoupled weight decay
    on weight and bias, as PyTorch's ``AdamW`` over all parameters), learning rate
    ``lr * final_lr_ratio ** (step / steps)`` (BrainDiVE: decays to 0.5x by the end), minibatches
    of ``batch_size`` rows drawn uniformly with replacement. Initialisation: PyTorch's
    ``nn.Linear`` (``U(-1/sqrt(F), 1/sqrt(F))``) with the weights halved, as BrainDiVE.

    Args:
      features, responses: (N, F) and (N, V), as :func:`fit_ridge`.
      steps: optimisation steps (BrainDiVE: 100 epochs of batch 64).
      lr, weight_decay, batch_size: BrainDiVE's 3e-4, 2e-2 (head), 64.
      key: PRNG key of the initialisation and minibatches (default ``jax.random.key(0)``).
      normalize: L2-normalise the features (BrainDiVE's head).
      final_lr_ratio: learning-rate factor reached at the last step, in (0, 1].
      return_losses: also return the (steps,) minibatch losses.

    Returns:
      A :class:`LinearEncoder` (and the losses with ``return_losses``).
    """
    x, y = _check_pair(features, responses, min_samples=1)
    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value, positive in (("lr", lr, True), ("weight_decay", weight_decay, False)):
        if not (isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)
                and (value > 0 if positive else value >= 0)):
            raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    if not (isinstance(final_lr_ratio, (int, float)) and 0 < final_lr_ratio <= 1):
        raise ValueError(f"final_lr_ratio must lie in (0, 1], got {final_lr_ratio!r}")
    key = jax.random.key(0) if key is None else key
    params, losses = _adamw_scan(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), key,
                                 steps=int(steps), batch_size=int(batch_size), normalize=bool(normalize),
                                 lr=float(lr), weight_decay=float(weight_decay),
                                 final_lr_ratio=float(final_lr_ratio))
    enc = LinearEncoder(params["weight"], params["bias"], normalize=normalize)
    return (enc, np.asarray(losses)) if return_losses else enc


def r2_score(encoder: LinearEncoder, features, responses) -> np.ndarray:
    """Per-voxel coefficient of determination ``R^2_v = 1 - SS_res,v / SS_tot,v`` (V,), with
    ``SS_res,v = sum_n (Y_nv - E_v(X_n))^2`` and ``SS_tot,v = sum_n (Y_nv - mean_n Y_nv)^2``
    (BrainDiVE's encoder metric on held-out images). NaN for a voxel of constant response."""
    x, y = _check_pair(features, responses)
    if x.shape[1] != encoder.num_features or y.shape[1] != encoder.num_voxels:
        raise ValueError(f"the encoder maps {encoder.num_features} features to {encoder.num_voxels} voxels, "
                         f"got features {x.shape} and responses {y.shape}")
    pred = np.asarray(encoder(jnp.asarray(x, jnp.float32)), np.float64)
    y = y.astype(np.float64)
    ss_res = np.sum((y - pred) ** 2, axis=0)
    ss_tot = np.sum((y - y.mean(0)) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)


# ----------------------------------------------------------------------------- ROI objective


def roi_weights(roi, num_voxels: int) -> jax.Array:
    """The ROI as averaging weights ``w`` (V,): ``1/|ROI|`` on its voxels, 0 elsewhere, so that
    ``E(x) @ w = mean_{v in ROI} E_v(x)``. ``roi``: a boolean mask (V,) or voxel indices."""
    arr = np.asarray(roi)
    if arr.size == 0:
        raise ValueError("the ROI is empty: select at least one voxel")
    if arr.dtype == bool:
        if arr.shape != (num_voxels,):
            raise ValueError(f"a boolean ROI must have shape ({num_voxels},) (one entry per voxel), got {arr.shape}")
        mask = arr
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.ndim != 1:
            raise ValueError(f"ROI indices must be 1-D, got shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= num_voxels):
            raise ValueError(f"ROI indices must lie in [0, {num_voxels}), got range [{arr.min()}, {arr.max()}]")
        mask = np.zeros(num_voxels, bool)
        mask[arr] = True
    else:
        raise ValueError(f"roi must be a boolean mask or integer voxel indices, got dtype {arr.dtype}")
    count = int(mask.sum())
    if count == 0:
        raise ValueError("the ROI is empty: select at least one voxel")
    return jnp.asarray(mask / count, jnp.float32)


@dataclasses.dataclass(frozen=True)
class _RoiMean:
    """Static part of :func:`roi_objective` (compared by value: no recompilation)."""

    clip: tuple[float, float] | None = None

    def __call__(self, encoder, feature_fn, weights, images, args=None):
        if self.clip is not None:
            images = jnp.clip(images, *self.clip)
        feats = jnp.asarray(feature_fn(images))
        if feats.ndim != 2 or feats.shape[0] != images.shape[0]:
            raise ValueError(f"feature_fn must map {images.shape[0]} images to ({images.shape[0]}, F) features, "
                             f"got shape {feats.shape}")
        pred = encoder(feats)
        return pred @ weights.astype(pred.dtype)


def roi_objective(encoder: LinearEncoder, feature_fn, roi, *, clip: tuple[float, float] | None = None):
    """BrainDiVE's ROI activation ``S(x) = mean_{v in ROI} E_v(phi(x))`` as an objective.

    Returns ``objective(images, args) -> (batch,)`` for
    :func:`jdiff.guidance.objective_guidance`: a ``jax.tree_util.Partial`` of a frozen dataclass
    with the encoder, ``feature_fn`` (itself a ``Partial`` carrying its parameters, e.g.
    :func:`jdiff.metrics.feature_fn`) and the ROI weights (:func:`roi_weights`) as traced leaves:
    a new encoder, new backbone parameters or another ROI of any size do not recompile.

    Args:
      encoder: a :class:`LinearEncoder` (F -> V).
      feature_fn: ``images (N, ...) -> features (N, F)``, differentiable. A plain function works
        but is compared by identity (a new lambda recompiles); prefer a ``Partial``.
      roi: boolean mask (V,) or voxel indices.
      clip: clip the images to this range first (BrainDiVE clips the decoded image to [0, 1];
        note a clipped pixel passes no gradient). Default: no clipping.
    """
    if not isinstance(encoder, LinearEncoder):
        raise ValueError(f"encoder must be a LinearEncoder, got {type(encoder).__name__}")
    encoder.check()
    if not callable(feature_fn):
        raise ValueError(f"feature_fn must be callable as feature_fn(images), got {type(feature_fn).__name__}")
    if clip is not None:
        clip = tuple(float(c) for c in clip)
        if len(clip) != 2 or not all(math.isfinite(c) for c in clip) or clip[0] >= clip[1]:
            raise ValueError(f"clip must be a finite range (low, high) with low < high, got {clip!r}")
    weights = roi_weights(roi, encoder.num_voxels)
    return jax.tree_util.Partial(_RoiMean(clip), encoder, feature_fn, weights)


@dataclasses.dataclass(frozen=True)
class _LinearFeatures:
    def __call__(self, matrix, images):
        return images.reshape(images.shape[0], -1) @ matrix.astype(images.dtype)


def linear_features(matrix):
    """``images -> flatten(images) @ matrix``: a linear feature map as a ``Partial`` (``matrix``
    (D, F) traced). A stand-in backbone for tests and analytic studies."""
    m = jnp.asarray(matrix)
    if m.ndim != 2:
        raise ValueError(f"matrix must be 2-D (D, F), got shape {m.shape}")
    _check_finite(m, "matrix")
    return jax.tree_util.Partial(_LinearFeatures(), m)


# ----------------------------------------------------------------------------- re-ranking


def rerank(images, scores, keep: float = 0.2):
    """The top fraction ``keep`` of ``images`` by ``scores`` (BrainDiVE / NeuroGen: the top 20 %
    by the encoder's predicted ROI activation).

    Keeps ``max(1, round(keep * N))`` images (halves rounded up), highest score first (ties in
    input order). Returns ``(indices, images[indices])``.
    """
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D (one per image), got shape {s.shape}")
    n = s.shape[0]
    if n == 0:
        raise ValueError("rerank needs at least one image")
    if jnp.shape(images)[:1] != (n,):
        raise ValueError(f"images and scores must have the same length, got {jnp.shape(images)[:1]} and ({n},)")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite, got non-finite values")
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)) or not 0 < keep <= 1:
        raise ValueError(f"keep must be a fraction in (0, 1], got {keep!r}")
    k = max(1, int(math.floor(keep * n + 0.5)))
    idx = np.argsort(-s, kind="stable")[:k]
    return idx, images[idx]


# ----------------------------------------------------------------------------- simulated voxels


@dataclasses.dataclass(frozen=True)
class _NetOutputs:
    """``images -> (features, logits)`` of a Flax classifier returning both (e.g. FeatureNet)."""

    model: object

    def __call__(self, params, images):
        f, logits = self.model.apply({"params": params}, images)
        return f, logits


def classifier_outputs(model, params):
    """``images -> (features, logits)`` of a :class:`jdiff.metrics.FeatureNet`-like module (its
    ``apply`` returns both) as a ``Partial`` with ``params`` traced."""
    return jax.tree_util.Partial(_NetOutputs(model), params)


@flax.struct.dataclass
class SimulatedVoxels:
    """A known voxel response function of images, for studies without brain data.

    With ``(phi(x), logits(x))`` from a "true" classifier, ``p = softmax(logits / T)`` and ``n``
    the L2 normalisation, voxel ``v`` of region ``k`` (preferring class ``c_k``) responds::

        r_v(x) = sum_c S_cv p_c(x) + n(phi(x)) . M_v + b_v  (+ noise_std * N(0, 1))

    with selectivity ``S_{c_k v} = g_v`` (gain) and small cross-talk ``S_cv`` for ``c != c_k``,
    a random linear mix ``M_v`` of the classifier's features and an offset ``b_v``.
    :meth:`mean` is the noise-free response (the ground truth any image can be scored by);
    :meth:`sample` adds the measurement noise. All arrays are traced leaves.
    """

    net: jax.tree_util.Partial         # images -> (features (N, F), logits (N, C))
    selectivity: jax.Array             # (C, V)
    mix: jax.Array                     # (F, V)
    offset: jax.Array                  # (V,)
    region: jax.Array                  # (V,) int: the preferred class of each voxel
    noise_std: float = flax.struct.field(pytree_node=False, default=0.3)
    temperature: float = flax.struct.field(pytree_node=False, default=1.0)

    @property
    def num_voxels(self) -> int:
        return int(self.offset.shape[0])

    def class_probs(self, images):
        """``softmax(logits / T)`` (N, C) of the true classifier."""
        return _sim_probs(self, images)

    def mean(self, images):
        """Noise-free responses (N, V) of ``images``."""
        return _sim_mean(self, images)

    def sample(self, images, key):
        """Noisy responses (N, V): :meth:`mean` plus ``noise_std`` Gaussian noise."""
        return _sim_sample(self, images, key)

    def roi(self, cls: int) -> np.ndarray:
        """Boolean mask (V,) of the voxels selective for class ``cls``."""
        mask = np.asarray(self.region) == int(cls)
        if not mask.any():
            prefer = sorted(set(np.asarray(self.region).tolist()))
            raise ValueError(f"no region prefers class {cls}; regions prefer {prefer}")
        return mask


@jax.jit
def _sim_probs(sim: SimulatedVoxels, images):
    return jax.nn.softmax(sim.net(images)[1] / sim.temperature, axis=-1)


@jax.jit
def _sim_mean(sim: SimulatedVoxels, images):
    f, logits = sim.net(images)
    p = jax.nn.softmax(logits / sim.temperature, axis=-1)
    return p @ sim.selectivity + l2_normalize(f) @ sim.mix + sim.offset


@jax.jit
def _sim_sample(sim: SimulatedVoxels, images, key):
    m = _sim_mean(sim, images)
    return m + sim.noise_std * jax.random.normal(key, m.shape, m.dtype)


@functools.partial(jax.jit, static_argnames=("num_classes", "feature_dim"))
def _draw_voxels(key, region, lo, hi, cross_talk, mix_scale, offset_scale, *, num_classes, feature_dim):
    v = region.shape[0]
    kg, kc, km, kb = jax.random.split(key, 4)
    sel = cross_talk * jax.random.uniform(kc, (num_classes, v))
    g = jax.random.uniform(kg, (v,), minval=lo, maxval=hi)
    sel = sel.at[region, jnp.arange(v)].set(g)
    mix = mix_scale * jax.random.normal(km, (feature_dim, v))
    offset = offset_scale * jax.random.normal(kb, (v,))
    return sel, mix, offset


def simulated_voxels(net, key, *, num_classes: int, feature_dim: int, regions=None, voxels_per_region: int = 20,
                     gain=(0.5, 1.5), cross_talk: float = 0.1, mix_scale: float = 0.3, offset_scale: float = 0.1,
                     noise_std: float = 0.3, temperature: float = 1.0) -> SimulatedVoxels:
    """Draw a :class:`SimulatedVoxels` response function (see its equation).

    Args:
      net: ``images -> (features (N, feature_dim), logits (N, num_classes))`` of a *true*
        classifier, e.g. :func:`classifier_outputs`; it must not be the guidance's backbone.
      key: PRNG key of the random gains, cross-talk, mix and offsets.
      num_classes, feature_dim: the classifier's output sizes.
      regions: the preferred class of each region (default: one region per class).
      voxels_per_region: voxels in every region (V = len(regions) * voxels_per_region).
      gain: range (low, high) of the uniform selectivity gains ``g_v``.
      cross_talk: off-preferred selectivities ``S_cv ~ U(0, cross_talk)``.
      mix_scale: std of the mix weights (with unit-norm features: the mix term's scale).
      offset_scale: std of the offsets ``b_v``.
      noise_std: measurement noise of :meth:`SimulatedVoxels.sample`.
      temperature: softmax temperature of the class probabilities.
    """
    if not callable(net):
        raise ValueError("net must be callable as net(images) -> (features, logits)")
    for name, value in (("num_classes", num_classes), ("feature_dim", feature_dim),
                        ("voxels_per_region", voxels_per_region)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    regions = list(range(num_classes)) if regions is None else [int(r) for r in regions]
    if not regions or any(not 0 <= r < num_classes for r in regions):
        raise ValueError(f"regions must be a non-empty list of classes in [0, {num_classes}), got {regions!r}")
    lo, hi = (float(g) for g in gain)
    for name, value in (("gain low", lo), ("gain high", hi), ("cross_talk", cross_talk), ("mix_scale", mix_scale),
                        ("offset_scale", offset_scale), ("noise_std", noise_std)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if lo > hi:
        raise ValueError(f"gain must be a range (low, high) with low <= high, got {gain!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    region = np.repeat(np.asarray(regions, np.int32), voxels_per_region)
    sel, mix, offset = _draw_voxels(key, jnp.asarray(region), lo, hi, float(cross_talk), float(mix_scale),
                                    float(offset_scale), num_classes=int(num_classes), feature_dim=int(feature_dim))
    return SimulatedVoxels(net, sel, mix, offset, jnp.asarray(region), noise_std=float(noise_std),
                           temperature=float(temperature))
