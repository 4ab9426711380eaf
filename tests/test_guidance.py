"""Guidance transforms: exact answers on labelled mixtures, finite-difference gradients, identity
at the no-guidance value, composition, and clear errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff.grids import make_grid
from jdiff.guidance import check_labels, classifier_free, classifier_guidance, objective_guidance, preview_image
from jdiff.prediction import to_x0_eps
from jdiff.sampling import compiled_programs
from jdiff.schedules import get_schedule
from jdiff.solvers import get_solver
from jdiff.testbeds import get_testbed, load_spec

SCHED = get_schedule("vp_linear")


@pytest.fixture(scope="module")
def c16():
    return get_testbed("classes16d")


def _x(key, n, d, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(key), (n, d), dtype)


# --- the labelled testbed ---------------------------------------------------------------------

def test_labelled_mixture_exact_identities(c16):
    """Bayes' rule on the exact models: p(c | x_t) sums to 1, the unconditional model is the
    class-probability-weighted mix of the conditionals, and classifier guidance at scale 1 with
    the exact classifier is the exact conditional model (every prediction type)."""
    with jax.enable_x64(True):
        mix = c16.replace(log_weights=c16.log_weights.astype(jnp.float64), means=c16.means.astype(jnp.float64),
                          eigvals=c16.eigvals.astype(jnp.float64))
        x = _x(0, 5, 16, jnp.float64)
        y = jnp.array([0, 1, 2, 3, 1])
        for t in (0.02, 0.95):
            a, s = SCHED.alpha(t), SCHED.sigma(t)
            logp = mix.class_log_probs(x, a, s)
            np.testing.assert_allclose(jnp.exp(logp).sum(1), 1.0, atol=1e-12)
            # x0_u = sum_c p(c | x) x0_c
            x0_c = jnp.stack([mix.x0(x, a, s, jnp.full(5, c)) for c in range(4)], 1)
            np.testing.assert_allclose(jnp.sum(jnp.exp(logp)[..., None] * x0_c, 1), mix.x0(x, a, s), atol=1e-12)
            for pred in ("eps", "x0", "v"):
                guided = classifier_guidance(mix.model_fn(SCHED, pred, conditional=False), SCHED,
                                             mix.classifier(SCHED), 1.0, prediction=pred)
                np.testing.assert_allclose(guided(x, t, {"y": y}), mix.model_fn(SCHED, pred)(x, t, {"y": y}),
                                           atol=1e-12, rtol=1e-12)


def test_labelled_sampling_and_null_class(c16):
    y = jnp.arange(2000) % 4
    x = c16.sample(jax.random.key(1), 2000, y=y)
    # class-conditional samples come from their class's components only: the Bayes accuracy
    # (80% on this overlapping testbed) is far above the 25% of unlabelled samples
    acc = float(jnp.mean(jnp.argmax(c16.class_log_probs(x), 1) == y))
    assert 0.75 < acc < 0.85
    x_u = c16.sample(jax.random.key(1), 2000)
    assert float(jnp.mean(jnp.argmax(c16.class_log_probs(x_u), 1) == y)) < 0.35
    m = c16.model_fn(SCHED)
    xt = _x(2, 3, 16)
    np.testing.assert_array_equal(m(xt, 0.5, {"y": jnp.full(3, 4)}), m(xt, 0.5, None))  # null class


def test_labels_spec_field(tmp_path):
    spec = {"weights": [1, 1, 2], "means": [[0, 0], [1, 1], [2, 2]], "stds": [0.1, 0.2, 0.3], "labels": [1, 0, 1]}
    p = tmp_path / "lab.json"
    p.write_text(json.dumps(spec))
    mix = load_spec(str(p))
    assert mix.n_classes == 2 and list(np.asarray(mix.labels)) == [1, 0, 1]
    for bad, msg in (([0, 2, 0], "missing \\[1\\]"), ([0, 1], "3 integers"), ([0, -1, 1], "must be 3 integers|>= 0"),
                     ([0.5, 1, 0], "3 integers")):
        p.write_text(json.dumps(dict(spec, labels=bad)))
        with pytest.raises(ValueError, match=msg):
            load_spec(str(p))
    with pytest.raises(ValueError, match="no component labels"):
        get_testbed("mix2d").classifier(SCHED)


# --- classifier-free guidance -----------------------------------------------------------------

def test_cfg_formula_interval_rescale(c16):
    m = c16.model_fn(SCHED)
    x, y = _x(3, 4, 16), jnp.array([0, 1, 2, 3])
    cond, uncond = m(x, 0.5, {"y": y}), m(x, 0.5, {"y": jnp.full(4, 4)})
    w = 2.5
    want = (1 + w) * cond - w * uncond
    for batched in (True, False):
        got = classifier_free(m, w, null_label=4, batched=batched)(x, 0.5, {"y": y})
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # per-sample traced scales
    ws = jnp.array([0.0, 1.0, 2.0, -1.0])
    got = classifier_free(m, ws, null_label=4)(x, 0.5, {"y": y})
    np.testing.assert_allclose(got, cond + ws[:, None] * (cond - uncond), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[3], uncond[3], atol=1e-5)  # w = -1: unconditional
    # interval in sigma / alpha: t = 0.5 is at level ~1.6; outside (0, 1] -> no guidance
    level = float(SCHED.sigma(0.5) / SCHED.alpha(0.5))
    out = classifier_free(m, w, null_label=4, schedule=SCHED, interval=(0.0, 1.0))(x, 0.5, {"y": y})
    np.testing.assert_array_equal(out, cond)
    inside = classifier_free(m, w, null_label=4, schedule=SCHED, interval=(level - 0.1, level + 0.1))
    np.testing.assert_allclose(inside(x, 0.5, {"y": y}), want, rtol=1e-5, atol=1e-5)
    # rescale phi = 1: the per-sample std of the conditional output
    r = classifier_free(m, w, null_label=4, rescale=1.0)(x, 0.5, {"y": y})
    np.testing.assert_allclose(jnp.std(r, 1), jnp.std(cond, 1), rtol=1e-5)
    np.testing.assert_allclose(r, want * (jnp.std(cond, 1) / jnp.std(want, 1))[:, None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("solver", ["dpmpp_2m", "unipc_bh2"])
def test_cfg_at_no_guidance_is_the_conditional_sampler_bit_for_bit(c16, solver):
    """w = 0 reproduces the conditional sampler exactly: static (the transform returns the model)
    and traced (the guided combination cond + 0 (cond - uncond) in both evaluation modes)."""
    m = c16.model_fn(SCHED)
    grid = make_grid(SCHED, "logsnr", 6)
    x_T = _x(4, 32, 16)
    args = {"y": jnp.arange(32) % 4}
    ref = jdiff.sample(m, SCHED, get_solver(solver), grid, x_T, args=args)
    for guided in (classifier_free(m, 0.0, null_label=4), classifier_free(m, jnp.float32(0), null_label=4),
                   classifier_free(m, jnp.float32(0), null_label=4, batched=False)):
        np.testing.assert_array_equal(jdiff.sample(guided, SCHED, get_solver(solver), grid, x_T, args=args), ref)


def test_guided_sampling_reuses_the_program(c16):
    """New scales, labels and re-created transforms reuse one compiled program."""
    grid = make_grid(SCHED, "logsnr", 5)
    x_T = _x(5, 8, 16)

    def run(w, y):
        g = classifier_free(c16.model_fn(SCHED), jnp.float32(w), null_label=4)
        g = objective_guidance(g, SCHED, _mean_objective, jnp.float32(0.1))
        return jdiff.sample(g, SCHED, get_solver("ddim"), grid, x_T, args={"y": jnp.full(8, y)})

    run(1.0, 0)
    n = compiled_programs()
    run(2.0, 1)
    run(3.0, 2)
    assert compiled_programs() == n


def _mean_objective(images, args):  # noqa: ARG001
    return jnp.mean(images, axis=1)


# --- gradient guidance ------------------------------------------------------------------------

def _quadratic_log_prob(x, t, args):  # a smooth non-exact "classifier" with a t dependence
    return -jnp.sum((x - 0.3 * args["y"][:, None]) ** 2, 1) * (1 + t) + jnp.sin(x[:, 0])


def _feature_objective(images, args):  # noqa: ARG001
    return jnp.tanh(images[:, 0] * images[:, 1]) + 0.5 * jnp.sum(images**2, 1)


def _fd_grad(f, x, h=1e-6):
    """Central finite differences of sum(f(x)) (float64)."""
    g = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):
        e = np.zeros(x.shape)
        e[idx] = h
        g[idx] = (float(jnp.sum(f(x + e))) - float(jnp.sum(f(x - e)))) / (2 * h)
    return g


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_gradient_guidance_matches_finite_differences(prediction):
    """The guidance term, eps - eps~ = sigma s grad G, against central differences of G: for a
    classifier G = log p(x_t) and for an objective G = S(preview(x0(x_t))) through the model."""
    with jax.enable_x64(True):
        mix = get_testbed("mix2d")
        mix = mix.replace(log_weights=mix.log_weights.astype(jnp.float64), means=mix.means.astype(jnp.float64),
                          eigvals=mix.eigvals.astype(jnp.float64))
        m = mix.model_fn(SCHED, prediction)
        x = _x(6, 3, 2, jnp.float64)
        args = {"y": jnp.array([0, 1, 2])}
        t, s = 0.4, 1.7
        a, sg = SCHED.alpha(t), SCHED.sigma(t)

        def eps_of(fn):
            return to_x0_eps(fn(x, t, args), x, a, sg, prediction)[1]

        base = eps_of(m)
        g_cls = (base - eps_of(classifier_guidance(m, SCHED, _quadratic_log_prob, s, prediction=prediction))) / (sg * s)
        np.testing.assert_allclose(g_cls, _fd_grad(lambda z: _quadratic_log_prob(z, t, args), np.asarray(x)),
                                   rtol=1e-6, atol=1e-7)
        for preview in ("braindive", "x0"):
            guided = objective_guidance(m, SCHED, _feature_objective, s, prediction=prediction, preview=preview)
            g_obj = (base - eps_of(guided)) / (sg * s)

            def total(z):
                x0 = to_x0_eps(m(z, t, args), z, a, sg, prediction)[0]
                return _feature_objective(preview_image(x0, z, a, sg, preview), args)

            np.testing.assert_allclose(g_obj, _fd_grad(total, np.asarray(x)), rtol=1e-6, atol=1e-7)


def test_braindive_preview_matches_the_reference_on_vp():
    """On VP schedules the preview is BrainDiVE's fac * x0 + (1 - fac) * z_t, fac = sqrt(1 - abar)."""
    x0, z = _x(7, 2, 3), _x(8, 2, 3)
    t = 0.3
    a, s = SCHED.alpha(t), SCHED.sigma(t)
    fac = jnp.sqrt(1 - a**2)
    np.testing.assert_allclose(preview_image(x0, z, a, s), fac * x0 + (1 - fac) * z, rtol=1e-6)


