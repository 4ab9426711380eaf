"""jdiff.data: CIFAR-10 files in their on-disk formats, digits, pixel ranges, deterministic batches.

Every test builds its own small files in ``tmp_path``; only the slow test reads the shared copy of
the CIFAR-10 test set (and skips when it is absent).
"""

import io
import pickle
import struct
import sys
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import data
from jdiff.data import BatchSampler, ImageDataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# --- writing CIFAR files exactly as they are on disk ----------------------------------------------

class _Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle (protocol 2) wrote for the official CIFAR-10 batches: every
    ``str``/``bytes`` as a byte string (SHORT_BINSTRING/BINSTRING), so that ``pickle.load(...,
    encoding="bytes")`` returns ``bytes`` keys, and NumPy under its old module name."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(b"U" + bytes([len(raw)]) + raw)
        else:
            self.write(b"T" + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str


def write_py2_pickle(path, obj):
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    raw = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    Path(path).write_bytes(raw)


def write_py3_pickle(path, obj):
    Path(path).write_bytes(pickle.dumps(obj, protocol=4))


def planar(images_nhwc):
    """NHWC uint8 -> the official (N, 3072) channel-planar rows, written out pixel by pixel."""
    n = images_nhwc.shape[0]
    rows = np.zeros((n, 3072), np.uint8)
    for k in range(n):
        for c in range(3):
            for i in range(32):
                for j in range(32):
                    rows[k, c * 1024 + i * 32 + j] = images_nhwc[k, i, j, c]
    return rows


def random_batch(rng, n):
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, n)
    return images, labels


