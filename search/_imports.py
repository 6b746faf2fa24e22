"""Factory import for study files: ``"pkg.module:callable"`` specs, the study's
folders on ``sys.path``, and whether a callable takes a keyword."""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
import types as _types
from pathlib import Path
from typing import Any, Callable

from compresstune.errors import ConfigError

__all__ = ["FACTORY_PATTERN", "accepts", "ensure_import_paths", "import_module", "resolve_import"]

FACTORY_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_FACTORY = FACTORY_PATTERN


def accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    if name in params and params[name].kind is not inspect.Parameter.POSITIONAL_ONLY:
        return True
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def ensure_import_paths(study_path: str | os.PathLike) -> list[str]:
    """Put the current directory and the study file's parent and grandparent
    folders on ``sys.path``, so ``studies/digits.yaml`` can name ``studies.digits``.

    Returns:
        The folders that were added (absent ones only).

    Example:
        >>> added = ensure_import_paths("studies/digits.yaml")
        >>> os.getcwd() in sys.path
        True
    """
    parent = Path(study_path).resolve().parent
    wanted = [Path.cwd().resolve(), parent.parent, parent]
    added = []
    for folder in reversed(wanted):  # inserted at the front: cwd ends up first
        text = str(folder)
        if text not in sys.path:
            sys.path.insert(0, text)
            added.append(text)
    return added[::-1]


def resolve_import(spec: str) -> Any:
    """Import ``"package.module:attribute"`` (the attribute may be dotted).

    Raises:
        ConfigError: saying which module cannot be imported, or which attribute
            is missing, with close names.

    Example:
        >>> resolve_import("os.path:join") is os.path.join
        True
    """
    if not isinstance(spec, str) or not _FACTORY.match(spec):
        raise ConfigError(f"an import path must look like 'package.module:function'; got {spec!r}.")
    module_name, _, attr_path = spec.partition(":")
    obj: Any = import_module(module_name)
    where = f"module {module_name!r}"
    done: list[str] = []
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(attr, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"{where} has no attribute {attr!r}{hint} (import path {spec!r})")
        obj = getattr(obj, attr)
        done.append(attr)
        where = repr(f"{module_name}:{'.'.join(done)}")
    return obj


def import_module(name: str) -> _types.ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise ConfigError(
                f"cannot import module {name!r}: no module named {missing!r} (is the folder on sys.path? "
                f"compresstune adds the current directory and the study file's parent folders)") from None
        raise ConfigError(f"importing module {name!r} failed: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - user code raising at import time
        raise ConfigError(f"importing module {name!r} raised {type(exc).__name__}: {exc}") from exc
