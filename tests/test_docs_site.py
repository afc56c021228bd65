"""The docs site as a reader sees it: built with --strict, examples shown as code, public paths.

One build per session (about ten seconds: the quickstart's picture trains its model); the HTML is
read with the standard library's parser.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")

ROOT = Path(__file__).resolve().parents[1]
API_PAGES = sorted((ROOT / "docs" / "api").glob("*.md"))
DIRECTIVE = re.compile(r"^::: ([\w.]+)", re.M)
DOCTEST_FLAGS = re.compile(r"\s*#\s*doctest:.*$")


class _Page(HTMLParser):
    """Splits a page into the text of its <pre> blocks, the text outside them, and link targets."""

    def __init__(self) -> None:
        super().__init__()
        self.pre: list[str] = []
        self.prose: list[str] = []
        self.targets: list[str] = []
        self._pre_depth = 0
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "pre":
            self._pre_depth += 1
            self.pre.append("")
        elif tag in ("script", "style"):
            self._skip_depth += 1
        self.targets += [v for k, v in attrs if k in ("id", "href") and v]

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._pre_depth -= 1
        elif tag in ("script", "style"):
            self._skip_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._pre_depth:
            self.pre[-1] += data
        elif not self._skip_depth:
            self.prose.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def _resolve(path: str) -> object:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return importlib.import_module(path)


def _documented(obj: object) -> list[object]:
    """The object and the members mkdocstrings renders with it: a module's exports, a class's
    public methods and properties."""
    if inspect.ismodule(obj):
        members = [getattr(obj, n) for n in getattr(obj, "__all__", ())]
    elif inspect.isclass(obj):
        members = [v for k, v in vars(obj).items() if not k.startswith("_")]
    else:
        return [obj]
    kinds = (type, property, classmethod, staticmethod)
    shown = [m for m in members if callable(m) or isinstance(m, kinds)]
    return [obj, *(d for m in shown for d in _documented(m))]


def _example_lines(page: Path) -> list[str]:
    """The ``>>>`` lines of the docstrings a ``docs/api`` page renders."""
    lines = []
    for path in DIRECTIVE.findall(page.read_text()):
        for obj in _documented(_resolve(path)):
            doc = inspect.getdoc(obj.fget if isinstance(obj, property) else obj) or ""
            lines += [DOCTEST_FLAGS.sub("", ln.strip()) for ln in doc.splitlines()]
    return [ln for ln in lines if ln.startswith(">>>")]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def test_every_api_page_has_examples_to_check():
    assert API_PAGES
    assert sum(len(_example_lines(page)) for page in API_PAGES) > 50


@pytest.mark.parametrize("page", API_PAGES, ids=lambda p: p.stem)
def test_api_examples_render_inside_code_blocks(site, page):
    html = _parse(site / "api" / page.stem / "index.html")
    code = {ln.strip() for block in html.pre for ln in block.splitlines()}
    missing = [ln for ln in _example_lines(page) if ln not in code]
    assert not missing, f"examples not shown as code on {page.name}: {missing[:5]}"
    prose = "".join(html.prose)
    assert ">>>" not in prose, f"{page.name} shows a '>>>' outside a code block"


def test_no_page_shows_a_private_module_path(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20
    private = re.compile(r"\bftrain\._\w*")
    found = {
        str(path.relative_to(site)): hits
        for path in pages
        if (hits := private.findall(" ".join([*(p := _parse(path)).prose, *p.targets])))
    }
    assert not found, f"private module paths rendered: {found}"
