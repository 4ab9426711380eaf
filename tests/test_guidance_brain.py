"""BrainDiVE-style brain-encoder guidance (jdiff.guidance.brain): encoders, ROI objective, re-ranking.

Fast (no diffusion-model training); the end-to-end experiment smoke run is marked slow.
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdiff
from jdiff.guidance import brain, objective_guidance

REPO = Path(__file__).resolve().parents[1]


def _normalized(x):
    return x / np.sqrt(np.sum(x * x, axis=1, keepdims=True) + brain.NORM_EPS)


def _lstsq_with_intercept(x, y):
    a = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    sol = np.linalg.lstsq(a, y, rcond=None)[0]
    return sol[:-1], sol[-1]


@pytest.mark.parametrize("normalize", [True, False])
def test_ridge_recovers_a_known_linear_map_exactly_and_matches_lstsq(normalize):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 12))
    w, b = rng.standard_normal((12, 7)), rng.standard_normal(7)
    xf = _normalized(x) if normalize else x
    y = xf @ w + b  # noise-free
    enc = brain.fit_ridge(x, y, l2=0.0, normalize=normalize)
    assert enc.normalize is normalize and enc.weight.shape == (12, 7) and enc.bias.shape == (7,)
    np.testing.assert_allclose(enc.weight, w, atol=2e-5)
    np.testing.assert_allclose(enc.bias, b, atol=2e-5)
    np.testing.assert_allclose(brain.r2_score(enc, x, y), 1.0, atol=1e-6)
    # noisy responses: the same solution as a direct least-squares fit with an intercept column
    y_noisy = y + 0.3 * rng.standard_normal(y.shape)
    w_ls, b_ls = _lstsq_with_intercept(xf, y_noisy)
    enc = brain.fit_ridge(x, y_noisy, l2=0.0, normalize=normalize)
    np.testing.assert_allclose(enc.weight, w_ls, atol=2e-5)
    np.testing.assert_allclose(enc.bias, b_ls, atol=2e-5)


def test_ridge_penalty_leaves_the_bias_unpenalised_in_primal_and_dual_form():
    """l2 > 0: the normal equations of [W; b] with the penalty on W only, for N > F and N < F."""
    rng = np.random.default_rng(1)
    for n, f in ((60, 8), (6, 20)):  # primal, dual
        x, y = rng.standard_normal((n, f)), rng.standard_normal((n, 3)) + 5.0
        xf = _normalized(x)
        a = np.concatenate([xf, np.ones((n, 1))], axis=1)
        pen = np.diag(np.r_[np.full(f, 0.7), 0.0])
        sol = np.linalg.solve(a.T @ a + pen, a.T @ y)
        enc = brain.fit_ridge(x, y, l2=0.7)
        np.testing.assert_allclose(enc.weight, sol[:-1], atol=1e-5)
        np.testing.assert_allclose(enc.bias, sol[-1], atol=1e-5)


def test_adamw_approaches_the_ridge_solution():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((256, 10))
    w = rng.standard_normal((10, 4))
    y = _normalized(x) @ w + 0.5 + 0.05 * rng.standard_normal((256, 4))
    ridge = brain.fit_ridge(x, y, l2=1e-6)
    enc, losses = brain.fit_adamw(x, y, steps=800, lr=5e-2, weight_decay=0.0, key=jax.random.key(1, impl="rbg"),
                                  return_losses=True)
    assert losses.shape == (800,) and losses[-100:].mean() < 0.05 * losses[:10].mean()
    np.testing.assert_allclose(enc.weight, ridge.weight, atol=0.1)
    pred, pred_ridge = np.asarray(enc(x)), np.asarray(ridge(x))
    assert np.sqrt(np.mean((pred - pred_ridge) ** 2)) < 0.03
    assert np.all(brain.r2_score(enc, x, y) > 0.98)


@dataclasses.dataclass(frozen=True)
class _Tanh:
    """A nonlinear stand-in backbone, ``tanh(flat(x) A)`` (the static part of a Partial)."""

    def __call__(self, a, images):
        return jnp.tanh(images.reshape(images.shape[0], -1) @ a)


def test_roi_objective_is_the_roi_mean_and_its_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        a = jnp.asarray(rng.standard_normal((6, 5)) * 0.5)
        feature_fn = jax.tree_util.Partial(_Tanh(), a)
        enc = brain.LinearEncoder(jnp.asarray(rng.standard_normal((5, 9))), jnp.asarray(rng.standard_normal(9)))
        roi = np.array([0, 3, 4, 8])
        obj = brain.roi_objective(enc, feature_fn, roi)
        x = jnp.asarray(rng.standard_normal((3, 2, 3)))
        # the value: mean over the ROI voxels of the encoder's prediction, per image
        feats = np.tanh(np.asarray(x).reshape(3, -1) @ np.asarray(a))
        pred = _normalized(feats) @ np.asarray(enc.weight) + np.asarray(enc.bias)
        value = np.asarray(obj(x, None))
        assert value.shape == (3,)
        np.testing.assert_allclose(value, pred[:, roi].mean(1), rtol=1e-12)
        mask = np.zeros(9, bool)
        mask[roi] = True
        np.testing.assert_allclose(brain.roi_objective(enc, feature_fn, mask)(x, None), value, rtol=1e-12)
        # the gradient of the summed objective against central differences
        total = jax.jit(lambda x_: jnp.sum(obj(x_, None)))
        grad = np.asarray(jax.grad(total)(x))
        h, fd = 1e-6, np.zeros(x.size)
        for i in range(x.size):
            e = np.zeros(x.size)
            e[i] = h
            e = jnp.asarray(e.reshape(x.shape))
            fd[i] = (float(total(x + e)) - float(total(x - e))) / (2 * h)
        np.testing.assert_allclose(grad.ravel(), fd, rtol=1e-6, atol=1e-8)


def test_a_new_encoder_or_roi_reuses_the_compiled_program():
    traces = []

    @jax.jit
    def run(objective, x):
        traces.append(1)
        return objective(x, None)

    rng = np.random.default_rng(4)
    feature_fn = brain.linear_features(rng.standard_normal((4, 3)))
    x = jnp.asarray(rng.standard_normal((5, 2, 2)), jnp.float32)
    for seed, roi in ((0, [0, 1]), (1, [2]), (2, np.array([True, False, True, True]))):
        r = np.random.default_rng(seed)
        enc = brain.LinearEncoder(jnp.asarray(r.standard_normal((3, 4)), jnp.float32),
                                  jnp.asarray(r.standard_normal(4), jnp.float32))
        out = run(brain.roi_objective(enc, feature_fn, roi), x)
        assert out.shape == (5,)
    assert len(traces) == 1


def test_objective_guidance_with_an_roi_objective_raises_the_objective_on_mix2d():
    """The exact mix2d model (8 modes on the unit circle); features = the point itself, so with
    BrainDiVE's L2 normalisation the ROI (voxels 0 and 1, both reading cos(angle)) scores the
    direction. Guided samples from the same noise score higher than unguided ones."""
    schedule = jdiff.schedules.get_schedule("vp_linear")
    model_fn = jdiff.testbeds.get_testbed("mix2d").model_fn(schedule)
    enc = brain.LinearEncoder(jnp.asarray([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]]), jnp.asarray([0.0, -1.0, 0.0]))
    objective = brain.roi_objective(enc, brain.linear_features(jnp.eye(2)), [0, 1])
    solver = jdiff.solvers.get_solver("ddim")
    grid = jdiff.grids.make_grid(schedule, "logsnr", 20)
    z = jnp.asarray(np.random.default_rng(0).standard_normal((256, 2)), jnp.float32)
    x_T = jdiff.init_noise(schedule, grid[0], z)

    def score(scale):  # a traced scale: one program for both
        guided = objective_guidance(model_fn, schedule, objective, jnp.asarray(scale, jnp.float32))
        x = jdiff.sample(guided, schedule, solver, grid, x_T)
        return np.asarray(objective(x, None)), np.asarray(x)

    base, x0 = score(0.0)
    guided, x1 = score(1.0)
    assert np.all(np.isfinite(x1))
    # score = 1.5 cos(angle) - 0.5: unguided about -0.45 (modes evenly spread), guided about 0.9
    assert guided.mean() > base.mean() + 1.0
    assert np.mean(guided > base - 1e-3) > 0.9  # sample by sample, from the same noise
    assert np.mean(x1[:, 0] / np.linalg.norm(x1, axis=1) > 0.9) > 0.8  # mostly the mode at angle 0
    assert np.mean(x0[:, 0] / np.linalg.norm(x0, axis=1) > 0.9) < 0.25
    assert abs(np.linalg.norm(x1, axis=1).mean() - 1.0) < 0.1  # still on the circle of modes


def test_rerank_keeps_the_top_scores_in_order():
    scores = np.array([0.1, 5.0, -1.0, 3.0, 3.0, 2.0, 0.0, 4.0, 1.0, -2.0])
    images = np.arange(10 * 4.0).reshape(10, 2, 2)
    idx, kept = brain.rerank(images, scores)
    assert idx.tolist() == [1, 7]
    np.testing.assert_array_equal(kept, images[np.array([1, 7])])
    assert brain.rerank(images, scores, keep=0.5)[0].tolist() == [1, 7, 3, 4, 5]  # ties in input order
    assert brain.rerank(images, scores, keep=1.0)[0].tolist() == list(np.argsort(-scores, kind="stable"))
    assert brain.rerank(images, scores, keep=0.01)[0].tolist() == [1]  # at least one


@dataclasses.dataclass(frozen=True)
class _LinearNet:
    def __call__(self, mats, images):
        flat = images.reshape(images.shape[0], -1)
        return jnp.tanh(flat @ mats[0]), flat @ mats[1]


def test_simulated_voxels_follow_their_equation():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((4, 6)).astype(np.float32), (3 * rng.standard_normal((4, 3))).astype(np.float32)
    net = jax.tree_util.Partial(_LinearNet(), (jnp.asarray(a), jnp.asarray(b)))
    # "rbg" keys: the same draws on every run, and their programs compile much faster on CPU
    sim = brain.simulated_voxels(net, jax.random.key(0, impl="rbg"), num_classes=3, feature_dim=6,
                                 regions=[0, 2], voxels_per_region=5, noise_std=0.2)
    assert sim.num_voxels == 10 and sim.roi(2).tolist() == [False] * 5 + [True] * 5
    x = rng.standard_normal((1000, 2, 2)).astype(np.float32)
    flat = x.reshape(1000, -1)
    f, logits = np.tanh(flat @ a), flat @ b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    sel = np.asarray(sim.selectivity)
    assert np.all(sel[0, :5] >= 0.5) and np.all(sel[2, 5:] >= 0.5) and np.all(sel[1] <= 0.1)
    expected = p @ sel + _normalized(f) @ np.asarray(sim.mix) + np.asarray(sim.offset)
    mean = np.asarray(sim.mean(x))
    np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-5)
    noise = np.asarray(sim.sample(x, jax.random.key(1, impl="rbg"))) - mean
    assert abs(noise.std() - 0.2) < 0.01  # 10,000 draws
    # the class-2 region responds most to the images the true classifier calls 2
    roi_mean = mean[:, sim.roi(2)].mean(1)
    assert roi_mean[p.argmax(1) == 2].mean() > roi_mean[p.argmax(1) != 2].mean() + 0.5
    with pytest.raises(ValueError, match="no region prefers class 1"):
        sim.roi(1)


def test_bad_inputs_are_clear_value_errors():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((20, 4)), rng.standard_normal((20, 3))
    enc = brain.fit_ridge(x, y)
    feature_fn = brain.linear_features(np.eye(4))
    cases = [
        (lambda: brain.fit_ridge(x, y[:10]), "same number of samples"),
        (lambda: brain.fit_ridge(x[:, 0], y), "must be 2-D"),
        (lambda: brain.fit_ridge(np.where(x > 1, np.nan, x), y), "finite"),
        (lambda: brain.fit_ridge(x, y, l2=-1.0), "l2 must be"),
        (lambda: brain.fit_ridge(x[:1], y[:1]), "at least 2 samples"),
        (lambda: brain.fit_adamw(x, y, steps=0), "steps must be"),
        (lambda: brain.fit_adamw(x, y, lr=float("inf")), "lr must be"),
        (lambda: brain.fit_adamw(x, y, batch_size=0), "batch_size must be"),
        (lambda: brain.r2_score(enc, x[:, :3], y), "maps 4 features"),
        (lambda: enc(np.ones((2, 5))), "takes 4 features"),
        (lambda: brain.roi_objective(enc, feature_fn, np.zeros(3, bool)), "ROI is empty"),
        (lambda: brain.roi_objective(enc, feature_fn, []), "ROI is empty"),
        (lambda: brain.roi_objective(enc, feature_fn, np.ones(4, bool)), r"shape \(3,\)"),
        (lambda: brain.roi_objective(enc, feature_fn, [0, 3]), r"lie in \[0, 3\)"),
        (lambda: brain.roi_objective(enc, feature_fn, [0.5]), "boolean mask or integer"),
        (lambda: brain.roi_objective(enc, "features", [0]), "feature_fn must be callable"),
        (lambda: brain.roi_objective(enc.replace(bias=enc.bias.at[0].set(jnp.nan)), feature_fn, [0]), "finite"),
        (lambda: brain.roi_objective(np.ones((4, 3)), feature_fn, [0]), "must be a LinearEncoder"),
        (lambda: brain.roi_objective(enc, feature_fn, [0], clip=(1.0, -1.0)), "low < high"),
        (lambda: brain.roi_objective(enc, brain.linear_features(np.eye(5)), [0])(jnp.ones((2, 5)), None),
         "takes 4 features"),
        (lambda: brain.rerank(x, np.arange(20.0), keep=0.0), r"keep must be a fraction in \(0, 1\]"),
        (lambda: brain.rerank(x, np.arange(20.0), keep=1.5), r"keep must be a fraction in \(0, 1\]"),
        (lambda: brain.rerank(x, np.r_[np.arange(19.0), np.nan]), "scores must be finite"),
        (lambda: brain.rerank(x, np.arange(19.0)), "same length"),
        (lambda: brain.rerank(x[:0], np.zeros(0)), "at least one image"),
        (lambda: brain.linear_features(np.ones(3)), "must be 2-D"),
        (lambda: brain.simulated_voxels(feature_fn, jax.random.key(0), num_classes=3, feature_dim=4,
                                        regions=[3]), "regions must be"),
        (lambda: brain.simulated_voxels(feature_fn, jax.random.key(0), num_classes=3, feature_dim=4,
                                        noise_std=-1.0), "noise_std must be"),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            fn()


@pytest.mark.slow
def test_brain_guidance_experiment_quick(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "experiments" / "brain_guidance.py"), "--quick", "--workdir",
           str(tmp_path / "run"), "--out", str(out), "--summary", str(tmp_path / "summary.md")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert len(data["seeds"]) >= 2 and data["rows"]
    assert all(np.isfinite(r["true_roi_response"]["mean"]) for r in data["rows"])
    assert {"ridge", "adamw"} <= set(data["encoders"])
    for name in ("results.md", "response_vs_scale.png", "guided_samples.png"):
        assert (out / name).stat().st_size > 0
    assert (tmp_path / "summary.md").read_text().startswith("#")
    # bad input: one line and status 2
    bad = subprocess.run(cmd + ["--scales", "0,-x"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "error" in bad.stderr
