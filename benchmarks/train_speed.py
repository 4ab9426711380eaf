"""Training-step speed of the DDPM++ UNet: JAX/Flax (jdiff.models.UNet) against its PyTorch twin.

    python benchmarks/train_speed.py                     # CIFAR-10 preset, batch 4 on CPU (6-12 min
                                                         # on 2 busy cores), writes
                                                         # benchmarks/results/train_speed.{json,md}
    python benchmarks/train_speed.py --quick             # tiny preset smoke run (~1 min), prints only
    python benchmarks/train_speed.py --preset digits --batch 64 --out /tmp/digits
    python benchmarks/train_speed.py --dtype bfloat16 --peak-tflops 989   # on a GPU: MFU
    taskset -c 1 python benchmarks/train_speed.py --out benchmarks/results/train_speed_1core
                                                         # one core: XLA and PyTorch size their
                                                         # thread pools from the affinity mask

What one training step is (identical in both frameworks; nested, so the differences are the
backward pass and the optimiser):

* ``fwd``: the loss only -- draw ``t ~ U(t_min, 1)`` and ``eps ~ N(0, I)``, ``x_t = alpha(t) x0 +
  sigma(t) eps`` on the VP-linear schedule (beta 0.1..20, :func:`jdiff.schedules.vp_linear`),
  ``eps_hat = UNet(x_t, 1000 t, y)`` in train mode (dropout on), ``mean((eps_hat - eps)^2)``;
* ``fwd+bwd``: the loss and its gradient w.r.t. all parameters;
* ``step``: the same plus an AdamW update (lr 2e-4, weight decay 1e-4; ``optax.adamw`` /
  ``torch.optim.AdamW``), parameters updated in place (JAX: donated buffers).

JAX random numbers use the ``rbg`` PRNG by default (``--prng``; XLA's RngBitGenerator, as large
JAX training setups do): threefry dropout masks multiply the compile time of these programs on
CPU and add runtime that PyTorch's generator does not have.

JAX runs each as one jitted program; PyTorch eagerly (``torch.no_grad`` for ``fwd``). Both get
the same parameters: the Flax tree (random normal, see ``_random_params``) is copied into the
PyTorch twin (``benchmarks/torch_unet.py``); the parameter counts are asserted equal and the
eval-mode outputs compared (max |diff| reported). Labels: class-conditional with 10 classes
unless ``--num-classes 0``.

Timing: after one warm-up call of every program, ``--reps`` rounds; each round calls every
(variant, kind) once in a shuffled order, so slow phases of a shared machine hit all of them.
Median, interquartile range and min per program; images/s = batch / median. JAX programs run
first, PyTorch after (its OpenMP threads spin after each op and would slow JAX if interleaved).
The CPU time used by other processes during each phase is recorded from /proc/stat
(``foreign_cpu_share``); on a shared machine every number is a noisy sample.

XLA variants (CPU only; ``--xla-variants``), the same programs compiled with different
``compiler_options``: ``default``; ``ynn_noconv`` (``xla_cpu_experimental_ynn_fusion_type`` =
individual dots and reductions: XLA:CPU's YNNPACK library keeps the matmuls and reductions,
convolutions go to Eigen; equivalent to ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
-individual_convolution``); ``ynn_off`` (the option empty: no YNNPACK fusions at all, so
reductions also fall back to XLA's own loops). See the conv study and the profile. ``bf16`` and
``bf16_noconv`` are ``default`` and ``ynn_noconv`` with bfloat16 compute (float32 parameters),
so float32 and bfloat16 are timed side by side in one run.

FLOPs (``--no-flops`` to skip): ``compiled.cost_analysis()["flops"]`` of the fwd, fwd+bwd and
step programs (XLA counts a multiply-add as 2 FLOPs). Achieved FLOP/s = FLOPs / median time; with
``--peak-tflops P`` also MFU = achieved / P (model FLOPs, no recomputation). On a GPU
(``jax.devices()[0].platform == "gpu"``) the default batch is 128, ``--dtype bfloat16`` sets the
Flax compute dtype (parameters stay float32) and PyTorch ``autocast(bfloat16)``; PyTorch is
skipped there unless CUDA is available to it.

Conv study (CPU, on by default; ``--no-conv-study``): the UNet's convolution shapes (the ones
with the largest FLOP share, a 1x1 skip and conv_in) as single layers: forward, gradient w.r.t.
the input and w.r.t. the kernel, GFLOP/s each, in JAX (NHWC and NCHW dimension numbers, XLA
default and ``ynn_off``) and PyTorch (NCHW contiguous and channels_last). For each JAX gradient
the optimised HLO is inspected: which op carries the convolution (``__ynn_fusion`` custom
fusion or a plain ``convolution``, i.e. Eigen), and the window of the kernel-gradient conv.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import common  # noqa: E402
import jdiff  # noqa: E402
from jdiff.models import PRESETS, UNet, count_params, init_shapes  # noqa: E402

YNN_OFF = {"xla_cpu_experimental_ynn_fusion_type": ""}
# YNNPACK for dots and reductions but not convolutions: for these programs the same thunks as
# XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution (checked on the
# classified HLO with jaxlib 0.10.2; compiler_options do not accept the "-type" syntax)
YNN_NOCONV = {"xla_cpu_experimental_ynn_fusion_type":
              "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
XLA_VARIANTS = {"default": None, "ynn_noconv": YNN_NOCONV, "ynn_off": YNN_OFF, "threefry": None,
                "bf16": None, "bf16_noconv": YNN_NOCONV}
# variants that also change the model: bfloat16 compute, float32 parameters (as --dtype bfloat16)
BF16_VARIANTS = ("bf16", "bf16_noconv")
IMAGE_SIZE = {"cifar10": 32, "digits": 8, "tiny": 8}
LR, WD = 2e-4, 1e-4


# ----------------------------------------------------------------------------- helpers

def _random_params(shapes, seed=0):
    """Random normal parameters (kernels N(0, 1/fan_in), norm scales ~1): speed does not depend
    on values, and NumPy draws 35M numbers in ~1 s where ``model.init`` compiles for minutes."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            a = rng.normal(0.0, 1.0 / math.sqrt(np.prod(s.shape[:-1])), s.shape)
        elif "embedding" in name:
            a = rng.normal(0.0, 1.0, s.shape)
        elif "scale" in name:
            a = 1.0 + rng.normal(0.0, 0.1, s.shape)
        else:
            a = rng.normal(0.0, 0.1, s.shape)
        return jnp.asarray(a, s.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _summary(ts, batch, flops=None, peak=None):
    s = common.summary(ts)
    med = s["median"]
    out = dict(median_s=med, q25_s=s["q1"], q75_s=s["q3"], min_s=s["min"], max_s=s["max"],
               n=s["n"], images_per_s=batch / med)
    if flops:
        out["flops"] = flops
        out["tflops_per_s"] = flops / med / 1e12
        if peak:
            out["mfu"] = flops / med / (peak * 1e12)
    return out


def _flops(compiled):
    try:
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        return float(ca.get("flops", 0.0)) or None
    except Exception:  # noqa: BLE001 - cost analysis is optional
        return None


def _progress(name, reps):
    """``after_round`` of :func:`common.interleaved_rounds`: one line of the round's times."""
    def after_round(r, times):
        print(f"  {name} round {r + 1}/{reps}: "
              + ", ".join(f"{a}/{b} {times[(a, b)][-1]:.2f}s" for a, b in sorted(times)), flush=True)
    return after_round


# ----------------------------------------------------------------------------- JAX

def jax_programs(model, schedule, batch):
    """The three nested programs (uncompiled): loss, value-and-grad, AdamW step; and the optax
    optimiser."""

    def loss_fn(params, x0, y, key):
        k_t, k_eps, k_drop = jax.random.split(key, 3)
        t = jax.random.uniform(k_t, (batch,), minval=schedule.t_min, maxval=1.0)
        eps = jax.random.normal(k_eps, x0.shape)
        a = schedule.alpha(t)[:, None, None, None]
        s = schedule.sigma(t)[:, None, None, None]
        pred = model.apply(params, a * x0 + s * eps, 1000.0 * t, y, train=True,
                           rngs={"dropout": k_drop})
        return jnp.mean(jnp.square(pred.astype(jnp.float32) - eps))

    opt = optax.adamw(LR, weight_decay=WD)

    def step(params, opt_state, x0, y, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, x0, y, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return loss_fn, jax.value_and_grad(loss_fn), step, opt


def run_jax(args, cfg, size, batch, variants):
    model = UNet(cfg)
    schedule = jdiff.schedules.vp_linear()
    shapes = init_shapes(cfg, size, batch)
    n_params = count_params(shapes["params"])
    params0 = _random_params(shapes)
    rng = np.random.default_rng(1)
    x0 = jnp.asarray(rng.normal(size=(batch, size, size, cfg.in_channels)), jnp.float32)
    y = (jnp.asarray(rng.integers(0, cfg.num_classes, batch), jnp.int32)
         if cfg.num_classes else None)
    progs, info, compiled_by = {}, {}, {}
    for v in variants:
        opts = XLA_VARIANTS[v]
        v_model = UNet(dataclasses.replace(cfg, dtype=jnp.bfloat16)) if v in BF16_VARIANTS else model
        loss_fn, vg_fn, step_fn, opt = jax_programs(v_model, schedule, batch)
        impl = "threefry2x32" if v == "threefry" else args.prng
        keys = list(jax.random.split(jax.random.key(0, impl=impl), args.reps + 2))
        params = jax.tree_util.tree_map(jnp.copy, params0)
        opt_state = opt.init(params)
        state = {"params": params, "opt": opt_state}
        for kind, fn, donate in (("fwd", loss_fn, ()), ("fwd+bwd", vg_fn, ()),
                                 ("step", step_fn, (0, 1))):
            t0 = time.time()
            if kind == "step":
                lowered = jax.jit(fn, donate_argnums=donate).lower(params, opt_state, x0, y, keys[0])
            else:
                lowered = jax.jit(fn).lower(params, x0, y, keys[0])
            compiled = lowered.compile(opts) if opts else lowered.compile()
            compiled_by[(v, kind)] = compiled
            info[(v, kind)] = dict(compile_s=time.time() - t0,
                                   flops=_flops(compiled) if args.flops else None)
            print(f"  jax {v:8s} {kind:8s} compiled in {info[(v, kind)]['compile_s']:.1f} s"
                  + (f", {info[(v, kind)]['flops'] / 1e9:.1f} GFLOP" if info[(v, kind)]["flops"] else ""),
                  flush=True)

            if kind == "step":
                def call(r, c=compiled, st=state, keys=keys):
                    st["params"], st["opt"], loss = c(st["params"], st["opt"], x0, y, keys[r])
                    return loss
            else:
                def call(r, c=compiled, st=state, keys=keys):
                    return c(st["params"], x0, y, keys[r])
            progs[(v, kind)] = call

    meter = common.CpuMeter()
    for call in progs.values():                            # warm-up
        jax.block_until_ready(call(-1))
    times = common.interleaved_rounds(progs, args.reps, after_round=_progress("jax", args.reps))
    share = meter.share()
    out = {}
    for (v, kind), ts in times.items():
        out.setdefault(v, {})[kind] = dict(_summary(ts, batch, info[(v, kind)]["flops"],
                                                    args.peak_tflops),
                                           compile_s=info[(v, kind)]["compile_s"])
    profile = None
    if args.profile and ("default", "fwd+bwd") in progs:
        try:
            profile = profile_program(progs[("default", "fwd+bwd")],
                                      compiled_by[("default", "fwd+bwd")].as_text())
        except Exception as e:  # noqa: BLE001 - the trace format is not a stable API
            profile = dict(error=repr(e))
    return dict(results=out, n_params=n_params, foreign_cpu_share=share, profile=profile,
                params=params0, x0=x0, y=y, model=model)


# ----------------------------------------------------------------------------- profile

def _hlo_computations(hlo):
    comps, cur = {}, None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if m:
            cur = m.group(1)
            comps[cur] = []
        elif cur:
            comps[cur].append(line)
    return comps, re.search(r"^ENTRY %?([\w.\-]+)", hlo, re.M).group(1)


def classify_thunks(hlo):
    """Top-level instruction name -> category: which library runs it (``ynn`` fusion, ``eigen``
    convolution, XLA loop) and, for convolutions, the window (a window the size of the feature
    map is a kernel gradient) -- from the optimised HLO text."""
    comps, entry = _hlo_computations(hlo)

    def inner(name, depth=0):
        body = "\n".join(comps.get(name, []))
        m = re.search(r"convolution\(.*window=\{size=([0-9x]+)", body)
        if m:
            return f"conv window {m.group(1)}"
        if " dot(" in body:
            return "dot"
        for sub in re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", body):
            c = inner(sub, depth + 1) if depth < 3 else ""
            if c.startswith("conv") or c == "dot":
                return c
        return "reduce" if " reduce(" in body else "elementwise / layout"

    cats = {}
    for line in comps[entry]:
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\(", line)
        if not m:
            continue
        name, op = m.groups()
        if op == "fusion":
            lib = "ynn " if "__ynn_fusion" in line else "xla "
            cats[name] = lib + inner(re.search(r"calls=%([\w.\-]+)", line).group(1))
        elif op == "convolution":
            w = re.search(r"window=\{size=([0-9x]+)", line)
            cats[name] = f"eigen conv window {w.group(1) if w else '?'}"
        else:
            cats[name] = "xla " + op
    return cats


def profile_program(call, hlo, n=2):
    """Thunk time per category of one program (jax.profiler trace of ``n`` calls). Synchronous
    thunks only are exact: XLA:CPU's Eigen convolutions run asynchronously, so profile the
    default (YNNPACK) variant, whose library fusions run inside their thunk."""
    import glob
    import gzip
    import tempfile

    cats = classify_thunks(hlo)
    with tempfile.TemporaryDirectory() as d:
        jax.block_until_ready(call(0))
        with jax.profiler.trace(d, create_perfetto_trace=True):
            t0 = time.perf_counter()
            for _ in range(n):
                jax.block_until_ready(call(0))
            wall = (time.perf_counter() - t0) / n
        f = glob.glob(d + "/**/*.trace.json.gz", recursive=True)[0]
        events = json.load(gzip.open(f))["traceEvents"]
    agg, count = {}, {}
    for e in events:
        if e.get("ph") == "X" and e.get("name") in cats:
            c = cats[e["name"]]
            agg[c] = agg.get(c, 0.0) + e["dur"] / 1e6 / n
            count[c] = count.get(c, 0) + 1 / n
    total = sum(agg.values())
    rows = sorted(({"category": c, "seconds": t, "share": t / total, "thunks": round(count[c])}
                   for c, t in agg.items()), key=lambda r: -r["seconds"])
    print(f"  profile of jax default fwd+bwd: {total:.2f} s of thunk time per call "
          f"(wall {wall:.2f} s)", flush=True)
    for r in rows[:8]:
        print(f"    {r['seconds']:6.2f} s {100 * r['share']:5.1f}%  x{r['thunks']:4d}  {r['category']}")
    return dict(wall_s=wall, thunk_s=total, rows=rows)


# ----------------------------------------------------------------------------- PyTorch

def run_torch(args, cfg, size, batch, jax_run):
    import torch
    import torch_unet

    on_gpu = jax.devices()[0].platform == "gpu"
    if on_gpu and not torch.cuda.is_available():
        return dict(skipped="JAX runs on a GPU but PyTorch has no CUDA here")
    device = "cuda" if on_gpu else "cpu"
    threads = args.torch_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    model = torch_unet.TorchUNet(**fields, image_size=size)
    n_torch = torch_unet.count_params(model)
    assert n_torch == jax_run["n_params"], (n_torch, jax_run["n_params"])
    torch_unet.load_flax_params(model, jax_run["params"])
    model = model.to(device)

    # parity: eval-mode outputs of the same parameters on the same input and time
    x_np = np.array(jax_run["x0"], np.float32)
    t_np = np.linspace(5.0, 995.0, batch).astype(np.float32)
    y_np = None if jax_run["y"] is None else np.array(jax_run["y"])
    out_jax = np.asarray(jax.jit(lambda p, x, t, y: jax_run["model"].apply(p, x, t, y))(
        jax_run["params"], jax_run["x0"], t_np, jax_run["y"]), np.float32)
    model.eval()
    with torch.no_grad():
        out_t = model(torch.from_numpy(x_np).permute(0, 3, 1, 2).to(device),
                      torch.from_numpy(t_np).to(device),
                      None if y_np is None else torch.from_numpy(y_np).long().to(device))
    parity = float(np.max(np.abs(out_t.permute(0, 2, 3, 1).cpu().numpy() - out_jax)))
    print(f"  torch twin: {n_torch:,} parameters (= Flax), max |out_torch - out_jax| = {parity:.2e}"
          f" (output scale {np.max(np.abs(out_jax)):.2f})", flush=True)
    model.train()

    x0 = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous().to(device)
    y = None if y_np is None else torch.from_numpy(y_np).long().to(device)
    b0, b1, t_min = 0.1, 20.0, 1e-3                      # vp_linear
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if args.dtype == "bfloat16"
                else torch.autocast(device, enabled=False))
    layouts = ["nchw"] + (["channels_last"] if args.torch_channels_last else [])
    progs = {}
    for layout in layouts:
        m = model if layout == "nchw" else _clone_channels_last(model)
        xin = x0 if layout == "nchw" else x0.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=WD)

        def loss_fn(m=m, xin=xin):
            t = torch.rand(batch, device=device) * (1.0 - t_min) + t_min
            eps = torch.randn_like(xin)
            log_a = -0.25 * t ** 2 * (b1 - b0) - 0.5 * t * b0
            a = torch.exp(log_a)[:, None, None, None]
            s = torch.sqrt(-torch.expm1(2.0 * log_a))[:, None, None, None]
            with autocast:
                pred = m(a * xin + s * eps, 1000.0 * t, y)
            return torch.mean((pred.float() - eps) ** 2)

        def fwd(loss_fn=loss_fn):
            with torch.no_grad():
                return loss_fn()

        def fwdbwd(loss_fn=loss_fn, m=m):
            for p in m.parameters():
                p.grad = None
            loss = loss_fn()
            loss.backward()
            return loss

        def step(loss_fn=loss_fn, opt=opt):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            opt.step()
            return loss

        for kind, f in (("fwd", fwd), ("fwd+bwd", fwdbwd), ("step", step)):
            progs[(layout, kind)] = f

    sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)
    meter = common.CpuMeter()
    for f in progs.values():
        f()
    sync(None)
    times = common.interleaved_rounds({k: lambda r, f=f: f() for k, f in progs.items()}, args.reps,
                                      seed=100, sync=sync, after_round=_progress("torch", args.reps))
    share = meter.share()
    out = {}
    for (layout, kind), ts in times.items():
        out.setdefault(layout, {})[kind] = _summary(ts, batch)
    return dict(results=out, n_params=n_torch, threads=threads, parity_max_abs=parity,
                foreign_cpu_share=share, torch=torch.__version__)


