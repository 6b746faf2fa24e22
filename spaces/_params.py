"""One searched (or fixed) knob: how it is suggested, its distribution, and how a
value is checked or clamped. Plain frozen data, so a space pickles."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

_TOL = 1e-9


@dataclass(frozen=True)
class Fixed:
    """A knob with one value: no parameter is created."""

    value: Any

    name = None  # no parameter

    def sample(self, trial) -> Any:
        return self.value

    def describe(self) -> str:
        return _show(self.value)


@dataclass(frozen=True)
class FloatParam:
    """``trial.suggest_float(name, low, high, step=step, log=log)``."""

    name: str
    low: float
    high: float
    step: float | None = None
    log: bool = False

    def sample(self, trial) -> float:
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def distribution(self) -> BaseDistribution:
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def normalise(self, value: Any) -> float | None:
        """``value`` as a float when the distribution holds it, else None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        if not self.low - _TOL <= value <= self.high + _TOL:
            return None
        if self.step is not None:
            k = (value - self.low) / self.step
            if abs(k - round(k)) > 1e-6:
                return None
        return float(min(max(value, self.low), self.high))

    def clip(self, value: float) -> float:
        """The allowed value nearest to ``value`` (on the step grid when there is one)."""
        value = min(max(float(value), self.low), self.high)
        if self.step is not None:
            k = round((value - self.low) / self.step)
            value = min(self.low + k * self.step, self.high)
        return value

    def describe(self) -> str:
        text = f"[{_show(self.low)}, {_show(self.high)}]"
        if self.step is not None:
            text += f" step {_show(self.step)}"
        return text + (" log" if self.log else "")


@dataclass(frozen=True)
class CategoricalParam:
    """``trial.suggest_categorical(name, choices)``."""

    name: str
    choices: tuple

    def sample(self, trial) -> Any:
        return trial.suggest_categorical(self.name, list(self.choices))

    def distribution(self) -> BaseDistribution:
        return CategoricalDistribution(list(self.choices))

    def normalise(self, value: Any) -> Any:
        """The choice equal to ``value`` (1 matches 1.0; True never matches 1), or None."""
        for choice in self.choices:
            if isinstance(choice, bool) != isinstance(value, bool):
                continue
            if choice == value:
                return choice
        return None

    def nearest(self, target: float) -> Any:
        """The numeric choice nearest to ``target``; ties go to the larger choice."""
        return min(self.choices, key=lambda c: (abs(c - target), -c))

    def describe(self) -> str:
        return "{" + ", ".join(_show(c) for c in self.choices) + "}"


Knob = Fixed | FloatParam | CategoricalParam


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