@pytest.fixture
def official_dir(tmp_path):
    """A cifar-10-batches-py directory with 5 train batches of 3 images, a test batch of 4, and a
    batches.meta with (deliberately reversed) label names. Returns (dir, train NHWC, train labels,
    test NHWC, test labels)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    train_imgs, train_labels = [], []
    for b in range(1, 6):
        imgs, labels = random_batch(rng, 3)
        write_py2_pickle(root / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5",
                                                    "labels": [int(v) for v in labels], "data": planar(imgs),
                                                    "filenames": [f"img{b}_{i}.png" for i in range(3)]})
        train_imgs.append(imgs)
        train_labels.append(labels)
    test_imgs, test_labels = random_batch(rng, 4)
    write_py2_pickle(root / "test_batch", {"batch_label": "testing batch 1 of 1",
                                           "labels": [int(v) for v in test_labels], "data": planar(test_imgs)})
    write_py2_pickle(root / "batches.meta", {"num_cases_per_batch": 3, "num_vis": 3072,
                                             "label_names": list(reversed(data.CIFAR10_CLASSES))})
    return root, np.concatenate(train_imgs), np.concatenate(train_labels), test_imgs, test_labels


# --- CIFAR-10 -------------------------------------------------------------------------------------

def test_py2_helper_writes_bytes_keys(official_dir):
    """The helper really produces the official flavour: bytes keys under encoding='bytes'."""
    root = official_dir[0]
    with open(root / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert b"data" in raw and b"labels" in raw and "data" not in raw


def test_channel_planar_pixel_placement(tmp_path):
    """A handcrafted row: one red, one green, one blue pixel land at the right (row, col, channel)."""
    row = np.zeros((1, 3072), np.uint8)
    row[0, 0 * 1024 + 2 * 32 + 5] = 255   # red at row 2, col 5
    row[0, 1 * 1024 + 7 * 32 + 1] = 200   # green at row 7, col 1
    row[0, 2 * 1024 + 31 * 32 + 30] = 100  # blue at row 31, col 30
    write_py2_pickle(tmp_path / "b", {"data": row, "labels": [3]})
    ds = data.load_cifar10(tmp_path / "b")
    img = ds.images[0]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert img[2, 5, 0] == 255 and img[7, 1, 1] == 200 and img[31, 30, 2] == 100
    assert np.count_nonzero(img) == 3
    assert ds.labels.tolist() == [3] and ds.labels.dtype == np.int32


def test_official_directory_train_and_test(official_dir):
    root, train_imgs, train_labels, test_imgs, test_labels = official_dir
    train = data.load_cifar10(root, "train")
    assert train.images.shape == (15, 32, 32, 3) and train.images.dtype == np.uint8
    np.testing.assert_array_equal(train.images, train_imgs)     # batches 1..5 in order
    np.testing.assert_array_equal(train.labels, train_labels)
    assert train.num_classes == 10 and train.name == "cifar10-train"
    assert train.class_names == tuple(reversed(data.CIFAR10_CLASSES))  # read from batches.meta
    test = data.load_cifar10(str(root), split="test")
    np.testing.assert_array_equal(test.images, test_imgs)
    np.testing.assert_array_equal(test.labels, test_labels)
    assert len(test) == 4 and test.name == "cifar10-test"


def test_parent_directory_and_single_file(official_dir):
    root, train_imgs, train_labels, *_ = official_dir
    via_parent = data.load_cifar10(root.parent, "train")  # where the tarball was extracted
    np.testing.assert_array_equal(via_parent.images, train_imgs)
    one = data.load_cifar10(root / "data_batch_2")
    np.testing.assert_array_equal(one.images, train_imgs[3:6])
    np.testing.assert_array_equal(one.labels, train_labels[3:6])


def test_str_key_pickle_without_meta_uses_standard_names(tmp_path):
    rng = np.random.default_rng(1)
    imgs, labels = random_batch(rng, 5)
    write_py3_pickle(tmp_path / "batch.pkl", {"batch_label": "x", "labels": labels.tolist(), "data": planar(imgs)})
    ds = data.load_cifar10(tmp_path / "batch.pkl", split="test")
    np.testing.assert_array_equal(ds.images, imgs)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.class_names == data.CIFAR10_CLASSES
    assert ds.class_names[0] == "airplane" and ds.class_names[9] == "truck"


@pytest.mark.parametrize("layout", ["planar", "nhwc"])
def test_npz(tmp_path, layout):
    rng = np.random.default_rng(2)
    imgs, labels = random_batch(rng, 6)
    arr = planar(imgs) if layout == "planar" else imgs
    np.savez(tmp_path / "c.npz", data=arr, labels=labels.astype(np.uint8), labels_all=np.zeros(3))
    ds = data.load_cifar10(tmp_path / "c.npz")
    np.testing.assert_array_equal(ds.images, imgs)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.images.flags.c_contiguous


def test_missing_paths(tmp_path, official_dir):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load_cifar10(missing)
    root = official_dir[0]
    (root / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        data.load_cifar10(root, "train")
    data.load_cifar10(root, "test")  # the test split does not need it
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        data.load_cifar10(empty, "test")


def test_bad_split(official_dir):
    with pytest.raises(ValueError, match="split"):
        data.load_cifar10(official_dir[0], "validation")


@pytest.mark.parametrize("content, match", [
    ({"labels": [1, 2]}, "'data'"),
    ({"data": np.zeros((2, 3072), np.uint8)}, "'labels'"),
    ({"data": np.zeros((2, 3000), np.uint8), "labels": [1, 2]}, r"shape \(2, 3000\)"),
    ({"data": np.zeros((2, 3, 32, 32), np.uint8), "labels": [1, 2]}, r"shape \(2, 3, 32, 32\)"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 2, 3]}, "'labels' must have shape"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 10]}, r"\[0, 10\)"),
    ({"data": np.zeros((2, 3072), np.float32), "labels": [1, 2]}, "dtype float32"),
    ({"data": np.full((2, 3072), 300, np.int64), "labels": [1, 2]}, "0..255"),
])
def test_bad_batch_contents(tmp_path, content, match):
    write_py2_pickle(tmp_path / "b", content)
    with pytest.raises(ValueError, match=match):
        data.load_cifar10(tmp_path / "b")


def test_bad_npz_and_non_pickles(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.zeros(2, int))
    with pytest.raises(ValueError, match="'data'.*keys present"):
        data.load_cifar10(tmp_path / "x.npz")
    (tmp_path / "junk").write_bytes(b"this is not a pickle at all")
    with pytest.raises(ValueError, match="not a readable CIFAR-10 batch"):
        data.load_cifar10(tmp_path / "junk")
    write_py3_pickle(tmp_path / "list", [1, 2, 3])
    with pytest.raises(ValueError, match="expected a pickled dict"):
        data.load_cifar10(tmp_path / "list")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        import os
        return os.mkdir, (self.target,)


def test_pickle_cannot_run_code(tmp_path):
    target = tmp_path / "pwned"
    write_py3_pickle(tmp_path / "evil", {"data": _Evil(str(target)), "labels": [0]})
    with pytest.raises(ValueError, match="refusing to unpickle global"):
        data.load_cifar10(tmp_path / "evil")
    assert not target.exists()


def test_bad_meta(official_dir):
    root = official_dir[0]
    write_py2_pickle(root / "batches.meta", {"label_names": ["a", "b"]})
    with pytest.raises(ValueError, match="label_names"):
        data.load_cifar10(root, "test")


# --- ImageDataset, subsets, downsampling ---------------------------------------------------------

def small_dataset(n=37, hw=4, classes=5, seed=0):
    """n random images (almost surely distinct and not mirror-symmetric); label = index % classes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)
    return ImageDataset(images, np.arange(n) % classes, classes, name="small")