def _clone_channels_last(model):
    import copy

    import torch
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- conv study

def conv_shapes(cfg, size):
    """Every convolution of the UNet as (H, C_in, C_out, k) with its count and FLOP share."""
    shapes = init_shapes(cfg, size)["params"]
    sizes = {}
    # spatial size per layer name: level i has size / 2^i; resampling blocks act at the coarser
    # (down) or finer (up) side, which the kernel alone does not tell, so trace it from names.
    for name in shapes:
        m = re.match(r"(down|up)_(\d+)_", name)
        level = int(m.group(2)) if m else (len(cfg.ch_mult) - 1 if name.startswith("mid") else 0)
        h = size // 2 ** level
        if name.endswith("resample"):
            h = h // 2 if name.startswith("down") else h * 2
        sizes[name] = h
    convs = {}

    def visit(name, tree):
        for k, v in tree.items():
            if isinstance(v, dict):
                visit(name, v)
            elif k == "kernel" and len(v.shape) == 4:
                kh, _, ci, co = v.shape
                key = (sizes[name], ci, co, kh)
                convs[key] = convs.get(key, 0) + 1

    for name, tree in shapes.items():
        visit(name, tree)
    total = sum(2 * h * h * k * k * ci * co * n for (h, ci, co, k), n in convs.items())
    rows = [dict(h=h, c_in=ci, c_out=co, k=k, count=n,
                 flop_share=2 * h * h * k * k * ci * co * n / total)
            for (h, ci, co, k), n in convs.items()]
    return sorted(rows, key=lambda r: -r["flop_share"])


