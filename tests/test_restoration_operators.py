"""Linear degradation operators: adjoint, pseudo-inverse identities, SVD factors, independent
re-computations of blur and bicubic, pytree behaviour, measurement, parsing and clear errors.

Every identity runs in float64 (``jax.enable_x64``) on the exact matrices of the methods (each
method applied to the standard basis, all operators in one jitted program), so it holds for every
input, random ones included."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from jdiff.restoration import (
    AvgPoolSR, BicubicSR, Colorization, Identity, Mask, Matrix, SeparableBlur, box_mask,
    gaussian_kernel, measure, parse_operator, random_mask, uniform_kernel,
)
from jdiff.restoration.operators import _conv_matrix

F64 = jnp.float64
ASYM = np.array([0.1, 0.2, 0.5, 0.15, 0.05])  # asymmetric: catches correlation/convolution flips


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _rank_deficient():
    rng = np.random.RandomState(2)
    a = rng.standard_normal((6, 16))
    a[3:] = rng.standard_normal((3, 3)) @ a[:3]  # rank 3
    return a


# name -> factory (called under x64)
OPERATORS = {
    "identity_vec": lambda: Identity((16,)),
    "identity_img": lambda: Identity((8, 8, 3)),
    "mask_vec": lambda: Mask.random(0, (16,), 0.5),
    "mask_pixels": lambda: Mask.random(1, (8, 8, 3), 0.4),
    "mask_full": lambda: Mask.create(np.random.RandomState(3).rand(8, 8, 3) < 0.5),
    "mask_box": lambda: Mask.box((8, 8, 1), 2, 1, 4, 5),
    "sr2": lambda: AvgPoolSR(2, (8, 8, 3)),
    "sr4": lambda: AvgPoolSR(4, (8, 8, 1)),
    "color": lambda: Colorization((8, 8, 3)),
    "blur_zero": lambda: SeparableBlur.create(ASYM, (8, 6, 2), "zero", dtype=F64),
    "blur_reflect": lambda: SeparableBlur.create(ASYM, (8, 6, 1), "reflect", dtype=F64),
    "blur_symmetric": lambda: SeparableBlur.create(ASYM, (6, 8, 1), "symmetric", dtype=F64),
    "blur_circular": lambda: SeparableBlur.create(ASYM, (8, 8, 1), "circular", dtype=F64),
    "blur_gauss_reflect": lambda: SeparableBlur.create(gaussian_kernel(3, 1.0), (8, 8, 3), "reflect", dtype=F64),
    "blur_ddrm_zero_below": lambda: SeparableBlur.create(gaussian_kernel(5, 10.0), (8, 8, 1), "zero",
                                                         zero_below=3e-2, dtype=F64),
    "bicubic2": lambda: BicubicSR.create(2, (8, 8, 3), dtype=F64),
    "bicubic4_plain": lambda: BicubicSR.create(4, (8, 8, 1), antialias=False, dtype=F64),
    "matrix_wide": lambda: Matrix.create(np.random.RandomState(0).standard_normal((6, 16)), dtype=F64),
    "matrix_tall": lambda: Matrix.create(np.random.RandomState(1).standard_normal((20, 16)), dtype=F64),
    "matrix_rank3": lambda: Matrix.create(_rank_deficient(), dtype=F64),
}


@functools.lru_cache(maxsize=None)
def _op(name):
    with jax.enable_x64(True):
        return OPERATORS[name]()


def _method_matrices(op):
    """Every method of ``op`` applied to the standard basis: its exact matrix (so an identity
    checked on these matrices holds for every input, random or not)."""
    D, M = op.dim_in, op.dim_out
    ex = jnp.eye(D, dtype=F64).reshape((D,) + op.in_shape)
    ey = jnp.eye(M, dtype=F64).reshape((M,) + op.out_shape)
    ez = jnp.eye(D, dtype=F64)
    return {"A": op.A(ex).reshape(D, M).T, "AT": op.AT(ey).reshape(M, D).T,
            "P": op.pinv(ey).reshape(M, D).T, "Vt": op.Vt(ex).T, "V": op.V(ez).reshape(D, D).T,
            "Ut": op.Ut(ey).T, "U": op.U(ez).reshape(D, M).T, "s": op.singular_values(F64)}


def _compile_fast(fn, *args):
    """``jax.jit(fn)`` compiled for ``args`` without XLA's backend optimisations: 2-3x faster to
    compile, the same float64 arithmetic (these programs run once)."""
    return jax.jit(fn).lower(*args).compile(compiler_options={
        "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})


@functools.lru_cache(maxsize=None)
def _matrices():
    """All operators' method matrices, from one jitted program (one compilation in all)."""
    with jax.enable_x64(True):
        ops = {name: _op(name) for name in OPERATORS}
        out = _compile_fast(lambda o: {k: _method_matrices(v) for k, v in o.items()}, ops)(ops)
        return {k: {m: np.asarray(a, np.float64) for m, a in v.items()} for k, v in out.items()}