def test_image_dataset_validation():
    imgs = np.zeros((3, 4, 4, 1), np.uint8)
    ds = ImageDataset(imgs, np.array([0, 1, 2], np.int64), 3)
    assert ds.labels.dtype == np.int32 and len(ds) == 3 and ds.image_shape == (4, 4, 1)
    assert ds.class_counts().tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(imgs.astype(np.float32), [0, 1, 2], 3)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        ImageDataset(imgs[..., 0], [0, 1, 2], 3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        ImageDataset(imgs, [0, 1], 3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        ImageDataset(imgs, [0, 1, 3], 3)
    with pytest.raises(ValueError, match="class_names"):
        ImageDataset(imgs, [0, 1, 2], 3, class_names=("a", "b"))


def test_subset():
    ds = small_dataset()
    a = data.subset(ds, 10, seed=3)
    assert len(a) == 10
    np.testing.assert_array_equal(a.images, data.subset(ds, 10, seed=3).images)
    assert not np.array_equal(a.images, data.subset(ds, 10, seed=4).images)
    # Every chosen example is a distinct original one with its own label, in the original order.
    idx = [int(np.flatnonzero((ds.images == im).all(axis=(1, 2, 3)))[0]) for im in a.images]
    assert idx == sorted(set(idx))
    np.testing.assert_array_equal(a.labels, ds.labels[idx])
    assert len(data.subset(ds, len(ds), 0)) == len(ds)
    with pytest.raises(ValueError, match="n must be"):
        data.subset(ds, len(ds) + 1, 0)
    with pytest.raises(ValueError, match="seed"):
        data.subset(ds, 3, -1)


def test_class_subset():
    ds = dataclass_with_names(small_dataset())
    kept = data.class_subset(ds, [3, 1])
    assert set(kept.labels.tolist()) == {1, 3} and kept.num_classes == 5
    np.testing.assert_array_equal(kept.images, ds.images[np.isin(ds.labels, [1, 3])])
    rel = data.class_subset(ds, [3, 1], relabel=True)
    assert rel.num_classes == 2 and rel.class_names == ("c3", "c1")
    np.testing.assert_array_equal(rel.labels, np.where(kept.labels == 3, 0, 1))
    with pytest.raises(ValueError, match="outside"):
        data.class_subset(ds, [7])
    with pytest.raises(ValueError, match="repeated"):
        data.class_subset(ds, [1, 1])


def dataclass_with_names(ds):
    return ImageDataset(ds.images, ds.labels, ds.num_classes, ds.name,
                        class_names=tuple(f"c{i}" for i in range(ds.num_classes)))


def test_downsample_handcrafted():
    img = np.array([[0, 1, 10, 10],
                    [0, 1, 10, 11],
                    [255, 255, 3, 4],
                    [255, 255, 5, 7]], np.uint8)[None, :, :, None]
    out = data.downsample(img, 2)
    # block means 0.5 -> 1 (half up), 10.25 -> 10, 255 -> 255, 4.75 -> 5
    np.testing.assert_array_equal(out[0, :, :, 0], [[1, 10], [255, 5]])
    assert out.dtype == np.uint8
    np.testing.assert_allclose(data.downsample(img.astype(np.float32), 2)[0, :, :, 0], [[0.5, 10.25], [255, 4.75]])


def test_downsample_matches_block_mean_and_jax():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 6, 9, 3), dtype=np.uint8)
    out = data.downsample(x, 3)
    assert out.shape == (2, 2, 3, 3)
    for n, i, j, c in [(0, 0, 0, 0), (1, 1, 2, 2), (0, 1, 1, 1)]:
        block = x[n, 3 * i:3 * i + 3, 3 * j:3 * j + 3, c].astype(float)
        assert abs(out[n, i, j, c] - block.mean()) <= 0.5
    out_jax = data.downsample(jnp.asarray(x), 3)
    assert isinstance(out_jax, jax.Array)
    np.testing.assert_array_equal(np.asarray(out_jax), out)
    np.testing.assert_array_equal(data.downsample(x, 1), x)
    with pytest.raises(ValueError, match="divisible"):
        data.downsample(x, 2)
    with pytest.raises(ValueError, match="factor"):
        data.downsample(x, 0)


