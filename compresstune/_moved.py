"""Deprecated names of code that moved out of the core (kept for one release).

The example studies' models, loaders and baseline training moved from
``compresstune.models``, ``compresstune.data`` and ``compresstune.train`` to
``studies/`` in the source tree. Their old names still resolve, with a
``DeprecationWarning`` naming the new place. ``studies/`` is part of the source
checkout, not of the installed wheel: from a wheel the old names raise an
``ImportError`` that says so.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

_ROOT = Path(__file__).resolve().parents[1]


def _import(module: str):
    if module.startswith("studies") and (_ROOT / "studies").is_dir() and str(_ROOT) not in sys.path:
        sys.path.append(str(_ROOT))  # a source checkout: the studies folder sits beside the package
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"`{module}` is example-study code of the compresstune source tree (studies/), "
            "not part of the installed package; clone the repository to use it."
        ) from exc


def moved_attribute(old_module: str, name: str, moved: Mapping[str, str]) -> Any:
    """``getattr(new_module, name)`` with a DeprecationWarning, for a module ``__getattr__``."""
    if name not in moved:
        raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
    new_module = moved[name]
    warnings.warn(
        f"`{old_module}.{name}` moved to `{new_module}.{name}`; the old name goes away in the next release.",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(_import(new_module), name)
