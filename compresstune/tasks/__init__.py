"""Task presets: ``Classification``, ``LanguageModeling``, ``Regression``.

Each takes its data as DataLoaders, torch Datasets or in-memory tensors and
implements the :class:`compresstune.Task` contract (loss, distillation loss,
metric from per-batch sums).
"""

from compresstune.tasks._classification import Classification
from compresstune.tasks._language import LanguageModeling
from compresstune.tasks._regression import Regression

__all__ = ["Classification", "LanguageModeling", "Regression"]
