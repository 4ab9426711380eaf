"""Initialise :class:`jdiff.models.transformer.Transformer` from a local pretrained BERT checkpoint.

    sd = load_state_dict("bert-base-uncased/")              # model.safetensors or pytorch_model.bin
    cfg = config_from_bert_json("bert-base-uncased/config.json", time_mode="layerwise",
                                num_timesteps=2048, cls_id=101)
    model = Transformer(cfg)
    params = init_params(model, jax.random.key(0))          # random init (time parameters stay)
    params = state_dict_to_params(sd, cfg, params)           # BERT weights copied in
    sd2 = params_to_state_dict(params, cfg)                  # and back (round trip)

Nothing is downloaded: the files are the ones of a HuggingFace ``bert-base-uncased``-style model
directory that the user placed locally. Key names (``P = "bert."`` for ``BertForMaskedLM`` /
``BertForPreTraining``, ``P = ""`` for a bare ``BertModel``; old checkpoints spell LayerNorm
``gamma`` / ``beta``, accepted as ``weight`` / ``bias``)::

    P embeddings.{word,position,token_type}_embeddings.weight   -> {word,position,token_type}_embeddings.embedding
    P embeddings.LayerNorm.{weight,bias}                        -> embeddings_LayerNorm.{scale,bias}
    P encoder.layer.{i}.attention.self.{query,key,value}.*     -> layer_i.attention.{query,key,value}
    P encoder.layer.{i}.attention.output.dense.*                -> layer_i.attention_output
    P encoder.layer.{i}.attention.output.LayerNorm.*            -> layer_i.attention_LayerNorm
    P encoder.layer.{i}.intermediate.dense.*                    -> layer_i.intermediate
    P encoder.layer.{i}.output.dense.*                          -> layer_i.output
    P encoder.layer.{i}.output.LayerNorm.*                      -> layer_i.output_LayerNorm
    P encoder.layer.{i}.timestep_embedding.{0,2}.*   (optional) -> layer_i.time_mlp_{0,1}  (DiffusionBERT LTE)
    cls.predictions.transform.dense.*                           -> head_transform
    cls.predictions.transform.LayerNorm.*                       -> head_LayerNorm
    cls.predictions.bias                                        -> head_bias
    cls.predictions.decoder.weight                              -> head_decoder.kernel (untied only)
    jdiff.time_token.{weight,bias}                   (optional) -> time_token  (prefix time design)

A PyTorch ``Linear`` stores ``weight`` as (out, in) and computes ``x W^T + b``; a Flax ``Dense``
stores ``kernel`` as (in, out) and computes ``x K + b``: so ``K = W^T``. Embedding tables are
(rows, H) in both. Ignored: ``position_ids`` buffers, the pooler, the next-sentence head, and
``cls.predictions.decoder.bias`` (the same tensor as ``cls.predictions.bias``); with tied
embeddings also ``cls.predictions.decoder.weight`` (a copy of the word embeddings).
Parameters absent from the checkpoint that BERT does not have (the time MLPs, the prefix time
token) keep the values of the ``params`` passed in, i.e. their random initialisation.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, Iterable, Optional

import jax.numpy as jnp
import numpy as np

from .transformer import TransformerConfig

StateDict = Dict[str, np.ndarray]

_IGNORED = (re.compile(r"^(bert\.)?embeddings\.position_ids$"), re.compile(r"^(bert\.)?pooler\."),
            re.compile(r"^cls\.seq_relationship\."), re.compile(r"^cls\.predictions\.decoder\.bias$"))


class TorchNotInstalledError(ImportError, ValueError):
    """Reading a PyTorch ``.bin`` checkpoint without PyTorch (also a ValueError for the CLI)."""


# ----------------------------------------------------------------------------------- reading files

def load_state_dict(path: str | os.PathLike) -> StateDict:
    """Read a checkpoint into ``{key: float32 numpy array}``.

    ``path`` is a ``.safetensors`` file (read with ``safetensors.numpy``), a PyTorch state-dict
    file (``.bin``, ``.pt``, ``.pth``; needs torch), or a model directory holding
    ``model.safetensors`` or ``pytorch_model.bin`` (safetensors preferred).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("model.safetensors", "pytorch_model.bin"):
            if os.path.isfile(os.path.join(path, name)):
                return load_state_dict(os.path.join(path, name))
        raise FileNotFoundError(f"checkpoint folder {path!r} has neither model.safetensors nor "
                                f"pytorch_model.bin")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        try:
            sd = load_file(path)
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read safetensors checkpoint {path!r}: {e}") from None
    elif path.endswith((".bin", ".pt", ".pth")):
        sd = _load_torch(path)
    else:
        raise ValueError(f"checkpoint {path!r}: unknown format (expected .safetensors, .bin, .pt "
                         f"or .pth)")
    return {k: np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating)
            else np.asarray(v) for k, v in sd.items()}


