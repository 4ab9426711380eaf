"""Training: optimiser schedule, EMA, train step, checkpoints (truncation, SIGKILL), sharding."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdiff import training
from jdiff.run import RunConfig, build_run, load_run, run_learning_rate, train_run

REPO = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.update(extra)
    return env


def test_learning_rate_warmup_then_constant_or_cosine():
    lr = training.learning_rate_schedule(1e-3, warmup_steps=10)
    np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10, 1000)], [0.0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
    cos = training.learning_rate_schedule(1e-3, warmup_steps=10, decay_steps=100)
    np.testing.assert_allclose([float(cos(10)), float(cos(60)), float(cos(110))], [1e-3, 5e-4, 0.0], atol=1e-9)
    with pytest.raises(ValueError):
        training.learning_rate_schedule(0.0)


def test_ema_update_and_warmup():
    params = {"w": jnp.ones(3)}
    ema = training.ema_update({"w": jnp.zeros(3)}, params, 0.9)
    np.testing.assert_allclose(ema["w"], 0.1, rtol=1e-6)

    def loss_fn(p, batch, key):
        loss = jnp.sum((p["w"] - batch["x"]) ** 2)
        return loss, {"loss": loss}

    opt = training.make_optimizer(0.1, grad_clip=None)
    state = training.create_train_state({"w": jnp.zeros(2)}, opt)
    step = jax.jit(training.make_train_step(loss_fn, opt, ema_decay=0.999, ema_warmup=True))
    new, metrics = step(state, {"x": jnp.ones(2)})
    # warm-up decay at step 0 is min(0.999, 1/10): the EMA moves 90% of the way to the new params
    np.testing.assert_allclose(new.ema_params["w"], 0.9 * new.params["w"], rtol=1e-6)
    assert int(new.step) == 1 and float(metrics["grad_norm"]) == pytest.approx(2 * np.sqrt(2), rel=1e-6)


def test_grad_clip_limits_what_adamw_sees():
    """With grad_clip=1 Adam's first moment after one step is (1 - b1) * g / |g|; without, (1 - b1) * g."""
    import optax

    params = {"w": jnp.ones(4)}
    grads = {"w": jnp.full(4, 1e3)}  # global norm 2000
    norms = {}
    for clip in (None, 1.0):
        opt = training.make_optimizer(1.0, grad_clip=clip)
        _, state = opt.update(grads, opt.init(params), params)
        adam_state = state[-1][0]
        norms[clip] = float(optax.tree.norm(adam_state.mu))
    assert norms[1.0] == pytest.approx(0.1 * 1.0, rel=1e-5)
    assert norms[None] == pytest.approx(0.1 * 2000.0, rel=1e-5)


def test_mixed_precision_keeps_float32_params_and_learns():
    cfg = RunConfig(data="mix2d", model="mlp", mlp_features=64, mlp_depth=2, batch_size=128, lr=3e-3,
                    warmup_steps=0, steps=150)
    run = build_run(cfg)
    opt = training.make_optimizer(cfg.lr, grad_clip=1.0)
    from jdiff.testbeds import get_testbed

    big = {"x": get_testbed("mix2d").sample(jax.random.key(7), 8192)}
    eval_loss = jax.jit(lambda p: run.loss_fn(p, big, jax.random.key(8))[0])
    init = run.init_params()
    final = {}
    for dtype in (None, jnp.bfloat16):
        state = training.create_train_state(init, opt)
        step = training.jit_train_step(training.make_train_step(run.loss_fn, opt, compute_dtype=dtype))
        res = training.fit(state, step, run.batch_fn, cfg.steps, log_every=50, progress=False)
        leaves = jax.tree_util.tree_leaves(res.state.params)
        assert all(leaf.dtype == jnp.float32 for leaf in leaves)
        final[str(dtype)] = float(eval_loss(res.state.params))
    start = float(eval_loss(init))
    for value in final.values():
        assert value < 0.6 * start  # it learns
    # bf16 and f32 training reach the same loss to bf16 accuracy
    np.testing.assert_allclose(final["None"], final[str(jnp.bfloat16)], rtol=0.1)


