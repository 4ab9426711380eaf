"""Linear degradation operators ``y = A x`` as pytrees, with adjoint, pseudo-inverse and SVD.

Every operator is a ``flax.struct.dataclass``: its arrays (masks, 1-D convolution matrices and
their SVD factors, a general matrix and its SVD) are traced pytree leaves, its configuration
(shapes, scale factor, boundary, name) is static and compares by value. Passing an operator as an
argument of a jitted function (e.g. inside a sampler's ``args``) therefore never bakes its arrays
into the compiled program, and a new operator of the same configuration (another random mask,
another blur kernel of the same size) reuses the compiled program. The only constants in a
program are small orthonormal bases that depend on static configuration alone (the f^2 x f^2
block basis of :class:`AvgPoolSR`, the 3 x 3 colour basis of :class:`Colorization`).

Shapes. An operator acts on a batch ``x`` of shape ``(B, *in_shape)``: images NHWC
``(B, H, W, C)`` or vectors ``(B, D)``; measurements ``y`` have shape ``(B, *out_shape)``. A wrong
shape is a one-line ``ValueError``.

Methods (all operators):

* ``A(x) -> y``, ``AT(y) -> x`` (the adjoint: ``<A x, y> = <x, AT y>``), ``pinv(y) -> x`` (the
  Moore-Penrose pseudo-inverse ``A^+``).
* The SVD ``A = U diag(s) V^T`` in factored form, never as a dense matrix for images. With
  ``n = prod(in_shape)`` spectral coordinates:

  - ``singular_values()``: ``s``, flat, length ``n``, zero on the null space of A, in the order of
    the spectral coordinates (operator-specific, *not* sorted);
  - ``Vt(x) -> (B, n)`` and ``V(z) -> (B, *in_shape)``: V is orthogonal (``V(Vt(x)) = x``,
    ``Vt(V(z)) = z``);
  - ``Ut(y) -> (B, n)`` and ``U(z) -> (B, *out_shape)``: left singular vectors exist only for the
    coordinates with ``s > 0``; ``Ut`` is zero where ``s = 0`` and ``U`` ignores those
    coordinates, so ``Ut(U(z)) = where(s > 0, z, 0)`` and ``U(Ut(y))`` is the orthogonal
    projection of y onto the range of A (``= A(pinv(y))``);
  - hence ``A(x) = U(s * Vt(x))``, ``AT(y) = V(s * Ut(y))`` and
    ``pinv(y) = V(where(s > 0, Ut(y) / s, 0))``.

* ``dense()``: the (m, D) float64 NumPy matrix of A on the *compressed* measurement space, and
  ``compress(y) -> (B, m)`` / ``expand(yc) -> (B, *out_shape)``, for small vector problems (the
  exact posterior in :mod:`jdiff.restoration.posterior`). ``compress`` is a reshape except for
  :class:`Mask`, whose dense form keeps only the observed rows (m = number of kept entries).
* ``in_shape``, ``out_shape`` (static tuples) and ``name``.

Operators:

* :class:`Identity`: denoising.
* :class:`Mask`: inpainting. ``y`` has the *full* shape of x, with zeros at the missing entries
  (``y = mask * x``); so ``A = A^T = A^+ = mask``. Images take a pixel mask (H, W) shared by the
  channels, or a full (H, W, C) mask; vectors a mask over dimensions. Build with
  :meth:`Mask.create` (a given boolean mask), :meth:`Mask.box` / :func:`box_mask` or
  :meth:`Mask.random` / :func:`random_mask`.
* :class:`AvgPoolSR`: f x f block averaging; ``y`` is (H/f, W/f, C), ``AT`` spreads y / f^2,
  ``pinv`` replicates, singular value 1/f per block (the block-mean direction), per-block
  orthonormal Helmert basis.
* :class:`Colorization`: the mean of the three RGB channels (1/3 each; DDRM uses
  0.3333/0.3334/0.3333); ``y`` is (H, W, 1), ``pinv`` replicates, s = 1/sqrt(3) per pixel.
* :class:`SeparableBlur`: separable 2-D cross-correlation (as ``torch.nn.functional.conv2d`` and
  DDRM; equal to convolution for symmetric kernels) with an explicit boundary, written exactly as
  ``y_c = M_h x_c M_w^T`` with 1-D matrices M_h (H x H), M_w (W x W); SVD from theirs (Kronecker:
  ``s = outer(s_h, s_w)`` per channel). Boundaries (names as ``numpy.pad``/torch):
  ``"zero"`` (zero padding, DDRM's Toeplitz matrix), ``"reflect"`` (``d c b | a b c d``, no edge
  repeat: numpy/torch 'reflect', scipy 'mirror'), ``"symmetric"`` (``c b a | a b c d``, edge
  repeated: numpy/MATLAB 'symmetric', scipy 'reflect'), ``"circular"`` (periodic).
  ``zero_below`` zeroes the 1-D singular values below a threshold (DDRM uses 3e-2); the operator
  is then *defined by* its truncated SVD (A, AT, pinv all use it, as in DDRM), so it differs from
  the plain convolution in those directions. Kernels: :func:`gaussian_kernel`,
  :func:`uniform_kernel` (odd sizes: the kernel is centred). Note DDRM's Gaussian deblurring uses
  5 taps with std 10 (almost uniform) and DPS a 61 x 61 kernel with std 3: say which.
* :class:`BicubicSR`: bicubic downsampling by an integer factor f as a separable 1-D matrix:
  Keys' cubic (a = -0.5), *antialiased* by default like MATLAB ``imresize`` and DDRM's ``SRConv``
  (kernel stretched by f, 4f taps, weights normalised to sum 1 per output), with the
  ``"symmetric"`` boundary of both; ``antialias=False`` gives plain bicubic interpolation at the
  low-resolution pixel centres (4 taps). Output pixel k is centred at input coordinate
  ``(k + 0.5) f - 0.5`` (as ``jax.image.resize``). Same Kronecker SVD.
* :class:`Matrix`: a general (m, D) matrix for vector data (array or ``.npy`` via
  :meth:`Matrix.from_file`), SVD computed once at construction in float64 NumPy.

Measurement: :func:`measure` draws ``y = A x + sigma_y n`` with ``sigma_y`` in the data's own
scale (DDRM/DDNM take sigma_y for [0, 1] images and double it for [-1, 1] data; we do not). For
:class:`Mask` the noise is added only at observed entries (y stays zero at missing ones).

:func:`parse_operator` reads the command-line specs (``identity``, ``mask:FRACTION``,
``matrix:FILE.npy``; for images ``sr:F``, ``bicubic:F``, ``blur:gauss:SIZE:STD[:BOUNDARY]``,
``blur:uniform:SIZE[:BOUNDARY]``, ``inpaint:box``, ``color``).

Stored arrays are float32 by default (``dtype=jnp.float64`` inside ``jax.enable_x64`` keeps
float64); every method computes in the dtype of its input.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

__all__ = [
    "LinearOperator", "Identity", "Mask", "AvgPoolSR", "Colorization", "SeparableBlur", "BicubicSR",
    "Matrix", "box_mask", "random_mask", "gaussian_kernel", "uniform_kernel", "measure",
    "parse_operator", "check_sigma_y", "rng_from_key", "BOUNDARIES", "OPERATOR_SPECS",
]

BOUNDARIES = ("zero", "reflect", "symmetric", "circular")
OPERATOR_SPECS = ("identity", "mask:FRACTION", "matrix:FILE.npy", "sr:F", "bicubic:F",
                  "blur:gauss:SIZE:STD[:BOUNDARY]", "blur:uniform:SIZE[:BOUNDARY]", "inpaint:box",
                  "color")
_DENSE_MAX = 4096  # dense() refuses larger inputs (it is meant for small vector problems)


def _shape_tuple(shape, what: str) -> tuple:
    try:
        t = tuple(int(d) for d in shape)
    except TypeError:
        raise ValueError(f"{what} must be a tuple of positive integers, got {shape!r}") from None
    if not t or any(d < 1 for d in t) or any(int(d) != d for d in shape):
        raise ValueError(f"{what} must be a non-empty tuple of positive integers, got {shape!r}")
    return t


def _image_shape(shape, what: str) -> tuple:
    t = _shape_tuple(shape, what)
    if len(t) != 3:
        raise ValueError(f"{what} must be an image shape (H, W, C), got {shape!r}")
    return t


def _fmt(shape) -> str:
    return ", ".join(str(d) for d in shape)


def _int_factor(factor, what: str) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ValueError(f"{what}: scale factor must be a positive integer, got {factor!r}")
    return int(factor)


def _as_jnp(a: np.ndarray, dtype):
    return jnp.asarray(np.asarray(a, np.float64), dtype)


class LinearOperator:
    """Shared behaviour of the operators (a mixin: each operator is a ``flax.struct.dataclass``).

    Subclasses define ``in_shape``, ``out_shape``, ``name``, ``A``, ``AT``, ``singular_values``,
    ``Vt``, ``V``, ``Ut``, ``U``; ``pinv`` defaults to the SVD form."""

    # --- sizes and checks ------------------------------------------------------------------
    @property
    def dim_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def dim_out(self) -> int:
        return math.prod(self.out_shape)

    def _check_shape(self, arr, shape, what: str):
        if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != tuple(shape):
            raise ValueError(f"{self.name}: {what} must have shape (batch, {_fmt(shape)}), "
                             f"got {tuple(arr.shape)}")

    def _check(self, arr, shape, what: str):
        arr = jnp.asarray(arr)
        self._check_shape(arr, shape, what)
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            arr = arr.astype(jnp.result_type(float))
        return arr

    def _check_x(self, x):
        return self._check(x, self.in_shape, "x")

    def _check_y(self, y):
        return self._check(y, self.out_shape, "y")

    def _check_z(self, z):
        return self._check(z, (self.dim_in,), "spectral coordinates")

    # --- defaults ----------------------------------------------------------------------------
    def pinv(self, y):
        """Moore-Penrose pseudo-inverse ``A^+ y`` (B, *in_shape)."""
        y = self._check_y(y)
        s = self.singular_values(y.dtype)
        pos = s > 0
        return self.V(jnp.where(pos, self.Ut(y) / jnp.where(pos, s, 1), 0))

    def rank(self) -> int:
        """Number of nonzero singular values (concrete operators only)."""
        return int(np.sum(np.asarray(self.singular_values()) > 0))

    def _noise_support(self, n):
        """Measurement noise ``n`` (B, *out_shape) restricted to what is observed."""
        return n

    # --- dense forms for small problems -----------------------------------------------------
    def dense(self) -> np.ndarray:
        """The (m, D) float64 matrix of A on the compressed measurement space (``compress``)."""
        D = self.dim_in
        if D > _DENSE_MAX:
            raise ValueError(f"{self.name}: dense() is for small problems (at most {_DENSE_MAX} "
                             f"input dimensions), got {D}")
        with jax.enable_x64(True):
            basis = jnp.eye(D, dtype=jnp.float64).reshape((D,) + tuple(self.in_shape))
            cols = np.asarray(self.A(basis), np.float64).reshape(D, -1)
        return self.compress_np(cols.reshape((D,) + tuple(self.out_shape))).T.copy()

    def compress_np(self, y) -> np.ndarray:
        y = np.asarray(y, np.float64)
        return y.reshape(y.shape[0], -1)

    def compress(self, y) -> np.ndarray:
        """Measurements (B, *out_shape) as (B, m) float64 NumPy rows matching :meth:`dense`."""
        y = np.asarray(y, np.float64)  # host-side float64: never through a float32 jnp array
        self._check_shape(y, self.out_shape, "y")
        return self.compress_np(y)

    def expand(self, yc):
        """Inverse of :meth:`compress`: (B, m) rows back to (B, *out_shape) (zeros where unobserved)."""
        yc = jnp.asarray(yc)
        return yc.reshape((yc.shape[0],) + tuple(self.out_shape))


# ---------------------------------------------------------------------------------------------
# Identity
# ---------------------------------------------------------------------------------------------
@struct.dataclass
class Identity(LinearOperator):
    """``A = I`` (denoising; use with ``sigma_y > 0``)."""

    in_shape: tuple = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False, default="identity")

    def __post_init__(self):
        object.__setattr__(self, "in_shape", _shape_tuple(self.in_shape, "identity: in_shape"))

    @classmethod
    def create(cls, in_shape) -> Identity:
        return cls(_shape_tuple(in_shape, "identity: in_shape"))

    @property
    def out_shape(self) -> tuple:
        return self.in_shape

    def A(self, x):
        return self._check_x(x)

    def AT(self, y):
        return self._check_y(y)

    def pinv(self, y):
        return self._check_y(y)

    def singular_values(self, dtype=None):
        return jnp.ones((self.dim_in,), dtype or jnp.result_type(float))

    def Vt(self, x):
        x = self._check_x(x)
        return x.reshape(x.shape[0], -1)

    def V(self, z):
        z = self._check_z(z)
        return z.reshape((z.shape[0],) + self.in_shape)

    def Ut(self, y):
        y = self._check_y(y)
        return y.reshape(y.shape[0], -1)

    def U(self, z):
        z = self._check_z(z)
        return z.reshape((z.shape[0],) + self.out_shape)


# ---------------------------------------------------------------------------------------------
# Mask (inpainting)
# ---------------------------------------------------------------------------------------------
def box_mask(shape, top: int, left: int, h: int, w: int) -> np.ndarray:
    """Boolean mask of ``shape`` ((H, W) pixels or (H, W, C)), True = observed, with the box
    ``[top, top + h) x [left, left + w)`` missing (False). The box must lie inside the image."""
    shape = _shape_tuple(shape, "box_mask: shape")
    if len(shape) not in (2, 3):
        raise ValueError(f"box_mask: shape must be (H, W) or (H, W, C), got {shape}")
    H, W = shape[:2]
    vals = (top, left, h, w)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in vals):
        raise ValueError(f"box_mask: top, left, h, w must be integers, got {vals}")
    if h < 1 or w < 1 or top < 0 or left < 0 or top + h > H or left + w > W:
        raise ValueError(f"box_mask: box top={top} left={left} h={h} w={w} does not fit in a "
                         f"{H} x {W} image (h, w >= 1)")
    m = np.ones(shape, bool)
    m[top:top + h, left:left + w] = False
    return m


def random_mask(key, shape, keep_fraction: float) -> np.ndarray:
    """Boolean mask of ``shape`` with exactly ``round(keep_fraction * size)`` True (observed)
    entries drawn uniformly without replacement (host-side, NumPy generator seeded by ``key``: a JAX
key or an integer seed; see :func:`rng_from_key`).
    For images pass the pixel shape (H, W) to drop whole pixels."""
    shape = _shape_tuple(shape, "random_mask: shape")
    try:
        frac = float(keep_fraction)
    except (TypeError, ValueError):
        raise ValueError(f"random_mask: keep fraction must be a number, got {keep_fraction!r}") from None
    if not (math.isfinite(frac) and 0.0 <= frac <= 1.0):
        raise ValueError(f"random_mask: keep fraction must be in [0, 1], got {keep_fraction!r}")
    size = math.prod(shape)
    n_keep = int(round(frac * size))
    perm = rng_from_key(key, "random_mask").permutation(size)
    m = np.zeros(size, bool)
    m[perm[:n_keep]] = True
    return m.reshape(shape)


def _as_key(key, what: str):
    if key is None:
        raise ValueError(f"{what}: a PRNG key (or integer seed) is required")
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    return key


def rng_from_key(key, what: str = "rng") -> np.random.Generator:
    """A NumPy generator seeded by a JAX key's data (typed or raw ``uint32`` key) or an integer:
    deterministic per key, and no XLA compilation for host-side draws (masks, exact samples)."""
    if key is None:
        raise ValueError(f"{what}: a PRNG key (or integer seed) is required")
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return np.random.default_rng(int(key))
    try:
        data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
        seed = np.asarray(data).astype(np.uint64).ravel().tolist()
    except (AttributeError, TypeError):
        raise ValueError(f"{what}: key must be a JAX PRNG key or an integer seed, got {key!r}"[:200]) from None
    return np.random.default_rng(seed)


@struct.dataclass
class Mask(LinearOperator):
    """Inpainting ``y = mask * x``: ``y`` keeps the full shape of x with zeros where missing.

    ``mask`` is a boolean array of the full ``in_shape`` (True = observed), traced. Build with
    :meth:`create` (validates; broadcasts an (H, W) pixel mask over channels), :meth:`box` or
    :meth:`random`; ``Mask(mask)`` directly takes a boolean array of the full shape unchecked
    (e.g. a traced one). SVD: V = U = I, s = mask."""

    mask: jnp.ndarray
    name: str = struct.field(pytree_node=False, default="mask")

    @classmethod
    def create(cls, mask, in_shape=None, name: str = "mask") -> Mask:
        """A mask operator from a boolean (or 0/1) array. ``in_shape`` defaults to the mask's
        shape; for images (H, W, C) the mask may be (H, W) (whole pixels) or (H, W, C)."""
        m = np.asarray(mask)
        if m.dtype != bool:
            if m.dtype.kind not in "iuf" or not np.all((m == 0) | (m == 1)):
                raise ValueError(f"mask must be boolean or 0/1 valued, got dtype {m.dtype}")
            m = m.astype(bool)
        if m.ndim == 0:
            raise ValueError("mask must be an array of the data's shape, got a scalar")
        shape = tuple(m.shape) if in_shape is None else _shape_tuple(in_shape, "mask: in_shape")
        if m.shape != shape:
            if len(shape) == 3 and m.shape == shape[:2]:
                m = np.broadcast_to(m[..., None], shape)
            else:
                ok = f"({_fmt(shape)})" + (f" or ({_fmt(shape[:2])})" if len(shape) == 3 else "")
                raise ValueError(f"mask has shape {m.shape}, expected {ok} for data of shape {shape}")
        return cls(jnp.asarray(np.array(m, bool)), name=name)

    @classmethod
    def box(cls, in_shape, top: int, left: int, h: int, w: int) -> Mask:
        """Images: the box ``[top, top+h) x [left, left+w)`` missing in every channel."""
        in_shape = _image_shape(in_shape, "mask: in_shape")
        return cls.create(box_mask(in_shape[:2], top, left, h, w), in_shape, name="inpaint_box")

    @classmethod
    def random(cls, key, in_shape, keep_fraction: float) -> Mask:
        """A random mask keeping ``keep_fraction`` of the entries: whole pixels for images
        (H, W, C), dimensions for vectors."""
        in_shape = _shape_tuple(in_shape, "mask: in_shape")
        shape = in_shape[:2] if len(in_shape) == 3 else in_shape
        return cls.create(random_mask(key, shape, keep_fraction), in_shape)

    @property
    def in_shape(self) -> tuple:
        return tuple(self.mask.shape)

    @property
    def out_shape(self) -> tuple:
        return tuple(self.mask.shape)

    def A(self, x):
        x = self._check_x(x)
        return jnp.where(self.mask, x, 0).astype(x.dtype)

    def AT(self, y):
        y = self._check_y(y)
        return jnp.where(self.mask, y, 0).astype(y.dtype)

    def pinv(self, y):
        return self.AT(y)

    def singular_values(self, dtype=None):
        return self.mask.reshape(-1).astype(dtype or jnp.result_type(float))

    def Vt(self, x):
        x = self._check_x(x)
        return x.reshape(x.shape[0], -1)

    def V(self, z):
        z = self._check_z(z)
        return z.reshape((z.shape[0],) + self.in_shape)

    def Ut(self, y):
        y = self._check_y(y)
        return jnp.where(self.mask, y, 0).astype(y.dtype).reshape(y.shape[0], -1)

    def U(self, z):
        z = self._check_z(z)
        return jnp.where(self.mask, z.reshape((z.shape[0],) + self.out_shape), 0).astype(z.dtype)

    def _noise_support(self, n):
        return jnp.where(self.mask, n, 0).astype(n.dtype)

    # dense form: the observed rows only
    def _keep(self) -> np.ndarray:
        try:
            return np.asarray(self.mask).reshape(-1)
        except jax.errors.TracerArrayConversionError:
            raise ValueError("mask: dense()/compress() need a concrete mask (not inside jit)") from None

    def dense(self) -> np.ndarray:
        return np.eye(self.dim_in)[self._keep()]

    def compress_np(self, y) -> np.ndarray:
        y = np.asarray(y, np.float64)
        return y.reshape(y.shape[0], -1)[:, self._keep()]

    def expand(self, yc):
        yc = jnp.asarray(yc)
        keep = self._keep()
        if yc.ndim != 2 or yc.shape[1] != int(keep.sum()):
            raise ValueError(f"{self.name}: compressed y must have shape (batch, {int(keep.sum())}), "
                             f"got {tuple(yc.shape)}")
        full = jnp.zeros((yc.shape[0], keep.size), yc.dtype).at[:, np.flatnonzero(keep)].set(yc)
        return full.reshape((yc.shape[0],) + self.out_shape)


# ---------------------------------------------------------------------------------------------
# Block bases for pooling and colorization
# ---------------------------------------------------------------------------------------------
def _helmert(n: int) -> np.ndarray:
    """Orthogonal (n, n) Helmert matrix: row 0 is ones / sqrt(n), row k compares entry k with the
    mean of entries 0..k-1. Rows are the orthonormal basis vectors."""
    q = np.zeros((n, n))
    q[0] = 1.0 / np.sqrt(n)
    for k in range(1, n):
        c = 1.0 / np.sqrt(k * (k + 1.0))
        q[k, :k] = c
        q[k, k] = -k * c
    return q


@struct.dataclass
class AvgPoolSR(LinearOperator):
    """Super-resolution by f x f average pooling: ``y`` (B, H/f, W/f, C).

    ``AT`` spreads each value divided by f^2, ``pinv`` replicates it (nearest-neighbour
    upsampling, the exact pseudo-inverse). SVD per block and channel: spectral coordinates
    ``(H/f, W/f, C, f*f)`` flattened, the f^2 block entries in Helmert coordinates whose first
    vector is the normalised block-constant one; s = 1/f there and 0 for the other f^2 - 1."""

    factor: int = struct.field(pytree_node=False)
    in_shape: tuple = struct.field(pytree_node=False)

    def __post_init__(self):
        f = _int_factor(self.factor, "sr")
        shape = _image_shape(self.in_shape, f"sr{f}: in_shape")
        if shape[0] % f or shape[1] % f:
            raise ValueError(f"sr{f}: scale factor {f} does not divide the image size "
                             f"{shape[0]} x {shape[1]}")
        object.__setattr__(self, "factor", f)
        object.__setattr__(self, "in_shape", shape)

    @classmethod
    def create(cls, factor: int, in_shape) -> AvgPoolSR:
        return cls(factor, in_shape)

    @property
    def name(self) -> str:
        return f"sr{self.factor}"

    @property
    def out_shape(self) -> tuple:
        H, W, C = self.in_shape
        return (H // self.factor, W // self.factor, C)

    def _blocks(self, x):  # (B, H, W, C) -> (B, h, w, C, f*f)
        f = self.factor
        B, (h, w, C) = x.shape[0], self.out_shape
        x = x.reshape(B, h, f, w, f, C).transpose(0, 1, 3, 5, 2, 4)
        return x.reshape(B, h, w, C, f * f)

    def _unblocks(self, b):  # inverse of _blocks
        f = self.factor
        B, (h, w, C) = b.shape[0], self.out_shape
        b = b.reshape(B, h, w, C, f, f).transpose(0, 1, 4, 2, 5, 3)
        return b.reshape((B,) + self.in_shape)

    def _basis(self, dtype):
        return jnp.asarray(_helmert(self.factor**2), dtype)

    def A(self, x):
        x = self._check_x(x)
        return jnp.mean(self._blocks(x), axis=-1)

    def AT(self, y):
        y = self._check_y(y)
        f = self.factor
        return jnp.repeat(jnp.repeat(y / f**2, f, axis=1), f, axis=2)

    def pinv(self, y):
        y = self._check_y(y)
        f = self.factor
        return jnp.repeat(jnp.repeat(y, f, axis=1), f, axis=2)

    def singular_values(self, dtype=None):
        f = self.factor
        s = jnp.zeros(self.out_shape + (f * f,), dtype or jnp.result_type(float))
        return s.at[..., 0].set(1.0 / f).reshape(-1)

    def Vt(self, x):
        x = self._check_x(x)
        z = jnp.einsum("...j,ij->...i", self._blocks(x), self._basis(x.dtype))
        return z.reshape(x.shape[0], -1)

    def V(self, z):
        z = self._check_z(z)
        f = self.factor
        z = z.reshape((z.shape[0],) + self.out_shape + (f * f,))
        return self._unblocks(jnp.einsum("...i,ij->...j", z, self._basis(z.dtype)))

    def Ut(self, y):
        y = self._check_y(y)
        f = self.factor
        z = jnp.zeros(y.shape + (f * f,), y.dtype).at[..., 0].set(y)
        return z.reshape(y.shape[0], -1)

    def U(self, z):
        z = self._check_z(z)
        f = self.factor
        return z.reshape((z.shape[0],) + self.out_shape + (f * f,))[..., 0]


@struct.dataclass
class Colorization(LinearOperator):
    """Grey-scale measurement: the mean of the 3 channels (1/3 each), ``y`` (B, H, W, 1).

    ``pinv`` replicates the grey value to the three channels; ``AT`` spreads it divided by 3.
    SVD per pixel: spectral coordinates (H, W, 3) flattened in the Helmert basis of R^3 whose
    first vector is (1, 1, 1)/sqrt(3), with s = 1/sqrt(3) there and 0 for the two others."""

    in_shape: tuple = struct.field(pytree_node=False)
    name: str = struct.field(pytree_node=False, default="color")

    def __post_init__(self):
        shape = _image_shape(self.in_shape, "color: in_shape")
        if shape[2] != 3:
            raise ValueError(f"color: colorization needs 3 channels (H, W, 3), got in_shape {shape}")
        object.__setattr__(self, "in_shape", shape)

    @classmethod
    def create(cls, in_shape) -> Colorization:
        return cls(in_shape)

    @property
    def out_shape(self) -> tuple:
        return self.in_shape[:2] + (1,)

    def _basis(self, dtype):
        return jnp.asarray(_helmert(3), dtype)

    def A(self, x):
        x = self._check_x(x)
        return jnp.mean(x, axis=-1, keepdims=True)

    def AT(self, y):
        y = self._check_y(y)
        return jnp.repeat(y / 3.0, 3, axis=-1)

    def pinv(self, y):
        y = self._check_y(y)
        return jnp.repeat(y, 3, axis=-1)

    def singular_values(self, dtype=None):
        s = jnp.zeros(self.in_shape, dtype or jnp.result_type(float))
        return s.at[..., 0].set(1.0 / math.sqrt(3.0)).reshape(-1)

    def Vt(self, x):
        x = self._check_x(x)
        return jnp.einsum("...j,ij->...i", x, self._basis(x.dtype)).reshape(x.shape[0], -1)

    def V(self, z):
        z = self._check_z(z)
        z = z.reshape((z.shape[0],) + self.in_shape)
        return jnp.einsum("...i,ij->...j", z, self._basis(z.dtype))

    def Ut(self, y):
        y = self._check_y(y)
        z = jnp.zeros(y.shape[:-1] + (3,), y.dtype).at[..., :1].set(y)
        return z.reshape(y.shape[0], -1)

    def U(self, z):
        z = self._check_z(z)
        return z.reshape((z.shape[0],) + self.in_shape)[..., :1]


# ---------------------------------------------------------------------------------------------
# Separable operators (blur, bicubic SR): y_c = M_h x_c M_w^T
# ---------------------------------------------------------------------------------------------
def _boundary_index(j: int, n: int, boundary: str):
    """Source index of the (possibly out-of-range) index j in a length-n signal, or None
    (zero padding)."""
    if 0 <= j < n:
        return j
    if boundary == "zero":
        return None
    if boundary == "circular":
        return j % n
    if boundary == "symmetric":  # c b a | a b c | c b a  (period 2n)
        j %= 2 * n
        return j if j < n else 2 * n - 1 - j
    if boundary == "reflect":  # d c b | a b c d | c b a  (period 2n - 2)
        if n == 1:
            return 0
        j %= 2 * n - 2
        return j if j < n else 2 * n - 2 - j
    raise ValueError(f"unknown boundary {boundary!r}; valid: {', '.join(BOUNDARIES)}")


def _check_boundary(boundary, what: str) -> str:
    if boundary not in BOUNDARIES:
        raise ValueError(f"{what}: boundary must be one of {', '.join(BOUNDARIES)}, got {boundary!r}")
    return boundary


def _conv_matrix(kernel: np.ndarray, n: int, boundary: str) -> np.ndarray:
    """(n, n) matrix of the centred 1-D cross-correlation ``y_i = sum_t k_t x_{i + t - r}``."""
    r = kernel.shape[0] // 2
    M = np.zeros((n, n))
    for i in range(n):
        for t, kt in enumerate(kernel):
            j = _boundary_index(i + t - r, n, boundary)
            if j is not None:
                M[i, j] += kt
    return M


def _keys_cubic(x, a: float = -0.5):
    x = np.abs(x)
    return np.where(x <= 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0))


def _bicubic_matrix(n: int, factor: int, antialias: bool, boundary: str) -> np.ndarray:
    """(n / f, n) bicubic downsampling matrix; output k is centred at ``(k + 0.5) f - 0.5``."""
    m = n // factor
    scale = float(factor) if antialias else 1.0
    M = np.zeros((m, n))
    for k in range(m):
        c = (k + 0.5) * factor - 0.5
        js = np.arange(math.floor(c - 2 * scale), math.ceil(c + 2 * scale) + 1)
        w = _keys_cubic((js - c) / scale)
        w = w / w.sum()
        for j, wj in zip(js, w):
            if wj == 0:
                continue
            jj = _boundary_index(int(j), n, boundary)
            if jj is not None:
                M[k, jj] += wj
    return M


def _svd_1d(M: np.ndarray, zero_below: float):
    """Factors of a small (m, n) matrix, m <= n: ``(M_trunc, P, U (m, m), V (n, n), s (n,))``
    with s padded by zeros to length n, singular values at or below the numerical-rank
    tolerance or below ``zero_below`` set to zero, ``M_trunc = U diag(s) V^T`` and P its
    pseudo-inverse."""
    m, n = M.shape
    U, s, Vt = np.linalg.svd(M, full_matrices=True)
    tol = max(m, n) * np.finfo(np.float64).eps * (s.max() if s.size else 0.0)
    s = np.where((s > tol) & (s >= zero_below), s, 0.0)
    s_full = np.zeros(n)
    s_full[: s.size] = s
    r0 = s.size
    M_trunc = (U[:, :r0] * s) @ Vt[:r0]
    inv = np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0)
    P = (Vt[:r0].T * inv) @ U[:, :r0].T
    return M_trunc, P, U, Vt.T, s_full


class _SeparableMixin(LinearOperator):
    """Methods of ``y_c = M_h x_c M_w^T`` with stored fields Mh, Mw, Ph, Pw, Uh, Uw, Vh, Vw,
    sh, sw (see :func:`_svd_1d`). Spectral coordinates (H, W, C) flattened:
    ``z[i, j, c] = (V_h^T x_c V_w)[i, j]`` with ``s[i, j, c] = s_h[i] s_w[j]``."""

    @property
    def out_shape(self) -> tuple:
        return (self.Mh.shape[0], self.Mw.shape[0], self.in_shape[2])

    @staticmethod
    def _apply(L, x, R):  # L x_c R^T per channel, x (B, n1, n2, C)
        return jnp.einsum("ij,bjkc,lk->bilc", L.astype(x.dtype), x, R.astype(x.dtype))

    def _s2(self, dtype):
        return (self.sh[:, None] * self.sw[None, :]).astype(dtype)

    def _pos(self, dtype):  # (H, W, 1) 1.0 where s > 0
        return (self._s2(dtype) > 0)[..., None]

    def A(self, x):
        x = self._check_x(x)
        return self._apply(self.Mh, x, self.Mw)

    def AT(self, y):
        y = self._check_y(y)
        return self._apply(self.Mh.T, y, self.Mw.T)

    def pinv(self, y):
        y = self._check_y(y)
        return self._apply(self.Ph, y, self.Pw)

    def singular_values(self, dtype=None):
        dtype = dtype or self.sh.dtype
        s = jnp.broadcast_to(self._s2(dtype)[..., None], self.in_shape)
        return s.reshape(-1)

    def Vt(self, x):
        x = self._check_x(x)
        return self._apply(self.Vh.T, x, self.Vw.T).reshape(x.shape[0], -1)

    def V(self, z):
        z = self._check_z(z)
        return self._apply(self.Vh, z.reshape((z.shape[0],) + self.in_shape), self.Vw)

    def Ut(self, y):
        y = self._check_y(y)
        c = self._apply(self.Uh.T, y, self.Uw.T)  # (B, mh, mw, C)
        H, W, _ = self.in_shape
        c = jnp.pad(c, ((0, 0), (0, H - c.shape[1]), (0, W - c.shape[2]), (0, 0)))
        return jnp.where(self._pos(y.dtype), c, 0).reshape(y.shape[0], -1)

    def U(self, z):
        z = self._check_z(z)
        z = jnp.where(self._pos(z.dtype), z.reshape((z.shape[0],) + self.in_shape), 0)
        mh, mw, _ = self.out_shape
        return self._apply(self.Uh, z[:, :mh, :mw], self.Uw)


def _separable_fields(Mh, Mw, zero_below, dtype):
    Mh_t, Ph, Uh, Vh, sh = _svd_1d(Mh, zero_below)
    Mw_t, Pw, Uw, Vw, sw = _svd_1d(Mw, zero_below)
    c = lambda a: _as_jnp(a, dtype)  # noqa: E731
    return dict(Mh=c(Mh_t), Mw=c(Mw_t), Ph=c(Ph), Pw=c(Pw), Uh=c(Uh), Uw=c(Uw), Vh=c(Vh),
                Vw=c(Vw), sh=c(sh), sw=c(sw))


def gaussian_kernel(size: int, std: float) -> np.ndarray:
    """Normalised 1-D Gaussian kernel of odd ``size`` taps at offsets -size//2 .. size//2."""
    size = _kernel_size(size, "gaussian_kernel")
    try:
        std = float(std)
    except (TypeError, ValueError):
        raise ValueError(f"gaussian_kernel: std must be a positive number, got {std!r}") from None
    if not (math.isfinite(std) and std > 0):
        raise ValueError(f"gaussian_kernel: std must be a positive number, got {std!r}")
    x = np.arange(size) - size // 2
    k = np.exp(-0.5 * (x / std) ** 2)
    return k / k.sum()