def _load_torch(path: str) -> StateDict:
    try:
        import torch
    except ImportError:
        raise TorchNotInstalledError(
            f"reading the PyTorch checkpoint {path!r} needs torch: pip install torch, or convert it "
            f"to model.safetensors (safetensors.torch.save_file) and pass that instead") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors of a corrupt or non-checkpoint file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot read PyTorch checkpoint {path!r}: {msg}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path!r} is not a state dict (got {type(obj).__name__})")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in obj.items()}


def save_safetensors(state_dict: StateDict, path: str | os.PathLike) -> None:
    """Write ``state_dict`` (numpy arrays) to a ``.safetensors`` file."""
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, os.fspath(path))


# ------------------------------------------------------------------------------------ configuration

def config_from_bert_json(path: str | os.PathLike, **overrides) -> TransformerConfig:
    """:class:`TransformerConfig` from a HuggingFace BERT ``config.json`` (plus ``overrides``,
    e.g. ``time_mode``, ``num_timesteps``, ``cls_id``)."""
    with open(path, encoding="utf-8") as f:
        c = json.load(f)
    act = c.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(f"{os.fspath(path)!r}: hidden_act {act!r} is not supported (only BERT's "
                         f"erf 'gelu')")
    kw = dict(vocab_size=c["vocab_size"], hidden=c["hidden_size"],
              num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
              intermediate=c["intermediate_size"],
              max_len=c.get("max_position_embeddings", 512),
              type_vocab_size=c.get("type_vocab_size", 2),
              dropout=c.get("hidden_dropout_prob", 0.1),
              attention_dropout=c.get("attention_probs_dropout_prob", 0.1),
              layer_norm_eps=c.get("layer_norm_eps", 1e-12),
              initializer_range=c.get("initializer_range", 0.02))
    kw.update(overrides)
    return TransformerConfig(**kw)


def _normalise(state_dict: StateDict) -> StateDict:
    out = {}
    for k, v in state_dict.items():
        k2 = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", k)
        k2 = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k2)
        out[k2] = v
    return out


def _prefix(keys: Iterable[str]) -> str:
    return "bert." if any(k.startswith("bert.") for k in keys) else ""


def _num_layers(keys: Iterable[str]) -> int:
    idx = [int(m.group(1)) for k in keys if (m := re.search(r"encoder\.layer\.(\d+)\.", k))]
    return max(idx) + 1 if idx else 0


