"""jdiff.metrics: Frechet distance, streaming statistics, FID Inception network, own feature net."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jdiff import metrics as M
from jdiff.metrics import inception as I
from helpers import load_script

ROOT = pathlib.Path(__file__).resolve().parents[1]


def random_spd(rng, d, cond=1e3):
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (q * np.logspace(0, -np.log10(cond), d)) @ q.T


# ---------------------------------------------------------------------------------------------
# Frechet distance


def test_fd_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 7
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(exact, rel=1e-12)


def test_fd_commuting_closed_form():
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: tr(S1 S2)^{1/2} = sum sqrt(a b)."""
    rng = np.random.default_rng(1)
    d = 12
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a, b = rng.uniform(0.01, 5.0, d), rng.uniform(0.01, 5.0, d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu = rng.standard_normal(d)
    exact = 4.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    mu2 = mu + 2.0 * q[:, 0]  # ||mu1 - mu2||^2 = 4
    assert M.frechet_distance(mu, s1, mu2, s2) == pytest.approx(exact, rel=1e-10)
    assert M.trace_sqrt_product(s1, s2) == pytest.approx(np.sum(np.sqrt(a * b)), rel=1e-10)


def test_fd_scalar_gaussians():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert M.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0, rel=1e-14)


def test_fd_matches_sqrtm_reference_on_random_spd():
    """Against the formula pytorch-fid / EDM use (scipy.linalg.sqrtm of the product) where it is well posed."""
    rng = np.random.default_rng(2)
    for d in (3, 16, 64):
        s1, s2 = random_spd(rng, d, 1e2), random_spd(rng, d, 1e4)
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
        ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(covmean))
        got = M.frechet_distance(mu1, s1, mu2, s2)
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-10)
        # symmetric in its arguments
        assert M.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(got, rel=1e-9)


def test_fd_rank_deficient_is_finite_and_non_negative():
    """dim > samples: both covariances singular (rank 19 in 64-d)."""
    rng = np.random.default_rng(3)
    d, n = 64, 20
    fa = rng.standard_normal((n, d))
    fb = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.3 + 0.5
    sa, sb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    assert np.linalg.matrix_rank(sa) == n - 1
    fd = M.frechet_distance(fa.mean(0), sa, fb.mean(0), sb)
    assert np.isfinite(fd) and fd > 0
    # identical singular Gaussians
    fd_same = M.frechet_distance(fa.mean(0), sa, fa.mean(0), sa)
    assert abs(fd_same) < 1e-10 * np.trace(sa)
    # equals the W2 distance computed from the (non-singular) Gram form: for S = X^T X / (n-1),
    # the nonzero eigenvalues of S1^{1/2} S2 S1^{1/2} are the squared singular values of Xa Xb^T / (n-1)
    xa, xb = fa - fa.mean(0), fb - fb.mean(0)
    sv = np.linalg.svd(xa @ xb.T / (n - 1), compute_uv=False)
    ref = np.sum((fa.mean(0) - fb.mean(0)) ** 2) + np.trace(sa) + np.trace(sb) - 2 * np.sum(sv)
    assert fd == pytest.approx(ref, rel=1e-9)


@pytest.mark.slow
def test_fd_rank_deficient_fid_size():
    """1024-d features from 400 samples (small-sample FID-like rank deficiency) against the Gram form."""
    rng = np.random.default_rng(12)
    n, d = 400, 1024
    fa, fb = rng.standard_normal((n, d)), 1.1 * rng.standard_normal((n, d)) + 0.1
    sa, sb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    xa, xb = fa - fa.mean(0), fb - fb.mean(0)
    ref = np.linalg.svd(xa @ xb.T / (n - 1), compute_uv=False).sum()
    # rounding bound ~ (number of singular values) * d * eps * ||S|| = 6e-10 here; scipy's sqrtm of
    # the product is off by 5e-8 relative in this setting
    assert M.trace_sqrt_product(sa, sb) == pytest.approx(ref, rel=1e-10)
    assert abs(M.frechet_distance(fa.mean(0), sa, fa.mean(0), sa)) < 1e-10 * np.trace(sa)


def test_fd_same_features_is_zero():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((500, 32)) @ rng.standard_normal((32, 32))
    s = np.cov(x, rowvar=False)
    assert abs(M.frechet_distance_from_features(x, x)) < 1e-10 * np.trace(s)