def _close(a, b, tol=1e-10):
    return np.max(np.abs(a - b), initial=0.0) <= tol * (1 + np.max(np.abs(b), initial=0.0))


NAMES = list(OPERATORS)


@pytest.mark.parametrize("name", NAMES)
def test_adjoint(name):
    m = _matrices()[name]
    assert _close(m["AT"], m["A"].T)
    rng = np.random.RandomState(0)
    x, y = rng.standard_normal(m["A"].shape[1]), rng.standard_normal(m["A"].shape[0])
    assert abs((m["A"] @ x) @ y - x @ (m["AT"] @ y)) < 1e-10 * (1 + abs((m["A"] @ x) @ y))


@pytest.mark.parametrize("name", NAMES)
def test_pseudo_inverse_identities(name):
    """The four Penrose conditions, which determine A^+ uniquely."""
    m = _matrices()[name]
    A, P = m["A"], m["P"]
    assert _close(A @ P @ A, A, 1e-9), "A A+ A != A"
    assert _close(P @ A @ P, P, 1e-9), "A+ A A+ != A+"
    assert _close(A @ P, (A @ P).T, 1e-9), "A A+ not symmetric"
    assert _close(P @ A, (P @ A).T, 1e-9), "A+ A not symmetric"


@pytest.mark.parametrize("name", NAMES)
def test_svd_factors(name):
    m = _matrices()[name]
    A, s, U, Ut, V, Vt = m["A"], m["s"], m["U"], m["Ut"], m["V"], m["Vt"]
    pos = s > 0
    assert s.shape == (A.shape[1],) and np.all(s >= 0)
    assert _close(U @ np.diag(s) @ Vt, A), "U(s * Vt(x)) != A x"
    assert _close(V @ np.diag(s) @ Ut, m["AT"]), "V(s * Ut(y)) != AT y"
    inv = np.where(pos, 1 / np.where(pos, s, 1), 0)
    assert _close(V @ np.diag(inv) @ Ut, m["P"], 1e-9), "V(Ut(y) / s) != pinv y"
    assert _close(V, Vt.T) and _close(Vt @ V, np.eye(s.size)) and _close(V @ Vt, np.eye(s.size)), "V not orthogonal"
    assert _close(Ut, U.T), "Ut is not the transpose of U"
    assert _close(Ut @ U, np.diag(pos.astype(float))), "U not orthonormal on s > 0"
    assert _close(U @ Ut, A @ m["P"], 1e-9), "U Ut is not the projection onto range(A)"
    assert np.all(Ut[~pos] == 0), "Ut not zero where s = 0"