def test_downsample_dataset():
    ds = small_dataset(n=4, hw=8)
    small = data.downsample(ds, 2)
    assert small.image_shape == (4, 4, 3) and small.name == "small@4x4"
    np.testing.assert_array_equal(small.labels, ds.labels)


# --- pixel ranges -----------------------------------------------------------------------------------

def test_model_range_numpy_round_trip():
    u = np.arange(256, dtype=np.uint8)
    x = data.to_model_range(u)
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    assert x[0] == -1.0 and x[255] == 1.0 and abs(x[128] - 0.5 / 127.5) < 1e-7
    assert np.all(np.diff(x) > 0)
    back = data.from_model_range(x)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, u)


def test_model_range_jax_round_trip_and_jit():
    u = jnp.arange(256, dtype=jnp.uint8)
    x = data.to_model_range(u)
    assert isinstance(x, jax.Array) and x.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(x), data.to_model_range(np.arange(256, dtype=np.uint8)))
    back = jax.jit(data.from_model_range)(x)
    assert isinstance(back, jax.Array) and back.dtype == jnp.uint8
    np.testing.assert_array_equal(np.asarray(back), np.arange(256))


def test_from_model_range_clips_and_rounds():
    x = np.array([-3.0, -1.0, -0.999, 0.0, 0.999, 1.0, 7.0], np.float32)
    # (x + 1) * 127.5: -, 0, 0.1275, 127.5 (ties to even -> 128), 254.87, 255, -
    np.testing.assert_array_equal(data.from_model_range(x), [0, 0, 0, 128, 255, 255, 255])
    np.testing.assert_array_equal(np.asarray(data.from_model_range(jnp.asarray(x))), [0, 0, 0, 128, 255, 255, 255])


def test_to_model_range_rejects_floats():
    with pytest.raises(TypeError, match="already in model range"):
        data.to_model_range(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="integer pixels"):
        data.to_model_range(jnp.zeros(3))


