"""DiffusionBERT's design study on an exact discrete testbed: learned bound vs the exact entropy.

The text study (``experiments/text_diffusion.py``) cannot tell the schedules and time designs
apart on a CPU: its models stay near the unigram solution. Here the same pipeline (BERT-style
:class:`jdiff.models.transformer.Transformer`, hybrid loss, AdamW + EMA of
:mod:`jdiff.training`) is trained on a mixture of product distributions
(:mod:`jdiff.discrete.testbeds`) whose answers are exact:

* the **entropy** H of the data: no model's bound can go below it (nats per sequence);
* the **exact denoiser's bound** at the same T under the linear schedule: what a perfect
  x0-predictor achieves with that chain (its gap to H is the cost of the chain, not of learning);
* the **independent-positions** entropy (sum of the per-position marginal entropies): what a
  model that ignores context achieves at best, the testbed's analogue of the unigram baseline.

Every configuration ``<schedule>_<time mode>`` (linear / spindle x agnostic / layerwise /
prefix) is trained from the same initial key on the same batches (exact samples drawn as a
function of the step) for the same steps, per training seed, and evaluated with every term of
the T-step bound (:func:`jdiff.discrete.losses.sequence_bound`) on the same held-out exact
samples and key: differences between configurations are paired, their standard errors come from
the per-sequence differences. The spindle's counts are the exact token marginals (x 1e6).

    python benchmarks/discrete_learned.py            # ~12 min on 2 CPU cores
    python benchmarks/discrete_learned.py --quick    # smoke run
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def parse_args(argv=None):
    ap = common.parser(__doc__, "30 steps, 2 configurations, 1 seed")
    ap.add_argument("--testbed", default="k4l5v6", help="built-in discrete testbed or a .json spec")
    ap.add_argument("--T", type=int, default=64, help="steps of the discrete chain")
    ap.add_argument("--steps", type=int, default=1500, help="training steps per configuration")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--schedules", default="linear,spindle")
    ap.add_argument("--time-modes", default="agnostic,layerwise,prefix")
    ap.add_argument("--seeds", default="0,1", help="training seeds")
    ap.add_argument("--eval-n", type=int, default=4096, help="held-out exact samples")
    ap.add_argument("--evals", type=int, default=5, help="evaluations along training (curve)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--render", default=None, metavar="PREFIX.json",
                    help="only rewrite PREFIX.md and PREFIX.png from a saved PREFIX.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.evals, args.eval_n, args.seeds = 30, 2, 256, "0"
        args.schedules, args.time_modes = "linear,spindle", "agnostic"
    return args


def references(tb, T):
    """Entropy, the exact denoiser's bound (linear, T) and the independent-positions entropy."""
    from jdiff import discrete as D

    w, P = tb.arrays64()
    marg = np.einsum("k,klv->lv", w, P)
    return {"entropy": tb.entropy(), "exact_denoiser_bound": D.exact_bound(tb, D.linear(), T)[0],
            "independent_positions": float(-(marg * np.log(marg)).sum())}


