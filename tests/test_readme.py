"""The README's sampling-protocol, accelerator and guidance examples run as written and print what they say."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def run_example(after: str) -> str:
    """Run the first Python block of the README after the text ``after``; its stdout."""
    text = README.read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index(after):], re.S).group(1)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={"JAX_PLATFORMS": "cpu", **__import__("os").environ})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_protocol_example_runs_as_documented():
    stdout = run_example("A conditional model and a stateful transform")
    # the two lines the example documents: one compiled program, and the split run's equality
    assert stdout.split() == ["1", "True"], stdout


def test_accelerator_example_runs_as_documented():
    stdout = run_example("### Accelerators")
    assert stdout.split() == ["0.45", "6"], stdout  # the documented auto fraction and NFE


def test_guidance_example_runs_as_documented():
    stdout = run_example("### Guidance")
    assert stdout.splitlines() == ["cfg w=0.0: 0.80", "cfg w=2.0: 1.00", "classifier s=3: 1.00",
                                   "objective: 0.02 -> 0.27"], stdout


def test_restoration_example_runs_as_documented():
    stdout = run_example("### Restoration")
    got = {}
    for line in stdout.splitlines():
        m = re.fullmatch(r"(\w+): mean error ([\d.]+), RMS of A x - y ([\d.e+-]+), NFE (\d+)", line)
        assert m, line
        got[m[1]] = (float(m[2]), float(m[3]), int(m[4]))
    assert set(got) == {"ddnm", "dps", "smc"}
    assert got["ddnm"][1] < 1e-6 and got["smc"][1] < 1e-6  # exactly consistent (noiseless)
    assert got["smc"][0] < 0.03 < got["dps"][0] < got["ddnm"][0]  # the documented ordering
    assert (got["ddnm"][2], got["dps"][2], got["smc"][2]) == (50, 50, 3200)


def test_text_diffusion_example_runs_as_documented():
    stdout = run_example("### Text diffusion")
    assert stdout.splitlines() == ["0 0.052", "1.8914 1.8909", "True 0.025"], stdout