def _pick_conv_shapes(rows, n_top):
    picked = [r for r in rows if r["k"] == 3][:n_top]
    ones = [r for r in rows if r["k"] == 1]
    if ones:
        picked.append(ones[0])
    first = [r for r in rows if r["c_in"] <= 4]
    if first:
        picked.append(first[0])
    return picked


def grad_w_taps(x, w, g):
    """Kernel gradient of a stride-1 'SAME' NHWC/HWIO convolution as k*k plain matmuls:
    ``dW[a, b] = sum_{n,h,w} xpad[n, h+a, w+b, :]^T g[n, h, w, :]`` (shapes: x (B, H, W, Ci),
    w (k, k, Ci, Co), g (B, H, W, Co) -> (k, k, Ci, Co))."""
    k = w.shape[0]
    p = k // 2
    h, wd = g.shape[1:3]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    taps = [[jnp.einsum("nhwi,nhwo->io", xp[:, a:a + h, b:b + wd, :], g) for b in range(k)]
            for a in range(k)]
    return jnp.stack([jnp.stack(row) for row in taps])


def run_conv_study(args, cfg, size, batch):
    """Per shape: build every implementation's fwd / grad_x / grad_w callable, then time them
    in ``--conv-reps`` rounds, each round calling all of them once in a shuffled order (JAX and
    PyTorch alternate, so a busy phase of a shared machine hits both)."""
    import torch
    from jax import lax

    torch.set_num_threads(args.torch_threads or len(os.sched_getaffinity(0)))
    rows = conv_shapes(cfg, size)
    picked = _pick_conv_shapes(rows, args.conv_top)
    results = []
    for r in picked:
        h, ci, co, k = r["h"], r["c_in"], r["c_out"], r["k"]
        flops = 2 * batch * h * h * k * k * ci * co
        rec = dict(r, batch=batch, gflop=flops / 1e9, jax={}, torch={})
        rng = np.random.default_rng(0)
        x_nhwc = rng.normal(size=(batch, h, h, ci)).astype(np.float32)
        g_nhwc = rng.normal(size=(batch, h, h, co)).astype(np.float32)
        w_hwio = (rng.normal(size=(k, k, ci, co)) / math.sqrt(k * k * ci)).astype(np.float32)
        calls = {}                      # (framework, impl, name) -> zero-argument callable
        meta, compiled = {}, {}
        for layout in ("NHWC", "NCHW"):
            if layout == "NHWC":
                x, g, w, dn = x_nhwc, g_nhwc, w_hwio, ("NHWC", "HWIO", "NHWC")
            else:
                x, g = x_nhwc.transpose(0, 3, 1, 2), g_nhwc.transpose(0, 3, 1, 2)
                w, dn = w_hwio.transpose(3, 2, 0, 1), ("NCHW", "OIHW", "NCHW")
            x, g, w = (jnp.asarray(np.ascontiguousarray(a)) for a in (x, g, w))

            def fwd(x, w, dn=dn):
                return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn)

            def grad_x(x, w, g, fwd=fwd):
                return jax.vjp(lambda x: fwd(x, w), x)[1](g)[0]

            def grad_w(x, w, g, fwd=fwd):
                return jax.vjp(lambda w: fwd(x, w), w)[1](g)[0]

            progs = [("fwd", fwd, (x, w)), ("grad_x", grad_x, (x, w, g)), ("grad_w", grad_w, (x, w, g))]
            if layout == "NHWC":   # the kernel gradient as k*k matmuls over (B, H, W)
                progs.append(("grad_w_taps", grad_w_taps, (x, w, g)))
            for variant in args.xla_variants:
                if variant not in ("default", "ynn_off"):  # single convs: noconv = off (Eigen)
                    continue
                opts = XLA_VARIANTS[variant]
                impl = f"{layout}/{variant}"
                for name, f, a in progs:
                    lowered = jax.jit(f).lower(*a)
                    c = lowered.compile(opts) if opts else lowered.compile()
                    text = c.as_text()
                    hlo = text.split("ENTRY", 1)[1]
                    carrier = ("__ynn_fusion" if "__ynn_fusion" in hlo else
                               "convolution" if "convolution(" in hlo else
                               "dot" if "dot(" in hlo else "other")
                    window = re.search(r"window=\{size=([0-9x]+)", text)
                    meta[("jax", impl, name)] = dict(op=carrier,
                                                     window=window.group(1) if window else None)
                    compiled[(impl, name)] = c
                    calls[("jax", impl, name)] = (
                        lambda c=c, a=a: jax.block_until_ready(c(*a)))
                if layout == "NHWC":
                    ref = np.asarray(compiled[(impl, "grad_w")](x, w, g))
                    taps = np.asarray(compiled[(impl, "grad_w_taps")](x, w, g))
                    meta[("jax", impl, "grad_w_taps")]["max_abs_diff"] = float(
                        np.max(np.abs(taps - ref)))
        # PyTorch: autograd's convolution_backward with one output mask each
        xt = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())
        gt = torch.from_numpy(g_nhwc.transpose(0, 3, 1, 2).copy())
        wt = torch.from_numpy(w_hwio.transpose(3, 2, 0, 1).copy())
        pad = k // 2
        for fmt in ("nchw", "channels_last"):
            mf = torch.contiguous_format if fmt == "nchw" else torch.channels_last
            xx, gg, ww = (a.contiguous(memory_format=mf) for a in (xt, gt, wt))

            def conv_bwd(mask, xx=xx, gg=gg, ww=ww, pad=pad):
                with torch.no_grad():
                    return torch.ops.aten.convolution_backward(
                        gg, xx, ww, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1, mask)

            def conv_fwd(xx=xx, ww=ww, pad=pad):
                with torch.no_grad():
                    return torch.nn.functional.conv2d(xx, ww, padding=pad)

            calls[("torch", fmt, "fwd")] = conv_fwd
            calls[("torch", fmt, "grad_x")] = lambda b=conv_bwd: b([True, False, False])[0]
            calls[("torch", fmt, "grad_w")] = lambda b=conv_bwd: b([False, True, False])[1]
        for f in calls.values():
            f()
        times = common.interleaved_rounds({key: lambda r, f=f: f() for key, f in calls.items()},
                                          args.conv_reps, seed=1000, sync=lambda _: None)
        for (fw, impl, name), ts in times.items():
            med, mn = float(np.median(ts)), float(np.min(ts))
            rec[fw].setdefault(impl, {})[name] = dict(
                median_ms=1e3 * med, min_ms=1e3 * mn, gflops_per_s=flops / med / 1e9,
                gflops_per_s_best=flops / mn / 1e9, **meta.get((fw, impl, name), {}))
        results.append(rec)
        print(f"  conv {h}x{h} {ci}->{co} k{k}: " + "; ".join(
            f"{lay} " + "/".join(f"{e[n]['gflops_per_s']:.0f}" for n in ("fwd", "grad_x", "grad_w"))
            for lay, e in list(rec["jax"].items()) + [("torch " + a, b) for a, b in rec["torch"].items()])
            + " GFLOP/s (fwd/grad_x/grad_w, medians)", flush=True)
    return dict(shapes=rows, studied=results)