def uniform_kernel(size: int) -> np.ndarray:
    """1-D box kernel of odd ``size`` taps, each 1/size (DDRM's ``deblur_uni``: 9 taps)."""
    size = _kernel_size(size, "uniform_kernel")
    return np.full(size, 1.0 / size)


def _kernel_size(size, what: str) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"{what}: kernel size must be an odd positive integer, got {size!r}")
    return int(size)


@struct.dataclass
class SeparableBlur(_SeparableMixin):
    """Separable blur: the centred 1-D cross-correlation with ``kernel`` along H then W, per
    channel, with an explicit boundary (see the module docstring). Build with :meth:`create`."""

    kernel: jnp.ndarray  # (k,) the 1-D kernel (informational; A uses the matrices below)
    Mh: jnp.ndarray
    Mw: jnp.ndarray
    Ph: jnp.ndarray
    Pw: jnp.ndarray
    Uh: jnp.ndarray
    Uw: jnp.ndarray
    Vh: jnp.ndarray
    Vw: jnp.ndarray
    sh: jnp.ndarray
    sw: jnp.ndarray
    in_shape: tuple = struct.field(pytree_node=False)
    boundary: str = struct.field(pytree_node=False)
    zero_below: float = struct.field(pytree_node=False, default=0.0)
    name: str = struct.field(pytree_node=False, default="blur")

    @classmethod
    def create(cls, kernel_1d, in_shape, boundary: str, zero_below: float = 0.0,
               dtype=jnp.float32, name: str | None = None) -> SeparableBlur:
        """``kernel_1d``: odd-length finite 1-D array (e.g. :func:`gaussian_kernel`);
        ``boundary``: one of ``"zero"``, ``"reflect"``, ``"symmetric"``, ``"circular"``;
        ``zero_below``: 1-D singular values below it are zeroed (DDRM: 3e-2; default 0 keeps
        every nonzero one up to the numerical-rank tolerance, so A is the exact blur)."""
        in_shape = _image_shape(in_shape, "blur: in_shape")
        boundary = _check_boundary(boundary, "blur")
        try:
            k = np.asarray(kernel_1d, np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"blur: kernel must be a 1-D numeric array, got {kernel_1d!r}"[:200]) from None
        if k.ndim != 1:
            raise ValueError(f"blur: kernel must be 1-D (separable blur), got shape {k.shape}")
        _kernel_size(k.shape[0], "blur")
        if not np.all(np.isfinite(k)):
            raise ValueError("blur: kernel has non-finite values")
        try:
            zb = float(zero_below)
        except (TypeError, ValueError):
            raise ValueError(f"blur: zero_below must be a number >= 0, got {zero_below!r}") from None
        if not (math.isfinite(zb) and zb >= 0):
            raise ValueError(f"blur: zero_below must be a number >= 0, got {zero_below!r}")
        H, W, _ = in_shape
        fields = _separable_fields(_conv_matrix(k, H, boundary), _conv_matrix(k, W, boundary), zb, dtype)
        return cls(kernel=_as_jnp(k, dtype), in_shape=in_shape, boundary=boundary, zero_below=zb,
                   name=name or f"blur{k.shape[0]}_{boundary}", **fields)


