"""Objectives of a trial: the recovery fine-tune (KD from the uncompressed teacher),
accuracy, size, latency and bit-operations."""

from compresstune.objectives._cost import bit_operations, latency_ms
from compresstune.objectives._metrics import accuracy
from compresstune.objectives._finetune import FinetuneResult, NonFiniteLoss, evaluate, recover, teacher_logits

__all__ = ["FinetuneResult", "accuracy", "NonFiniteLoss", "bit_operations", "evaluate", "latency_ms", "recover", "teacher_logits"]
