"""PyTorch twin of :class:`jdiff.models.UNet` (the DDPM++-style UNet), for speed comparisons.

Optional dependency: only ``benchmarks/train_speed.py`` imports this file (tests never do), and
it imports neither JAX nor jdiff. Same architecture, layer for layer, with the same module names
(``conv_in``, ``down_{i}_{j}``, ``down_{i}_attn_{j}``, ``down_{i}_resample``, ``mid_0``,
``mid_attn``, ``mid_1``, ``up_{i}_{j}``, ``up_{i}_attn_{j}``, ``up_{i}_resample``, ``norm_out``,
``conv_out``, ``time_dense_0/1``, ``label_embed``), so the same config gives the same parameter
count and :func:`load_flax_params` copies a Flax parameter tree in (the benchmark checks both).
See ``jdiff/models/unet.py`` for the architecture and its sources.

Differences that do not change the function: NCHW tensors (PyTorch's native layout; call
``model.to(memory_format=torch.channels_last)`` for NHWC storage), Linear/Conv weights stored
transposed relative to Flax (``(out, in)`` / OIHW vs ``(in, out)`` / HWIO), and attention through
``torch.nn.functional.scaled_dot_product_attention`` (what a PyTorch user would write; the same
softmax(q k^T / sqrt(d)) v). The attention resolutions are fixed at construction from
``image_size`` (Flax decides them from the traced shape). Initialisation mirrors the Flax module
(Xavier-uniform, zero biases, zero last convolutions) but is not bit-identical.

    model = TorchUNet(ch=128, ch_mult=(2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                      dropout=0.1, in_channels=3, image_size=32)
    out = model(x, t, y)     # x: (B, C, H, W), t: () or (B,), y: (B,) long or None
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def num_groups(channels: int) -> int:
    """GroupNorm groups: ``min(32, channels // 4)`` (as the Flax module)."""
    g = min(32, channels // 4)
    if g < 1 or channels % g:
        raise ValueError(f"GroupNorm cannot split {channels} channels")
    return g


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups(c), c, eps=1e-6)


def _init(module: nn.Module, zero: bool = False) -> nn.Module:
    if zero:
        nn.init.zeros_(module.weight)
    else:
        nn.init.xavier_uniform_(module.weight)
    nn.init.zeros_(module.bias)
    return module


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[cos(t f_k), sin(t f_k)]``, ``f_k = max_period ** (-k / (dim // 2))``; (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=t.device) / half)
    args = t[..., None].float() * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-(resample)-conv3x3 + temb, GroupNorm-SiLU-dropout-conv3x3, 1x1 skip."""

    def __init__(self, c_in, c_out, emb_dim, dropout, skip_rescale, up=False, down=False):
        super().__init__()
        self.up, self.down, self.skip_rescale = up, down, skip_rescale
        self.norm_0 = _norm(c_in)
        self.conv_0 = _init(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.temb_proj = _init(nn.Linear(emb_dim, c_out))
        self.norm_1 = _norm(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv_1 = _init(nn.Conv2d(c_out, c_out, 3, padding=1), zero=True)
        self.skip = _init(nn.Conv2d(c_in, c_out, 1)) if (c_in != c_out or up or down) else None

    def forward(self, x, temb):
        # x: (B, C_in, H, W); temb: (D,) or (B, D)
        h = F.silu(self.norm_0(x))
        if self.up:
            h, x = F.interpolate(h, scale_factor=2, mode="nearest"), F.interpolate(
                x, scale_factor=2, mode="nearest")
        if self.down:
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        h = self.conv_0(h)
        e = self.temb_proj(F.silu(temb))
        h = h + e.reshape(e.shape[:-1] + (-1, 1, 1))        # (B|1, C_out, 1, 1) broadcast
        h = self.conv_1(self.dropout(F.silu(self.norm_1(h))))
        if self.skip is not None:
            x = self.skip(x)
        out = x + h
        return out * (1.0 / math.sqrt(2.0)) if self.skip_rescale else out


class AttnBlock(nn.Module):
    """Self-attention over the H*W positions, residual (and /sqrt(2) if skip_rescale)."""

    def __init__(self, c, num_heads, skip_rescale):
        super().__init__()
        self.num_heads, self.skip_rescale = num_heads, skip_rescale
        self.norm = _norm(c)
        self.qkv = _init(nn.Linear(c, 3 * c))
        self.proj_out = _init(nn.Linear(c, c), zero=True)

    def forward(self, x):
        b, c, hh, ww = x.shape
        n, d = self.num_heads, c // self.num_heads
        h = self.norm(x).flatten(2).transpose(1, 2)                   # (B, T, C)
        qkv = self.qkv(h).reshape(b, hh * ww, 3, n, d).permute(2, 0, 3, 1, 4)  # (3, B, n, T, d)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])    # (B, n, T, d)
        o = self.proj_out(o.transpose(1, 2).reshape(b, hh * ww, c))   # (B, T, C)
        out = x + o.transpose(1, 2).reshape(b, c, hh, ww)
        return out * (1.0 / math.sqrt(2.0)) if self.skip_rescale else out


class _ConvDown(nn.Module):
    """Stride-2 3x3 conv, padding (0, 1) as Flax's 'SAME' for even sizes."""

    def __init__(self, c):
        super().__init__()
        self.conv = _init(nn.Conv2d(c, c, 3, stride=2))

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _ConvUp(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = _init(nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TorchUNet(nn.Module):
    """The DDPM++-style UNet of ``jdiff.models.unet`` in PyTorch (NCHW). Arguments as
    ``jdiff.models.UNetConfig`` (without dtypes) plus ``image_size`` (height = width)."""

    def __init__(self, ch=128, ch_mult: Sequence[int] = (2, 2, 2), num_res_blocks=2,
                 attn_resolutions: Sequence[int] = (16,), dropout=0.1,
                 num_classes: Optional[int] = None, embedding="positional", fourier_scale=16.0,
                 max_period=10000.0, skip_rescale=True, resample="resblock", num_heads=1,
                 in_channels=3, out_channels: Optional[int] = None, image_size=32, **_ignored):
        super().__init__()
        self.ch, self.ch_mult, self.num_res_blocks = ch, tuple(ch_mult), num_res_blocks
        self.attn_resolutions, self.num_classes = tuple(attn_resolutions), num_classes
        self.embedding, self.max_period, self.resample = embedding, max_period, resample
        self.in_channels = in_channels
        out_ch = in_channels if out_channels is None else out_channels
        emb_dim = 4 * ch
        L = len(self.ch_mult)
        if image_size % (2 ** (L - 1)):
            raise ValueError(f"image_size must be divisible by {2 ** (L - 1)}")
        if embedding == "fourier":
            self.register_buffer("fourier_w", torch.randn(ch // 2) * fourier_scale)
        m = nn.ModuleDict()
        m["time_dense_0"] = _init(nn.Linear(ch, emb_dim))
        m["time_dense_1"] = _init(nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            m["label_embed"] = nn.Embedding(num_classes + 1, emb_dim)   # N(0, 1) as Flax
        res = lambda c_in, c_out, **kw: ResBlock(c_in, c_out, emb_dim, dropout, skip_rescale, **kw)
        attn = lambda c: AttnBlock(c, num_heads, skip_rescale)
        m["conv_in"] = _init(nn.Conv2d(in_channels, ch, 3, padding=1))
        skip_chs, c, size = [ch], ch, image_size
        self.plan = []                                 # (kind, name) in call order
        for i, mult in enumerate(self.ch_mult):
            for j in range(num_res_blocks):
                m[f"down_{i}_{j}"] = res(c, ch * mult)
                c = ch * mult
                self.plan.append(("res", f"down_{i}_{j}"))
                if size in self.attn_resolutions:
                    m[f"down_{i}_attn_{j}"] = attn(c)
                    self.plan.append(("attn", f"down_{i}_attn_{j}"))
                skip_chs.append(c)
                self.plan.append(("push", None))
            if i < L - 1:
                m[f"down_{i}_resample"] = res(c, c, down=True) if resample == "resblock" else _ConvDown(c)
                self.plan.append(("res" if resample == "resblock" else "layer", f"down_{i}_resample"))
                skip_chs.append(c)
                self.plan.append(("push", None))
                size //= 2
        m["mid_0"], m["mid_attn"], m["mid_1"] = res(c, c), attn(c), res(c, c)
        self.plan += [("res", "mid_0"), ("attn", "mid_attn"), ("res", "mid_1")]
        for i in reversed(range(L)):
            for j in range(num_res_blocks + 1):
                m[f"up_{i}_{j}"] = res(c + skip_chs.pop(), ch * self.ch_mult[i])
                c = ch * self.ch_mult[i]
                self.plan += [("pop", None), ("res", f"up_{i}_{j}")]
                if size in self.attn_resolutions:
                    m[f"up_{i}_attn_{j}"] = attn(c)
                    self.plan.append(("attn", f"up_{i}_attn_{j}"))
            if i > 0:
                m[f"up_{i}_resample"] = res(c, c, up=True) if resample == "resblock" else _ConvUp(c)
                self.plan.append(("res" if resample == "resblock" else "layer", f"up_{i}_resample"))
                size *= 2
        assert not skip_chs
        m["norm_out"] = _norm(c)
        m["conv_out"] = _init(nn.Conv2d(c, out_ch, 3, padding=1), zero=True)
        self.layers = m

    def forward(self, x, t, y=None):
        # x: (B, C, H, W); t: () or (B,); y: (B,) long or None
        m, b = self.layers, x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        if self.embedding == "positional":
            emb = sinusoidal_embedding(t, self.ch, self.max_period)
        else:
            args = 2.0 * math.pi * t[..., None] * self.fourier_w
            emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
        temb = m["time_dense_1"](F.silu(m["time_dense_0"](emb)))        # (D,) or (B, D)
        if self.num_classes is not None:
            if y is None:
                y = torch.full((b,), self.num_classes, dtype=torch.long, device=x.device)
            temb = temb + m["label_embed"](y)                          # (B, D)
        elif y is not None:
            raise ValueError("y was given but the network is unconditional")
        h = m["conv_in"](x)
        skips = [h]
        for kind, name in self.plan:
            if kind == "res":
                h = m[name](h, temb)
            elif kind in ("attn", "layer"):
                h = m[name](h)
            elif kind == "push":
                skips.append(h)
            else:  # pop
                h = torch.cat([h, skips.pop()], dim=1)
        return m["conv_out"](F.silu(m["norm_out"](h)))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_flax_params(model: TorchUNet, params, fourier_w=None) -> None:
    """Copy a Flax ``UNet`` parameter tree (``variables["params"]`` or the whole variables dict,
    NumPy-convertible leaves) into ``model``; every parameter on both sides must be used."""
    params = params.get("params", params)
    flat = {}

    def walk(prefix, tree):
        for k, v in tree.items():
            if isinstance(v, dict) or hasattr(v, "items"):
                walk(prefix + (k,), v)
            else:
                flat[prefix + (k,)] = np.asarray(v, np.float32)

    walk((), params)
    used = set()
    with torch.no_grad():
        for name, p in model.named_parameters():
            parts = name.split(".")[1:]           # drop "layers"
            leaf = parts[-1]
            path = [q for q in parts[:-1] if q != "conv"]   # _ConvDown/_ConvUp hold .conv
            if path and path[-1].startswith("norm"):
                path.append("gn")
            key_leaf = {"weight": None, "bias": "bias"}[leaf]
            if key_leaf is None:
                if isinstance(_get(model.layers, parts[:-1]), nn.GroupNorm):
                    key_leaf = "scale"
                elif isinstance(_get(model.layers, parts[:-1]), nn.Embedding):
                    key_leaf = "embedding"
                else:
                    key_leaf = "kernel"
            key = tuple(path) + (key_leaf,)
            a = flat[key]
            if key_leaf == "kernel":
                a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T   # HWIO -> OIHW, (in,out)->(out,in)
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"{name}: torch {tuple(p.shape)} vs flax {a.shape} at {key}")
            p.copy_(torch.from_numpy(np.array(a, dtype=np.float32, copy=True)))
            used.add(key)
        if fourier_w is not None:
            model.fourier_w.copy_(torch.as_tensor(np.asarray(fourier_w, np.float32)))
    unused = set(flat) - used
    if unused:
        raise ValueError(f"Flax parameters not used: {sorted(unused)[:5]} ...")


def _get(module, parts):
    for q in parts:
        module = module[q] if isinstance(module, nn.ModuleDict) else getattr(module, q)
    return module