# ----------------------------------------------------------------------------- report

def write_report(res, prefix):
    m, cfg = res["machine"], res["config"]
    tr = res.get("torch", {})
    n_torch = f"{tr['n_params']:,}" if "n_params" in tr else "-"
    parity = f"{tr['parity_max_abs']:.1e}" if "parity_max_abs" in tr else "-"
    L = ["# UNet training-step speed: JAX/Flax vs PyTorch", "",
         f"Command: `{res['command']}` (wall time {res['wall_s']:.0f} s)  ",
         f"Machine: {m['cpu']}, {m['cpus_available']} CPUs available, {m['platform']}, "
         f"Python {m['python']}  ",
         f"JAX {m['jax']} (backend `{m['jax_backend']}`, XLA_FLAGS=`{m['xla_flags']}`), "
         f"PyTorch {res.get('torch', {}).get('torch', '-')} "
         f"({res.get('torch', {}).get('threads', '-')} threads)  ",
         f"Load average (1/5/15 min) at start / end: {m['loadavg_start']} / {m['loadavg_end']}; "
         f"CPU time taken by other processes: JAX phase "
         f"{_pct(res['jax'].get('foreign_cpu_share'))}, PyTorch phase "
         f"{_pct(res.get('torch', {}).get('foreign_cpu_share'))} of the machine "
         "(shared machine: numbers are noisy samples).", "",
         f"Model: `{res['preset']}` preset, {res['n_params']:,} parameters (PyTorch twin: "
         f"{n_torch}; eval-mode outputs of the same weights differ by at most {parity})"
         f", config `{cfg}`; images {res['image_size']}x{res['image_size']}, batch {res['batch']}, "
         f"compute dtype {res['dtype']}; {res['reps']} interleaved rounds after warm-up.", "",
         "| framework / variant | program | median s [IQR] | min s | images/s | GFLOP (XLA) | "
         "achieved TFLOP/s | time / fwd |", "|---|---|---|---|---|---|---|---|"]
    rows = [(f"jax / {v}", kinds) for v, kinds in res["jax"]["results"].items()]
    rows += [(f"torch / {l}", kinds) for l, kinds in res.get("torch", {}).get("results", {}).items()]
    jflops = {k: v.get("flops") for k, v in next(iter(res["jax"]["results"].values())).items()}
    for name, kinds in rows:
        for kind in ("fwd", "fwd+bwd", "step"):
            s = kinds[kind]
            fl = s.get("flops") or jflops.get(kind)
            L.append(f"| {name} | {kind} | {s['median_s']:.3f} [{s['q25_s']:.3f}, {s['q75_s']:.3f}]"
                     f" | {s['min_s']:.3f} | {s['images_per_s']:.2f} | "
                     f"{fl / 1e9 if fl else float('nan'):.4g} | "
                     f"{fl / s['median_s'] / 1e12 if fl else float('nan'):.3f} | "
                     f"{s['median_s'] / kinds['fwd']['median_s']:.2f} |")
    L += ["", "`time / fwd`: median of the program over median of its forward; the backward pass "
          "alone is `fwd+bwd - fwd`. FLOPs of PyTorch rows are XLA's count for the same model "
          "(same architecture and batch).", ""]
    prof = res["jax"].get("profile")
    if prof and "rows" in prof:
        L += ["## Where JAX's fwd+bwd time goes (XLA default)", "",
              f"jax.profiler trace of the default fwd+bwd program: {prof['thunk_s']:.2f} s of thunk "
              f"time per call (wall {prof['wall_s']:.2f} s; thunks overlap when several threads "
              "run). "
              "Categories from the optimised HLO: the library that runs each top-level op "
              "(`ynn`: YNNPACK fusion, `eigen`, `xla`: XLA's own loops) and, for convolutions, "
              "the window: a window as large as the feature map (32x32, 16x16, 8x8) is a kernel "
              "gradient, 3x3 / 1x1 a forward or input-gradient convolution.", "",
              "| category | s per call | share | thunks |", "|---|---|---|---|"]
        for r in prof["rows"][:12]:
            L.append(f"| {r['category']} | {r['seconds']:.3f} | {100 * r['share']:.1f}% | {r['thunks']} |")
        L.append("")
    if res.get("conv_study"):
        L += ["## Single convolutions at the UNet's shapes", "",
              f"Batch {res['batch']}; GFLOP/s = 2 B H W k^2 C_in C_out / median time. `op`: what "
              "carries the convolution in the optimised HLO (`__ynn_fusion`: XLA:CPU's YNNPACK "
              "library fusion; `convolution`: XLA's Eigen convolution; `dot`: rewritten as a "
              "matmul). The kernel gradient is a convolution whose window is the whole feature "
              "map (`window`).", "",
              "| H, C_in -> C_out, k (count, FLOP share) | implementation | fwd GFLOP/s | grad_x | "
              "grad_w | grad_w time / fwd time | grad_w as k^2 matmuls | ops (fwd/grad_x/grad_w), "
              "grad_w window |", "|---|---|---|---|---|---|---|---|"]
        for rec in res["conv_study"]["studied"]:
            head = (f"{rec['h']}x{rec['h']}, {rec['c_in']} -> {rec['c_out']}, {rec['k']}x{rec['k']}"
                    f" ({rec['count']}, {100 * rec['flop_share']:.1f}%)")
            for impl, e in list(rec["jax"].items()) + [("torch " + a, b) for a, b in rec["torch"].items()]:
                ops = ("/".join(e[n].get("op", "-") for n in ("fwd", "grad_x", "grad_w"))
                       + (f", {e['grad_w'].get('window')}" if e["grad_w"].get("window") else ""))
                taps = (f"{e['grad_w_taps']['gflops_per_s']:.0f}" if "grad_w_taps" in e else "-")
                L.append(f"| {head} | {impl if impl.startswith('torch') else 'jax ' + impl} | "
                         f"{e['fwd']['gflops_per_s']:.0f} | {e['grad_x']['gflops_per_s']:.0f} | "
                         f"{e['grad_w']['gflops_per_s']:.0f} | "
                         f"{e['grad_w']['median_ms'] / e['fwd']['median_ms']:.2f} | {taps} | {ops} |")
                head = ""
        L.append("")
    if res.get("notes"):
        L += ["## Findings", ""] + [f"- {n}" for n in res["notes"]] + [""]
    common.write_results(prefix, res, L)


