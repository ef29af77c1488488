"""GLUE metrics, with the same keys and definitions as the GLUE benchmark reports them."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from bert_ticket_cli.errors import UserError


def glue_scores(task: Any, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics of one GLUE-style task as plain floats (fractions, not percentages).

    ``task`` is the task object (``tasks.get_task(name)``): its ``kind`` and the ``metrics`` it
    reports decide what is computed (regression: Pearson / Spearman; Matthews for CoLA; accuracy
    and F1 for MRPC / QQP; else accuracy), its ``name`` and ``eval_splits`` go into messages.
    By task name: ``tasks.glue_metrics``.

    Degenerate inputs score 0.0 instead of NaN: a model that predicts one class everywhere
    (common early in training or at extreme sparsity) has Matthews 0 by definition, and
    constant regression outputs have no defined correlation, which we report as 0 (no
    linear/rank relationship) so that "best checkpoint" comparisons keep working.
    """
    if task.kind not in ("classification", "regression"):
        raise ValueError(f"task {task.name} is not a classification or regression task (SQuAD: squad_metrics)")
    preds = np.asarray(predictions)
    gold = np.asarray(labels)
    if preds.ndim == 2 and preds.shape[1] == 1:
        preds = preds[:, 0]
    if preds.ndim != 1 or gold.ndim != 1 or len(preds) != len(gold):
        raise ValueError(f"predictions {preds.shape} and labels {gold.shape} must be 1-D of equal length")
    if len(gold) == 0:
        raise ValueError("cannot compute metrics on zero examples")
    if np.any(gold == -1):
        raise UserError(
            f"{task.name} labels contain -1 (no labels): this is a test split; evaluate on "
            f"{', '.join(task.eval_splits)} and write test predictions for the GLUE leaderboard instead"
        )

    # scipy and scikit-learn load here, not at import: every task registry import would pay for them.
    from scipy import stats
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if task.kind == "regression":
        pearson = _correlation(stats.pearsonr, preds, gold)
        spearman = _correlation(stats.spearmanr, preds, gold)
        return {"pearson": pearson, "spearmanr": spearman, "combined_score": (pearson + spearman) / 2}

    if preds.dtype.kind == "f":
        if not np.all(np.equal(np.mod(preds, 1), 0)):
            raise ValueError(f"{task.name} predictions must be class ids (take the argmax of the logits)")
    preds = preds.astype(np.int64)
    gold = gold.astype(np.int64)
    if "matthews_correlation" in task.metrics:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {"matthews_correlation": float(matthews_corrcoef(gold, preds))}
    accuracy = float(accuracy_score(gold, preds))
    if "f1" in task.metrics:
        f1 = float(f1_score(gold, preds, pos_label=1, average="binary", zero_division=0.0))
        return {"accuracy": accuracy, "f1": f1, "accuracy_and_f1": (accuracy + f1) / 2}
    return {"accuracy": accuracy}


def _correlation(fn, preds: np.ndarray, gold: np.ndarray) -> float:
    """A scipy correlation as a float; NaN (constant input) becomes 0.0."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(fn(preds.astype(np.float64), gold.astype(np.float64))[0])
    return 0.0 if math.isnan(value) else value