def test_fd_bad_input_errors():
    s = np.eye(3)
    with pytest.raises(ValueError, match="same length"):
        M.frechet_distance(np.zeros(3), s, np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="shape"):
        M.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), s)
    with pytest.raises(ValueError, match="not symmetric"):
        M.frechet_distance(np.zeros(3), np.triu(np.ones((3, 3))), np.zeros(3), s)
    with pytest.raises(ValueError, match="positive semi-definite"):
        M.frechet_distance(np.zeros(3), np.diag([1.0, -1.0, 1.0]), np.zeros(3), s)
    with pytest.raises(ValueError, match="non-finite"):
        M.frechet_distance(np.zeros(3), np.full((3, 3), np.nan), np.zeros(3), s)


# ---------------------------------------------------------------------------------------------
# Streaming statistics


@pytest.mark.parametrize("splits", [[1000], [1, 999], [7, 300, 1, 692], [500, 0, 500], [2] * 500])
def test_feature_stats_match_numpy_for_any_split(splits):
    rng = np.random.default_rng(5)
    # a large common offset: the naive sum(x x^T) - n mu mu^T would lose ~8 digits here
    x = (rng.standard_normal((1000, 6)) @ rng.standard_normal((6, 6)) + 1e4).astype(np.float32)
    st = M.FeatureStats(6)
    for chunk in np.split(x, np.cumsum(splits)[:-1]):
        st.update(chunk)
    assert st.count == 1000
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(st.mean, x64.mean(0), rtol=1e-13)
    np.testing.assert_allclose(st.cov, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-12)