@pytest.mark.parametrize("which", ["classifier", "objective"])
def test_gradient_guidance_at_zero_is_the_model(which):
    m = get_testbed("mix2d").model_fn(SCHED)
    grid = make_grid(SCHED, "logsnr", 5)
    x_T = _x(9, 16, 2)
    args = {"y": jnp.zeros(16, jnp.int32)}
    ref = jdiff.sample(m, SCHED, get_solver("dpmpp_2m"), grid, x_T, args=args)
    for scale in (0.0, jnp.float32(0.0)):
        if which == "classifier":
            g = classifier_guidance(m, SCHED, _quadratic_log_prob, scale)
        else:
            g = objective_guidance(m, SCHED, _feature_objective, scale)
        np.testing.assert_array_equal(jdiff.sample(g, SCHED, get_solver("dpmpp_2m"), grid, x_T, args=args), ref)


def test_guidance_raises_class_accuracy(c16):
    """Measured direction on the exact testbed: the true class accuracy of the samples rises with
    the scale, for both methods (the diversity side is measured by ``jdiff bench guidance``)."""
    grid = make_grid(SCHED, "logsnr", 12)
    y = jnp.arange(256) % 4
    x_T = jdiff.init_noise(SCHED, grid[0], _x(10, 256, 16))
    unc = c16.model_fn(SCHED, conditional=False)
    acc = {}
    for method in ("cfg", "classifier"):
        for w in (0.0, 3.0):
            w_ = jnp.float32(w)
            g = (classifier_free(c16.model_fn(SCHED), w_, null_label=4) if method == "cfg"
                 else classifier_guidance(unc, SCHED, c16.classifier(SCHED), w_ + (method == "classifier")))
            x = jdiff.sample(g, SCHED, get_solver("dpmpp_2m"), grid, x_T, args={"y": y})
            acc[method, w] = float(jnp.mean(jnp.argmax(c16.class_log_probs(x), 1) == y))
    assert acc["cfg", 3.0] > acc["cfg", 0.0] + 0.1 and acc["classifier", 3.0] > acc["classifier", 0.0] + 0.1