def config_from_state_dict(state_dict: StateDict, num_heads: Optional[int] = None,
                           **overrides) -> TransformerConfig:
    """Infer sizes from the tensors (``num_heads`` cannot be inferred: default ``hidden // 64``,
    as every BERT release)."""
    sd = _normalise(state_dict)
    p = _prefix(sd)
    word = _get(sd, p + "embeddings.word_embeddings.weight")
    hidden = word.shape[1]
    kw = dict(vocab_size=word.shape[0], hidden=hidden, num_layers=_num_layers(sd),
              num_heads=num_heads or max(1, hidden // 64),
              intermediate=_get(sd, p + "encoder.layer.0.intermediate.dense.weight").shape[0],
              max_len=_get(sd, p + "embeddings.position_embeddings.weight").shape[0],
              type_vocab_size=_get(sd, p + "embeddings.token_type_embeddings.weight").shape[0])
    kw.update(overrides)
    return TransformerConfig(**kw)


def _get(sd, key):
    if key not in sd:
        raise ValueError(f"checkpoint has no key {key!r}")
    return sd[key]


# ------------------------------------------------------------------------------------------ mapping

def key_map(cfg: TransformerConfig, prefix: str = "bert."):
    """``[(checkpoint key, flax path, transpose, required)]`` for ``cfg`` (see module docstring)."""
    p = prefix
    rows = []

    def linear(hf, path, required=True):
        rows.append((hf + ".weight", path + ("kernel",), True, required))
        rows.append((hf + ".bias", path + ("bias",), False, required))

    def norm(hf, path):
        rows.append((hf + ".weight", path + ("scale",), False, True))
        rows.append((hf + ".bias", path + ("bias",), False, True))

    for name in ("word", "position", "token_type"):
        rows.append((f"{p}embeddings.{name}_embeddings.weight", (f"{name}_embeddings", "embedding"),
                     False, True))
    norm(f"{p}embeddings.LayerNorm", ("embeddings_LayerNorm",))
    for i in range(cfg.num_layers):
        hf, fl = f"{p}encoder.layer.{i}.", (f"layer_{i}",)
        for qkv in ("query", "key", "value"):
            linear(hf + f"attention.self.{qkv}", fl + ("attention", qkv))
        linear(hf + "attention.output.dense", fl + ("attention_output",))
        norm(hf + "attention.output.LayerNorm", fl + ("attention_LayerNorm",))
        linear(hf + "intermediate.dense", fl + ("intermediate",))
        linear(hf + "output.dense", fl + ("output",))
        norm(hf + "output.LayerNorm", fl + ("output_LayerNorm",))
        if cfg.time_mode == "layerwise":
            linear(hf + "timestep_embedding.0", fl + ("time_mlp_0",), required=False)
            linear(hf + "timestep_embedding.2", fl + ("time_mlp_1",), required=False)
    linear("cls.predictions.transform.dense", ("head_transform",))
    norm("cls.predictions.transform.LayerNorm", ("head_LayerNorm",))
    rows.append(("cls.predictions.bias", ("head_bias",), False, True))
    if not cfg.tie_embeddings:
        rows.append(("cls.predictions.decoder.weight", ("head_decoder", "kernel"), True, True))
    if cfg.time_mode == "prefix":
        if cfg.prefix_embedding == "table":
            rows.append(("jdiff.time_token.weight", ("time_token", "embedding"), False, False))
        else:
            linear("jdiff.time_token", ("time_token",), required=False)
    return rows


def _tree_get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


def _tree_set(tree, path, value):
    for p in path[:-1]:
        tree = tree[p]
    tree[path[-1]] = value


def _copy_tree(tree):
    return {k: _copy_tree(v) if isinstance(v, dict) else v for k, v in tree.items()}


def state_dict_to_params(state_dict: StateDict, cfg: TransformerConfig, params):
    """Copy a BERT state dict into ``params`` (the variables dict of ``Transformer(cfg)``).

    Returns a new variables dict; ``params`` supplies the values of parameters BERT does not
    have (time embeddings) and the expected shapes. Raises ValueError naming the key on a layer
    count, vocabulary, shape, missing-key or unexpected-key mismatch.
    """
    sd = _normalise(state_dict)
    prefix = _prefix(sd)
    n_layers = _num_layers(sd)
    if n_layers != cfg.num_layers:
        raise ValueError(f"checkpoint has {n_layers} encoder layers but the config has "
                         f"{cfg.num_layers} (num_layers)")
    word_key = prefix + "embeddings.word_embeddings.weight"
    if word_key in sd and sd[word_key].shape[0] != cfg.vocab_size:
        raise ValueError(f"checkpoint key {word_key!r} has {sd[word_key].shape[0]} rows but "
                         f"config.vocab_size is {cfg.vocab_size}: use the checkpoint's vocab.txt")
    variables = dict(params)
    tree = _copy_tree(variables["params"])
    used, missing = set(), []
    for key, path, transpose, required in key_map(cfg, prefix):
        if key not in sd:
            if required:
                missing.append(key)
            continue
        used.add(key)
        try:
            target = _tree_get(tree, path)
        except KeyError:
            raise ValueError(f"checkpoint key {key!r} maps to parameter {'/'.join(path)}, which "
                             f"the model does not have") from None
        value = np.asarray(sd[key], np.float32)
        value = value.T if transpose else value
        if value.shape != tuple(target.shape):
            shown = f"{tuple(sd[key].shape)}" + (f" (transposed: {value.shape})" if transpose else "")
            raise ValueError(f"checkpoint key {key!r} has shape {shown} but parameter "
                             f"{'/'.join(path)} has shape {tuple(target.shape)}")
        _tree_set(tree, path, jnp.asarray(value, target.dtype))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"checkpoint lacks {len(missing)} required key(s): "
                         f"{', '.join(missing[:5])}{more}")
    unexpected = [k for k in sd if k not in used and not any(r.search(k) for r in _IGNORED)
                  and not (cfg.tie_embeddings and k == "cls.predictions.decoder.weight")]
    if unexpected:
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise ValueError(f"checkpoint has {len(unexpected)} key(s) the model cannot use: "
                         f"{', '.join(unexpected[:5])}{more} (time_mode={cfg.time_mode!r}, "
                         f"tie_embeddings={cfg.tie_embeddings})")
    variables["params"] = tree
    return variables


def params_to_state_dict(params, cfg: TransformerConfig, prefix: str = "bert.") -> StateDict:
    """The inverse of :func:`state_dict_to_params`: HuggingFace key names, torch layouts, float32
    numpy arrays (time parameters under the official / ``jdiff.`` names above)."""
    tree = params["params"]
    out = {}
    for key, path, transpose, _ in key_map(cfg, prefix):
        value = np.asarray(_tree_get(tree, path), np.float32)
        out[key] = np.ascontiguousarray(value.T if transpose else value)
    return out


def load_pretrained(path: str | os.PathLike, cfg: TransformerConfig, params):
    """:func:`load_state_dict` then :func:`state_dict_to_params`."""
    return state_dict_to_params(load_state_dict(path), cfg, params)


__all__ = ["TorchNotInstalledError", "load_state_dict", "save_safetensors", "config_from_bert_json",
           "config_from_state_dict", "key_map", "state_dict_to_params", "params_to_state_dict",
           "load_pretrained"]