def test_compute_dtype_casts_the_forward_pass_and_keeps_float32_updates():
    """With ``compute_dtype=bfloat16`` the loss sees bfloat16 parameters and inputs (the cast is
    really applied), while the gradients, the optimizer update and the stored parameters stay
    float32: the bf16 step's gradient equals the float32 gradient of the bf16-rounded problem."""
    seen = {}

    def loss_fn(params, batch, key):  # a quadratic whose gradient shows the rounding
        seen["w"], seen["x"] = params["w"].dtype, batch["x"].dtype
        r = batch["x"] @ params["w"] - 1.0
        return jnp.mean(r.astype(jnp.float32) ** 2), {}

    params = {"w": jnp.full((3, 2), 1.0 / 3.0, jnp.float32)}
    batch = {"x": jnp.full((4, 3), 1.0 / 7.0, jnp.float32)}
    opt = training.make_optimizer(1e-2)
    out = {}
    for dtype in (None, jnp.bfloat16):
        state = training.create_train_state(params, opt)
        new, metrics = training.make_train_step(loss_fn, opt, compute_dtype=dtype)(state, batch)
        out[str(dtype)] = (seen["w"], seen["x"], new, float(metrics["grad_norm"]))
    w32, x32, st32, gn32 = out["None"]
    w16, x16, st16, gn16 = out[str(jnp.bfloat16)]
    assert (w32, x32) == (jnp.float32, jnp.float32)
    assert (w16, x16) == (jnp.bfloat16, jnp.bfloat16)
    assert st16.params["w"].dtype == jnp.float32
    # the bf16 gradient is that of the rounded problem, not the float32 one
    xb, wb = np.float32(jnp.bfloat16(1.0 / 7.0)), np.float32(jnp.bfloat16(1.0 / 3.0))
    r = np.float32(jnp.bfloat16(3 * xb * wb)) - 1.0
    grad = 2.0 * r * xb * 4 / 8  # d/dw_ij mean_k,j (x_k . w_j - 1)^2 = 2 r x / (rows of w cols)
    assert gn16 != gn32
    np.testing.assert_allclose(gn16, abs(grad) * np.sqrt(6), rtol=1e-2)


def _small_state(value: float, step: int):
    opt = training.make_optimizer(1e-3)
    params = {"w": jnp.full((4, 3), value), "b": jnp.arange(3.0) + value}
    state = training.create_train_state(params, opt, seed=1)
    return state.replace(step=jnp.int32(step)), opt


