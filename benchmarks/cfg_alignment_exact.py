"""Guidance-aligned vs standard CFG training on a labelled Gaussian mixture, measured exactly.

What the reconstructed "Bridging the Gap" loss (Patel et al. 2023; jdiff.losses, an unverified
reconstruction) does to the guided sampler, on data whose class-conditional distributions are
known in closed form:

* **Models**: class-conditional MLPs (``RunConfig(data=TESTBED, model="mlp", conditional=True)``,
  label dropout 0.1) trained with the standard loss and with the aligned loss
  (``guidance_loss="aligned"``, ``align_scale=W_TRAIN``, stop-gradient on), at equal compute: the
  aligned run has half the batch (its step evaluates the network on twice the examples), same
  steps, same learning rate; ``--seeds`` training seeds each.
* **Sampling**: classifier-free guidance ``w`` (0 = conditional), DPM-Solver++(2M), the same noise
  and balanced labels for every model; the exact mixture models under the same guidance as a
  reference row (their guided sampler is what a perfect model would give).
* **Measures** (``jdiff.bench.guidance``): class accuracy under the exact Bayes classifier, sliced
  Wasserstein-1 to exact class-conditional samples (``sw``; its exact-vs-exact floor), and to the
  exact models' guided samples at the same ``w`` and NFE (``sw_guided``: how well the learned
  model reproduces guided sampling itself).

Reading: the aligned loss trains ``(1 + w) F_c - w F_u`` to predict the noise, so at
``w = W_TRAIN`` the learned guided sampler should reproduce the *class-conditional* distribution
(accuracy at the Bayes level, ``sw`` at the floor) instead of the sharper guided one.

    python benchmarks/cfg_alignment_exact.py            # ~6 min on 2 CPU cores
    python benchmarks/cfg_alignment_exact.py --quick    # smoke run
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def parse_args(argv=None):
    ap = common.parser(__doc__, "200 training steps, 1 seed, 2 scales, NFE 10")
    ap.add_argument("--testbeds", default="classes16d,classes2d")
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch-size", type=int, default=256, help="standard run's batch (aligned: half)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--w-train", type=float, default=2.0, help="align_scale of the aligned run")
    ap.add_argument("--scales", default="0,1,2,4")
    ap.add_argument("--nfe", default="10,20,50")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds")
    ap.add_argument("--n-per-class", type=int, default=500)
    ap.add_argument("--workdir", default=None, help="keep the trained runs here (default: a temp dir)")
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def _floats(s):
    return [float(v) for v in s.split(",") if v.strip()]


def main(argv=None):
    args = parse_args(argv)
    if args.quick:
        args.steps, args.seeds, args.scales, args.nfe, args.n_per_class = 200, "0", "0,2", "10", 100
    run_rec = common.Run(__file__, argv)
    import jax
    import jax.numpy as jnp

    import jdiff
    from jdiff.bench.guidance import _class_measures
    from jdiff.bench.steps import sliced_wasserstein
    from jdiff.guidance import classifier_free
    from jdiff.run import RunConfig, build_run, train_run
    from jdiff.solvers import get_solver, steps_for_nfe
    from jdiff.testbeds import get_testbed

    scales, nfes = _floats(args.scales), [int(v) for v in args.nfe.split(",")]
    seeds = [int(v) for v in args.seeds.split(",")]
    solver = get_solver("dpmpp_2m")
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cfg_align_"))
    records, train_info = [], []
    for tb_name in args.testbeds.split(","):
        tb = get_testbed(tb_name)
        C = tb.n_classes
        y = np.arange(args.n_per_class * C) % C
        z = np.random.RandomState(123).standard_normal((y.size, tb.dim)).astype(np.float32)
        exact = np.asarray(tb.sample(jax.random.key(1), y.size, y=jnp.asarray(y)))
        exact2 = np.asarray(tb.sample(jax.random.key(2), y.size, y=jnp.asarray(y)))
        floor = _class_measures(tb, exact2, y, exact, 0)
        models = {}
        base = dict(data=tb_name, model="mlp", conditional=True, label_dropout=0.1, steps=args.steps,
                    lr=args.lr, warmup_steps=100, lr_decay="cosine", ema_decay=0.999, save_every=args.steps,
                    log_every=max(args.steps // 10, 1), mlp_features=256, mlp_depth=4)
        variants = {
            "standard": RunConfig(**base, batch_size=args.batch_size),
            "aligned": RunConfig(**base, batch_size=args.batch_size // 2, guidance_loss="aligned",
                                 align_scale=args.w_train),
        }
        schedule = None
        for name, cfg in variants.items():
            models[name] = []
            for seed in seeds:
                c = RunConfig(**{**cfg.to_json(), "seed": seed})
                fit = train_run(c, work / f"{tb_name}_{name}_{seed}", progress=False)
                run = build_run(c)
                schedule = run.schedule
                models[name].append((seed, run.model_fn(fit.state.ema_params, y=jnp.zeros((1,), jnp.int32))))
                train_info.append({"testbed": tb_name, "variant": name, "seed": seed, "batch_size": c.batch_size,
                                   "steps": c.steps,
                                   "final_loss": float(fit.history[-1]["loss"]) if fit.history else None})
                print(f"trained {tb_name} {name} seed {seed}", flush=True)
        models["exact"] = [(None, tb.model_fn(schedule))]
        labels = {"y": jnp.asarray(y, jnp.int32)}
        for nfe in nfes:
            grid = jdiff.grids.make_grid(schedule, "logsnr", steps_for_nfe(solver, nfe))
            x_T = jdiff.init_noise(schedule, grid[0], jnp.asarray(z))
            for w in scales:
                ref = None
                for name in ("exact", "standard", "aligned"):
                    for seed, model in models[name]:
                        guided = classifier_free(model, jnp.float32(w), null_label=C)
                        x = np.asarray(jdiff.sample(guided, schedule, solver, grid, x_T, args=labels))
                        if name == "exact":
                            ref = x
                        m = _class_measures(tb, x, y, exact, 0)
                        sw_guided = float(np.mean([sliced_wasserstein(x[y == c], ref[y == c]) for c in range(C)]))
                        records.append({"testbed": tb_name, "model": name, "seed": seed, "w": w, "nfe": nfe, **m,
                                        "sw_guided": sw_guided, "sw_floor": floor["sw"],
                                        "accuracy_exact": floor["accuracy"]})
            print(f"{tb_name} NFE {nfe} done", flush=True)
    res = run_rec.finish({"records": records, "training": train_info, "args": vars(args)})
    common.report(common.out_prefix(args, "cfg_alignment_exact"), res, markdown(res))
    return 0


def _ci(vals):
    vals = np.asarray(vals, float)
    if vals.size < 2:
        return f"{vals.mean():.4f}"
    half = 1.96 * vals.std(ddof=1) / np.sqrt(vals.size)
    return f"{vals.mean():.4f} ± {half:.4f}"


def markdown(res):
    recs, a = res["records"], res["args"]
    L = common.md_header("Guidance-aligned vs standard training on exact testbeds", res, timed=False)
    seeds = sorted({r["seed"] for r in recs if r["seed"] is not None})
    L += [f"Class-conditional MLPs (256 x 4), {a['steps']} steps, lr {a['lr']} cosine, label dropout 0.1; "
          f"standard batch {a['batch_size']}, aligned batch {a['batch_size'] // 2} with align_scale "
          f"{a['w_train']} (equal compute); training seeds {seeds}; DPM-Solver++(2M), logsnr grid, "
          f"{a['n_per_class']} samples per class from the same noise. Cells: mean ± 95% CI over the "
          "training seeds. `exact`: the exact mixture models under the same guidance.", ""]
    for tb in dict.fromkeys(r["testbed"] for r in recs):
        rs = [r for r in recs if r["testbed"] == tb]
        L += [f"## {tb}", "", f"Exact class samples: Bayes accuracy {rs[0]['accuracy_exact']:.3f}, "
              f"sliced W1 floor {rs[0]['sw_floor']:.4f}.", ""]
        for metric, title in (("sw", "sliced W1 to exact class-conditional samples"),
                              ("accuracy", "class accuracy (exact Bayes classifier)"),
                              ("sw_guided", "sliced W1 to the exact models' guided samples (same w, NFE)")):
            nfes = sorted({r["nfe"] for r in rs})
            L += [f"### {title}", ""]
            rows = []
            for w in sorted({r["w"] for r in rs}):
                for model in ("exact", "standard", "aligned"):
                    cells = []
                    for n in nfes:
                        v = [r[metric] for r in rs if r["model"] == model and r["w"] == w and r["nfe"] == n]
                        cells.append(_ci(v) if v else "")
                    if metric == "sw_guided" and model == "exact":
                        continue
                    rows.append([f"{w:g}", model] + cells)
            L += common.md_table(["w", "model"] + [f"NFE {n}" for n in nfes], rows) + [""]
    return L


if __name__ == "__main__":
    sys.exit(main())