def _pct(x):
    return "n/a" if x is None else f"{100 * x:.0f}%"


# ----------------------------------------------------------------------------- main

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="cifar10", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=None, help="default 4 on CPU, 128 on GPU")
    p.add_argument("--num-classes", type=int, default=10, help="0: unconditional")
    p.add_argument("--ch", type=int, default=None, help="override the preset's base channels")
    p.add_argument("--model-kwargs", default=None,
                   help='JSON of UNetConfig overrides, e.g. \'{"num_res_blocks": 1, "dropout": 0.0}\' '
                   "(the laptop preset of experiments/cifar10_sampling.py)")
    p.add_argument("--reps", type=int, default=5, help="timed rounds per program")
    p.add_argument("--prng", default="rbg", choices=["rbg", "threefry2x32", "unsafe_rbg"],
                   help="JAX PRNG of the step's noise, times and dropout masks")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--frameworks", default="jax,torch")
    p.add_argument("--xla-variants", default=None,
                   help="comma list of default, ynn_noconv, ynn_off, threefry (default XLA with "
                   "threefry keys instead of --prng), bf16, bf16_noconv (bfloat16 compute) "
                   "(CPU default: default,ynn_noconv,ynn_off; "
                   "GPU: default)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (e.g. 989 bf16 H100)")
    p.add_argument("--no-flops", dest="flops", action="store_false")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the per-category thunk profile of the default fwd+bwd program")
    p.add_argument("--torch-threads", type=int, default=None)
    p.add_argument("--torch-channels-last", dest="torch_channels_last", action="store_true",
                   default=None, help="also time the PyTorch model in channels_last memory format "
                   "(default on CPU)")
    p.add_argument("--no-torch-channels-last", dest="torch_channels_last", action="store_false")
    p.add_argument("--conv-study", dest="conv_study", action="store_true", default=None)
    p.add_argument("--no-conv-study", dest="conv_study", action="store_false")
    p.add_argument("--conv-top", type=int, default=3, help="3x3 conv shapes studied (by FLOPs)")
    p.add_argument("--conv-reps", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="tiny preset, batch 4, 2 rounds, no file")
    p.add_argument("--out", default=None, help="output prefix (default benchmarks/results/"
                   "train_speed for the default run; none with --quick)")
    args = p.parse_args(argv)
    on_gpu = jax.devices()[0].platform == "gpu"
    if args.quick:
        args.preset, args.reps, args.batch = "tiny", 2, args.batch or 4
        args.conv_top = 1 if args.conv_study is None else args.conv_top
    args.batch = args.batch or (128 if on_gpu else 4)
    if args.xla_variants is None:
        args.xla_variants = "default" if on_gpu else "default,ynn_noconv,ynn_off"
    args.xla_variants = args.xla_variants.split(",")
    if args.conv_study is None:
        args.conv_study = not on_gpu
    if args.torch_channels_last is None:
        args.torch_channels_last = not on_gpu
    frameworks = args.frameworks.split(",")
    overrides = dict(num_classes=args.num_classes or None,
                     dtype=jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
    if args.ch:
        overrides["ch"] = args.ch
    if args.model_kwargs:
        overrides.update(json.loads(args.model_kwargs))
    cfg = PRESETS[args.preset](**overrides)
    size = IMAGE_SIZE[args.preset]
    t_start = time.time()
    res = dict(command=common.command_line(__file__, argv),
               machine=dict(common.machine_info(), loadavg_start=common.loadavg()), preset=args.preset, image_size=size, batch=args.batch,
               dtype=args.dtype, reps=args.reps, prng=args.prng,
               config={k: (jnp.dtype(v).name if k in ("dtype", "param_dtype") else v)
                       for k, v in dataclasses.asdict(cfg).items()})
    print(f"{args.preset}: batch {args.batch}, {size}x{size}, {args.dtype}, variants "
          f"{args.xla_variants}, frameworks {frameworks}", flush=True)
    jr = run_jax(args, cfg, size, args.batch, args.xla_variants)
    res["n_params"] = jr["n_params"]
    res["jax"] = dict(results=jr["results"], foreign_cpu_share=jr["foreign_cpu_share"],
                      profile=jr["profile"])
    if "torch" in frameworks:
        try:
            res["torch"] = run_torch(args, cfg, size, args.batch, jr)
        except ImportError as e:
            res["torch"] = dict(skipped=f"PyTorch not available: {e}")
            print("  torch skipped:", e)
    if args.conv_study:
        print("conv study", flush=True)
        res["conv_study"] = run_conv_study(args, cfg, size, args.batch)
    res["machine"]["loadavg_end"] = common.loadavg()
    res["wall_s"] = time.time() - t_start
    _print_summary(res)
    out = args.out or (None if args.quick else str(ROOT / "results" / "train_speed"))
    if out:
        write_report(res, out)
    return res


def _print_summary(res):
    for fw in ("jax", "torch"):
        for v, kinds in res.get(fw, {}).get("results", {}).items():
            f = kinds["fwd"]["median_s"]
            print(f"{fw:5s} {v:13s} " + "  ".join(
                f"{k} {s['median_s']:.3f}s ({s['images_per_s']:.1f} img/s, x{s['median_s'] / f:.2f})"
                for k, s in kinds.items()))


if __name__ == "__main__":
    main()
