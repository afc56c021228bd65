"""The fast subset of the adversarial suite (``tests/scripts/adversarial.py --fast``) passes.

The suite is written to the behaviour issue 13 asks for, ahead of the fixes, so this test is an
expected failure for now; it runs the subset in a subprocess and shows its summary either way.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
@pytest.mark.xfail(
    strict=False,
    reason="issue 13: the adversarial suite states the desired behaviour (nothing lost, nothing "
    "wrong, every error clear); its fixes have not landed yet. Make this strict once they have.",
)
def test_fast_adversarial_subset_passes(capsys):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "scripts" / "adversarial.py"), "--fast"],
        capture_output=True,
        text=True,
        env=env,
        timeout=540,
    )
    lines = proc.stdout.splitlines()
    summary = next((ln for ln in reversed(lines) if ln.startswith("SUMMARY")), "no summary")
    with capsys.disabled():
        print(f"\nadversarial --fast: {summary}")
    failing = [ln for ln in lines if ln.startswith(("FAIL", "ERROR"))]
    assert proc.returncode == 0, "\n".join([summary, *failing[:40], proc.stderr[-2000:]])