# --- errors -----------------------------------------------------------------------------------

def _not_scalar(images, args):  # noqa: ARG001
    return images


def test_bad_inputs():
    m = get_testbed("classes2d").model_fn(SCHED)
    for bad in (float("nan"), float("inf"), jnp.array([1.0, jnp.inf])):
        with pytest.raises(ValueError, match="scale must be finite"):
            classifier_free(m, bad, null_label=4)
        with pytest.raises(ValueError, match="scale must be finite"):
            objective_guidance(m, SCHED, _feature_objective, bad)
    with pytest.raises(ValueError, match="scalar or a \\(batch,\\) vector"):
        classifier_free(m, jnp.ones((2, 2)), null_label=4)
    with pytest.raises(ValueError, match="null_label"):
        classifier_free(m, 1.0, null_label=-1)
    with pytest.raises(ValueError, match="needs the schedule"):
        classifier_free(m, 1.0, null_label=4, interval=(0.1, 1.0))
    with pytest.raises(ValueError, match="rescale"):
        classifier_free(m, 1.0, null_label=4, rescale=2.0)
    with pytest.raises(ValueError, match="unknown preview"):
        objective_guidance(m, SCHED, _feature_objective, 1.0, preview="clip")
    grid = make_grid(SCHED, "logsnr", 4)
    g = objective_guidance(m, SCHED, _not_scalar, 1.0)
    with pytest.raises(ValueError, match="objective must return one scalar per sample, shape \\(4,\\)"):
        jdiff.sample(g, SCHED, get_solver("ddim"), grid, _x(11, 4, 2))
    g = classifier_free(m, jnp.ones(3), null_label=4)
    with pytest.raises(ValueError, match="per-sample guidance scales have shape \\(3,\\), the batch is 4"):
        jdiff.sample(g, SCHED, get_solver("ddim"), grid, _x(11, 4, 2), args={"y": jnp.zeros(4, jnp.int32)})
    with pytest.raises(ValueError, match="class label 5 is out of range: valid labels are 0..3 or the null class 4"):
        check_labels([0, 5], 4)
    with pytest.raises(ValueError, match="class label 4 is out of range: valid labels are 0..3$"):
        check_labels([4], 4, allow_null=False)
    with pytest.raises(ValueError, match="integers"):
        check_labels([0.5], 4)


