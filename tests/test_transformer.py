"""BERT-style text denoiser: shapes, time designs, padding mask, dropout, and the pretrained-BERT
conversion (random checkpoint with the real HuggingFace key names; numpy re-implementation of
BERT's forward pass as the parity reference)."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from jdiff.models import bert_checkpoint as bc
from jdiff.models.transformer import (TIME_MODES, Transformer, TransformerConfig, bind_dropout,
                                      init_params, make_apply_fn, make_train_apply_fn,
                                      step_index, tiny_config)

V = 23


_CACHE = {}


def _setup(mode, **kw):
    """(config, model, params, apply) built once per configuration: compiling is the slow part
    of these tests on CPU. ``apply(params, x, t, mask=None)`` runs one compiled program per
    configuration (the mask defaults to ``x != 0``, pad_id 0, computed outside the program)."""
    key = (mode, tuple(sorted(kw.items())))
    if key not in _CACHE:
        cfg = tiny_config(V, time_mode=mode, **kw)
        model = Transformer(cfg)
        compiled = jax.jit(make_apply_fn(model))

        def apply(params, x, t, mask=None):
            return compiled(params, x, t, x != 0 if mask is None else mask)

        _CACHE[key] = (cfg, model, init_params(model, jax.random.key(0)), apply)
    return _CACHE[key]


def _tokens(b=3, n=7, seed=0):
    return jnp.asarray(np.random.RandomState(seed).randint(5, V, size=(b, n)), jnp.int32)


# ------------------------------------------------------------------------------------ the network

@pytest.mark.parametrize("mode", TIME_MODES)
def test_shapes_and_determinism(mode):
    cfg, model, params, apply_fn = _setup(mode, cls_id=2)
    x, t = _tokens(), jnp.array([0.1, 0.5, 1.0])
    out = apply_fn(params, x, t)
    assert out.shape == (3, 7, V) and out.dtype == jnp.float32
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out, apply_fn(params, x, t))


@pytest.mark.parametrize("mode,prefix", [("agnostic", "sinusoidal"), ("layerwise", "sinusoidal"),
                                         ("prefix", "sinusoidal"),
                                         pytest.param("prefix", "table", marks=pytest.mark.slow)])
def test_time_changes_output_only_when_fed(mode, prefix):
    kw = {} if prefix == "sinusoidal" else {"prefix_embedding": prefix}
    cfg, model, params, apply_fn = _setup(mode, cls_id=2, **kw)  # tokens >= 5: no padding
    x = _tokens()
    a = apply_fn(params, x, jnp.full((3,), 0.2))
    b = apply_fn(params, x, jnp.full((3,), 0.9))
    if mode == "agnostic":
        np.testing.assert_array_equal(a, b)
    else:
        assert float(jnp.max(jnp.abs(a - b))) > 1e-5     # agnostic: exactly 0
    # per-example time: each row sees its own t
    c = apply_fn(params, x, jnp.array([0.2, 0.9, 0.2]))
    np.testing.assert_allclose(c[0], a[0], atol=1e-5)
    np.testing.assert_allclose(c[1], b[1], atol=1e-5)


@pytest.mark.parametrize("mode", TIME_MODES)
def test_padding_mask_respected(mode):
    cfg, model, params, apply_fn = _setup(mode, cls_id=2)
    x = _tokens().at[:, 5:].set(0)                 # last two positions are padding
    t = jnp.array([0.3, 0.6, 0.9])
    out = apply_fn(params, x, t)
    # a padded position holding another id but declared padding via the explicit mask
    mask = x != 0
    y = x.at[:, 6].set(7)
    out2 = apply_fn(params, y, t, mask)
    np.testing.assert_allclose(out2[:, :5], out[:, :5], atol=1e-5)
    # without the mask the change is seen (the test is sensitive)
    out3 = apply_fn(params, y, t, jnp.ones_like(mask))
    assert float(jnp.max(jnp.abs(out3[:, :5] - out[:, :5]))) > 1e-4


def test_dropout_training_variant():
    cfg, model, params, apply_fn = _setup("layerwise", cls_id=2)      # dropout 0.1
    train_fn = jax.jit(make_train_apply_fn(model, pad_id=0))
    x, t = _tokens(), jnp.full((3,), 0.5)
    a = train_fn(params, x, t, jax.random.key(1))
    np.testing.assert_array_equal(a, train_fn(params, x, t, jax.random.key(1)))
    assert float(jnp.max(jnp.abs(a - train_fn(params, x, t, jax.random.key(2))))) > 1e-4
    assert float(jnp.max(jnp.abs(a - apply_fn(params, x, t)))) > 1e-4
    np.testing.assert_array_equal(bind_dropout(train_fn, jax.random.key(1))(params, x, t), a)


def test_config_and_input_errors():
    with pytest.raises(ValueError, match="time_mode"):
        tiny_config(V, time_mode="token")
    with pytest.raises(ValueError, match="multiple of num_heads"):
        tiny_config(V, hidden=30, num_heads=4)
    cfg, model, params, _ = _setup("prefix", cls_id=2)
    with pytest.raises(ValueError, match="max_len"):
        make_apply_fn(model)(params, jnp.zeros((1, 63), jnp.int32), jnp.ones((1,)))
    with pytest.raises(ValueError, match="needs t"):
        model.apply(params, _tokens())


# ---------------------------------------------------------------- checkpoint: numpy BERT reference

# the shapes of tiny_config(V): the converted weights run in the compiled models above
CK = dict(vocab_size=V, hidden=32, num_layers=2, num_heads=2, intermediate=64, max_len=64,
          type_vocab_size=2)


def _random_bert_state_dict(seed=0, vocab=V, hidden=32, layers=2, inter=64, max_len=64):
    """A BertForMaskedLM-style state dict with the real key names and torch layouts."""
    rng = np.random.RandomState(seed)
    r = lambda *s: (0.3 * rng.standard_normal(s)).astype(np.float32)
    sd = {"bert.embeddings.word_embeddings.weight": r(vocab, hidden),
          "bert.embeddings.position_embeddings.weight": r(max_len, hidden),
          "bert.embeddings.token_type_embeddings.weight": r(2, hidden),
          "bert.embeddings.LayerNorm.weight": 1 + r(hidden), "bert.embeddings.LayerNorm.bias": r(hidden),
          "bert.embeddings.position_ids": np.arange(max_len, dtype=np.int64)[None],
          "bert.pooler.dense.weight": r(hidden, hidden), "bert.pooler.dense.bias": r(hidden),
          "cls.predictions.transform.dense.weight": r(hidden, hidden),
          "cls.predictions.transform.dense.bias": r(hidden),
          "cls.predictions.transform.LayerNorm.weight": 1 + r(hidden),
          "cls.predictions.transform.LayerNorm.bias": r(hidden),
          "cls.predictions.bias": r(vocab),
          "cls.seq_relationship.weight": r(2, hidden), "cls.seq_relationship.bias": r(2)}
    sd["cls.predictions.decoder.weight"] = sd["bert.embeddings.word_embeddings.weight"].copy()
    sd["cls.predictions.decoder.bias"] = sd["cls.predictions.bias"].copy()
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for name, (o, n) in {"attention.self.query": (hidden, hidden),
                             "attention.self.key": (hidden, hidden),
                             "attention.self.value": (hidden, hidden),
                             "attention.output.dense": (hidden, hidden),
                             "intermediate.dense": (inter, hidden),
                             "output.dense": (hidden, inter)}.items():
            sd[p + name + ".weight"] = r(o, n)
            sd[p + name + ".bias"] = r(o)
        for name in ("attention.output.LayerNorm", "output.LayerNorm"):
            sd[p + name + ".weight"] = 1 + r(hidden)
            sd[p + name + ".bias"] = r(hidden)
    return sd


def _numpy_bert_mlm(sd, ids, mask, heads, eps=1e-12):
    """BERT's masked-LM forward from the equations (HF ``BertForMaskedLM``), torch layouts.

    ids, mask: (B, L) with mask 1 for attended keys. Returns logits (B, L, V)."""
    g = lambda k: sd[k].astype(np.float64)
    lin = lambda x, k: x @ g(k + ".weight").T + g(k + ".bias")
    gelu = lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2)))

    def ln(x, k):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * g(k + ".weight") + g(k + ".bias")

    b, n = ids.shape
    h = (g("bert.embeddings.word_embeddings.weight")[ids]
         + g("bert.embeddings.position_embeddings.weight")[np.arange(n)][None]
         + g("bert.embeddings.token_type_embeddings.weight")[0])
    h = ln(h, "bert.embeddings.LayerNorm")
    hid = h.shape[-1]
    d = hid // heads
    bias = (1.0 - mask[:, None, None, :]) * -1e30          # HF extended attention mask
    layer = 0
    while f"bert.encoder.layer.{layer}.attention.self.query.weight" in sd:
        p = f"bert.encoder.layer.{layer}."
        split = lambda x: x.reshape(b, n, heads, d).transpose(0, 2, 1, 3)
        q, k, v = (split(lin(h, p + f"attention.self.{w}")) for w in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(0, 2, 1, 3).reshape(b, n, hid)
        a = ln(lin(ctx, p + "attention.output.dense") + h, p + "attention.output.LayerNorm")
        f = lin(gelu(lin(a, p + "intermediate.dense")), p + "output.dense")
        h = ln(f + a, p + "output.LayerNorm")
        layer += 1
    z = ln(gelu(lin(h, "cls.predictions.transform.dense")), "cls.predictions.transform.LayerNorm")
    return z @ g("bert.embeddings.word_embeddings.weight").T + g("cls.predictions.bias")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    sd = _random_bert_state_dict()
    path = tmp_path_factory.mktemp("bert") / "model.safetensors"
    bc.save_safetensors(sd, path)
    return sd, path


def _converted(path, mode="agnostic"):
    """(config, apply, random init, converted params) for the cached tiny model of ``mode``."""
    cfg, model, init, apply = _setup(mode, cls_id=2)
    return cfg, apply, init, bc.load_pretrained(path.parent, cfg, init)


def _shapes(cfg):
    """The variables tree of Transformer(cfg) as shapes only (no compilation)."""
    model = Transformer(cfg)
    return jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 4), jnp.int32), jnp.ones((1,))),
                          jax.random.key(0))


def test_checkpoint_parity_with_numpy_bert(checkpoint):
    """[CLS] x_t [SEP] with [SEP] masked (DiffusionBERT's framing) in numpy == our model, which
    prepends [CLS] and omits the masked [SEP]; with padding inside the sequence too."""
    sd, path = checkpoint
    cfg, apply, _, params = _converted(path)
    x = np.random.RandomState(1).randint(5, V, size=(3, 7))
    x[1, 4:] = 0                                                        # padding (pad_id 0)
    logits = np.asarray(apply(params, jnp.asarray(x, jnp.int32), jnp.ones((3,))))
    framed = np.concatenate([np.full((3, 1), 2), x, np.full((3, 1), 3)], axis=1)
    mask = np.concatenate([np.ones((3, 1)), (x != 0), np.zeros((3, 1))], axis=1)
    ref = _numpy_bert_mlm(sd, framed, mask, heads=CK["num_heads"])[:, 1:-1]
    np.testing.assert_allclose(logits[[0, 2]], ref[[0, 2]], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits[1, :4], ref[1, :4], rtol=1e-4, atol=1e-4)


def test_checkpoint_round_trip_and_time_params_kept(checkpoint):
    sd, path = checkpoint
    cfg, _, init, params = _converted(path, "layerwise")
    back = bc.params_to_state_dict(params, cfg)
    for key, value in back.items():
        if ".timestep_embedding." in key:
            continue
        np.testing.assert_array_equal(value, sd[key], err_msg=key)
    mapped = {k for k in back if ".timestep_embedding." not in k}
    ignored = {"bert.embeddings.position_ids", "bert.pooler.dense.weight", "bert.pooler.dense.bias",
               "cls.seq_relationship.weight", "cls.seq_relationship.bias",
               "cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert mapped == set(sd) - ignored
    # the new time MLP keeps its random initialisation
    np.testing.assert_array_equal(params["params"]["layer_1"]["time_mlp_0"]["kernel"],
                                  init["params"]["layer_1"]["time_mlp_0"]["kernel"])
    # and converting the exported dict (official LTE key names included) gives the same params
    again = bc.state_dict_to_params(back, cfg, _shapes(cfg))
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, params)


def test_checkpoint_variants(checkpoint):
    sd, path = checkpoint
    # old gamma/beta LayerNorm names and a bare BertModel prefix are accepted
    old = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
           for k, v in sd.items()}
    cfg, _, init, params = _converted(path)
    jax.tree_util.tree_map(np.testing.assert_array_equal,
                           bc.state_dict_to_params(old, cfg, init), params)
    # a bare BertModel (no "bert." prefix) with the MLM head keys
    bare = {(k[5:] if k.startswith("bert.") else k): v for k, v in sd.items()}
    jax.tree_util.tree_map(np.testing.assert_array_equal,
                           bc.state_dict_to_params(bare, cfg, init), params)
    # untied head reads cls.predictions.decoder.weight (transposed)
    cfg_u = TransformerConfig(**CK, tie_embeddings=False)
    params_u = bc.state_dict_to_params(sd, cfg_u, _shapes(cfg_u))
    np.testing.assert_array_equal(params_u["params"]["head_decoder"]["kernel"],
                                  sd["cls.predictions.decoder.weight"].T)
    inferred = bc.config_from_state_dict(sd, num_heads=2)
    assert (inferred.vocab_size, inferred.hidden, inferred.num_layers, inferred.intermediate,
            inferred.max_len) == (V, 32, 2, 64, 64)


def test_checkpoint_clear_errors(checkpoint, tmp_path, monkeypatch):
    sd, path = checkpoint
    cfg = TransformerConfig(**CK)
    init = _shapes(cfg)
    bad = dict(sd)
    bad["bert.encoder.layer.1.intermediate.dense.weight"] = np.zeros((65, 32), np.float32)
    with pytest.raises(ValueError, match=r"'bert\.encoder\.layer\.1\.intermediate\.dense\.weight' has shape"):
        bc.state_dict_to_params(bad, cfg, init)
    bad = {k: v for k, v in sd.items() if k != "bert.encoder.layer.0.output.LayerNorm.bias"}
    with pytest.raises(ValueError, match=r"lacks 1 required key\(s\): bert\.encoder\.layer\.0\.output\.LayerNorm\.bias"):
        bc.state_dict_to_params(bad, cfg, init)
    bad = dict(sd, **{"bert.encoder.layer.0.attention.self.rotary.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="cannot use: bert.encoder.layer.0.attention.self.rotary.weight"):
        bc.state_dict_to_params(bad, cfg, init)
    cfg3 = TransformerConfig(**dict(CK, num_layers=3))
    with pytest.raises(ValueError, match="2 encoder layers but the config has 3"):
        bc.state_dict_to_params(sd, cfg3, _shapes(cfg3))
    cfgv = TransformerConfig(**dict(CK, vocab_size=V + 1))
    with pytest.raises(ValueError, match=f"has {V} rows but config.vocab_size is {V + 1}"):
        bc.state_dict_to_params(sd, cfgv, _shapes(cfgv))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        bc.load_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        bc.load_state_dict(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02not really")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "torch", None)           # as if torch were not installed
        with pytest.raises(ValueError, match="needs torch: pip install torch, or convert it"):
            bc.load_state_dict(tmp_path)
    if importlib.util.find_spec("torch") is not None:
        with pytest.raises(ValueError, match="cannot read PyTorch checkpoint"):
            bc.load_state_dict(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read safetensors checkpoint"):
        bc.load_state_dict(tmp_path)


def test_apply_fn_hashes_by_value():
    """The sampler takes apply_fn as a static jit argument: equal configs give equal functions."""
    cfg, model, params, _ = _setup("agnostic", cls_id=2)
    assert make_apply_fn(Transformer(cfg), 0) == make_apply_fn(model, 0)
    assert hash(make_apply_fn(Transformer(cfg), 0)) == hash(make_apply_fn(model, 0))
    assert make_apply_fn(model, 0) != make_apply_fn(model, None)


def test_bert_base_parameter_count():
    """bert-base-uncased BertForMaskedLM has 109,514,298 parameters (tied decoder, no pooler);
    LTE adds 12 x (768*1536 + 1536 + 1536*768 + 768), the prefix projection 768*768 + 768."""
    from jdiff.models import count_params

    def n(mode):
        m = Transformer(TransformerConfig(time_mode=mode, cls_id=101))
        return count_params(jax.eval_shape(
            lambda k: m.init(k, jnp.zeros((1, 8), jnp.int32), jnp.ones((1,))), jax.random.key(0)))

    assert n("agnostic") == 109_514_298
    assert n("layerwise") == 109_514_298 + 12 * (2 * 768 * 1536 + 1536 + 768)
    assert n("prefix") == 109_514_298 + 768 * 768 + 768


@pytest.mark.parametrize("T", [64, 1000, 2048])
def test_prefix_table_step_index_on_the_grid(T):
    k = np.arange(1, T + 1)
    t = jnp.asarray(k, jnp.float32) / T                       # float32 grid points k / T
    np.testing.assert_array_equal(step_index(t, T), k - 1)
    np.testing.assert_array_equal(step_index(t - 0.5 / T, T), k - 1)    # between grid points


def test_pytorch_state_dict_file(checkpoint, tmp_path):
    """A pytorch_model.bin (torch.save of the state dict) reads the same as the safetensors."""
    torch = pytest.importorskip("torch")
    sd, path = checkpoint
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, tmp_path / "pytorch_model.bin")
    got = bc.load_state_dict(tmp_path)
    assert set(got) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(got[k], sd[k], err_msg=k)