@pytest.mark.parametrize("name", NAMES)
def test_dense_form_and_singular_values(name):
    """dense() reproduces A on the compressed measurements, and the nonzero singular values are
    those of an independent NumPy SVD of it."""
    op, A = _op(name), _matrices()[name]["A"]
    full = A.T.reshape((A.shape[1],) + op.out_shape)
    M = op.compress(full).T  # (m, D): what dense() returns
    if isinstance(op, (Mask, Matrix, Identity)):  # their own dense(); the others' is this one
        np.testing.assert_allclose(op.dense(), M, atol=1e-12)
    s = np.sort(_matrices()[name]["s"])[::-1]
    s_np = np.linalg.svd(M, compute_uv=False)
    s_np = np.sort(np.where(s_np > 1e-12, s_np, 0.0))[::-1]
    n = min(s.size, s_np.size)
    np.testing.assert_allclose(s[:n], s_np[:n], atol=1e-10)
    assert np.all(s[n:] == 0) and np.all(s_np[n:] == 0)


# --- independent re-computations --------------------------------------------------------------
NP_PAD = {"zero": "constant", "reflect": "reflect", "symmetric": "symmetric", "circular": "wrap"}


@pytest.mark.parametrize("boundary", list(NP_PAD))
def test_blur_matches_padded_correlation(boundary):
    """A = 2-D cross-correlation with outer(k, k) of the image padded by numpy.pad's mode
    (scipy.signal.correlate2d), for an asymmetric kernel on non-square images."""
    name = f"blur_{boundary}"
    op, A = _op(name), _matrices()[name]["A"]
    H, W, C = op.in_shape
    x = np.random.RandomState(5).standard_normal((H, W, C))
    r = ASYM.size // 2
    ref = np.stack([scipy.signal.correlate2d(np.pad(x[..., c], r, mode=NP_PAD[boundary]),
                                             np.outer(ASYM, ASYM), mode="valid") for c in range(C)], -1)
    np.testing.assert_allclose((A @ x.ravel()).reshape(H, W, C), ref, atol=1e-12)


def test_blur_zero_below_truncates_small_singular_values():
    """DDRM's Gaussian (5 taps, std 10) with zero boundary on 8 pixels has 1-D singular values
    0.004 and 7e-6: zero_below=3e-2 drops both (rank 8 x 8 -> 6 x 6) and the operator becomes the
    truncated blur, off by at most about 2 x 0.004 in operator norm."""
    trunc = _op("blur_ddrm_zero_below")
    Mh = _conv_matrix(gaussian_kernel(5, 10.0), 8, "zero")
    sh = np.linalg.svd(Mh, compute_uv=False)
    assert 1e-6 < sh[-1] < sh[-2] < 5e-3 < 3e-2 < sh[-3]
    np.testing.assert_allclose(np.sort(np.asarray(trunc.sh))[::-1], np.where(sh >= 3e-2, sh, 0), atol=1e-14)
    A_exact = np.kron(Mh, Mh)  # (8 * 8) pixels, one channel
    A_trunc = _matrices()["blur_ddrm_zero_below"]["A"]
    assert np.linalg.matrix_rank(A_exact) == 64 and np.sum(_matrices()["blur_ddrm_zero_below"]["s"] > 0) == 36
    assert 0 < np.linalg.norm(A_trunc - A_exact, 2) <= 2 * 0.0041


@pytest.mark.parametrize("name", ["bicubic2", "bicubic4_plain"])
def test_bicubic_matches_jax_image_resize(name):
    """Equal to jax.image.resize (Keys a = -0.5, same antialiasing) of the image padded
    symmetrically by 2f pixels (so its boundary matches ours), cropped back."""
    op, A = _op(name), _matrices()[name]["A"]
    f = op.factor
    x = np.random.RandomState(8).standard_normal((1,) + op.in_shape)
    padded = np.pad(x, ((0, 0), (2 * f, 2 * f), (2 * f, 2 * f), (0, 0)), mode="symmetric")
    n = padded.shape[1] // f
    ref = jax.image.resize(jnp.asarray(padded), (1, n, n, op.in_shape[2]), "bicubic",
                           antialias=op.antialias)[:, 2:-2, 2:-2]
    np.testing.assert_allclose(A @ x.ravel(), np.asarray(ref).ravel(), atol=1e-12)
    np.testing.assert_allclose(A.sum(axis=1), 1.0, atol=1e-14)  # rows sum to 1: constants kept