@struct.dataclass
class BicubicSR(_SeparableMixin):
    """Bicubic downsampling by an integer factor (Keys a = -0.5; antialiased like MATLAB
    ``imresize`` unless ``antialias=False``), ``y`` (B, H/f, W/f, C). Build with :meth:`create`."""

    Mh: jnp.ndarray
    Mw: jnp.ndarray
    Ph: jnp.ndarray
    Pw: jnp.ndarray
    Uh: jnp.ndarray
    Uw: jnp.ndarray
    Vh: jnp.ndarray
    Vw: jnp.ndarray
    sh: jnp.ndarray
    sw: jnp.ndarray
    factor: int = struct.field(pytree_node=False)
    in_shape: tuple = struct.field(pytree_node=False)
    antialias: bool = struct.field(pytree_node=False, default=True)
    boundary: str = struct.field(pytree_node=False, default="symmetric")
    name: str = struct.field(pytree_node=False, default="bicubic")

    @classmethod
    def create(cls, factor: int, in_shape, antialias: bool = True, boundary: str = "symmetric",
               dtype=jnp.float32) -> BicubicSR:
        f = _int_factor(factor, "bicubic")
        in_shape = _image_shape(in_shape, f"bicubic{f}: in_shape")
        boundary = _check_boundary(boundary, f"bicubic{f}")
        H, W, _ = in_shape
        if H % f or W % f:
            raise ValueError(f"bicubic{f}: scale factor {f} does not divide the image size {H} x {W}")
        fields = _separable_fields(_bicubic_matrix(H, f, bool(antialias), boundary),
                                   _bicubic_matrix(W, f, bool(antialias), boundary), 0.0, dtype)
        return cls(factor=f, in_shape=in_shape, antialias=bool(antialias), boundary=boundary,
                   name=f"bicubic{f}", **fields)