def train_and_eval(args, tb, schedule, time_mode, seed, x_eval):
    """Train one configuration; ``(curve [(step, mean bound)], per-sequence bound (n,), seconds)``."""
    import jax

    from jdiff import discrete as D
    from jdiff.models.transformer import (Transformer, TransformerConfig, bind_dropout, init_params,
                                          make_apply_fn, make_train_apply_fn)
    from jdiff.training import create_train_state, jit_train_step, make_optimizer, make_train_step

    if schedule == "spindle":
        w, P = tb.arrays64()
        counts = np.append(np.einsum("k,klv->v", w, P) * 1e6, 0.0)  # the mask never occurs
        sched = D.spindle(counts, mask_id=tb.mask_id)
    else:
        sched = D.get_schedule(schedule)
    proc = D.absorbing(sched, tb.num_states, tb.mask_id)
    cfg = TransformerConfig(vocab_size=tb.num_states, hidden=args.hidden, num_layers=args.layers,
                            num_heads=4, intermediate=2 * args.hidden, max_len=tb.L + 2, dropout=0.0,
                            attention_dropout=0.0, time_mode=time_mode, num_timesteps=args.T)
    model = Transformer(cfg)
    loss = D.absorbing_loss(proc, D.LossSpec(kind="hybrid", T=args.T))
    train_fn, apply_fn = make_train_apply_fn(model), make_apply_fn(model)

    def loss_fn(p, batch, key):
        k_drop, k_loss = jax.random.split(key)
        value, metrics = loss(p, bind_dropout(train_fn, k_drop), batch, k_loss)
        return value, {k: v for k, v in metrics.items() if k != "bound_per_seq"}

    warmup = max(args.steps // 15, 1)
    opt = make_optimizer(args.lr, warmup_steps=warmup, decay_steps=max(args.steps - warmup, 1),
                         weight_decay=0.01, grad_clip=1.0)
    state = create_train_state(init_params(model, jax.random.key(seed), seq_len=tb.L), opt, seed=seed)
    step = jit_train_step(make_train_step(loss_fn, opt, ema_decay=0.999, ema_warmup=True))
    data_key = jax.random.fold_in(jax.random.key(1234), seed)
    evaluate = jax.jit(lambda p, x: D.sequence_bound(p, apply_fn, proc, x, jax.random.key(7), args.T))
    marks = set(np.linspace(0, args.steps, args.evals + 1).round().astype(int)[1:].tolist())
    curve, t0 = [], time.perf_counter()
    for s in range(args.steps):
        state, _ = step(state, tb.sample(jax.random.fold_in(data_key, s), args.batch_size))
        if s + 1 in marks:
            b = np.asarray(evaluate(state.ema_params, x_eval), np.float64)
            curve.append((s + 1, float(b.mean())))
    return curve, b, time.perf_counter() - t0


def main(argv=None):
    import jax

    from jdiff import discrete as D

    args = parse_args(argv)
    if args.render:
        prefix = args.render.removesuffix(".json")
        res = json.loads(Path(args.render).read_text())
        plot(res, Path(f"{prefix}.png"))
        common.report(prefix, res, markdown(res))
        return
    run = common.Run(__file__, argv)
    tb = D.get_discrete_testbed(args.testbed)
    refs = references(tb, args.T)
    x_eval = tb.sample(jax.random.key(99), args.eval_n)
    configs = [(s, m) for s in args.schedules.split(",") for m in args.time_modes.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    records, per_seq = [], {}
    for seed in seeds:
        for schedule, mode in configs:
            name = f"{schedule}_{mode}"
            curve, b, secs = train_and_eval(args, tb, schedule, mode, seed, x_eval)
            per_seq[(name, seed)] = b
            records.append({"config": name, "schedule": schedule, "time_mode": mode, "seed": seed,
                            "bound": float(b.mean()), "bound_se": float(b.std(ddof=1) / np.sqrt(b.size)),
                            "excess": float(b.mean() - refs["entropy"]), "curve": curve, "train_s": secs})
            print(f"seed {seed} {name}: bound {b.mean():.4f} nats/seq (entropy {refs['entropy']:.4f}, "
                  f"{secs:.0f} s)", flush=True)
    base = f"{configs[0][0]}_{configs[0][1]}"
    for r in records:
        d = per_seq[(r["config"], r["seed"])] - per_seq[(base, r["seed"])]
        r["diff_vs_" + base] = float(d.mean())
        r["diff_se"] = float(d.std(ddof=1) / np.sqrt(d.size)) if r["config"] != base else 0.0
    res = run.finish({"settings": {k: v for k, v in vars(args).items() if k != "out"}, "testbed": tb.name,
                      "K": tb.K, "L": tb.L, "V": tb.V, "references": refs, "baseline_config": base,
                      "records": records})
    prefix = common.out_prefix(args, "discrete_learned")
    if prefix:
        plot(res, Path(f"{prefix}.png"))
    common.report(prefix, res, markdown(res))


def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs = res["references"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in res["records"]:
        st, b = zip(*r["curve"])
        ax.plot(st, b, marker="o", ms=3, lw=1, ls="-" if r["seed"] == res["records"][0]["seed"] else "--",
                label=f"{r['config']} (seed {r['seed']})")
    for key, style, lab in (("entropy", "k-", "exact entropy"), ("exact_denoiser_bound", "k:", "exact denoiser (linear)"),
                            ("independent_positions", "r:", "independent positions")):
        ax.axhline(refs[key], color=style[0], ls=style[1:], lw=1, label=lab)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out bound (nats / sequence)")
    ax.set_title(f"{res['testbed']}: learned BERT-style denoisers vs exact answers")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(res):
    refs, s, base = res["references"], res["settings"], res["baseline_config"]
    L = common.md_header(f"DiffusionBERT's schedules and time designs on the exact testbed {res['testbed']}", res,
                         timed=False)
    L += [f"Testbed {res['testbed']}: K = {res['K']} components, L = {res['L']} positions, V = {res['V']} tokens. "
          f"Chain T = {s['T']}; {s['steps']} steps x batch {s['batch_size']} of exact samples per configuration "
          f"(same batches and initial key for all), AdamW lr {s['lr']:g}, EMA evaluated; transformer "
          f"{s['layers']} layers x hidden {s['hidden']}; hybrid loss. Bound: all {s['T']} terms on "
          f"{s['eval_n']} held-out exact samples (same samples and key for all), nats per sequence.", "",
          "| reference | nats / sequence |", "|---|---|",
          f"| exact entropy (floor of every bound) | {refs['entropy']:.4f} |",
          f"| exact denoiser's bound, linear, T = {s['T']} | {refs['exact_denoiser_bound']:.4f} |",
          f"| independent positions (no context) | {refs['independent_positions']:.4f} |", ""]
    rows = [[r["config"], r["seed"], f"{r['bound']:.4f} ± {r['bound_se']:.4f}", f"{r['excess']:.4f}",
             "-" if r["config"] == base else f"{r[f'diff_vs_{base}']:+.4f} ± {r['diff_se']:.4f}",
             f"{r['train_s']:.0f}"] for r in res["records"]]
    L += common.md_table(["configuration", "seed", "bound", "bound - entropy", f"paired diff vs {base}",
                          "train s"], rows)
    seeds = sorted({r["seed"] for r in res["records"]})
    L += ["", f"Mean over the {len(seeds)} training seed(s) (paired difference: mean of the per-seed differences, "
          "standard error from the per-seed ones):", ""]
    agg = []
    for name in dict.fromkeys(r["config"] for r in res["records"]):
        rs = [r for r in res["records"] if r["config"] == name]
        d = np.mean([r[f"diff_vs_{base}"] for r in rs])
        se = np.sqrt(np.sum([r["diff_se"] ** 2 for r in rs])) / len(rs)
        agg.append([name, f"{np.mean([r['excess'] for r in rs]):.4f}",
                    "-" if name == base else f"{d:+.4f} ± {se:.4f}"])
    L += common.md_table(["configuration", "bound - entropy", f"paired diff vs {base}"], agg)
    marks = [st for st, _ in res["records"][0]["curve"]]
    L += ["", "Held-out bound minus the entropy (nats / sequence) along training (EMA parameters):", ""]
    L += common.md_table(["configuration", "seed"] + [f"step {m}" for m in marks],
                         [[r["config"], r["seed"]] + [f"{b - refs['entropy']:.4f}" for _, b in r["curve"]]
                          for r in res["records"]])
    return L + [""]


if __name__ == "__main__":
    main()