# --- digits -------------------------------------------------------------------------------------

DIGIT_LEVELS = [0, 16, 32, 48, 64, 80, 96, 112, 128, 143, 159, 175, 191, 207, 223, 239, 255]  # round(v*255/16)


@pytest.fixture(scope="module")
def digits_all():
    pytest.importorskip("sklearn")
    return data.load_digits("all")


def test_digits_shapes_and_levels(digits_all):
    ds = digits_all
    assert ds.images.shape == (1797, 8, 8, 1) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.num_classes == 10
    assert ds.class_counts().tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert sorted(np.unique(ds.images).tolist()) == DIGIT_LEVELS
    np.testing.assert_array_equal(data.digits.digits_to_uint8(np.arange(17.0)), DIGIT_LEVELS)
    from sklearn.datasets import load_digits as sk
    raw = sk().images
    np.testing.assert_array_equal(ds.images[..., 0] == 255, raw == 16)
    np.testing.assert_array_equal(ds.images[..., 0] == 0, raw == 0)


def test_digits_split(digits_all):
    train = data.load_digits("train")
    test = data.load_digits("test", test_fraction=0.2, seed=0)
    assert (len(train), len(test)) == (1438, 359)
    counts = digits_all.class_counts()
    np.testing.assert_array_equal(test.class_counts(), np.floor(counts * 0.2 + 0.5))
    np.testing.assert_array_equal(train.class_counts() + test.class_counts(), counts)
    tr, te = data.stratified_split(digits_all.labels, 0.2, 0)
    assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == 1797
    np.testing.assert_array_equal(test.images, digits_all.images[te])
    np.testing.assert_array_equal(train.labels, digits_all.labels[tr])
    # deterministic in the seed, and the seed matters
    np.testing.assert_array_equal(data.load_digits("test").images, test.images)
    _, te1 = data.stratified_split(digits_all.labels, 0.2, 1)
    assert not np.array_equal(te, te1)
    assert len(data.load_digits("test", test_fraction=0.5)) == int(np.floor(counts * 0.5 + 0.5).sum())


def test_digits_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        data.load_digits("val")
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_digits("train", test_fraction=1.0)


def test_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        data.load_digits()


# --- BatchSampler --------------------------------------------------------------------------------

def identify(sampler, step, images):
    """For each returned image, whether it is the original or the mirror of the example that
    ``global_indices`` says it is; returns the flip flags (fails if neither)."""
    idx = sampler.global_indices(step)
    pixels = data.from_model_range(images)
    flipped = []
    for k, i in enumerate(idx):
        orig = sampler.dataset.images[i]
        if np.array_equal(pixels[k], orig):
            flipped.append(False)
        elif np.array_equal(pixels[k], orig[:, ::-1]):
            flipped.append(True)
        else:
            raise AssertionError(f"image {k} of step {step} is neither example {i} nor its mirror")
    return np.array(flipped)


def test_batch_shapes_and_epochs():
    ds = small_dataset()
    s = BatchSampler(ds, 8, seed=0)
    assert s.steps_per_epoch == 4
    x, y = s.batch(0)
    assert x.shape == (8, 4, 4, 3) and x.dtype == np.float32 and y.shape == (8,) and y.dtype == np.int32
    assert x.min() >= -1.0 and x.max() <= 1.0
    for epoch in range(3):
        seen = np.concatenate([s.global_indices(epoch * 4 + i) for i in range(4)])
        assert len(set(seen.tolist())) == 32  # no repeats within an epoch
    assert not np.array_equal(s.permutation(0), s.permutation(1))
    for step in range(6):
        x, y = s.batch(step)
        np.testing.assert_array_equal(y, ds.labels[s.global_indices(step)])
        identify(s, step, x)