# ---------------------------------------------------------------------------------------------
# General matrix (vector data)
# ---------------------------------------------------------------------------------------------
@struct.dataclass
class Matrix(LinearOperator):
    """A general (m, D) matrix acting on vectors (B, D); ``y`` (B, m).

    The SVD ``A = U diag(s) V^T`` is computed once by :meth:`create` in float64 NumPy (singular
    values at or below ``max(m, D) * eps * s_max`` count as zero), then stored: ``Ur`` (m, r0)
    with r0 = min(m, D) left singular vectors, ``Vm`` (D, D) right singular vectors as columns,
    ``s`` (D,) padded with zeros, ``P`` (D, m) the pseudo-inverse. Spectral coordinate i < r0
    pairs column i of Ur with column i of Vm."""

    mat: jnp.ndarray  # (m, D)
    Ur: jnp.ndarray
    Vm: jnp.ndarray
    s: jnp.ndarray
    P: jnp.ndarray
    name: str = struct.field(pytree_node=False, default="matrix")

    @classmethod
    def create(cls, A, dtype=jnp.float32, name: str = "matrix") -> Matrix:
        try:
            a = np.asarray(A, np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"matrix: expected a 2-D numeric array, got {type(A).__name__}") from None
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"matrix: expected a 2-D (m, D) array, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("matrix: has non-finite entries")
        m, D = a.shape
        U, s, Vt = np.linalg.svd(a, full_matrices=True)
        tol = max(m, D) * np.finfo(np.float64).eps * (s.max() if s.size else 0.0)
        s = np.where(s > tol, s, 0.0)
        r0 = s.size
        inv = np.where(s > 0, 1.0 / np.where(s > 0, s, 1.0), 0.0)
        s_full = np.zeros(D)
        s_full[:r0] = s
        P = (Vt[:r0].T * inv) @ U[:, :r0].T
        c = lambda v: _as_jnp(v, dtype)  # noqa: E731
        return cls(mat=c(a), Ur=c(U[:, :r0]), Vm=c(Vt.T), s=c(s_full), P=c(P), name=name)

    @classmethod
    def from_file(cls, path: str, dtype=jnp.float32) -> Matrix:
        """A matrix operator from a ``.npy`` file holding an (m, D) array."""
        if not os.path.exists(path):
            raise ValueError(f"matrix file {path!r} does not exist")
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ValueError(f"matrix file {path!r} is not a readable .npy array ({e})") from None
        stem = os.path.splitext(os.path.basename(path))[0]
        try:
            return cls.create(a, dtype=dtype, name=f"matrix_{stem}")
        except ValueError as e:
            raise ValueError(f"matrix file {path!r}: {e}") from None

    @property
    def in_shape(self) -> tuple:
        return (int(self.mat.shape[1]),)

    @property
    def out_shape(self) -> tuple:
        return (int(self.mat.shape[0]),)

    def A(self, x):
        x = self._check_x(x)
        return x @ self.mat.astype(x.dtype).T

    def AT(self, y):
        y = self._check_y(y)
        return y @ self.mat.astype(y.dtype)

    def pinv(self, y):
        y = self._check_y(y)
        return y @ self.P.astype(y.dtype).T

    def singular_values(self, dtype=None):
        return self.s.astype(dtype or self.s.dtype)

    def Vt(self, x):
        x = self._check_x(x)
        return x @ self.Vm.astype(x.dtype)

    def V(self, z):
        z = self._check_z(z)
        return z @ self.Vm.astype(z.dtype).T

    def Ut(self, y):
        y = self._check_y(y)
        c = y @ self.Ur.astype(y.dtype)
        c = jnp.pad(c, ((0, 0), (0, self.dim_in - c.shape[1])))
        return jnp.where(self.s > 0, c, 0).astype(y.dtype)

    def U(self, z):
        z = self._check_z(z)
        z = jnp.where(self.s > 0, z, 0).astype(z.dtype)
        return z[:, : self.Ur.shape[1]] @ self.Ur.astype(z.dtype).T

    def dense(self) -> np.ndarray:
        return np.asarray(self.mat, np.float64)