def test_checkpointer_keeps_last_n_and_falls_back_from_truncated(tmp_path, caplog):
    ck = training.Checkpointer(tmp_path / "ck", save_every=10, keep=2)
    for step in (10, 15, 20, 30):
        saved = ck.save(_small_state(float(step), step)[0])
        assert saved == (step % 10 == 0)
    assert ck.all_steps() == [20, 30]
    like = _small_state(0.0, 0)[0]
    state, meta = ck.restore_latest(like)
    assert int(state.step) == 30 and float(state.params["w"][0, 0]) == 30.0 and meta["step"] == 30
    ck.close()
    # truncate every data file of the newest checkpoint: detected, the previous one is used
    data_files = [p for p in (tmp_path / "ck" / "30").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert data_files
    for p in data_files:
        with open(p, "r+b") as f:
            f.truncate(p.stat().st_size // 2)
    ck = training.Checkpointer(tmp_path / "ck", save_every=10, keep=2)
    state, _ = ck.restore_latest(like)
    assert int(state.step) == 20 and float(state.params["w"][0, 0]) == 20.0
    ck.close()


def test_fingerprint_mismatch_is_detected(tmp_path):
    ck = training.Checkpointer(tmp_path / "ck", save_every=1, keep=None)
    ck.save(_small_state(1.0, 1)[0])
    ck.save(_small_state(2.0, 2)[0])
    meta_file = next((tmp_path / "ck" / "2" / "meta").glob("metadata"))
    meta = json.loads(meta_file.read_text())
    meta["fingerprint"] += 1.0
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="fingerprint"):
        ck.restore(2, _small_state(0.0, 0)[0])
    assert int(ck.restore_latest(_small_state(0.0, 0)[0])[0].step) == 1
    # the resumed run redoes step 2: its save replaces the broken checkpoint (not skipped as
    # "already saved", which would leave every later resume at step 1)
    assert ck.save(_small_state(2.5, 2)[0])
    assert ck.all_steps() == [1, 2] and not ck.unusable
    state, _ = ck.restore_latest(_small_state(0.0, 0)[0])
    assert int(state.step) == 2 and float(state.params["w"][0, 0]) == 2.5
    assert not ck.save(_small_state(3.0, 2)[0])  # a good checkpoint is still never overwritten
    ck.close()


def _records(path):
    out = {}
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec  # a resumed run re-logs the steps after its checkpoint: keep the last
    return out


TRAIN_ARGS = ["--data", "mix2d", "--model", "mlp", "--mlp-features", "64", "--mlp-depth", "2",
              "--batch-size", "64", "--steps", "1500", "--save-every", "100", "--log-every", "50",
              "--warmup-steps", "20", "--lr", "1e-3", "--quiet"]


@pytest.mark.slow  # tests/test_cli_runs.py covers an interrupted run (SIGINT) in the default set
def test_sigkill_mid_run_resumes_with_same_trajectory(tmp_path):
    """A training process killed with SIGKILL resumes from its last checkpoint: same step count,
    same loss trajectory and same final parameters as an uninterrupted run."""
    cmd = [sys.executable, "-m", "jdiff.cli", "train"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = subprocess.Popen(cmd + ["--workdir", str(ref_dir)] + TRAIN_ARGS, env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc = subprocess.Popen(cmd + ["--workdir", str(run_dir)] + TRAIN_ARGS, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    ck = run_dir / "checkpoints"
    while time.time() < deadline:
        steps = [int(p.name) for p in ck.glob("*") if p.name.isdigit()] if ck.exists() else []
        if steps and max(steps) >= 300:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = max(int(p.name) for p in ck.glob("*") if p.name.isdigit())
    assert killed_at < 1500
    out = subprocess.run(cmd + ["--workdir", str(run_dir)] + TRAIN_ARGS, env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from step" in out.stdout
    ref_out, ref_err = ref.communicate(timeout=300)
    assert ref.returncode == 0, ref_err[-2000:]
    got, want = _records(run_dir / "metrics.jsonl"), _records(ref_dir / "metrics.jsonl")
    assert sorted(got) == sorted(want) and max(got) == 1500
    for step in want:
        np.testing.assert_allclose(got[step]["loss"], want[step]["loss"], rtol=1e-5, err_msg=f"step {step}")
    _, s_run = load_run(run_dir)
    _, s_ref = load_run(ref_dir)
    assert int(s_run.step) == int(s_ref.step) == 1500
    for a, b in zip(jax.tree_util.tree_leaves(s_run), jax.tree_util.tree_leaves(s_ref)):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=1e-6)


SHARDING_WORKER = r"""
import json, sys
import jax, numpy as np
from jdiff.run import RunConfig, train_run
assert jax.device_count() == 4, jax.devices()
out = {}
for dp in (True, False):
    cfg = RunConfig(data="mix2d", model="mlp", mlp_features=64, mlp_depth=2, batch_size=64, steps=8,
                    save_every=1000, log_every=4, data_parallel=dp, lr=1e-3, warmup_steps=0)
    res = train_run(cfg, sys.argv[1] + ("/dp" if dp else "/single"), progress=False)
    leaves = jax.tree_util.tree_leaves(res.state.params)
    out[str(dp)] = [np.asarray(x).ravel().tolist() for x in leaves]
    out[str(dp) + "_sharding"] = str(leaves[0].sharding)
    out[str(dp) + "_loss"] = [h["loss"] for h in res.history]
print(json.dumps(out))
"""


def test_data_parallel_on_four_cpu_devices_matches_one_device(tmp_path):
    out = subprocess.run([sys.executable, "-c", SHARDING_WORKER, str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert "NamedSharding" in res["True_sharding"] and "data" in res["True_sharding"]
    np.testing.assert_allclose(res["True_loss"], res["False_loss"], rtol=1e-5)
    for a, b in zip(res["True"], res["False"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


MULTIHOST_WORKER = r"""
import json, sys
import jax
pid, port, workdir, steps = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from jdiff.training import initialize_distributed
initialize_distributed(coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid)
import numpy as np
from jdiff.run import RunConfig, train_run
assert jax.process_count() == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
cfg = RunConfig(data="mix2d", model="mlp", mlp_features=64, mlp_depth=2, batch_size=64, steps=steps,
                save_every=4, log_every=4, lr=1e-3, warmup_steps=0)
res = train_run(cfg, workdir, progress=False)
leaves = jax.tree_util.tree_leaves(res.state.params)
print("RESULT " + json.dumps({"resumed_from": res.resumed_from, "step": int(res.state.step),
      "sharding": str(leaves[0].sharding), "loss": {h["step"]: h["loss"] for h in res.history},
      "params": [np.asarray(x.addressable_data(0)).ravel().tolist() for x in leaves]}))
"""


def _free_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _two_processes(workdir, steps):
    """Run MULTIHOST_WORKER as processes 0 and 1 (2 CPU devices each) on one work directory."""
    # Output goes to files, not pipes: at exit each process waits for the other (jax.distributed
    # shutdown barrier), so a process blocked on a full pipe would hang both.
    port, env = str(_free_port()), _env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    logs = [(workdir.parent / f"{workdir.name}_{steps}_{i}.out", workdir.parent / f"{workdir.name}_{steps}_{i}.err")
            for i in range(2)]
    procs = []
    for i, (out, err) in enumerate(logs):
        with open(out, "w") as fo, open(err, "w") as fe:
            procs.append(subprocess.Popen([sys.executable, "-c", MULTIHOST_WORKER, str(i), port, str(workdir),
                                           str(steps)], env=env, stdout=fo, stderr=fe))
    try:
        for proc in procs:
            proc.wait(timeout=300)
    finally:
        for proc in procs:
            proc.kill()
    results = []
    for proc, (out, err) in zip(procs, logs):
        assert proc.returncode == 0, err.read_text()[-3000:]
        results.append(json.loads(next(l for l in out.read_text().splitlines() if l.startswith("RESULT "))[7:]))
    return results


@pytest.mark.slow  # ~36 s: two jax.distributed processes; 4-device data parallelism stays in the default set
def test_two_process_training_with_resume_matches_one_device(tmp_path):
    """Multi-host path: two processes joined by jax.distributed (gloo collectives on CPU), each
    feeding its half of every batch to a 4-device mesh, checkpointing into one shared directory;
    a second launch resumes. Losses and parameters equal a single-device run of the same config."""
    first = _two_processes(tmp_path / "mh", 8)
    second = _two_processes(tmp_path / "mh", 12)
    cfg = RunConfig(data="mix2d", model="mlp", mlp_features=64, mlp_depth=2, batch_size=64, steps=12,
                    save_every=1000, log_every=4, lr=1e-3, warmup_steps=0, data_parallel=False)
    ref = train_run(cfg, tmp_path / "ref", progress=False)
    ref_loss = {h["step"]: h["loss"] for h in ref.history}
    ref_params = [np.asarray(x).ravel() for x in jax.tree_util.tree_leaves(ref.state.params)]
    for res in first + second:
        assert "NamedSharding" in res["sharding"] and "'data': 4" in res["sharding"]
    assert [r["step"] for r in first + second] == [8, 8, 12, 12]
    assert [r["resumed_from"] for r in second] == [8, 8]
    assert sorted(int(k) for k in first[0]["loss"]) == [4, 8] and list(second[0]["loss"]) == ["12"]
    for res in first + second:
        for step, loss in res["loss"].items():
            np.testing.assert_allclose(loss, ref_loss[int(step)], rtol=1e-5, err_msg=f"step {step}")
    for res in second:
        for a, b in zip(res["params"], ref_params):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_resume_rejects_changed_configuration(tmp_path):
    cfg = RunConfig(data="mix2d", model="mlp", mlp_features=32, mlp_depth=1, batch_size=16, steps=2,
                    save_every=1, log_every=1)
    train_run(cfg, tmp_path, progress=False)
    res = train_run(dataclasses.replace(cfg, steps=4), tmp_path, progress=False)
    assert res.resumed_from == 2 and int(res.state.step) == 4
    with pytest.raises(ValueError, match="different configuration"):
        train_run(dataclasses.replace(cfg, steps=4, lr=1.0), tmp_path, progress=False)
    with pytest.raises(ValueError, match="holds a run at step 4; steps=2 is below it"):
        train_run(cfg, tmp_path, progress=False)
    # a configuration that fails to build (bad data path) does not claim a fresh work directory
    fresh = tmp_path / "fresh"
    with pytest.raises(FileNotFoundError):
        train_run(dataclasses.replace(cfg, data=f"cifar10:{tmp_path / 'missing.npz'}"), fresh,
                  progress=False)
    assert not (fresh / "config.json").exists()


def test_run_learning_rate_constant_or_cosine_to_zero_at_the_last_step():
    cfg = RunConfig(lr=1e-3, warmup_steps=10, steps=110)
    const = run_learning_rate(cfg)
    cos = run_learning_rate(dataclasses.replace(cfg, lr_decay="cosine"))
    np.testing.assert_allclose([float(const(s)) for s in (5, 10, 110)], [5e-4, 1e-3, 1e-3], rtol=1e-6)
    np.testing.assert_allclose([float(cos(s)) for s in (5, 10, 60, 110)], [5e-4, 1e-3, 5e-4, 0.0],
                               rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="lr_decay"):
        run_learning_rate(dataclasses.replace(cfg, lr_decay="linear"))


def test_run_config_errors_are_clear():
    with pytest.raises(ValueError, match="model_kwargs"):
        build_run(RunConfig(data="digits", model_kwargs="{not json"))
    with pytest.raises(ValueError, match="unknown model"):
        build_run(RunConfig(data="digits", model="resnet"))
    with pytest.raises(ValueError, match="flat data"):
        build_run(RunConfig(data="digits", model="mlp"))
    with pytest.raises(ValueError, match="no labels"):
        build_run(RunConfig(data="mix2d", model="mlp", conditional=True))
    with pytest.raises(ValueError, match="unknown run config"):
        RunConfig.from_json({"bogus": 1})
    run = build_run(RunConfig(data="digits", model="unet_tiny", conditional=True,
                              model_kwargs='{"num_res_blocks": 1, "attn_resolutions": []}'))
    assert run.module.config.num_classes == 10 and run.null_label == 10 and run.data_shape == (8, 8, 1)
    batch = run.batch_fn(3)
    assert batch["x"].shape == (128, 8, 8, 1) and batch["y"].shape == (128,)
    np.testing.assert_array_equal(batch["x"], run.batch_fn(3)["x"])  # a pure function of the step


@pytest.mark.slow  # two UNet train-step compiles (~40 s on 2 cores)
def test_cpu_conv_eigen_option_gives_the_same_step():
    """The XLA:CPU option routing convolutions to Eigen changes speed, not results."""
    cfg = RunConfig(data="digits", model="unet_tiny", batch_size=8, model_kwargs='{"dropout": 0.0}')
    run = build_run(cfg)
    opt = training.make_optimizer(1e-3)
    state = training.create_train_state(run.init_params(), opt)
    step = training.make_train_step(run.loss_fn, opt)
    outs = []
    for options in (None, training.CPU_CONV_EIGEN):
        new, metrics = training.jit_train_step(step, donate=False, compiler_options=options)(state, run.batch_fn(0))
        outs.append((float(metrics["loss"]), jax.tree_util.tree_leaves(new.params)))
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-5)
    for a, b in zip(outs[0][1], outs[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_fit_logs_scalar_metrics_and_leaves_out_arrays(tmp_path):
    """A loss may return per-example arrays among its metrics (the discrete bound per sequence):
    fit logs the scalars and leaves the arrays out instead of failing."""
    import types

    state = types.SimpleNamespace(step=jnp.asarray(0))

    def step_fn(st, batch):
        return types.SimpleNamespace(step=st.step + 1), {"loss": jnp.asarray(batch), "per_seq": jnp.ones(3)}

    res = training.fit(state, step_fn, lambda s: float(s), 4, log_every=2, progress=False,
                       metrics_file=tmp_path / "m.jsonl")
    assert [(r["step"], r["loss"]) for r in res.history] == [(2, 1.0), (4, 3.0)]
    assert all("per_seq" not in r for r in res.history)
    assert [json.loads(line)["loss"] for line in (tmp_path / "m.jsonl").read_text().splitlines()] == [1.0, 3.0]
