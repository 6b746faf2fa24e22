"""Deprecated: baseline training moved to ``studies/training.py``; ``accuracy`` is
:func:`compresstune.objectives.accuracy` and ``iterate_batches`` is
:func:`compresstune.data.iterate_batches`.

The old names still work for one release, with a ``DeprecationWarning``
(``fit``, ``fit_cached`` and ``cache_key`` from a source checkout only; see
:mod:`compresstune._moved`).
"""

from compresstune._moved import moved_attribute

_MOVED = {
    "accuracy": "compresstune.objectives",
    "iterate_batches": "compresstune.data",
    "cache_key": "studies.training",
    "fit": "studies.training",
    "fit_cached": "studies.training",
}


def __getattr__(name: str):
    return moved_attribute(__name__, name, _MOVED)
