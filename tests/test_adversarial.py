"""The fast subset of the adversarial suite (``tests/scripts/adversarial.py --fast``) passes.

Every case of bad input, fault inside `fit`, signal and mismatched checkpoint in the subset must
pass: nothing lost, nothing silently wrong, every error clear. It runs in a subprocess and shows
its summary line; the full run (with the SIGKILL and Ctrl-C campaigns) is documented in
docs/reliability.md.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(600)
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
    cases = re.search(r"(\d+) cases", summary)
    assert cases is not None and int(cases.group(1)) >= 120, summary
