"""The FID Inception-v3 feature network in Flax Linen, with weights read from a local .npz.

What network this is
--------------------
The network of pytorch-fid (``pytorch_fid.inception.fid_inception_v3``), which is the Inception-v3
graph ``inception-2015-12-05`` that TTUR's original TensorFlow FID code uses, expressed with
torchvision's ``Inception3`` layer names (Szegedy et al. 2016, "Rethinking the Inception
architecture"). It differs from torchvision's ImageNet Inception-v3 in:

* ``fc`` has 1008 outputs (the 2015 graph's label set), no auxiliary classifier;
* the 3x3 average pools in the A and C blocks (``Mixed_5b..5d``, ``Mixed_6b..6e``) and in the
  first E block (``Mixed_7b``) exclude the zero padding from the average (TensorFlow's
  ``avg_pool``; PyTorch's ``count_include_pad=False``);
* the pool branch of the last E block (``Mixed_7c``) is a 3x3 *max* pool (stride 1, padding 1).

Every convolution is ``BasicConv2d``: conv without bias -> BatchNorm (inference, running
statistics, eps = 1e-3) -> ReLU, ``y = relu((conv(x) - mean) / sqrt(var + 1e-3) * gamma + beta)``.

Preprocessing (as pytorch-fid): images are resized to 299x299 with bilinear interpolation,
half-pixel centres and no antialiasing (``F.interpolate(..., mode="bilinear",
align_corners=False)``), and scaled to [-1, 1]. The features are the 2048 channels of the final
global average pool (``pool_3``). :func:`inception_feature_fn` takes images already in [-1, 1]
(jdiff's convention; uint8 images: ``x / 127.5 - 1``) of any size, NHWC, 3 or 1 channels (a single
channel is repeated). Resizing is linear with weights summing to one, so resizing in [-1, 1]
equals pytorch-fid's resizing in [0, 1] followed by ``2 x - 1``.

On-disk weights format
----------------------
An ``.npz`` whose keys are the PyTorch ``state_dict`` names of pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` and whose arrays keep PyTorch layouts::

    Conv2d_1a_3x3.conv.weight        (32, 3, 3, 3)      conv, OIHW
    Conv2d_1a_3x3.bn.weight          (32,)              BN gamma
    Conv2d_1a_3x3.bn.bias            (32,)              BN beta
    Conv2d_1a_3x3.bn.running_mean    (32,)
    Conv2d_1a_3x3.bn.running_var     (32,)
    ...                                                 94 BasicConv2d layers
    Mixed_5b.branch1x1.conv.weight   (64, 192, 1, 1)
    ...
    fc.weight                        (1008, 2048)
    fc.bias                          (1008,)

(472 arrays; ``*.num_batches_tracked`` entries are accepted and ignored). Convolution weights are
transposed OIHW -> HWIO and ``fc.weight`` (out, in) -> (in, out) at load time. Produce the file with
``python scripts/convert_inception_weights.py pt_inception-2015-12-05-6726825d.pth out.npz``
(needs PyTorch; download the .pth yourself from pytorch-fid's release page). jdiff never downloads.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "INCEPTION_FEATURE_DIM",
    "INCEPTION_INPUT_SIZE",
    "InceptionV3",
    "inception_feature_fn",
    "inception_state_dict_shapes",
    "load_inception_params",
    "resize_bilinear",
    "save_inception_npz",
    "state_dict_to_variables",
    "variables_to_state_dict",
]

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_INPUT_SIZE = 299
INCEPTION_FEATURE_DIM = 2048
BN_EPS = 1e-3


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps 1e-3, running statistics) -> ReLU, torchvision's BasicConv2d."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)  # symmetric (rows, cols) zero padding, as torch's ``padding``
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel_size, self.strides, padding=((ph, ph), (pw, pw)),
                    use_bias=False, dtype=self.dtype, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3_exclude_pad(x):
    """3x3, stride 1, padding 1 average that divides by the number of real (unpadded) inputs."""
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), (2, 2), padding="VALID")


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool(excl. pad)-1x1."""

    pool_features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        C = functools.partial(BasicConv2d, dtype=self.dtype)
        b1 = C(64, (1, 1), name="branch1x1")(x)
        b5 = C(48, (1, 1), name="branch5x5_1")(x)
        b5 = C(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = C(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = C(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = C(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = C(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        C = functools.partial(BasicConv2d, dtype=self.dtype)
        b3 = C(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
        bd = C(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = C(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = C(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """17x17 block (Mixed_6b..6e) with factorised 1x7 / 7x1 convolutions."""

    channels_7x7: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        C = functools.partial(BasicConv2d, dtype=self.dtype)
        c7 = self.channels_7x7
        b1 = C(192, (1, 1), name="branch1x1")(x)
        b7 = C(c7, (1, 1), name="branch7x7_1")(x)
        b7 = C(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = C(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = C(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = C(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = C(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = C(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = C(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = C(192, (1, 1), name="branch_pool")(_avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3x3/2."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        C = functools.partial(BasicConv2d, dtype=self.dtype)
        b3 = C(192, (1, 1), name="branch3x3_1")(x)
        b3 = C(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
        b7 = C(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = C(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = C(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = C(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """8x8 block (Mixed_7b: avg pool excluding padding; Mixed_7c: 3x3 max pool, the FID graph's quirk)."""

    pool: str  # "avg" or "max"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        C = functools.partial(BasicConv2d, dtype=self.dtype)
        b1 = C(320, (1, 1), name="branch1x1")(x)
        b3 = C(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([C(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              C(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = C(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = C(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([C(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              C(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.pool == "avg":
            pooled = _avg_pool_3x3_exclude_pad(x)
        elif self.pool == "max":
            pooled = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))  # pads with -inf
        else:
            raise ValueError(f"pool must be 'avg' or 'max', got {self.pool!r}")
        bp = C(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """FID Inception-v3: ``x`` (N, H, W, 3) in [-1, 1], H, W >= 75 -> (pool_3 (N, 2048), logits (N, 1008)).

    No resizing happens here (see :func:`inception_feature_fn`). Variables:
    ``{"params": ..., "batch_stats": ...}``; names follow torchvision (``Mixed_5b/branch1x1/conv``).
    """

    num_classes: int = 1008
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        C = functools.partial(BasicConv2d, dtype=self.dtype)
        x = x.astype(self.dtype)
        x = C(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)  # 299 -> 149
        x = C(32, (3, 3), name="Conv2d_2a_3x3")(x)                   # 147
        x = C(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)   # 147
        x = _max_pool_3x3_s2(x)                                      # 73
        x = C(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = C(192, (3, 3), name="Conv2d_4a_3x3")(x)                  # 71
        x = _max_pool_3x3_s2(x)                                      # 35
        x = InceptionA(32, dtype=self.dtype, name="Mixed_5b")(x)     # 256 channels
        x = InceptionA(64, dtype=self.dtype, name="Mixed_5c")(x)     # 288
        x = InceptionA(64, dtype=self.dtype, name="Mixed_5d")(x)     # 288
        x = InceptionB(dtype=self.dtype, name="Mixed_6a")(x)         # 768 x 17 x 17
        x = InceptionC(128, dtype=self.dtype, name="Mixed_6b")(x)
        x = InceptionC(160, dtype=self.dtype, name="Mixed_6c")(x)
        x = InceptionC(160, dtype=self.dtype, name="Mixed_6d")(x)
        x = InceptionC(192, dtype=self.dtype, name="Mixed_6e")(x)
        x = InceptionD(dtype=self.dtype, name="Mixed_7a")(x)         # 1280 x 8 x 8
        x = InceptionE("avg", dtype=self.dtype, name="Mixed_7b")(x)  # 2048
        x = InceptionE("max", dtype=self.dtype, name="Mixed_7c")(x)  # 2048
        pool = jnp.mean(x.astype(jnp.float32), axis=(1, 2))         # pool_3, (N, 2048)
        logits = nn.Dense(self.num_classes, name="fc")(pool)
        return pool, logits


# ----------------------------------------------------------------------------------------------
# PyTorch state_dict <-> Flax variables

_BN_TORCH = {"scale": ("params", "weight"), "bias": ("params", "bias"),
             "mean": ("batch_stats", "running_mean"), "var": ("batch_stats", "running_var")}
_BN_FLAX = {v[1]: (v[0], k) for k, v in _BN_TORCH.items()}


def _torch_key(path: tuple[str, ...]) -> str:
    """torch state_dict name of the Flax leaf at ``path`` (collection excluded)."""
    *mods, leaf = path
    if mods and mods[-1] == "bn" and leaf in _BN_TORCH:
        return ".".join(mods + [_BN_TORCH[leaf][1]])
    if mods and mods[-1] == "conv" and leaf == "kernel":
        return ".".join(mods + ["weight"])
    if mods == ["fc"] and leaf in ("kernel", "bias"):
        return "fc." + ("weight" if leaf == "kernel" else "bias")
    raise ValueError(f"unexpected Inception variable {'/'.join(path)}")


def _torch_shape(shape):
    if len(shape) == 4:
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(shape[::-1]) if len(shape) == 2 else tuple(shape)


def _to_torch_layout(value):
    """HWIO conv kernel -> OIHW, (in, out) dense kernel -> (out, in); vectors unchanged."""
    if value.ndim == 4:
        return np.transpose(value, (3, 2, 0, 1))
    return np.transpose(value) if value.ndim == 2 else value


def _to_flax_layout(value):
    if value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))
    return np.transpose(value) if value.ndim == 2 else value


@functools.cache
def _abstract_variables(num_classes: int = 1008):
    model = InceptionV3(num_classes=num_classes)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 75, 75, 3), jnp.float32))


def inception_state_dict_shapes(num_classes: int = 1008) -> dict[str, tuple[int, ...]]:
    """The expected ``{torch key: torch shape}`` of the weights file, derived from the Flax module.

    Uses ``jax.eval_shape`` (no computation). 472 entries for the FID network.
    """
    shapes = {}
    for tree in _abstract_variables(num_classes).values():
        for path, leaf in traverse_util.flatten_dict(tree).items():
            shapes[_torch_key(path)] = _torch_shape(leaf.shape)
    # group per layer in PyTorch's order (layers sorted by name; JAX pytrees do not keep module order)
    leaf_order = ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "weight", "bias"]

    def sort_key(k):
        layer, leaf = ("fc", k[3:]) if k.startswith("fc.") else (k.rsplit(".", 2)[0], ".".join(k.rsplit(".", 2)[1:]))
        return (layer == "fc", layer, leaf_order.index(leaf))

    return {k: shapes[k] for k in sorted(shapes, key=sort_key)}


def _torch_key_to_flax(key: str) -> tuple[str, tuple[str, ...]]:
    parts = key.split(".")
    if parts[0] == "fc":
        return "params", ("fc", {"weight": "kernel", "bias": "bias"}[parts[1]])
    if parts[-2] == "bn":
        col, leaf = _BN_FLAX[parts[-1]]
        return col, tuple(parts[:-1]) + (leaf,)
    return "params", tuple(parts[:-1]) + ("kernel",)


def state_dict_to_variables(state_dict, *, num_classes: int = 1008, strict: bool = True):
    """Flax variables ``{"params", "batch_stats"}`` from a mapping of torch names to arrays.

    Every expected key must be present with its exact PyTorch shape; a missing or misshaped key
    raises a ``KeyError``/``ValueError`` naming it. ``*.num_batches_tracked`` keys are ignored;
    any other unknown key raises when ``strict`` (e.g. ``AuxLogits.*`` from torchvision's
    ImageNet checkpoint, which is not the FID network).
    """
    expected = inception_state_dict_shapes(num_classes)
    keys = set(state_dict.keys())
    missing = [k for k in expected if k not in keys]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise KeyError(f"Inception weights lack key {missing[0]!r}{more}; expected pytorch-fid's "
                       f"{FID_WEIGHTS_FILENAME} state_dict names")
    unexpected = sorted(k for k in keys - set(expected) if not k.endswith("num_batches_tracked"))
    if unexpected and strict:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise KeyError(f"Inception weights have unexpected key {unexpected[0]!r}{more}")
    flat = {}
    for key, shape in expected.items():
        arr = np.asarray(state_dict[key])
        if tuple(arr.shape) != shape:
            raise ValueError(f"Inception weight {key!r} has shape {tuple(arr.shape)}, expected {shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"Inception weight {key!r} has dtype {arr.dtype}, expected floating point")
        col, path = _torch_key_to_flax(key)
        flat[(col,) + path] = jnp.asarray(_to_flax_layout(arr.astype(np.float32)))
    return traverse_util.unflatten_dict(flat)


def variables_to_state_dict(variables) -> dict[str, np.ndarray]:
    """Inverse of :func:`state_dict_to_variables`: ``{torch key: array in torch layout}``."""
    out = {}
    for tree in variables.values():
        for path, leaf in traverse_util.flatten_dict(dict(tree)).items():
            out[_torch_key(path)] = np.ascontiguousarray(_to_torch_layout(np.asarray(leaf)))
    return out


def load_inception_params(path: str | os.PathLike, *, strict: bool = True):
    """Load FID Inception weights from the .npz format described in the module docstring.

    Returns Flax variables ``{"params": ..., "batch_stats": ...}`` for :class:`InceptionV3`.
    Raises ``FileNotFoundError`` (with conversion instructions), ``KeyError`` for a missing or
    unexpected key and ``ValueError`` for a misshaped one, naming the key.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found. Download {FID_WEIGHTS_FILENAME} from pytorch-fid's GitHub release "
            "(fid_weights) and convert it with: python scripts/convert_inception_weights.py "
            f"{FID_WEIGHTS_FILENAME} {path}")
    with np.load(path, allow_pickle=False) as f:
        sd = {k: f[k] for k in f.files}
    return state_dict_to_variables(sd, strict=strict)


def save_inception_npz(path: str | os.PathLike, state_dict) -> None:
    """Validate a torch-named state dict (arrays) and write it in the .npz weights format."""
    state_dict_to_variables(state_dict)  # raises on missing / misshaped / unexpected keys
    np.savez(path, **{k: np.asarray(v, np.float32) for k, v in state_dict.items()
                      if not k.endswith("num_batches_tracked")})


# ----------------------------------------------------------------------------------------------
# Preprocessing and the feature function

def resize_bilinear(images, size: Sequence[int] = (INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE)):
    """Bilinear resize of NHWC images, matching ``F.interpolate(mode="bilinear", align_corners=False)``.

    Output pixel ``i`` samples input coordinate ``(i + 0.5) * in / out - 0.5`` with a 2-tap
    triangle kernel; taps outside the image are dropped and the weights renormalised, which is
    PyTorch's edge clamping. ``antialias=False``: downscaling does not widen the kernel, as in
    PyTorch's default (``jax.image.resize``'s default would antialias).
    """
    n, h, w, c = images.shape
    if (h, w) == tuple(size):
        return images
    return jax.image.resize(images, (n, size[0], size[1], c), method="bilinear", antialias=False)


@functools.cache
def _features_impl(num_classes: int, resize: bool, dtype):
    model = InceptionV3(num_classes=num_classes, dtype=dtype)

    @jax.jit
    def features(variables, images):
        x = jnp.asarray(images, jnp.float32)
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"images must be NHWC with 1 or 3 channels, got shape {x.shape}")
        if x.shape[-1] == 1:
            x = jnp.repeat(x, 3, axis=-1)
        if resize:
            x = resize_bilinear(x)
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"Inception-v3 needs inputs of at least 75x75, got {x.shape[1:3]} "
                             "(use resize=True)")
        return model.apply(variables, x)[0]

    return features


def inception_feature_fn(variables, *, resize: bool = True, dtype=jnp.float32):
    """``images -> pool_3 features (N, 2048)`` for the FID Inception network.

    Args:
      variables: from :func:`load_inception_params`.
      resize: resize to 299x299 first (pytorch-fid always does; part of the FID protocol). With
        ``resize=False`` images of any size >= 75x75 go in unchanged (not comparable with FID).
      dtype: compute dtype of the convolutions.

    Returns:
      A ``jax.tree_util.Partial`` (the weights are its traced arguments, not constants baked into
      the compiled program): call it on NHWC images in [-1, 1] with 3 channels (1 channel is
      repeated) to get float32 features, or pass it to :func:`jdiff.metrics.compute_stats`.
    """
    num_classes = int(variables["params"]["fc"]["kernel"].shape[-1])
    return jax.tree_util.Partial(_features_impl(num_classes, bool(resize), jnp.dtype(dtype)), variables)