def test_avgpool_and_colorization_definitions():
    """Against matrices built independently with NumPy."""
    m = _matrices()
    block = np.kron(np.eye(4), np.full((1, 2), 0.5))  # 1-D mean of pairs, (4, 8)
    ref = np.kron(np.kron(block, block), np.eye(3))  # (H, W, C) row-major
    np.testing.assert_allclose(m["sr2"]["A"], ref, atol=1e-15)
    np.testing.assert_allclose(m["sr2"]["P"], 4 * ref.T, atol=1e-15)  # replicate
    np.testing.assert_allclose(m["sr2"]["AT"], ref.T, atol=1e-15)  # spread / f^2
    s = m["sr4"]["s"]
    assert s.size == 64 and np.sum(s > 0) == 4 and np.allclose(s[s > 0], 0.25)
    grey = np.kron(np.eye(64), np.full((1, 3), 1 / 3))
    np.testing.assert_allclose(m["color"]["A"], grey, atol=1e-15)
    np.testing.assert_allclose(m["color"]["P"], 3 * grey.T, atol=1e-15)
    assert np.allclose(m["color"]["s"][0::3], 1 / np.sqrt(3)) and np.all(m["color"]["s"][1::3] == 0)


def test_masks():
    m = box_mask((8, 8), 2, 3, 4, 2)
    assert m.dtype == bool and (~m).sum() == 8 and not m[2:6, 3:5].any()
    r = random_mask(jax.random.key(0), (8, 8), 0.3)
    assert r.sum() == round(0.3 * 64)
    np.testing.assert_array_equal(r, random_mask(jax.random.key(0), (8, 8), 0.3))
    assert not np.array_equal(r, random_mask(jax.random.key(1), (8, 8), 0.3))
    op = Mask.create(r, (8, 8, 3))  # pixel mask shared by the channels
    assert op.in_shape == op.out_shape == (8, 8, 3)
    x = jnp.asarray(np.random.RandomState(0).standard_normal((2, 8, 8, 3)))
    y = np.asarray(op.A(x))
    assert np.all(y[:, ~r] == 0) and np.array_equal(y[:, r], np.asarray(x)[:, r])
    yc = op.compress(y)
    assert yc.shape == (2, 3 * r.sum())
    np.testing.assert_array_equal(np.asarray(op.expand(jnp.asarray(yc))), y)
    assert Mask.create(np.array([1, 0, 1])).dense().tolist() == [[1, 0, 0], [0, 0, 1]]


def test_measure_noise_and_sigma_zero():
    x = jnp.asarray(np.random.RandomState(1).standard_normal((4, 8, 8, 1)))
    op, sr = _op("mask_box"), AvgPoolSR(2, (8, 8, 1))
    np.testing.assert_array_equal(np.asarray(measure(op, x, 0.0)), np.asarray(op.A(x)))

    def noisy(op, sigma, sigmas):  # sigma_y traced
        return measure(op, x, sigma, jax.random.key(1)), measure(sr, x, sigmas, jax.random.key(2))

    args = (op, jnp.float64(0.2), jnp.array([0.0, 0.1, 0.2, 0.3]))
    y, y2 = _compile_fast(noisy, *args)(*args)
    n = np.asarray(y - op.A(x))
    keep = np.asarray(op.mask)
    assert np.all(n[:, ~keep] == 0)  # noise only where observed
    assert 0.16 < n[:, keep].std() < 0.24
    n2 = np.asarray(y2 - sr.A(x))
    assert np.all(n2[0] == 0) and np.all(np.abs(n2[3]) > 0)


