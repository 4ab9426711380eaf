"""The sampler-speed studies in one command: ``sampler_speed.py``, ``prng_speed.py``, ``step_micro.py``.

    python benchmarks/speed.py          # each study's full run in turn (~5-7 min, quiet CPU);
                                        # writes benchmarks/results/<study>.{json,md} for
                                        # sampler_speed, prng_speed and step_micro
    python benchmarks/speed.py --quick  # each study's smoke run; prints only
    python benchmarks/speed.py --out-dir /tmp/speed   # writes /tmp/speed/<study>.{json,md}

This file used to hold all three studies (and wrote ``results/speed.{json,md}``); each is now a
script of its own with its own options and result files (see their docstrings). Every result
file records the standalone command that reproduces it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

STUDIES = ("sampler_speed", "prng_speed", "step_micro")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke runs; write nothing unless --out-dir")
    ap.add_argument("--out-dir", default=None,
                    help="write DIR/<study>.json and .md (default benchmarks/results for full runs)")
    ap.add_argument("--studies", default=",".join(STUDIES), help="comma list of " + ", ".join(STUDIES))
    args = ap.parse_args(argv)
    names = args.studies.split(",")
    if any(n not in STUDIES for n in names):
        ap.error(f"--studies: choose from {', '.join(STUDIES)}")
    results = {}
    for name in names:
        sub = (["--quick"] if args.quick else []) + (
            ["--out", os.path.join(args.out_dir, name)] if args.out_dir else [])
        print(f"[speed] {name} {' '.join(sub)}", flush=True)
        results[name] = importlib.import_module(name).main(sub)
    return results


if __name__ == "__main__":
    main()