def test_cfg_w_equals_exact_classifier_guidance_at_one_plus_w(c16):
    """On exact models score_c + w (score_c - score_u) = score_u + (1 + w) grad log p(c | x_t)."""
    x, y = _x(12, 4, 16), {"y": jnp.array([3, 2, 1, 0])}
    unc = c16.model_fn(SCHED, conditional=False)
    for w in (0.5, 2.0):
        a = classifier_free(c16.model_fn(SCHED), w, null_label=4)(x, 0.3, y)
        b = classifier_guidance(unc, SCHED, c16.classifier(SCHED), 1.0 + w)(x, 0.3, y)
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


@pytest.mark.slow  # ~10 s; its bad inputs are in tests/test_cli_bad_inputs.py
def test_bench_guidance_records_and_outputs(tmp_path):
    from jdiff.bench.guidance import GuidanceConfig, run_guidance, write_outputs

    cfg = GuidanceConfig(testbeds=("classes2d",), scales=(0.0, 1.0), nfe=(6,), n_per_class=40)
    recs = run_guidance(cfg)
    assert len(recs) == 4
    by = {(r["method"], r["scale"]): r for r in recs}
    for k in ("accuracy", "sw", "diversity", "mode_entropy"):  # cfg w = 0 is classifier s = 1
        assert by["cfg", 0.0][k] == pytest.approx(by["classifier", 1.0][k], rel=1e-3, abs=1e-4)
    assert by["classifier", 0.0]["accuracy"] < 0.5 < by["classifier", 1.0]["accuracy"]  # unconditional: ~1/3
    assert by["cfg", 1.0]["accuracy"] > by["cfg", 0.0]["accuracy"]
    assert {"sw_floor", "diversity_exact", "accuracy_exact", "nfe", "solver"} <= set(recs[0])
    paths = write_outputs(recs, str(tmp_path / "out"), "test")
    assert "| cfg | 1 | dpmpp_2m |" in open(paths["md"]).read()
    assert json.load(open(paths["json"])) == recs and (tmp_path / "out" / "guidance.png").stat().st_size > 0


def test_cli_sample_with_labels_and_guidance(tmp_path, capsys):
    from jdiff.cli import main

    out = tmp_path / "s.npy"
    assert main(["sample", "--testbed", "classes2d", "--labels", "1", "--cfg", "2", "--n", "64", "--nfe", "8",
                 "--out", str(out)]) == 0
    x = np.load(out)
    assert x.shape == (64, 2) and "classifier-free guidance w = 2" in capsys.readouterr().out
    mix = get_testbed("classes2d")
    assert float(jnp.mean(jnp.argmax(mix.class_log_probs(jnp.asarray(x)), 1) == 1)) > 0.9
