"""Masked-language-modelling metrics over the positions with a label (label != -100).

``mlm_loss`` is the mean cross-entropy (natural log) over masked tokens, ``mlm_accuracy`` the
fraction of masked tokens whose arg-max prediction is the original token, ``perplexity`` is
``exp(mlm_loss)``.

Full logits of an evaluation split are ``[N, L, V]`` floats (N=2,000 blocks of 128 tokens and a
30k vocabulary: 31 GB), so evaluation never gathers them: :func:`batch_sums` reduces each batch
to three numbers per row (loss sum, correct, count) and :func:`metrics_from_sums` finishes.
:func:`mlm_metrics` does both for arrays already in memory (tests, small data).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

IGNORE = -100


def metrics_from_sums(loss_sum: float, correct: float, count: float) -> dict[str, float]:
    """The three metrics from totals over a split; NaN when no token was masked."""
    count = float(count)
    if count <= 0:
        return {"mlm_loss": math.nan, "mlm_accuracy": math.nan, "perplexity": math.nan}
    loss = float(loss_sum) / count
    try:
        ppl = math.exp(loss)
    except OverflowError:
        ppl = math.inf
    return {"mlm_loss": loss, "mlm_accuracy": float(correct) / count, "perplexity": ppl}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def mlm_metrics(logits_or_predictions: Any, labels: Any) -> dict[str, float]:
    """Metrics from logits ``[..., L, V]`` or predicted ids ``[..., L]`` and labels ``[..., L]``.

    With predicted ids only the accuracy is known: ``mlm_loss`` and ``perplexity`` are NaN.
    """
    scores = _to_numpy(logits_or_predictions)
    gold = _to_numpy(labels).astype(np.int64)
    keep = gold != IGNORE
    target = gold[keep]
    if scores.shape == gold.shape:
        correct = float((scores[keep].astype(np.int64) == target).sum())
        out = metrics_from_sums(0.0, correct, target.size)
        if target.size:
            out["mlm_loss"] = out["perplexity"] = math.nan
        return out
    if scores.shape[:-1] != gold.shape:
        raise ValueError(f"logits {scores.shape} do not match labels {gold.shape}: expected [..., L, V] and [..., L]")
    picked = scores[keep]  # [M, V]: only the masked positions are ever normalised
    if target.size and (target.min() < 0 or target.max() >= picked.shape[-1]):
        raise ValueError(f"labels must be -100 or token ids in [0, {picked.shape[-1]})")
    logp = _log_softmax(picked)
    loss_sum = float(-logp[np.arange(target.size), target].sum())
    correct = float((picked.argmax(-1) == target).sum())
    return metrics_from_sums(loss_sum, correct, target.size)


def batch_sums(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per row of a batch: summed token loss (float32), correct and masked counts (int64).

    Three small ``[B]`` tensors instead of ``[B, L, V]`` logits, so they can be gathered over
    processes (``gather_for_metrics`` drops padding duplicates row by row) and summed.
    """
    import torch
    import torch.nn.functional as F

    b, length, vocab = logits.shape
    keep = labels != IGNORE
    safe = labels.masked_fill(~keep, 0)
    token_loss = F.cross_entropy(logits.float().reshape(-1, vocab), safe.reshape(-1), reduction="none")
    token_loss = token_loss.reshape(b, length) * keep
    correct = (logits.argmax(-1) == labels) & keep
    return {
        "mlm_loss_sum": token_loss.sum(1),
        "mlm_correct": correct.sum(1, dtype=torch.int64),
        "mlm_count": keep.sum(1, dtype=torch.int64),
    }


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)