# ---------------------------------------------------------------------------------------------
# Measurement and parsing
# ---------------------------------------------------------------------------------------------
def check_sigma_y(sigma_y):
    """``ValueError`` unless a concrete sigma_y is finite and >= 0 (traced values pass)."""
    if isinstance(sigma_y, jax.core.Tracer):
        return sigma_y
    try:
        arr = np.asarray(sigma_y, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"sigma_y must be a number >= 0, got {sigma_y!r}") from None
    if arr.ndim > 1 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"sigma_y must be a finite number >= 0 (or a (batch,) vector of them), "
                         f"got {sigma_y!r}"[:200])
    return sigma_y


def measure(op: LinearOperator, x, sigma_y, key=None):
    """``y = A x + sigma_y n`` with ``n ~ N(0, I)`` from ``key`` (noise only at observed entries
    of a :class:`Mask`). ``sigma_y``: scalar or (B,), in the data's own scale; ``key`` may be
    omitted when ``sigma_y`` is a concrete 0."""
    check_sigma_y(sigma_y)
    y = op.A(x)
    if not isinstance(sigma_y, jax.core.Tracer) and np.all(np.asarray(sigma_y) == 0):
        return y
    key = _as_key(key, "measure")
    sig = jnp.asarray(sigma_y, y.dtype)
    if sig.ndim == 1:
        if sig.shape[0] != y.shape[0]:
            raise ValueError(f"sigma_y has shape {sig.shape}, the batch is {y.shape[0]}")
        sig = sig.reshape((-1,) + (1,) * (y.ndim - 1))
    return y + sig * op._noise_support(jax.random.normal(key, y.shape, y.dtype))