def test_operators_are_pytrees_and_do_not_recompile():
    """Arrays are traced leaves: a new mask or kernel of the same configuration reuses the
    compiled program; configuration is static and compares by value."""
    traces = []

    @jax.jit
    def apply(op, x):
        traces.append(1)
        return op.pinv(op.A(x))

    x = jnp.ones((1, 8, 8, 1))
    apply(Mask.random(0, (8, 8, 1), 0.5), x)
    apply(Mask.random(1, (8, 8, 1), 0.5), x)
    apply(SeparableBlur.create(gaussian_kernel(5, 1.0), (8, 8, 1), "reflect", dtype=F64), x)
    apply(SeparableBlur.create(gaussian_kernel(5, 3.0), (8, 8, 1), "reflect", dtype=F64), x)
    apply(AvgPoolSR(2, (8, 8, 1)), x)
    apply(AvgPoolSR(2, [8, 8, 1]), x)
    assert len(traces) == 3
    assert AvgPoolSR(2, (8, 8, 1)) == AvgPoolSR(2, [8, 8, 1])
    assert len(jax.tree_util.tree_leaves(Mask.random(0, (4,), 0.5))) == 1


def test_float32_default():
    with jax.enable_x64(False):
        op = SeparableBlur.create(gaussian_kernel(3, 1.0), (8, 8, 1), "reflect")
        x = jnp.asarray(np.random.RandomState(0).standard_normal((1, 8, 8, 1)), jnp.float32)
        assert op.Mh.dtype == jnp.float32 and op.A(x).dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(op.A(op.pinv(op.A(x)))), np.asarray(op.A(x)), atol=1e-4)


# --- parsing ---------------------------------------------------------------------------------
def test_parse_operator(tmp_path):
    img = (8, 8, 3)
    assert isinstance(parse_operator("identity", (16,)), Identity)
    m = parse_operator("mask:0.25", (16,), key=3)
    assert isinstance(m, Mask) and int(np.asarray(m.mask).sum()) == 4
    np.testing.assert_array_equal(np.asarray(m.mask), np.asarray(parse_operator("mask:0.25", (16,), 3).mask))
    mi = parse_operator("mask:0.5", img, key=jax.random.key(0))
    assert np.all(np.asarray(mi.mask) == np.asarray(mi.mask)[..., :1])  # whole pixels
    path = tmp_path / "a.npy"
    np.save(path, np.eye(16)[:5])
    mat = parse_operator(f"matrix:{path}", (16,))
    assert isinstance(mat, Matrix) and mat.out_shape == (5,)
    assert parse_operator("sr:4", img).out_shape == (2, 2, 3)
    b = parse_operator("bicubic:2", img)
    assert isinstance(b, BicubicSR) and b.antialias and b.boundary == "symmetric"
    g = parse_operator("blur:gauss:5:10", img)
    assert isinstance(g, SeparableBlur) and g.boundary == "zero" and g.kernel.shape == (5,)
    assert parse_operator("blur:uniform:3:reflect", img).boundary == "reflect"
    box = parse_operator("inpaint:box", img)
    assert int((~np.asarray(box.mask)).sum()) == 4 * 4 * 3
    assert isinstance(parse_operator("color", img), Colorization)


