"""SQuAD v1.1 exact match and F1, following the official evaluation script's definitions."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, and collapse whitespace.

    The order matters and matches the official script: punctuation is removed before the
    articles, so "the-end" becomes "theend" and keeps its "the".
    """
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, truth: str) -> float:
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1_score(prediction: str, truth: str) -> float:
    """Harmonic mean of token precision and recall over normalised tokens (bag of words)."""
    predicted = normalize_answer(prediction).split()
    gold = normalize_answer(truth).split()
    common = Counter(predicted) & Counter(gold)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted)
    recall = overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """Corpus EM and F1 in 0-100: per question the best score over its gold answers.

    Every question in ``references`` counts; one without a prediction scores 0, as in the
    official script.  Predictions for unknown ids are ignored.
    """
    if not references:
        raise ValueError("squad_metrics needs at least one reference question")
    em_total = f1_total = 0.0
    for qid, truths in references.items():
        if qid not in predictions:
            continue
        if not truths:
            raise ValueError(f"question {qid!r} has no gold answers")
        prediction = predictions[qid]
        em_total += max(exact_match(prediction, t) for t in truths)
        f1_total += max(f1_score(prediction, t) for t in truths)
    count = len(references)
    return {"exact_match": 100.0 * em_total / count, "f1": 100.0 * f1_total / count}
