"""Deprecated: the study config moved to :mod:`compresstune.search.config`.

``compresstune.config`` still works for one release: importing it warns and
re-exports the same names.
"""

import warnings

from compresstune.search._schema import _format_errors  # noqa: F401 - older callers
from compresstune.search.config import *  # noqa: F403
from compresstune.search.config import __all__  # noqa: F401

warnings.warn(
    "`compresstune.config` moved to `compresstune.search.config`; the old name goes away in the next release.",
    DeprecationWarning,
    stacklevel=2,
)
