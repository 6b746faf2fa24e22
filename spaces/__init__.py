"""Search spaces: the study config's ``space`` section fitted to a model.

A :class:`Space` turns per-layer knob ranges into Optuna parameters and an Optuna
trial into a :class:`~compresstune.plan.CompressionPlan`. It only calls
``trial.suggest_*``, so it can be replayed with ``optuna.trial.FixedTrial``
(:meth:`Space.decode`) and driven by Ray Tune's Optuna searcher
(:meth:`Space.distributions`).

Example:
    >>> import optuna, torch.nn as nn
    >>> from compresstune.spaces import Space
    >>> model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> space = Space.from_config({"overrides": [{"name": "2", "bits": 8}]}, model)
    >>> study = optuna.create_study()
    >>> study.enqueue_trial(space.uniform_params(sparsity=0.5, bits=4))
    >>> plan = space.suggest(study.ask())
    >>> plan.layers["0"].bits, plan.layers["2"].bits
    (4, 8)
"""

from ._select import pattern_hits
from ._space import Space

__all__ = ["Space", "pattern_hits"]
