"""Objectives of a trial: the recovery fine-tune (KD from the uncompressed teacher),
the task's metric, accuracy, latency, bit-operations, multiply-accumulates and the ONNX costs."""

from compresstune.objectives._cost import bit_operations, latency_ms, macs_key, multiply_accumulates
from compresstune.objectives._metrics import accuracy
from compresstune.objectives._onnx import OnnxCost, onnx_cost
from compresstune.objectives._finetune import (TEACHER_CACHE_BYTES, FinetuneResult, NonFiniteLoss, evaluate, recover,
                                               teacher_outputs)

__all__ = ["TEACHER_CACHE_BYTES", "FinetuneResult", "NonFiniteLoss", "accuracy", "bit_operations", "evaluate",
           "latency_ms", "macs_key", "multiply_accumulates", "onnx_cost", "OnnxCost", "recover", "teacher_outputs"]
