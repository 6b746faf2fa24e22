"""Moved: the early-stopping scheduler is :mod:`compresstune.search._ray.scheduler`.
This name stays for one release."""

from compresstune.search._ray.scheduler import ParetoStopScheduler  # noqa: F401

__all__ = ["ParetoStopScheduler"]