def test_drop_last_false():
    ds = small_dataset()
    s = BatchSampler(ds, 8, seed=1, drop_last=False)
    assert s.steps_per_epoch == 5
    sizes = [len(s.batch(step)[1]) for step in range(10)]
    assert sizes == [8, 8, 8, 8, 5] * 2
    assert sorted(np.concatenate([s.global_indices(i) for i in range(5)]).tolist()) == list(range(37))
    parts = [s.batch(4, p, 2)[1] for p in range(2)]
    assert [len(p) for p in parts] == [2, 3]
    np.testing.assert_array_equal(np.concatenate(parts), s.batch(4)[1])


def test_documented_seeding():
    """The order and flips are the documented functions of (seed, epoch) and (seed, step), so
    checkpoints resume identically across versions of this code."""
    ds = small_dataset()
    s = BatchSampler(ds, 8, seed=7)
    for step in (0, 5, 13):
        epoch, i = divmod(step, 4)
        perm = np.random.Generator(np.random.PCG64(np.random.SeedSequence([7, 0, epoch]))).permutation(37)
        np.testing.assert_array_equal(s.global_indices(step), perm[8 * i:8 * i + 8])
        flips = np.random.Generator(np.random.PCG64(np.random.SeedSequence([7, 1, step]))).random(8) < 0.5
        np.testing.assert_array_equal(s.flips(step), flips)
        np.testing.assert_array_equal(identify(s, step, s.batch(step)[0]), flips)


