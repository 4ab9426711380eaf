"""A training run from one flat configuration: data, model, loss, optimiser, checkpoints.

    cfg = RunConfig(data="digits", model="unet_digits", steps=3000)
    result = train_run(cfg, "runs/digits")      # trains, or resumes from runs/digits/checkpoints
    run = build_run(cfg)                          # data / network / loss, without training
    model_fn = run.model_fn(result.state.ema_params, y=labels)   # for jdiff.sample
    x = jdiff.sample(model_fn, run.schedule, solver, grid, x_T, prediction=run.prediction)

The work directory holds ``config.json`` (a resumed run must have the same configuration except
``steps``), ``checkpoints/`` (orbax) and ``metrics.jsonl``. ``jdiff train`` is the command line
of :func:`train_run`; ``experiments/cifar10_sampling.py`` builds on it.

Data sources (``data``): a built-in testbed name (``mix2d``, ``mix16d``...: exact mixture samples,
fresh for every step), ``digits`` (scikit-learn's 8x8 digits, train split), ``cifar10:PATH``
(``cifar-10-batches-py`` directory, a batch pickle or an ``.npz``; add ``@16`` for 2x mean-pooled
16x16 images, e.g. ``cifar10:data/cifar-10-batches-py@16``). The official directory gives the
official train / test batches; a single file has no test split of its own, so it is split
80 / 20, stratified by class (:func:`jdiff.data.stratified_split`, seed 0), into train and test.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import training
from .losses import LossConfig, check_guidance_loss, denoising_loss
from .models import PRESETS as UNET_PRESETS
from .network import flax_net, make_model_fn, sampling_prediction
from .schedules import get_schedule


LR_DECAYS = ("constant", "cosine")
MODEL_PRESETS = tuple(sorted(f"unet_{name}" for name in UNET_PRESETS))  # jdiff.models.unet_<name>


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every setting of a training run (JSON-serialisable; see the module docstring)."""

    data: str = "digits"
    model: str = "unet_digits"  # 'mlp' or a UNet preset of jdiff.models (unet_tiny, unet_digits, unet_cifar10)
    schedule: str = "vp_linear"
    parameterization: str = "eps"
    weighting: str = "uniform"
    time_sampling: str | None = None
    conditional: bool = False  # class-conditional network with a null class
    label_dropout: float = 0.1  # classifier-free guidance dropout (conditional runs only)
    guidance_loss: str = "standard"  # 'aligned': train the CFG-guided prediction (conditional runs only)
    align_scale: float = 1.0  # CFG scale w of the aligned loss (w = 0: purely conditional)
    align_scale_sampling: str = "fixed"  # 'fixed' (w = align_scale) or 'uniform' (w ~ U(0, align_scale))
    align_stop_grad: bool = True  # aligned loss: no gradient through the unconditional branch
    align_mix: float = 0.0  # aligned loss: weight of the standard conditional loss, in [0, 1]
    steps: int = 2000
    batch_size: int = 128
    lr: float = 2e-4
    warmup_steps: int = 100
    lr_decay: str = "constant"  # after warm-up: 'constant', or 'cosine' to 0 at step `steps`
    grad_clip: float | None = 1.0
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    seed: int = 0
    save_every: int = 500
    keep: int = 3
    log_every: int = 50
    compute_dtype: str | None = None  # e.g. 'bfloat16' (parameters stay float32)
    flip: bool | None = None  # random horizontal flips; None: on for CIFAR-10, off otherwise
    data_parallel: bool = True  # shard the batch over all devices
    mlp_features: int = 256
    mlp_depth: int = 4
    model_kwargs: str = ""  # JSON object of UNetConfig overrides, e.g. '{"num_res_blocks": 1}'
    cpu_conv_eigen: bool = True  # on CPU, compile convolutions with Eigen (training.CPU_CONV_EIGEN)

    def __post_init__(self):
        # names checked here are cheap to check and otherwise fail only after the model is built
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"unknown lr_decay {self.lr_decay!r}; valid: {', '.join(LR_DECAYS)}")
        if self.model != "mlp" and self.model not in MODEL_PRESETS:
            raise ValueError(f"unknown model {self.model!r}; valid: mlp, {', '.join(MODEL_PRESETS)}")
        self._check_guidance_loss()
        if self.compute_dtype is not None:
            try:
                jnp.dtype(self.compute_dtype)
            except TypeError:
                raise ValueError(f"unknown compute_dtype {self.compute_dtype!r}; e.g. bfloat16, float16, "
                                 "float32") from None

    def _check_guidance_loss(self):
        aligned_fields = ("align_scale", "align_scale_sampling", "align_stop_grad", "align_mix")
        if self.guidance_loss == "aligned" and not self.conditional:
            raise ValueError("guidance_loss='aligned' trains the classifier-free-guided prediction and needs "
                             "a class-conditional run: set conditional=True (--conditional true) and labelled data")
        if self.guidance_loss == "standard":
            changed = [name for name in aligned_fields
                       if getattr(self, name) != RunConfig.__dataclass_fields__[name].default]
            if changed:
                raise ValueError(f"{', '.join(changed)} appl{'ies' if len(changed) == 1 else 'y'} only to the "
                                 "aligned loss: set guidance_loss='aligned' (--guidance-loss aligned) or leave "
                                 f"{'it' if len(changed) == 1 else 'them'} at the default")
        check_guidance_loss(self.loss_config(null_label=0 if self.conditional else None))

    def loss_config(self, null_label: int | None = None) -> LossConfig:
        """The run's :class:`jdiff.losses.LossConfig` (``null_label``: the null class of a
        conditional run, i.e. its number of classes)."""
        conditional = self.conditional and null_label is not None
        return LossConfig(parameterization=self.parameterization, weighting=self.weighting,
                          time_sampling=self.time_sampling,
                          label_dropout=self.label_dropout if conditional else 0.0,
                          null_label=null_label if conditional else None,
                          guidance_loss=self.guidance_loss, align_scale=self.align_scale,
                          align_scale_sampling=self.align_scale_sampling,
                          align_stop_grad=self.align_stop_grad, align_mix=self.align_mix)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown run config fields: {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclasses.dataclass
class Run:
    """What a configuration builds (no training state)."""

    config: RunConfig
    schedule: Any
    module: Any  # the Flax module
    net_apply: Callable
    loss_fn: Callable
    batch_fn: Callable[[int], dict]  # step -> this process's batch
    data_shape: tuple  # one example's shape
    num_classes: int | None  # number of real classes (labels 0..num_classes-1); None: unconditional
    dataset: Any = None  # the ImageDataset for image data, else None

    @property
    def prediction(self) -> str:
        return sampling_prediction(self.config.parameterization)

    @property
    def null_label(self) -> int | None:
        return self.num_classes if self.config.conditional else None

    def init_params(self, key=None):
        key = jax.random.key(self.config.seed) if key is None else key
        x = jnp.zeros((1,) + tuple(self.data_shape), jnp.float32)
        if self.config.conditional:
            return self.module.init(key, x, jnp.zeros((1,)), y=jnp.zeros((1,), jnp.int32))
        return self.module.init(key, x, jnp.zeros((1,)))

    def model_fn(self, params, y=None):
        """``model_fn(x, t, args)`` for :func:`jdiff.sample` (prediction type :attr:`prediction`)."""
        if self.config.conditional and y is None:
            raise ValueError("a class-conditional model needs labels y (use the null class for unconditional)")
        return make_model_fn(self.net_apply, params, self.schedule, self.config.parameterization, y)


def _split_data_spec(spec: str):
    kind, _, rest = spec.partition(":")
    return kind, rest


SINGLE_FILE_TEST_FRACTION = 0.2


def load_image_data(spec: str, split: str = "train"):
    """ImageDataset for ``digits`` or ``cifar10:PATH[@RES]`` (see the module docstring)."""
    from . import data as jdata

    kind, rest = _split_data_spec(spec)
    if kind == "digits":
        return jdata.load_digits(split=split)
    if kind == "cifar10":
        if not rest:
            raise ValueError("cifar10 data needs a path: cifar10:PATH[@16]")
        path, sep, res = rest.rpartition("@")  # a trailing "@RES" (a path may contain "@")
        if not sep or not res.isdigit():
            path, res = rest, ""
        if Path(path).expanduser().is_dir():
            ds = jdata.load_cifar10(path, split=split)
        else:  # one file: hold out a stratified 20% as the test split
            if split not in ("train", "test"):
                raise ValueError(f"split must be 'train' or 'test', got {split!r}")
            ds = jdata.load_cifar10(path)
            train_idx, test_idx = jdata.stratified_split(ds.labels, SINGLE_FILE_TEST_FRACTION, seed=0)
            ds = ds.take(train_idx if split == "train" else test_idx, name=f"{ds.name}[{split}]")
        if res:
            factor = 32 // int(res)
            if factor * int(res) != 32:
                raise ValueError(f"cifar10 resolution {res} must divide 32")
            ds = jdata.downsample(ds, factor)
        return ds
    raise ValueError(f"unknown image data {spec!r}; valid: digits, cifar10:PATH[@RES]")


def _build_module(cfg: RunConfig, data_shape, num_classes):
    if cfg.model == "mlp":
        if cfg.model_kwargs:
            raise ValueError("model_kwargs applies to UNet models; the MLP takes mlp_features and mlp_depth")
        if len(data_shape) != 1:
            raise ValueError(f"model 'mlp' needs flat data, got example shape {data_shape}")
        from .models.mlp import MLP

        return MLP(features=cfg.mlp_features, depth=cfg.mlp_depth, time_embedding_dim=128, time_scale=1.0,
                   num_classes=num_classes if cfg.conditional else None)
    from . import models

    preset = UNET_PRESETS[cfg.model.removeprefix("unet_")]  # checked by RunConfig
    if len(data_shape) != 3:
        raise ValueError(f"model {cfg.model!r} needs images (height, width, channels); data {cfg.data!r} "
                         f"has examples of shape {tuple(data_shape)}: use --model mlp")
    overrides = {"in_channels": data_shape[-1], "out_channels": data_shape[-1],
                 "num_classes": num_classes if cfg.conditional else None}
    if cfg.model_kwargs:
        try:
            extra = json.loads(cfg.model_kwargs)
        except json.JSONDecodeError as err:
            raise ValueError(f"model_kwargs is not valid JSON: {err}") from None
        if not isinstance(extra, dict):
            raise ValueError("model_kwargs must be a JSON object of UNetConfig fields")
        known = {f.name for f in dataclasses.fields(models.UNetConfig)}
        unknown = sorted(set(extra) - known)
        if unknown:
            raise ValueError(f"model_kwargs: unknown UNetConfig field(s) {', '.join(unknown)}; valid: "
                             f"{', '.join(sorted(known - {'dtype', 'param_dtype'}))}")
        overrides.update({k: tuple(v) if isinstance(v, list) else v for k, v in extra.items()})
    if cfg.compute_dtype:
        overrides["dtype"] = jnp.dtype(cfg.compute_dtype)
    try:
        return models.UNet(preset(**overrides))
    except TypeError as err:
        raise ValueError(f"model_kwargs {cfg.model_kwargs!r}: {err}") from None


def build_run(cfg: RunConfig) -> Run:
    """Schedule, network, loss and a pure ``step -> batch`` function for ``cfg``."""
    from .testbeds import BUILTIN, get_testbed

    schedule = get_schedule(cfg.schedule)
    dataset = None
    if cfg.data in BUILTIN:
        testbed = get_testbed(cfg.data)
        data_shape = (testbed.dim,)
        num_classes = testbed.n_classes if testbed.labels is not None else None
        base = jax.random.key(cfg.seed + 1)
        draw = jax.jit(lambda s: testbed.sample_with_labels(jax.random.fold_in(base, s), cfg.batch_size))

        def batch_fn(step):
            x, y = (np.asarray(a) for a in draw(step))
            pi, pc = jax.process_index(), jax.process_count()
            rows = slice(pi * (cfg.batch_size // pc), (pi + 1) * (cfg.batch_size // pc))
            return {"x": x[rows], "y": y[rows]} if cfg.conditional else {"x": x[rows]}
    else:
        from .data import BatchSampler

        dataset = load_image_data(cfg.data, "train")
        data_shape, num_classes = tuple(dataset.images.shape[1:]), dataset.num_classes
        flip = cfg.flip if cfg.flip is not None else cfg.data.startswith("cifar10")
        sampler = BatchSampler(dataset, cfg.batch_size, seed=cfg.seed, flip=flip)

        def batch_fn(step):
            images, labels = sampler.batch(step, jax.process_index(), jax.process_count())
            batch = {"x": images}
            if cfg.conditional:
                batch["y"] = labels
            return batch

    if cfg.conditional and num_classes is None:
        raise ValueError(f"data {cfg.data!r} has no labels; conditional=True needs a labelled data set")
    module = _build_module(cfg, data_shape, num_classes)
    net = flax_net(module)
    loss_fn = denoising_loss(net, schedule, cfg.loss_config(num_classes if cfg.conditional else None))
    return Run(cfg, schedule, module, net, loss_fn, batch_fn, data_shape, num_classes, dataset)


def _check_config(workdir: Path, cfg: RunConfig):
    path = workdir / "config.json"
    if path.exists():
        old = RunConfig.from_json(json.loads(path.read_text()))
        diff = [f.name for f in dataclasses.fields(cfg)
                if f.name != "steps" and getattr(old, f.name) != getattr(cfg, f.name)]
        if diff:
            raise ValueError(f"{workdir} holds a run with a different configuration ({', '.join(diff)}); "
                             "use a new work directory")
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:  # one writer, and atomic: other processes may be reading it
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
        os.replace(tmp, path)


def run_learning_rate(cfg: RunConfig):
    """The run's learning-rate schedule: linear warm-up to ``lr``, then constant or a cosine decay
    reaching 0 at step ``steps`` (so extending a finished cosine run changes its schedule)."""
    if cfg.lr_decay not in LR_DECAYS:
        raise ValueError(f"unknown lr_decay {cfg.lr_decay!r}; valid: {', '.join(LR_DECAYS)}")
    decay_steps = max(cfg.steps - cfg.warmup_steps, 1) if cfg.lr_decay == "cosine" else None
    return training.learning_rate_schedule(cfg.lr, cfg.warmup_steps, decay_steps)


def _fresh_state(run: Run):
    """``(optimizer, step-0 TrainState)`` of a run: the start of training and the restore template."""
    cfg = run.config
    optimizer = training.make_optimizer(run_learning_rate(cfg), grad_clip=cfg.grad_clip,
                                        weight_decay=cfg.weight_decay)
    return optimizer, training.create_train_state(run.init_params(), optimizer, seed=cfg.seed)


def train_run(cfg: RunConfig, workdir, progress: bool = True, stop=None) -> training.FitResult:
    """Train ``cfg`` in ``workdir`` for ``cfg.steps`` steps in total, resuming if checkpoints exist.

    A start that fails (a configuration that cannot be built, a model that cannot take the data,
    an error in the first steps before any checkpoint) leaves no ``config.json`` behind, so the
    corrected command can use the same work directory. ``stop``: see :func:`jdiff.training.fit`
    (``jdiff train`` passes :func:`jdiff.training.stop_on_signals`).
    """
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"work directory {str(workdir)!r} exists and is not a directory")
    done = _checkpointed_steps(workdir)
    if done and done[-1] > cfg.steps:
        raise ValueError(f"{workdir} holds a run at step {done[-1]}; steps={cfg.steps} is below it "
                         "(give at least that many)")
    run = build_run(cfg)  # first: a configuration that cannot be built must not claim workdir
    optimizer, state = _fresh_state(run)  # and neither may a model that cannot take the data
    claimed = not (workdir / "config.json").exists()
    created_dir = not workdir.exists()
    _check_config(workdir, cfg)
    checkpointer = None
    try:
        step = training.make_train_step(run.loss_fn, optimizer, ema_decay=cfg.ema_decay, ema_warmup=cfg.ema_warmup,
                                        compute_dtype=jnp.dtype(cfg.compute_dtype) if cfg.compute_dtype else None)
        mesh = training.data_mesh() if (cfg.data_parallel and jax.device_count() > 1) else None
        checkpointer = training.Checkpointer(workdir / "checkpoints", save_every=cfg.save_every, keep=cfg.keep)
        options = training.CPU_CONV_EIGEN if (cfg.cpu_conv_eigen and jax.default_backend() == "cpu") else None
        return training.fit(state, training.jit_train_step(step, mesh, compiler_options=options), run.batch_fn, cfg.steps,
                            checkpointer=checkpointer, metadata={"config": cfg.to_json()},
                            log_every=cfg.log_every, metrics_file=workdir / "metrics.jsonl",
                            progress=progress, mesh=mesh, stop=stop)
    except BaseException:  # an interrupted run has saved a checkpoint, so it keeps its claim
        if claimed and (checkpointer is None or not checkpointer.all_steps()):
            _release_workdir(workdir, created_dir)
        raise
    finally:
        if checkpointer is not None:
            checkpointer.close()


def _checkpointed_steps(workdir: Path) -> list[int]:
    """Steps of the checkpoint folders in ``workdir/checkpoints`` (sorted; no restore)."""
    ckpt = workdir / "checkpoints"
    if not ckpt.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit())


def _release_workdir(workdir: Path, created_dir: bool) -> None:
    """Undo a failed start: remove what it wrote (config, empty checkpoint folder, metrics)."""
    import shutil

    if jax.process_index() != 0:
        return
    for name in ("config.json", "metrics.jsonl"):
        (workdir / name).unlink(missing_ok=True)
    ckpt = workdir / "checkpoints"
    if ckpt.is_dir() and not _checkpointed_steps(workdir):
        shutil.rmtree(ckpt, ignore_errors=True)
    if created_dir:
        try:
            workdir.rmdir()
        except OSError:
            pass


def load_run(workdir, step: int | None = None):
    """``(run, state)`` from a work directory: the newest good checkpoint (or ``step``)."""
    workdir = Path(workdir)
    path = workdir / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no run configuration at {path}")
    cfg = RunConfig.from_json(json.loads(path.read_text()))
    run = build_run(cfg)
    _, like = _fresh_state(run)
    checkpointer = training.Checkpointer(workdir / "checkpoints", save_every=cfg.save_every, keep=cfg.keep)
    try:
        restored = (checkpointer.restore(step, like) if step is not None else checkpointer.restore_latest(like))
    finally:
        checkpointer.close()
    if restored is None:
        raise FileNotFoundError(f"no usable checkpoint in {workdir / 'checkpoints'}")
    return run, restored[0]
