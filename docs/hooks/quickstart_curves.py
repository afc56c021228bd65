"""MkDocs hook: the quickstart's curves picture, drawn by the quickstart's own code at build time.

The first Python block of ``quickstart.md`` that calls ``ftrain.plot_history`` trains the
quickstart model and writes a PNG. This hook runs that block in a temporary directory (as the docs
test does) and adds every PNG it wrote to the site, so the page shows the picture today's code
draws; nothing drawn is committed. ``mkdocs serve`` reruns the block only when its code changes.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

_BLOCK = re.compile(r"```python[^\n]*\n(.*?)```", re.S)
_drawn: dict[str, dict[str, bytes]] = {}


def _draw(code: str) -> dict[str, bytes]:
    """Run ``code`` in an empty directory; return the PNGs it wrote, by file name."""
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            quiet = io.StringIO()
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                exec(compile(code, "quickstart.md", "exec"), {"__name__": "__docs__"})
        finally:
            os.chdir(cwd)
        return {p.name: p.read_bytes() for p in Path(tmp).glob("*.png")}


def on_files(files: Files, config: Any) -> Files:
    page = Path(config.docs_dir) / "quickstart.md"
    code = next(c for c in _BLOCK.findall(page.read_text()) if "plot_history(" in c)
    if code not in _drawn:
        _drawn.clear()
        _drawn[code] = _draw(code)
    for name, content in _drawn[code].items():
        files.append(File.generated(config, name, content=content))
    return files
