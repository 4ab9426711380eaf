"""Text sampling speed: tokens/s of the compiled absorbing-diffusion sampler vs the number of steps.

    python benchmarks/text_sampling_speed.py            # writes results/text_sampling_speed.{json,md}
    python benchmarks/text_sampling_speed.py --quick    # smoke run (prints only)

Setup: the CPU default model of ``experiments/text_diffusion.py`` (BERT-style post-LN encoder,
2 layers, hidden 128, 4 heads, FFN 256, vocabulary 2000 with [MASK], randomly initialised: the
cost does not depend on the weights), 64 sequences of 64 tokens, T = 256, top-k 30 on the
posterior logits (the paper's setting), float32. Schedules: ``linear`` (token-independent) and
``spindle`` (lambda 0.3, Zipf-like counts; the sampler then also computes the per-token weights
from the argmax of the predicted x0 at every step).

Measured, per schedule and step count, after one warm-up call (compilation):

(a) ``sample``: one :func:`jdiff.discrete.sample` call (one jitted program, ``lax.scan`` over the
    steps), from the Python call to ``block_until_ready``; rounds interleaved (the order of all
    programs reshuffled each round) and the median taken.
(c) ``model``: one call of the jitted network at the same batch, median over the rounds; the
    sampler's own cost is ``(a) - steps x (c)`` (the posterior, top-k, categorical draw, and for
    the spindle its weights).
(d) ``top-k``: :func:`jdiff.discrete.filter_logits` alone on (64, 64, V) logits, jitted: what
    one sampler step spends on the top-k filter.
(e) ``categorical``: ``jax.random.categorical`` alone on the same logits (the ``gumbel`` draw);
(f) ``inverse_cdf``: :func:`jdiff.discrete.categorical_inverse_cdf` alone (the default draw).

Each sampler program runs with each ``--draws`` (``inverse_cdf``, ``gumbel``) in the same
interleaved rounds, so their ratio is measured side by side.

tokens/s = 64 x 64 / (a): the whole batch is produced by one call.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DEFAULT = dict(steps="4,16,64,128", rounds=3, n=64, seq_len=64, vocab=2000, layers=2, hidden=128, heads=4, T=256)
QUICK = dict(steps="2,4", rounds=2, n=8, seq_len=16, vocab=100, layers=1, hidden=32, heads=2, T=16)


def main(argv=None):
    ap = common.parser(__doc__, "smoke run: a tiny model, steps 2 and 4, 2 rounds")
    ap.add_argument("--steps", default=None, help=f"comma list of sampler steps ({DEFAULT['steps']})")
    ap.add_argument("--schedules", default="linear,spindle", help="comma list of linear, cosine, spindle")
    ap.add_argument("--time-mode", default="agnostic", help="agnostic, layerwise or prefix")
    ap.add_argument("--rounds", type=int, default=None, help=f"timed rounds ({DEFAULT['rounds']})")
    ap.add_argument("--top-k", type=int, default=30)
    ap.add_argument("--draws", default="inverse_cdf,gumbel", help="comma list of the sampler's draws")
    ap.add_argument("--out", default=None, help="output prefix (default results/text_sampling_speed)")
    args = ap.parse_args(argv)
    cfg = dict(QUICK if args.quick else DEFAULT)
    for k in ("steps", "rounds"):
        if getattr(args, k) is not None:
            cfg[k] = getattr(args, k)
    steps_list = sorted({int(s) for s in str(cfg["steps"]).split(",") if s.strip()})
    if not steps_list or min(steps_list) < 1 or max(steps_list) > cfg["T"]:
        ap.error(f"--steps must be positive integers up to T = {cfg['T']}")
    schedules = [s.strip() for s in args.schedules.split(",") if s.strip()]
    draws = [d.strip() for d in args.draws.split(",") if d.strip()]
    run = common.Run(__file__, argv)

    from jdiff.discrete import absorbing, categorical_inverse_cdf, get_schedule, sample
    from jdiff.models.transformer import Transformer, TransformerConfig, init_params, make_apply_fn

    V, n, L, T = cfg["vocab"], cfg["n"], cfg["seq_len"], cfg["T"]
    mask_id = 4
    mcfg = TransformerConfig(vocab_size=V, hidden=cfg["hidden"], num_layers=cfg["layers"], num_heads=cfg["heads"],
                             intermediate=2 * cfg["hidden"], max_len=L + 1, dropout=0.0, attention_dropout=0.0,
                             time_mode=args.time_mode, num_timesteps=T)
    model = Transformer(mcfg)
    params = init_params(model, jax.random.key(0), seq_len=L)
    n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
    apply_fn = make_apply_fn(model)
    counts = np.zeros(V)
    counts[5:] = 1e6 / np.arange(1, V - 4)  # Zipf
    processes = {s: absorbing(get_schedule(s, counts=counts, lam=0.3, mask_id=mask_id) if s == "spindle"
                              else get_schedule(s), V, mask_id) for s in schedules}

    model_jit = jax.jit(apply_fn)
    x_model = jnp.full((n, L), mask_id, jnp.int32)
    u_model = jnp.full((n,), 0.5, jnp.float32)
    from jdiff.discrete.sampling import filter_logits

    logits = jax.random.normal(jax.random.key(1), (n, L, V), jnp.float32)
    topk_jit = jax.jit(lambda lg: filter_logits(lg, args.top_k))
    cat_jit = jax.jit(lambda k, lg: jax.random.categorical(k, lg, axis=-1))
    inv_jit = jax.jit(categorical_inverse_cdf)
    parts = ("model", "topk", "categorical", "inverse_cdf")
    calls = {("model", 0): lambda r: model_jit(params, x_model, u_model),
             ("topk", 0): lambda r: topk_jit(logits),
             ("categorical", 0): lambda r: cat_jit(jax.random.key(r), logits),
             ("inverse_cdf", 0): lambda r: inv_jit(jax.random.key(r), logits)}
    for s, proc in processes.items():
        for d in draws:
            for k in steps_list:
                calls[(s, d, k)] = (lambda r, proc=proc, k=k, d=d: sample(
                    apply_fn, params, proc, jax.random.key(r), (n, L), k, T=T, top_k=args.top_k, draw=d))
    first = {}
    for key, call in calls.items():  # warm-up: compile
        first[key] = common.timeit(lambda call=call: call(0))
        print(f"warm-up {key}: {first[key]:.1f} s", flush=True)
    # the model call is cheap: time it 5 times per round
    progs = {**{k: v for k, v in calls.items() if k[0] not in parts},
             **{(c, i): calls[(c, 0)] for c in parts for i in range(5)}}
    times = common.interleaved_rounds(progs, cfg["rounds"],
                                      after_round=lambda r, t: print(f"round {r + 1}/{cfg['rounds']}", flush=True))
    model_times = [t for k, v in times.items() if k[0] == "model" for t in v]
    model_s = common.summary(model_times)
    part = {c: common.summary([t for k, v in times.items() if k[0] == c for t in v]) for c in parts[1:]}
    rows, records = [], []
    for s in schedules:
        for d in draws:
            for k in steps_list:
                st = common.summary(times[(s, d, k)])
                med = st["median"]
                over = med - k * model_s["median"]
                ratio = (med / common.summary(times[(s, "gumbel", k)])["median"]
                         if "gumbel" in draws and d != "gumbel" else None)
                records.append({"schedule": s, "draw": d, "steps": k, "seconds": st, "first_call_s": first[(s, d, k)],
                                "tokens_per_s": n * L / med, "model_calls_s": k * model_s["median"],
                                "sampler_overhead_s": over, "time_vs_gumbel": ratio})
                rows.append([s, d, k, f"{med:.3f} [{st['q1']:.3f}, {st['q3']:.3f}]", f"{n * L / med:,.0f}",
                             "" if ratio is None else f"{ratio:.2f}",
                             f"{k * model_s['median']:.3f}", f"{100 * over / med:+.0f}%", f"{first[(s, d, k)]:.1f}"])
    res = run.finish({"config": {**cfg, "steps": steps_list, "schedules": schedules, "time_mode": args.time_mode,
                                 "top_k": args.top_k, "parameters": n_params, "draws": draws},
                      "model_call_s": model_s, "topk_filter_s": part["topk"],
                      "categorical_s": part["categorical"], "inverse_cdf_s": part["inverse_cdf"], "records": records})
    title = "Text sampling speed (absorbing diffusion, compiled sampler)"
    md = common.md_header(title, res)
    md += [f"Model: BERT-style encoder, {cfg['layers']} layers, hidden {cfg['hidden']}, {cfg['heads']} heads, vocabulary "
           f"{V}, time mode `{args.time_mode}`, {n_params:,} parameters (random weights); batch {n} x {L} tokens, "
           f"T = {T}, top-k {args.top_k}, float32; {cfg['rounds']} interleaved rounds after a warm-up call.", "",
           f"(c) one model call at batch {n}: **{model_s['median'] * 1e3:.1f} ms** (median of {model_s['n']}; "
           f"IQR [{model_s['q1'] * 1e3:.1f}, {model_s['q3'] * 1e3:.1f}]); (d) `filter_logits` top-k {args.top_k} "
           f"alone: **{part['topk']['median'] * 1e3:.1f} ms**; (e) `jax.random.categorical` alone: "
           f"**{part['categorical']['median'] * 1e3:.1f} ms**; (f) `categorical_inverse_cdf` alone: "
           f"**{part['inverse_cdf']['median'] * 1e3:.1f} ms** (all on ({n}, {L}, {V}) logits, per sampler step).", ""]
    md += common.md_table(["schedule", "draw", "steps", "(a) sample s, median [IQR]", "tokens/s", "time / gumbel",
                           "steps x (c) s", "sampler overhead", "first call s (compile)"], rows)
    md += ["", "Sampler overhead = ((a) - steps x (c)) / (a): the posterior, top-k filter and draw "
           "(and for the spindle the per-token weights) on top of the network calls. time / gumbel: the "
           "same program with `draw='gumbel'` (`jax.random.categorical`) in the same rounds."]
    common.report(common.out_prefix(args, "text_sampling_speed"), res, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
