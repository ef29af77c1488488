"""GLUE and SQuAD metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.metrics.squad import exact_match, f1_score, normalize_answer, squad_metrics
from bert_ticket_cli.tasks import glue_metrics

# Five examples: TP at 0 and 3, TN at 1, FP at 2, FN at 4.
PREDS = np.array([1, 0, 1, 1, 0])
LABELS = np.array([1, 0, 0, 1, 1])


def test_accuracy_tasks():
    for task in ("sst2", "mnli", "qnli", "rte", "wnli", "SST-2"):
        assert glue_metrics(task, PREDS, LABELS) == {"accuracy": pytest.approx(3 / 5)}


def test_mnli_three_classes():
    result = glue_metrics("mnli", np.array([0, 1, 2, 2]), np.array([0, 2, 2, 1]))
    assert result["accuracy"] == pytest.approx(2 / 4)


def test_f1_tasks():
    # precision = 2 / (2 + 1), recall = 2 / (2 + 1) -> F1 = 2/3
    for task in ("mrpc", "qqp"):
        result = glue_metrics(task, PREDS, LABELS)
        assert set(result) == {"accuracy", "f1", "accuracy_and_f1"}
        assert result["accuracy"] == pytest.approx(0.6)
        assert result["f1"] == pytest.approx(2 / 3)
        assert result["accuracy_and_f1"] == pytest.approx((0.6 + 2 / 3) / 2)
        assert all(type(v) is float for v in result.values())


def test_f1_uneven_precision_recall():
    # TP=1, FP=2, FN=1: precision 1/3, recall 1/2 -> F1 = 2*(1/6)/(5/6) = 0.4
    result = glue_metrics("mrpc", np.array([1, 1, 1, 0, 0]), np.array([1, 0, 0, 1, 0]))
    assert result["f1"] == pytest.approx(0.4)
    assert result["accuracy"] == pytest.approx(2 / 5)


def test_matthews():
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    result = glue_metrics("cola", PREDS, LABELS)
    assert result == {"matthews_correlation": pytest.approx(1 / 6)}


def test_matthews_constant_prediction_is_zero():
    result = glue_metrics("cola", np.ones(4, dtype=int), np.array([1, 0, 1, 1]))
    assert result["matthews_correlation"] == 0.0


def test_pearson_and_spearman():
    preds = np.array([0.5, 1.0, 2.0, 4.0])
    labels = np.array([1.0, 3.0, 2.0, 4.0])
    # deviations from the means 1.875 and 2.5:
    #   preds  -1.375 -0.875 0.125 2.125 ; labels -1.5 0.5 -0.5 1.5
    #   sum of products 4.75, sums of squares 7.1875 and 5
    pearson = 4.75 / math.sqrt(7.1875 * 5)
    # ranks 1 2 3 4 vs 1 3 2 4: sum of squared rank differences 2 -> 1 - 6*2 / (4*(16-1)) = 0.8
    spearman = 0.8
    result = glue_metrics("stsb", preds, labels)
    assert result["pearson"] == pytest.approx(pearson)
    assert result["spearmanr"] == pytest.approx(spearman)
    assert result["combined_score"] == pytest.approx((pearson + spearman) / 2)


def test_regression_accepts_column_vector():
    result = glue_metrics("sts-b", np.array([[1.0], [2.0], [3.0]]), np.array([1.0, 2.0, 4.0]))
    # deviations -1 0 1 and -4/3 -1/3 5/3: r = 3 / sqrt(2 * 14/3)
    assert result["pearson"] == pytest.approx(3 / math.sqrt(2 * 14 / 3))
    assert result["spearmanr"] == pytest.approx(1.0)


def test_constant_regression_prediction_reports_zero():
    result = glue_metrics("stsb", np.full(3, 2.5), np.array([1.0, 2.0, 4.0]))
    assert result == {"pearson": 0.0, "spearmanr": 0.0, "combined_score": 0.0}


def test_test_split_labels_are_rejected():
    with pytest.raises(UserError, match="test split"):
        glue_metrics("rte", np.array([0, 1]), np.array([-1, -1]))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        glue_metrics("sst2", np.array([0, 1, 1]), np.array([0, 1]))


def test_float_logits_are_not_silently_truncated():
    with pytest.raises(ValueError, match="argmax"):
        glue_metrics("sst2", np.array([0.2, 0.9]), np.array([0, 1]))


def test_unknown_task():
    with pytest.raises(UserError, match="unknown task"):
        glue_metrics("imdb", PREDS, LABELS)


# ---------------------------------------------------------------------------- SQuAD


def test_normalize_answer():
    assert normalize_answer("The  Cat's, hat!") == "cats hat"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("  Theater\tthe\nend ") == "theater end"
    # punctuation goes first, so the hyphenated article survives as part of a word
    assert normalize_answer("the-end") == "theend"


def test_exact_match():
    assert exact_match("the Denver Broncos.", "Denver Broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0


def test_f1_score():
    # pred tokens [big, red, dog], gold [red, dog]: overlap 2, precision 2/3, recall 1 -> 0.8
    assert f1_score("the big red dog", "a red dog") == pytest.approx(0.8)
    # repeated tokens count only as often as they occur in both: overlap 1 of 2 and 1 of 1
    assert f1_score("dog dog", "dog") == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert f1_score("cat", "dog") == 0.0
    assert f1_score("", "dog") == 0.0


def test_squad_metrics_takes_best_gold_and_counts_missing_as_zero():
    references = {
        "q1": ["Denver Broncos", "the Broncos"],
        "q2": ["red dog", "big red dog"],
        "q3": ["Santa Clara"],
    }
    predictions = {"q1": "Broncos", "q2": "the big red dog", "extra": "ignored"}
    # q1: EM 1 (matches "the Broncos"), F1 1; q2: EM 1 with the second gold, F1 1;
    # q3 has no prediction -> 0.  Totals over 3 questions.
    result = squad_metrics(predictions, references)
    assert result["exact_match"] == pytest.approx(200 / 3)
    assert result["f1"] == pytest.approx(200 / 3)


def test_squad_metrics_partial_f1():
    references = {"q1": ["big red dog"], "q2": ["cat"]}
    predictions = {"q1": "red dog", "q2": "cat"}
    # q1: precision 1, recall 2/3 -> F1 0.8; q2 exact.
    result = squad_metrics(predictions, references)
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(100 * (0.8 + 1.0) / 2)