# --- bad inputs: one clear line each -----------------------------------------------------------
def _bad_cases(tmp):
    sr = AvgPoolSR(2, (8, 8, 3))
    mat = Matrix.create(np.ones((2, 4)))
    np.save(tmp / "bad.npy", np.ones(3))
    return [
        ("mask wrong shape", lambda: Mask.create(np.ones((7, 8), bool), (8, 8, 3)), "mask has shape"),
        ("mask not boolean", lambda: Mask.create(np.full((4,), 0.5)), "boolean"),
        ("sr factor", lambda: AvgPoolSR(3, (8, 8, 3)), "does not divide"),
        ("sr factor type", lambda: AvgPoolSR(2.5, (8, 8, 3)), "positive integer"),
        ("bicubic factor", lambda: BicubicSR.create(3, (8, 8, 1)), "does not divide"),
        ("x shape", lambda: sr.A(jnp.ones((2, 8, 8))), r"x must have shape \(batch, 8, 8, 3\)"),
        ("x unbatched", lambda: mat.A(jnp.ones((4,))), "x must have shape"),
        ("y shape", lambda: sr.AT(jnp.ones((2, 8, 8, 3))), r"y must have shape \(batch, 4, 4, 3\)"),
        ("y shape pinv", lambda: mat.pinv(jnp.ones((1, 3))), "y must have shape"),
        ("spectral shape", lambda: sr.V(jnp.ones((1, 5))), "spectral coordinates"),
        ("sigma_y < 0", lambda: measure(sr, jnp.ones((1, 8, 8, 3)), -0.1, 0), "sigma_y"),
        ("sigma_y nan", lambda: measure(sr, jnp.ones((1, 8, 8, 3)), float("nan"), 0), "sigma_y"),
        ("sigma_y inf", lambda: measure(sr, jnp.ones((1, 8, 8, 3)), float("inf"), 0), "sigma_y"),
        ("no key", lambda: measure(sr, jnp.ones((1, 8, 8, 3)), 0.1), "key"),
        ("kernel 2-D", lambda: SeparableBlur.create(np.ones((3, 3)), (8, 8, 1), "zero"), "1-D"),
        ("kernel even", lambda: SeparableBlur.create(np.ones(4), (8, 8, 1), "zero"), "odd"),
        ("kernel nan", lambda: SeparableBlur.create(np.array([0, np.nan, 0]), (8, 8, 1), "zero"), "non-finite"),
        ("boundary", lambda: SeparableBlur.create(np.ones(3), (8, 8, 1), "periodic"), "boundary"),
        ("zero_below", lambda: SeparableBlur.create(np.ones(3), (8, 8, 1), "zero", zero_below=-1), "zero_below"),
        ("blur on vectors", lambda: SeparableBlur.create(np.ones(3), (16,), "zero"), "image shape"),
        ("gauss std", lambda: gaussian_kernel(5, 0.0), "std"),
        ("gauss size", lambda: gaussian_kernel(4, 1.0), "odd"),
        ("uniform size", lambda: uniform_kernel(0), "odd"),
        ("color channels", lambda: Colorization((8, 8, 1)), "3 channels"),
        ("matrix 1-D", lambda: Matrix.create(np.ones(3)), "2-D"),
        ("matrix nan", lambda: Matrix.create(np.array([[1.0, np.nan]])), "non-finite"),
        ("matrix missing file", lambda: Matrix.from_file(str(tmp / "nope.npy")), "does not exist"),
        ("matrix file 1-D", lambda: Matrix.from_file(str(tmp / "bad.npy")), "2-D"),
        ("keep fraction", lambda: random_mask(0, (16,), 1.5), "keep fraction"),
        ("box outside", lambda: box_mask((8, 8), 6, 6, 4, 4), "does not fit"),
        ("spec unknown", lambda: parse_operator("warp:2", (16,)), "valid:"),
        ("spec image-only", lambda: parse_operator("sr:4", (16,)), "needs image data"),
        ("spec number", lambda: parse_operator("sr:x", (8, 8, 3)), "must be a number"),
        ("spec sr divide", lambda: parse_operator("sr:3", (8, 8, 3)), "does not divide"),
        ("spec matrix dims", lambda: parse_operator(f"matrix:{tmp / 'ok.npy'}", (16,)), "columns"),
        ("dense too big", lambda: Identity((64, 64, 3)).dense(), "small problems"),
    ]


def test_bad_inputs_give_one_line_value_errors(tmp_path):
    np.save(tmp_path / "ok.npy", np.ones((2, 5)))
    failures = []
    for label, fn, pattern in _bad_cases(tmp_path):
        try:
            fn()
        except ValueError as e:
            msg = str(e)
            if "\n" in msg or not re.search(pattern, msg):
                failures.append(f"{label}: {msg!r}")
        else:
            failures.append(f"{label}: no ValueError")
    assert not failures, failures
