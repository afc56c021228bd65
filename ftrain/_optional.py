"""Import optional dependencies only when a feature needs them, with a clear message if missing."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise ImportError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        msg = (
            f"{feature} needs the optional dependency {module.split('.')[0]!r}, which is not "
            f"installed ({err}). Install it with: pip install 'torch-ftrain[{extra}]'"
        )
        raise ImportError(msg) from None
