"""Convert pytorch-fid's FID Inception weights (.pth) to jdiff's .npz format.

    python scripts/convert_inception_weights.py pt_inception-2015-12-05-6726825d.pth fid_inception.npz

Needs PyTorch (``pip install torch``; torchvision is not needed). jdiff downloads nothing: fetch
``pt_inception-2015-12-05-6726825d.pth`` yourself from pytorch-fid's GitHub release
``fid_weights``. The file is a plain ``state_dict``; its arrays are written unchanged (float32,
PyTorch layouts, same key names, ``num_batches_tracked`` dropped) after checking every key and
shape against jdiff's network (:func:`jdiff.metrics.inception.inception_state_dict_shapes`).
Load the result with ``jdiff.metrics.load_inception_params(out.npz)``.

PyTorch Hub names checkpoints ``<name>-<first hex digits of the file's SHA-256>.pth``; when the
input name carries such a suffix the script checks it and refuses a mismatching file (use
``--no-hash-check`` to skip).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert(src: str, dst: str, *, hash_check: bool = True) -> dict:
    """Read ``src`` (.pth state_dict), validate, write ``dst`` (.npz). Returns the numpy state dict."""
    import numpy as np
    import torch

    from jdiff.metrics.inception import save_inception_npz

    digest = _sha256(src)
    m = re.search(r"-([0-9a-f]{8,64})\.pth?$", src)
    if hash_check and m and not digest.startswith(m.group(1)):
        raise SystemExit(f"{src}: SHA-256 {digest[:16]}... does not start with the {m.group(1)!r} "
                         "in its name; the download is corrupt or a different file (--no-hash-check to skip)")
    obj = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise SystemExit(f"{src} does not hold a state_dict (got {type(obj).__name__})")
    sd = {k: v.detach().cpu().numpy() for k, v in obj.items() if not k.endswith("num_batches_tracked")}
    save_inception_npz(dst, sd)  # raises, naming the key, on missing / misshaped / unexpected keys
    n_params = sum(int(np.prod(v.shape)) for k, v in sd.items() if "running_" not in k)
    print(f"wrote {dst}: {len(sd)} arrays, {n_params:,} parameters (sha256 of input {digest[:16]}...)")
    return sd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth")
    ap.add_argument("dst", help="output .npz")
    ap.add_argument("--no-hash-check", action="store_true", help="skip the SHA-256 prefix check")
    args = ap.parse_args(argv)
    convert(args.src, args.dst, hash_check=not args.no_hash_check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
