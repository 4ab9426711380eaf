"""The restoration methods' common option ``z`` (standard-normal initial draws in place of the
key's) and ``jdiff bench restore --noise``.

Giving z equal to the draw the key would have made must reproduce the keyed result bit for bit
(so z enters exactly where the key's draw did); another z must change the result; a wrong shape is
one ValueError; SMC refuses z. The bench writes the noise path in its records (None for SMC, whose
particles come from its key) and the same file twice gives identical records."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff.bench import restore as rb
from jdiff.cli import main as jdiff_main
from jdiff.restoration import METHODS, Mask
from jdiff.restoration.projection import DDRM_INIT_STREAM
from jdiff.schedules import get_schedule
from jdiff.testbeds import get_testbed

B, NFE, SIGMA_Y = 3, 4, 0.1


@pytest.fixture(scope="module")
def problem():
    sch = get_schedule("vp_linear")
    tb = get_testbed("mix16d")
    op = Mask.random(0, (16,), 0.5)
    y = op.A(tb.sample(jax.random.key(1), B)).astype(jnp.float32)
    return tb.model_fn(sch), sch, op, y


def _key_draw(method, key):
    """The standard-normal initial draw (B, 16) each method makes from ``key``."""
    shape = (B, 16)
    if method in ("ddnm", "ddnm_plus", "repaint"):
        return jax.random.normal(jax.random.split(key)[0], shape, jnp.float32)
    if method == "ddrm":
        return jax.random.normal(jax.random.fold_in(key, DDRM_INIT_STREAM), shape, jnp.float32)
    return jax.random.normal(jax.random.fold_in(key, 11), shape, jnp.float32)  # dps, pigdm


# one case per place the draw is made (ddnm_plus shares ddnm's sampler, pigdm's own sampler dps's)
CASES = [("ddnm", {}), ("ddnm", {"solver": "ddim"}), ("ddrm", {}), ("repaint", {}), ("dps", {}),
         ("pigdm", {"init": "pinv"})]


@pytest.mark.parametrize("method,kw", CASES, ids=[f"{m}-{'-'.join(map(str, k.values())) or 'own'}" for m, k in CASES])
def test_z_replaces_the_keys_initial_draw(problem, method, kw):
    model, sch, op, y = problem
    key = jax.random.key(7)
    fn = METHODS[method]
    keyed = np.asarray(fn(model, sch, op, y, SIGMA_Y, NFE, key, **kw))
    z = _key_draw(method, key)
    same = np.asarray(fn(model, sch, op, y, SIGMA_Y, NFE, key, z=z, **kw))
    np.testing.assert_array_equal(same, keyed)
    other = np.asarray(fn(model, sch, op, y, SIGMA_Y, NFE, key, z=-z, **kw))
    assert np.all(np.isfinite(other)) and not np.array_equal(other, keyed)


@pytest.mark.parametrize("method", ["ddnm", "ddrm", "repaint", "dps"])
def test_wrong_z_shape_is_one_value_error(problem, method):
    model, sch, op, y = problem
    with pytest.raises(ValueError, match=r"z must have shape \(3, 16\)"):
        METHODS[method](model, sch, op, y, SIGMA_Y, NFE, jax.random.key(0), z=jnp.zeros((B, 15)))


def test_z_with_x_t_and_smc_z_are_refused(problem):
    model, sch, op, y = problem
    z = jnp.zeros((B, 16))
    with pytest.raises(ValueError, match="x_T or z, not both"):
        METHODS["ddnm"](model, sch, op, y, SIGMA_Y, NFE, jax.random.key(0), z=z, x_T=z)
    with pytest.raises(ValueError, match="restore_smc: z is not supported"):
        METHODS["smc"](model, sch, op, y, SIGMA_Y, NFE, jax.random.key(0), z=z, particles=2)


def _cfg(noise, n_per_measurement=3):  # shapes and budget of the tests above: their compiled programs
    return rb.RestoreConfig(testbeds=("mix16d",), operators=("mask:0.5",), sigma_ys=(SIGMA_Y,),
                            methods=("ddnm", "ddrm"), nfe=(NFE,), n_measurements=1,
                            n_per_measurement=n_per_measurement, noise=noise)


def test_bench_noise_records_the_path_and_is_reproducible(tmp_path, monkeypatch):
    path = str(tmp_path / "z.npy")
    np.save(path, np.random.RandomState(0).standard_normal((B, 16)).astype(np.float32))
    first, second = rb.run_restore(_cfg(path)), rb.run_restore(_cfg(path))
    assert first == second and [r["noise"] for r in first] == [path, path]
    keyed = rb.run_restore(_cfg(None))
    assert [r["noise"] for r in keyed] == [None, None]
    assert all(a["sw"] != b["sw"] for a, b in zip(keyed, first))  # the file's draws were used
    # a method that refuses z (SMC; here DDRM stands in, to spare SMC's compile) runs on its key's
    # draw and records noise None
    assert "smc" in rb.OWN_NOISE
    monkeypatch.setattr(rb, "OWN_NOISE", ("ddrm",))
    mixed = rb.run_restore(_cfg(path))
    assert mixed[0] == first[0] and mixed[1] == keyed[1]
    with pytest.raises(ValueError, match=r"\(4, 16\)"):
        rb.check_restore(_cfg(path, n_per_measurement=4))


def test_cli_noise_of_the_wrong_row_count_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    np.save("z.npy", np.zeros((5, 16), np.float32))  # 2 x 3 = 6 rows needed
    code = jdiff_main(["bench", "restore", "--noise", "z.npy", "--n-measurements", "2", "--n-per-measurement", "3"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "(6, 16)" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["z.npy"]

