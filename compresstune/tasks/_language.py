"""Causal language modelling: next-token cross-entropy, KD over tokens, perplexity (minimised)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from compresstune.errors import TaskError
from compresstune.task import logits_of
from compresstune.tasks._preset import Preset

__all__ = ["LanguageModeling"]


class LanguageModeling(Preset):
    """A causal language model's task: logits ``(N, L, vocab)`` for ``input_ids`` ``(N, L)``.

    Each position predicts the next token; positions whose ``attention_mask`` is 0
    (padding) count in neither the loss, the distillation term nor the perplexity.

    Args:
        train, val, test: each a DataLoader (or any re-iterable, or a function returning
            one) of dict batches with ``"input_ids"`` and optionally ``"attention_mask"``,
            or an int64 tensor of token ids ``(N, L)`` (batched here; then ``pad_id``
            marks padding). ``test`` is optional.
        batch_size, eval_batch_size: sequences per batch (tensors only).
        pad_id: the padding token of tensor input (``None``: no padding).

    Example:
        >>> import torch
        >>> ids = torch.randint(0, 10, (4, 6))
        >>> task = LanguageModeling(ids, ids, batch_size=2)
        >>> sorted(next(iter(task.batches("val"))))
        ['attention_mask', 'input_ids']
    """

    metric = "perplexity"
    direction = "minimize"

    def __init__(self, train: Any, val: Any, test: Any = None, *, batch_size: int = 16, eval_batch_size: int = 64,
                 pad_id: int | None = None) -> None:
        self.pad_id = pad_id
        super().__init__(train, val, test, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         make=self._as_dict)

    def _as_dict(self, rows: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        ids = rows[0]
        mask = torch.ones_like(ids) if self.pad_id is None else (ids != self.pad_id).long()
        return {"input_ids": ids, "attention_mask": mask}

    def _shifted(self, outputs: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, Mapping) or "input_ids" not in batch:
            raise TaskError(f"{self.name}: a batch must be a dict with 'input_ids'; got {type(batch).__name__}.")
        logits, ids = logits_of(outputs), batch["input_ids"]
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != ids.shape:
            raise TaskError(f"{self.name}: the model must return logits (N, L, vocab) for input_ids {tuple(ids.shape)}; "
                            f"got {getattr(logits, 'shape', type(logits).__name__)}.")
        targets = ids[:, 1:].clone()
        mask = batch.get("attention_mask")
        if mask is not None:
            targets[mask[:, 1:] == 0] = -100
        return logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1)

    def loss(self, outputs: Any, batch: Any) -> torch.Tensor:
        logits, targets = self._shifted(outputs, batch)
        return F.cross_entropy(logits, targets, ignore_index=-100)

    def update(self, outputs: Any, batch: Any) -> Mapping[str, float]:
        logits, targets = self._shifted(outputs, batch)
        nll = F.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
        return {"nll": float(nll), "tokens": int((targets != -100).sum())}

    def compute(self, sums: Mapping[str, float]) -> float:
        if sums["tokens"] == 0:
            raise TaskError(f"{self.name}: the split has no token to predict (every position is padding).")
        return math.exp(sums["nll"] / sums["tokens"])
