"""Griffe extension: read a docstring's ``Example:`` section as ``Examples:``.

Google-style docstrings in ftrain head their doctests ``Example:``. Griffe knows only the plural
as the examples section; it reads the singular as an admonition, whose ``>>>`` lines Markdown
then turns into nested block quotes. Renaming the header before griffe parses the docstring makes
every example render as a code block, whichever spelling a docstring uses.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^Example:[ \t]*$", re.MULTILINE)


class ExamplesSection(griffe.Extension):
    """Rename a top-level ``Example:`` header to ``Examples:`` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _SINGULAR.sub("Examples:", obj.docstring.value)
