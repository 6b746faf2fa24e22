"""compresstune: search per-layer pruning, quantization, low-rank factorisation and
distillation together, and measure the real size of what you ship.

Example:
    >>> import torch.nn as nn
    >>> import compresstune as ct
    >>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    >>> small = ct.apply(model, ct.CompressionPlan.uniform(model, sparsity=0.5, bits=4))
    >>> ct.packed_size(small) < ct.reference_size(model)
    True
"""

from compresstune.artifact import load, packed_size, reference_size, save
from compresstune.compress import apply, plan_of, squash
from compresstune.errors import ArtifactError, CompressTuneError, ConfigError, ExportError, PlanError, TaskError
from compresstune.layers import discover
from compresstune.onnx_export import export_onnx
from compresstune.plan import ALLOWED_BITS, CompressionPlan, LayerPlan
from compresstune.task import Task
from compresstune import tasks

__version__ = "0.1.0"

_SUBPACKAGES = ("config", "objectives", "search", "spaces")


def __getattr__(name: str):
    # `ct.search.run(...)` without importing optuna/pandas on `import compresstune`.
    if name in _SUBPACKAGES:
        import importlib

        return importlib.import_module(f"compresstune.{name}")
    raise AttributeError(f"module 'compresstune' has no attribute {name!r}")

__all__ = [
    "ALLOWED_BITS",
    "ArtifactError",
    "CompressTuneError",
    "CompressionPlan",
    "ConfigError",
    "ExportError",
    "LayerPlan",
    "PlanError",
    "Task",
    "TaskError",
    "apply",
    "discover",
    "export_onnx",
    "load",
    "packed_size",
    "plan_of",
    "reference_size",
    "save",
    "squash",
    "tasks",
]