def test_feature_stats_merge_and_save_load(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((300, 5)) * [1, 2, 3, 4, 5] + [0, 1, 2, 3, 4]
    a, b = M.FeatureStats.from_features(x[:123]), M.FeatureStats.from_features(x[123:])
    ab = a.merge(b)
    assert (a.count, b.count, ab.count) == (123, 177, 300)  # merge leaves the inputs alone
    np.testing.assert_allclose(ab.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(ab.cov, np.cov(x, rowvar=False), rtol=1e-11)
    empty = M.FeatureStats(5)
    np.testing.assert_allclose(empty.merge(ab).cov, ab.cov, rtol=0)
    ab.save(tmp_path / "s.npz")
    back = M.FeatureStats.load(tmp_path / "s.npz")
    assert back.count == 300
    np.testing.assert_array_equal(back.cov, ab.cov)
    back.update(x[:10])  # resumable
    np.testing.assert_allclose(back.cov, np.cov(np.concatenate([x, x[:10]]), rowvar=False), rtol=1e-11)
    mu, sigma = M.load_mu_sigma(tmp_path / "s.npz")  # pytorch-fid's key names
    np.testing.assert_array_equal(sigma, ab.cov)
    np.savez(tmp_path / "ptfid.npz", mu=mu, sigma=sigma)
    with pytest.raises(KeyError, match="load_mu_sigma"):
        M.FeatureStats.load(tmp_path / "ptfid.npz")
    with pytest.raises(ValueError, match="at least 2"):
        _ = M.FeatureStats.from_features(x[:1]).cov
    with pytest.raises(ValueError, match=r"\(n, 5\)"):
        a.update(np.zeros((3, 4)))


def test_compute_stats_streams_with_one_compile():
    calls = []

    def feat(images):
        calls.append(images.shape)  # runs only while tracing
        return jnp.concatenate([images.mean(axis=(1, 2)), (images ** 2).mean(axis=(1, 2))], axis=-1)

    rng = np.random.default_rng(7)
    imgs = rng.uniform(-1, 1, (103, 4, 4, 3)).astype(np.float32)
    st = M.compute_stats(feat, imgs, batch_size=25)  # 4 full batches + a padded one of 3
    ref = np.asarray(feat(imgs), np.float64)
    assert st.count == 103
    np.testing.assert_allclose(st.mean, ref.mean(0), rtol=1e-6)
    np.testing.assert_allclose(st.cov, np.cov(ref, rowvar=False), rtol=1e-5, atol=1e-9)
    assert calls.count((25, 4, 4, 3)) == 1  # traced once for the batch shape
    # an iterable of differently sized batches gives the same statistics
    st2 = M.compute_stats(feat, [imgs[:60], imgs[60:]], batch_size=25)
    np.testing.assert_allclose(st2.cov, st.cov, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# FID Inception: the expected state_dict, written independently of the Flax module from
# torchvision's Inception3 constructor arguments (BasicConv2d(in, out, kernel) = conv without bias +
# BatchNorm) and pytorch-fid's fid_inception_v3 (num_classes=1008, aux_logits=False).


def _a(p, cin, pool):
    return [(f"{p}.branch1x1", cin, 64, 1, 1), (f"{p}.branch5x5_1", cin, 48, 1, 1), (f"{p}.branch5x5_2", 48, 64, 5, 5),
            (f"{p}.branch3x3dbl_1", cin, 64, 1, 1), (f"{p}.branch3x3dbl_2", 64, 96, 3, 3),
            (f"{p}.branch3x3dbl_3", 96, 96, 3, 3), (f"{p}.branch_pool", cin, pool, 1, 1)], 64 + 64 + 96 + pool


def _b(p, cin):
    return [(f"{p}.branch3x3", cin, 384, 3, 3), (f"{p}.branch3x3dbl_1", cin, 64, 1, 1),
            (f"{p}.branch3x3dbl_2", 64, 96, 3, 3), (f"{p}.branch3x3dbl_3", 96, 96, 3, 3)], 384 + 96 + cin


def _c(p, cin, c7):
    return [(f"{p}.branch1x1", cin, 192, 1, 1), (f"{p}.branch7x7_1", cin, c7, 1, 1), (f"{p}.branch7x7_2", c7, c7, 1, 7),
            (f"{p}.branch7x7_3", c7, 192, 7, 1), (f"{p}.branch7x7dbl_1", cin, c7, 1, 1),
            (f"{p}.branch7x7dbl_2", c7, c7, 7, 1), (f"{p}.branch7x7dbl_3", c7, c7, 1, 7),
            (f"{p}.branch7x7dbl_4", c7, c7, 7, 1), (f"{p}.branch7x7dbl_5", c7, 192, 1, 7),
            (f"{p}.branch_pool", cin, 192, 1, 1)], 4 * 192


def _d(p, cin):
    return [(f"{p}.branch3x3_1", cin, 192, 1, 1), (f"{p}.branch3x3_2", 192, 320, 3, 3),
            (f"{p}.branch7x7x3_1", cin, 192, 1, 1), (f"{p}.branch7x7x3_2", 192, 192, 1, 7),
            (f"{p}.branch7x7x3_3", 192, 192, 7, 1), (f"{p}.branch7x7x3_4", 192, 192, 3, 3)], 320 + 192 + cin


def _e(p, cin):
    return [(f"{p}.branch1x1", cin, 320, 1, 1), (f"{p}.branch3x3_1", cin, 384, 1, 1),
            (f"{p}.branch3x3_2a", 384, 384, 1, 3), (f"{p}.branch3x3_2b", 384, 384, 3, 1),
            (f"{p}.branch3x3dbl_1", cin, 448, 1, 1), (f"{p}.branch3x3dbl_2", 448, 384, 3, 3),
            (f"{p}.branch3x3dbl_3a", 384, 384, 1, 3), (f"{p}.branch3x3dbl_3b", 384, 384, 3, 1),
            (f"{p}.branch_pool", cin, 192, 1, 1)], 320 + 2 * 384 + 2 * 384 + 192


def expected_convs():
    convs = [("Conv2d_1a_3x3", 3, 32, 3, 3), ("Conv2d_2a_3x3", 32, 32, 3, 3), ("Conv2d_2b_3x3", 32, 64, 3, 3),
             ("Conv2d_3b_1x1", 64, 80, 1, 1), ("Conv2d_4a_3x3", 80, 192, 3, 3)]
    c = 192
    blocks = [(_a, "Mixed_5b", 32), (_a, "Mixed_5c", 64), (_a, "Mixed_5d", 64), (_b, "Mixed_6a"),
              (_c, "Mixed_6b", 128), (_c, "Mixed_6c", 160), (_c, "Mixed_6d", 160), (_c, "Mixed_6e", 192),
              (_d, "Mixed_7a"), (_e, "Mixed_7b"), (_e, "Mixed_7c")]
    widths = []
    for fn, name, *arg in blocks:
        layers, c = fn(name, c, *arg)
        convs += layers
        widths.append(c)
    # torchvision's comments: 256, 288, 288, 768 x4 ... 1280, 2048, 2048 channels
    assert widths == [256, 288, 288, 768, 768, 768, 768, 768, 1280, 2048, 2048]
    return convs


def expected_state_dict(num_classes=1008):
    sd = {}
    for name, cin, cout, kh, kw in expected_convs():
        sd[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            sd[f"{name}.bn.{leaf}"] = (cout,)
    sd["fc.weight"], sd["fc.bias"] = (num_classes, 2048), (num_classes,)
    return sd


def test_inception_key_table_matches_torchvision_layout_and_param_count():
    expected = expected_state_dict()
    assert len(expected_convs()) == 94 and len(expected) == 94 * 5 + 2
    assert I.inception_state_dict_shapes() == expected  # the Flax module, through eval_shape
    n_trainable = sum(int(np.prod(s)) for k, s in expected.items() if "running_" not in k)
    assert n_trainable == 23_850_960  # FID network (fc 2048 -> 1008)
    n_tv = n_trainable - 8 * 2048 - 8  # torchvision's inception_v3(aux_logits=False), 1000 classes
    assert n_tv == 23_834_568
    # + AuxLogits (conv0 768->128 1x1, conv1 128->768 5x5, both with BN; fc 768->1000) = the
    # 27,161,264 that torchvision's documentation lists for inception_v3
    aux = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
    assert n_tv + aux == 27_161_264


def random_state_dict(seed=0, num_classes=1008):
    """Random weights in pytorch-fid's format, roughly variance preserving through the 94 layers."""
    rng = np.random.default_rng(seed)
    sd = {}
    for k, s in expected_state_dict(num_classes).items():
        if k.endswith("conv.weight"):
            sd[k] = rng.standard_normal(s, dtype=np.float32) * np.float32(np.sqrt(2.0 / np.prod(s[1:])))
        elif k.endswith(("running_var", "bn.weight")):
            sd[k] = rng.uniform(0.5, 1.5, s).astype(np.float32)
        elif k == "fc.weight":
            sd[k] = rng.standard_normal(s, dtype=np.float32) * np.float32(0.02)
        else:
            sd[k] = (0.1 * rng.standard_normal(s)).astype(np.float32)
    return sd


@pytest.fixture(scope="module")
def inception_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "fid_inception_random.npz"
    sd = random_state_dict()
    sd["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0)  # present in newer torch state_dicts
    np.savez(path, **sd)
    return path, sd


def test_load_inception_params_layout_and_shapes(inception_npz):
    path, sd = inception_npz
    v = M.load_inception_params(path)
    p, bs = v["params"], v["batch_stats"]
    np.testing.assert_array_equal(p["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
                                  sd["Mixed_6b.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0))
    assert p["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"].shape == (1, 7, 128, 128)  # HWIO
    np.testing.assert_array_equal(p["fc"]["kernel"], sd["fc.weight"].T)
    np.testing.assert_array_equal(p["Mixed_7c"]["branch_pool"]["bn"]["scale"], sd["Mixed_7c.branch_pool.bn.weight"])
    np.testing.assert_array_equal(bs["Conv2d_4a_3x3"]["bn"]["var"], sd["Conv2d_4a_3x3.bn.running_var"])
    # round trip back to torch names and layouts
    back = M.variables_to_state_dict(v)
    assert set(back) == set(expected_state_dict())
    for k in back:
        np.testing.assert_array_equal(back[k], sd[k])
    # features of any input size and 1 or 3 channels: (N, 2048), without computing anything
    out = jax.eval_shape(M.inception_feature_fn(v), jax.ShapeDtypeStruct((5, 512, 384, 1), jnp.float32))
    assert out.shape == (5, 2048) and out.dtype == jnp.float32


def test_load_inception_params_errors_name_the_key(tmp_path, inception_npz):
    _, sd = inception_npz
    load = M.state_dict_to_variables  # what load_inception_params applies to the .npz contents
    bad = {k: v for k, v in sd.items() if k != "Mixed_6e.branch7x7dbl_4.bn.running_mean"}
    with pytest.raises(KeyError, match=r"Mixed_6e\.branch7x7dbl_4\.bn\.running_mean"):
        load(bad)
    bad = dict(sd, **{"fc.weight": np.zeros((1000, 2048), np.float32), "fc.bias": np.zeros(1000, np.float32)})
    with pytest.raises(ValueError, match=r"'fc\.(weight|bias)' has shape \(1000"):  # torchvision's ImageNet head
        load(bad)
    bad = dict(sd, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
    with pytest.raises(KeyError, match=r"AuxLogits\.fc\.weight"):
        load(bad)
    assert load(bad, strict=False)["params"]["fc"]["kernel"].shape == (2048, 1008)
    bad = dict(sd, **{"Conv2d_2b_3x3.conv.weight": sd["Conv2d_2b_3x3.conv.weight"].transpose(2, 3, 1, 0)})
    with pytest.raises(ValueError, match=r"Conv2d_2b_3x3\.conv\.weight"):  # already-transposed (HWIO) weights
        load(bad)
    bad = dict(sd, **{"Mixed_5b.branch_pool.bn.bias": np.zeros(32, np.int64)})
    with pytest.raises(ValueError, match=r"Mixed_5b\.branch_pool\.bn\.bias.*dtype"):
        load(bad)
    with pytest.raises(FileNotFoundError, match="convert_inception_weights"):
        M.load_inception_params(tmp_path / "nope.npz")
    np.savez(tmp_path / "stats.npz", mu=np.zeros(3), sigma=np.eye(3))  # wrong kind of file
    with pytest.raises(KeyError, match="Conv2d_1a_3x3"):
        M.load_inception_params(tmp_path / "stats.npz")


@pytest.mark.slow
def test_inception_forward_features_deterministic(inception_npz):
    """Full 299x299 forward (batch 2) with random weights: shape, finiteness, determinism, batch independence."""
    v = M.load_inception_params(inception_npz[0])
    f = M.inception_feature_fn(v)
    rng = np.random.default_rng(8)
    x = rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    a, b = np.asarray(f(x)), np.asarray(f(x))
    assert a.shape == (2, 2048) and np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)
    assert np.all(a >= 0)  # mean of ReLU outputs
    assert np.std(a) > 0 and not np.allclose(a[0], a[1])
    # inference-mode BatchNorm: no mixing across the batch (same shape, so no recompilation)
    np.testing.assert_allclose(np.asarray(f(x[::-1])), a[::-1], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Parity of the preprocessing and the whole network with PyTorch (optional dependency)


def test_resize_and_pools_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(9)
    for hw in ((32, 32), (5, 7), (400, 333)):
        x = rng.uniform(-1, 1, (2,) + hw + (3,)).astype(np.float32)
        ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear",
                            align_corners=False).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(np.asarray(I.resize_bilinear(jnp.asarray(x))), ref, atol=2e-6)
    x = rng.standard_normal((2, 9, 9, 4)).astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2)
    ref = F.avg_pool2d(xt, 3, 1, 1, count_include_pad=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(I._avg_pool_3x3_exclude_pad(jnp.asarray(x))), ref, atol=1e-6)
    ref_incl = F.avg_pool2d(xt, 3, 1, 1).permute(0, 2, 3, 1).numpy()
    assert not np.allclose(ref, ref_incl)  # the test distinguishes the two conventions


def _torch_fid_inception(torch, sd, x):
    """An independent NCHW re-implementation of pytorch-fid's FIDInception forward from the state dict."""
    F = torch.nn.functional
    w = {k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()}

    def conv(name, h, stride=1, pad=None):
        wt = w[f"{name}.conv.weight"]
        pad = (wt.shape[2] // 2, wt.shape[3] // 2) if pad is None else pad
        h = F.conv2d(h, wt, stride=stride, padding=pad)
        h = F.batch_norm(h, w[f"{name}.bn.running_mean"], w[f"{name}.bn.running_var"], w[f"{name}.bn.weight"],
                         w[f"{name}.bn.bias"], training=False, eps=1e-3)
        return F.relu(h)

    def avg(h):
        return F.avg_pool2d(h, 3, 1, 1, count_include_pad=False)

    h = conv("Conv2d_1a_3x3", x, 2, 0)
    h = conv("Conv2d_2a_3x3", h, 1, 0)
    h = conv("Conv2d_2b_3x3", h)
    h = F.max_pool2d(h, 3, 2)
    h = conv("Conv2d_3b_1x1", h)
    h = conv("Conv2d_4a_3x3", h, 1, 0)
    h = F.max_pool2d(h, 3, 2)
    for p in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        h = torch.cat([conv(f"{p}.branch1x1", h), conv(f"{p}.branch5x5_2", conv(f"{p}.branch5x5_1", h)),
                       conv(f"{p}.branch3x3dbl_3", conv(f"{p}.branch3x3dbl_2", conv(f"{p}.branch3x3dbl_1", h))),
                       conv(f"{p}.branch_pool", avg(h))], 1)
    p = "Mixed_6a"
    h = torch.cat([conv(f"{p}.branch3x3", h, 2, 0),
                   conv(f"{p}.branch3x3dbl_3", conv(f"{p}.branch3x3dbl_2", conv(f"{p}.branch3x3dbl_1", h)), 2, 0),
                   F.max_pool2d(h, 3, 2)], 1)
    for p in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        b7 = h
        for i in (1, 2, 3):
            b7 = conv(f"{p}.branch7x7_{i}", b7)
        bd = h
        for i in (1, 2, 3, 4, 5):
            bd = conv(f"{p}.branch7x7dbl_{i}", bd)
        h = torch.cat([conv(f"{p}.branch1x1", h), b7, bd, conv(f"{p}.branch_pool", avg(h))], 1)
    p = "Mixed_7a"
    b3 = conv(f"{p}.branch3x3_2", conv(f"{p}.branch3x3_1", h), 2, 0)
    b7 = conv(f"{p}.branch7x7x3_3", conv(f"{p}.branch7x7x3_2", conv(f"{p}.branch7x7x3_1", h)))
    h = torch.cat([b3, conv(f"{p}.branch7x7x3_4", b7, 2, 0), F.max_pool2d(h, 3, 2)], 1)
    for p, pool in (("Mixed_7b", avg), ("Mixed_7c", lambda t: F.max_pool2d(t, 3, 1, 1))):
        b3 = conv(f"{p}.branch3x3_1", h)
        bd = conv(f"{p}.branch3x3dbl_2", conv(f"{p}.branch3x3dbl_1", h))
        h = torch.cat([conv(f"{p}.branch1x1", h),
                       conv(f"{p}.branch3x3_2a", b3), conv(f"{p}.branch3x3_2b", b3),
                       conv(f"{p}.branch3x3dbl_3a", bd), conv(f"{p}.branch3x3dbl_3b", bd),
                       conv(f"{p}.branch_pool", pool(h))], 1)
    return h.mean(dim=(2, 3))


@pytest.mark.slow
def test_inception_matches_torch_reimplementation(inception_npz):
    torch = pytest.importorskip("torch")
    path, sd = inception_npz
    v = M.load_inception_params(path)
    rng = np.random.default_rng(10)
    x = rng.uniform(-1, 1, (2, 40, 48, 3)).astype(np.float32)  # upsampled to 299 in both
    got = np.asarray(M.inception_feature_fn(v)(x))
    with torch.no_grad():
        xt = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299),
                                             mode="bilinear", align_corners=False)
        ref = _torch_fid_inception(torch, {k: a for k, a in sd.items() if "num_batches" not in k}, xt).numpy()
    scale = np.abs(ref).max()
    # measured: max error 3e-7 * scale; counting the padding in the A/C/E average pools (torchvision's
    # ImageNet variant) changes the output by 3e-2 * scale
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale)


def _load_convert_script():
    return load_script(ROOT / "scripts" / "convert_inception_weights.py", "convert_inception_weights")


def test_convert_script_round_trip(tmp_path, capsys, inception_npz):
    torch = pytest.importorskip("torch")
    conv = _load_convert_script()
    sd = {k: torch.from_numpy(v) for k, v in inception_npz[1].items()}
    sd["Mixed_5b.branch1x1.bn.num_batches_tracked"] = torch.tensor(0)
    src, dst = tmp_path / "fid_weights.pth", tmp_path / "out.npz"
    torch.save(sd, src)
    assert conv.main([str(src), str(dst)]) == 0
    assert "472 arrays, 23,850,960 parameters" in capsys.readouterr().out
    with np.load(dst) as f:
        assert set(f.files) == set(expected_state_dict())
        np.testing.assert_array_equal(f["Mixed_7c.branch3x3dbl_3b.conv.weight"],
                                      sd["Mixed_7c.branch3x3dbl_3b.conv.weight"].numpy())
    # a checkpoint with missing layers is refused before anything is written
    torch.save({k: sd[k] for k in ("fc.weight", "fc.bias")}, src)
    with pytest.raises(KeyError, match=r"lack key 'Conv2d_1a_3x3\.conv\.weight' \(and 469 more\)"):
        conv.main([str(src), str(tmp_path / "y.npz")])
    assert not (tmp_path / "y.npz").exists()
    # a name whose hash suffix does not match the file's SHA-256 is refused
    bad = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    bad.write_bytes(b"not the real checkpoint")
    with pytest.raises(SystemExit, match="SHA-256"):
        conv.main([str(bad), str(tmp_path / "x.npz")])


# ---------------------------------------------------------------------------------------------
# Own feature network on sklearn digits


@pytest.fixture(scope="module")
def digits_net():
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn not installed")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0 * 2.0 - 1.0).astype(np.float32)[..., None]  # (1797, 8, 8, 1) in [-1, 1]
    model = M.FeatureNet(num_classes=10, widths=(16, 32, 64), feature_dim=64, groups=0)
    res = M.train_feature_net(x, d.target, 10, steps=300, batch_size=32, seed=0, lr=3e-3, model=model, chunk=300)
    return x, d.target, res


def test_feature_net_digits_accuracy_and_own_feature_fd(digits_net):
    x, _, res = digits_net
    print(f"\ndigits FeatureNet: train acc {res.train_accuracy:.3f}, test acc {res.test_accuracy:.3f}")
    assert res.test_accuracy > 0.9  # chance is 0.1; measured 0.969-0.981 over seeds 0-2
    assert len(res.test_idx) == 359 and len(np.intersect1d(res.train_idx, res.test_idx)) == 0
    f = M.feature_fn(res.params, res.model)
    noise = np.clip(np.random.default_rng(11).normal(0.0, 0.5, (359, 8, 8, 1)), -1, 1).astype(np.float32)
    s_tr = M.compute_stats(f, x[res.train_idx], 256)
    s_te = M.compute_stats(f, x[res.test_idx], 256)
    s_noise = M.compute_stats(f, noise, 256)
    fd_tt = M.frechet_distance_from_stats(s_tr, s_te)
    fd_tn = M.frechet_distance_from_stats(s_te, s_noise)
    print(f"{M.OWN_FEATURE_LABEL}: train-test {fd_tt:.3f}, test-noise {fd_tn:.3f}")
    assert 0 < fd_tt and fd_tn > 20 * fd_tt


def test_feature_net_save_load(tmp_path, digits_net):
    x, _, res = digits_net
    M.save_feature_net(tmp_path / "fnet.npz", res.model, res.params)
    model, params = M.load_feature_net(tmp_path / "fnet.npz")
    assert model == res.model
    f1, f2 = M.feature_fn(res.params, res.model), M.feature_fn(params, model)
    np.testing.assert_array_equal(np.asarray(f1(x[:16])), np.asarray(f2(x[:16])))
    # a default (GroupNorm) network on 3-channel images round-trips too (shapes only: no compile)
    net = M.FeatureNet(num_classes=3, widths=(8, 16), feature_dim=12)
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
    p = jax.tree.map(lambda s: np.arange(np.prod(s.shape), dtype=np.float32).reshape(s.shape), shapes)
    M.save_feature_net(tmp_path / "g.npz", net, p)
    net2, p2 = M.load_feature_net(tmp_path / "g.npz")
    assert net2 == net
    jax.tree.map(np.testing.assert_array_equal, p2, p)
    out = jax.eval_shape(M.feature_fn(p2, net2), jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32))
    assert out.shape == (2, 12)
    with np.load(tmp_path / "g.npz") as fz:
        arrays = {k: fz[k] for k in fz.files if k != "params/Dense_1/bias"}
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(KeyError, match="Dense_1/bias"):
        M.load_feature_net(tmp_path / "bad.npz")