def test_determinism_and_resume():
    ds = small_dataset()
    full = list(BatchSampler(ds, 8, seed=3).iterate(0, num_steps=14))  # crosses 3 epoch boundaries
    again = list(BatchSampler(ds, 8, seed=3).iterate(num_steps=14))
    resumed = list(BatchSampler(ds, 8, seed=3).iterate(start_step=6, num_steps=8))  # a fresh process
    for (xa, ya), (xb, yb) in zip(full, again):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert len(resumed) == 8
    for (xa, ya), (xb, yb) in zip(full[6:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    # random access in any order gives the same batch (the permutation cache does not leak)
    s = BatchSampler(ds, 8, seed=3)
    s.batch(100)
    np.testing.assert_array_equal(s.batch(2)[0], full[2][0])
    np.testing.assert_array_equal(s.batch(jnp.int32(9))[0], full[9][0])  # a step from a JAX train state
    it = iter(BatchSampler(ds, 8, seed=3))
    np.testing.assert_array_equal(next(it)[0], full[0][0])
    np.testing.assert_array_equal(next(it)[0], full[1][0])
    other = BatchSampler(ds, 8, seed=4)
    assert not np.array_equal(other.global_indices(0), BatchSampler(ds, 8, seed=3).global_indices(0))


def test_flips():
    ds = small_dataset(n=64)
    s = BatchSampler(ds, 32, seed=0, flip=True)
    flags = np.concatenate([identify(s, step, s.batch(step)[0]) for step in range(8)])
    assert 0.35 < flags.mean() < 0.65  # 256 fair coin flips
    no = BatchSampler(ds, 32, seed=0, flip=False)
    for step in range(8):
        assert not identify(no, step, no.batch(step)[0]).any()
        np.testing.assert_array_equal(no.global_indices(step), s.global_indices(step))  # flips do not change order


@pytest.mark.parametrize("count", [1, 2, 4, 8])
def test_process_slices(count):
    ds = small_dataset()
    s = BatchSampler(ds, 8, seed=5)
    for step in (0, 3, 4, 9):
        gx, gy = s.batch(step)
        parts = [s.batch(step, p, count) for p in range(count)]
        assert all(len(py) == 8 // count for _, py in parts)
        np.testing.assert_array_equal(np.concatenate([px for px, _ in parts]), gx)
        np.testing.assert_array_equal(np.concatenate([py for _, py in parts]), gy)
        np.testing.assert_array_equal(parts[-1][0], s.batch(step, count - 1, count)[0])  # same in a fresh call
    # each process in its own sampler instance (as on separate hosts) gets the same slices
    lone = BatchSampler(ds, 8, seed=5).batch(9, count - 1, count)
    np.testing.assert_array_equal(lone[0], s.batch(9)[0][8 - 8 // count:])


def test_sampler_errors():
    ds = small_dataset()
    with pytest.raises(ValueError, match="exceeds"):
        BatchSampler(ds, 38, seed=0)
    BatchSampler(ds, 38, seed=0, drop_last=False)  # one short batch per epoch is fine
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(ds, 0)
    with pytest.raises(ValueError, match="seed"):
        BatchSampler(ds, 4, seed=-1)
    with pytest.raises(TypeError, match="ImageDataset"):
        BatchSampler(ds.images, 4)
    s = BatchSampler(ds, 8)
    with pytest.raises(ValueError, match="step"):
        s.batch(-1)
    with pytest.raises(TypeError, match="step"):
        s.batch(1.5)
    with pytest.raises(ValueError, match="divisible"):
        s.batch(0, 0, 3)
    with pytest.raises(ValueError, match="process_index"):
        s.batch(0, 2, 2)


# --- the shared CIFAR-10 test set ---------------------------------------------------------------

@pytest.mark.slow
def test_shared_cifar10_test_batch():
    path = SHARED_DATA / "cifar10_test_batch_jpegq75.pkl"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    ds = data.load_cifar10(path)
    assert ds.images.shape == (10000, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.class_counts().tolist() == [1000] * 10
    exact = SHARED_DATA / "cifar10_test_exact_first846.npz"
    if exact.is_file():  # the bit-exact first images: same order and labels, pixels within JPEG error
        ref = data.load_cifar10(exact)
        np.testing.assert_array_equal(ds.labels[:846], ref.labels)
        rmse = np.sqrt(np.mean((ds.images[:846].astype(float) - ref.images) ** 2))
        assert rmse < 12.0
    x, y = BatchSampler(data.downsample(ds, 2), 256, seed=0).batch(0)
    assert x.shape == (256, 16, 16, 3) and y.shape == (256,)


def test_run_data_from_one_file_is_split_into_disjoint_stratified_train_and_test(tmp_path):
    """A single CIFAR file has no test split: the run holds out 20% per class (seed 0)."""
    from jdiff.run import load_image_data

    rng = np.random.default_rng(5)
    imgs = rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    imgs[:, 0, 0, 0] = np.arange(100)  # a unique id per image
    labels = np.repeat(np.arange(10), 10)
    np.savez(tmp_path / "one.npz", data=imgs, labels=labels.astype(np.uint8))
    train = load_image_data(f"cifar10:{tmp_path / 'one.npz'}", "train")
    test = load_image_data(f"cifar10:{tmp_path / 'one.npz'}@16", "test")
    assert len(train) == 80 and test.images.shape == (20, 16, 16, 3)
    ids_train = set(train.images[:, 0, 0, 0].tolist())
    ids_test = set(load_image_data(f"cifar10:{tmp_path / 'one.npz'}", "test").images[:, 0, 0, 0].tolist())
    assert not ids_train & ids_test and len(ids_train | ids_test) == 100
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), np.full(10, 2))
    with pytest.raises(ValueError, match="split"):
        load_image_data(f"cifar10:{tmp_path / 'one.npz'}", "valid")
    # a path containing "@": only a trailing "@RES" is a resolution
    (tmp_path / "a@b").mkdir()
    np.savez(tmp_path / "a@b" / "one.npz", data=imgs, labels=labels.astype(np.uint8))
    assert len(load_image_data(f"cifar10:{tmp_path / 'a@b' / 'one.npz'}", "train")) == 80
    assert load_image_data(f"cifar10:{tmp_path / 'a@b' / 'one.npz'}@8", "test").images.shape == (20, 8, 8, 3)