def parse_operator(spec: str, in_shape, key=0, dtype=jnp.float32) -> LinearOperator:
    """An operator from a command-line spec for data of shape ``in_shape``.

    Vectors and images: ``identity``, ``mask:FRACTION`` (a random mask keeping that fraction of
    dimensions, or of pixels for images, drawn from ``key``: a JAX key or an integer seed),
    ``matrix:FILE.npy`` (vectors only). Images (H, W, C): ``sr:F`` (average pooling),
    ``bicubic:F``, ``blur:gauss:SIZE:STD[:BOUNDARY]`` and ``blur:uniform:SIZE[:BOUNDARY]``
    (boundary default ``zero``, DDRM's), ``inpaint:box`` (the centred H/2 x W/2 box missing),
    ``color``."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"operator spec must be a non-empty string, got {spec!r}")
    in_shape = _shape_tuple(in_shape, "operator: in_shape")
    image = len(in_shape) == 3
    parts = spec.split(":")
    kind, rest = parts[0], parts[1:]
    valid = "valid: " + ", ".join(OPERATOR_SPECS)

    def bad(why):
        return ValueError(f"operator spec {spec!r}: {why}; {valid}")

    def number(text, conv, what):
        try:
            return conv(text)
        except ValueError:
            raise bad(f"{what} must be a number, got {text!r}") from None

    if kind == "identity" and not rest:
        return Identity(in_shape)
    if kind == "mask" and len(rest) == 1:
        return Mask.random(key, in_shape, number(rest[0], float, "FRACTION"))
    if kind == "matrix" and len(rest) >= 1:
        path = ":".join(rest)
        op = Matrix.from_file(path, dtype=dtype)
        if op.in_shape != in_shape:
            raise ValueError(f"matrix file {path!r} has {op.in_shape[0]} columns, the data has "
                             f"shape {in_shape}")
        return op
    image_kinds = ("sr", "bicubic", "blur", "inpaint", "color")
    if kind in image_kinds and not image:
        raise bad(f"{kind!r} needs image data (H, W, C), got shape {in_shape}")
    if kind == "sr" and len(rest) == 1:
        return AvgPoolSR(number(rest[0], int, "F"), in_shape)
    if kind == "bicubic" and len(rest) == 1:
        return BicubicSR.create(number(rest[0], int, "F"), in_shape, dtype=dtype)
    if kind == "blur" and len(rest) >= 2:
        if rest[0] == "gauss" and len(rest) in (3, 4):
            k = gaussian_kernel(number(rest[1], int, "SIZE"), number(rest[2], float, "STD"))
            boundary = rest[3] if len(rest) == 4 else "zero"
        elif rest[0] == "uniform" and len(rest) in (2, 3):
            k = uniform_kernel(number(rest[1], int, "SIZE"))
            boundary = rest[2] if len(rest) == 3 else "zero"
        else:
            raise bad("blur needs gauss:SIZE:STD or uniform:SIZE")
        return SeparableBlur.create(k, in_shape, boundary, dtype=dtype)
    if kind == "inpaint" and rest == ["box"]:
        H, W, _ = in_shape
        h, w = max(H // 2, 1), max(W // 2, 1)
        return Mask.box(in_shape, (H - h) // 2, (W - w) // 2, h, w)
    if kind == "color" and not rest:
        return Colorization(in_shape)
    raise bad("unknown or malformed operator")
