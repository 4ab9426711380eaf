"""The README's sampling-protocol and accelerator examples run as written and print what they say."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_protocol_example_runs_as_documented():
    text = README.read_text()
    start = text.index("A conditional model and a stateful transform")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"JAX_PLATFORMS": "cpu", **__import__("os").environ})
    assert out.returncode == 0, out.stderr
    # the two lines the example documents: one compiled program, and the split run's equality
    assert out.stdout.split() == ["1", "True"], out.stdout


def test_accelerator_example_runs_as_documented():
    text = README.read_text()
    start = text.index("### Accelerators")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"JAX_PLATFORMS": "cpu", **__import__("os").environ})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.45", "6"], out.stdout  # the documented auto fraction and NFE
