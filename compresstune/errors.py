"""Errors raised for bad input. All are ``ValueError`` subclasses, so callers can
catch ``ValueError`` and the message always names the field, the value and what
is allowed."""

__all__ = ["ArtifactError", "CompressTuneError", "ConfigError", "DataError", "PlanError", "TaskError", "TrainingError"]


class CompressTuneError(ValueError):
    """Base class of compresstune's input errors."""


class PlanError(CompressTuneError):
    """A plan that is malformed or does not fit the model."""


class ArtifactError(CompressTuneError):
    """A corrupt, truncated or mismatched artifact file."""


class ConfigError(CompressTuneError):
    """A study configuration that is malformed."""


class DataError(CompressTuneError):
    """Data that is malformed: a ``Split``, a batch size, a loader's file."""


class TrainingError(CompressTuneError):
    """A training or evaluation argument that is out of range."""


class TaskError(CompressTuneError):
    """A :class:`~compresstune.Task` that does not do what the contract asks (names the method)."""


class ExportError(CompressTuneError):
    """An ONNX export that cannot be made, or whose file does not reproduce the compressed model."""
