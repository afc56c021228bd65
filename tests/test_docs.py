"""Every ```python block in README.md and docs/ runs, so the docs cannot drift from the code.

A block right after an HTML comment ``<!-- no-run: reason -->`` is skipped (it needs torchrun,
a GPU or a download); keep those rare.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"(<!--\s*no-run[^>]*-->\s*)?```python[^\n]*\n(.*?)```", re.S)


def _blocks():
    for path in FILES:
        for i, match in enumerate(BLOCK.finditer(path.read_text())):
            skip, code = match.groups()
            yield pytest.param(
                code,
                marks=pytest.mark.skip(reason="no-run") if skip else (),
                id=f"{path.relative_to(ROOT)}:{i}",
            )


@pytest.mark.parametrize("code", list(_blocks()))
def test_code_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    exec(compile(code, "<docs>", "exec"), {"__name__": "__docs__"})
