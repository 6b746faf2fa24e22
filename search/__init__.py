"""The controller: study and storage, the local and Ray executors, the Pareto front,
hypervolume and the report.

Names are imported on first use, so ``compresstune.search.pareto`` stays light.

Example:
    >>> from compresstune.search.config import load_config            # doctest: +SKIP
    >>> study, front = compresstune.search.run(load_config("studies/digits.yaml"))  # doctest: +SKIP
"""

from importlib import import_module

__all__ = ["SearchError", "export_trial", "export_trial_onnx", "finetune_trial", "load_study", "run", "status_text"]

_HOME = {"run": "_controller", "export_trial": "_export", "export_trial_onnx": "_export", "status_text": "_export", "finetune_trial": "_finetune_trial",
         "SearchError": "_storage", "load_study": "_storage"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(f"compresstune.search.{_HOME[name]}"), name)
    raise AttributeError(f"module 'compresstune.search' has no attribute {name!r}")
