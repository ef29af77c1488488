"""SQuAD: JSON loading, sliding windows with answer positions, post-processing, EM/F1."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from bert_ticket_cli.data.squad import load_squad_raw as load_raw
from bert_ticket_cli.data.squad import (
    postprocess_squad,
    prepare_squad_eval,
    prepare_squad_train,
    squad_references,
)
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.metrics.squad import squad_metrics
from bert_ticket_cli.tasks import get_task

LONG_CONTEXT = (
    "The Denver Broncos won the final game of the season at the stadium in the city . "
    "Many people watched the game . Carolina Panthers played the second game and scored 24 points . "
    "The golden anniversary was in 2016 . The champion team won the title and the league said "
    "it was a new record ."
)
SHORT_CONTEXT = "The cat sat on the mat ."
QUESTIONS = [
    ("q1", LONG_CONTEXT, "Who won the final game ?", "Denver Broncos"),
    ("q2", LONG_CONTEXT, "Who scored 24 points ?", "Carolina Panthers"),
    ("q3", LONG_CONTEXT, "When was the golden anniversary ?", "2016"),
    ("q4", SHORT_CONTEXT, "What sat on the mat ?", "The cat"),
]
MAX_LEN, STRIDE = 24, 6


def squad_document() -> dict:
    paragraphs: dict[str, list] = {}
    for qid, context, question, answer in QUESTIONS:
        qa = {"id": qid, "question": question,
              "answers": [{"text": answer, "answer_start": context.index(answer)}] * 2}
        paragraphs.setdefault(context, []).append(qa)
    return {"version": "1.1", "data": [
        {"title": "Game", "paragraphs": [{"context": LONG_CONTEXT, "qas": paragraphs[LONG_CONTEXT]}]},
        {"title": "Cat", "paragraphs": [{"context": SHORT_CONTEXT, "qas": paragraphs[SHORT_CONTEXT]}]},
    ]}


@pytest.fixture
def squad_dir(tmp_path):
    folder = tmp_path / "SQuAD"
    folder.mkdir()
    (folder / "dev-v1.1.json").write_text(json.dumps(squad_document()), encoding="utf-8")
    return folder


@pytest.fixture
def examples(squad_dir):
    return load_raw(get_task("squad"), data_dir=str(squad_dir.parent), splits=("validation",))["validation"]


def test_json_is_flattened_into_the_hub_schema(examples):
    assert examples.column_names == ["id", "title", "context", "question", "answers"]
    assert examples["id"] == ["q1", "q2", "q3", "q4"]
    assert examples[3]["title"] == "Cat" and examples[3]["context"] == SHORT_CONTEXT
    answers = examples[1]["answers"]
    assert answers["text"] == ["Carolina Panthers"] * 2
    assert answers["answer_start"] == [LONG_CONTEXT.index("Carolina")] * 2
    assert squad_references(examples)["q3"] == ["2016", "2016"]


def context_tokens(offsets):
    return [i for i, span in enumerate(offsets) if span is not None]


def test_windows_and_answer_positions(examples, wordpiece_tokenizer):
    train = prepare_squad_train(examples, wordpiece_tokenizer, MAX_LEN, STRIDE)
    evals = prepare_squad_eval(examples, wordpiece_tokenizer, MAX_LEN, STRIDE)
    tokens = {"input_ids", "attention_mask", "token_type_ids"}
    assert set(train.column_names) == tokens | {"start_positions", "end_positions"}
    assert set(evals.column_names) == tokens | {"example_id", "offset_mapping"}
    assert len(train) == len(evals)
    assert all(len(ids) == MAX_LEN for ids in train["input_ids"])
    assert train["input_ids"] == evals["input_ids"]  # same windows, row for row

    windows_per_example = {qid: evals["example_id"].count(qid) for qid, *_ in QUESTIONS}
    assert windows_per_example["q1"] >= 3 and windows_per_example["q4"] == 1

    contexts = {qid: context for qid, context, *_ in QUESTIONS}
    answers = {qid: answer for qid, *_, answer in QUESTIONS}
    found = dict.fromkeys(answers, 0)
    for row in range(len(train)):
        qid = evals[row]["example_id"]
        offsets = evals[row]["offset_mapping"]
        ctx = context_tokens(offsets)
        start, end = train[row]["start_positions"], train[row]["end_positions"]
        answer_start = contexts[qid].index(answers[qid])
        inside = offsets[ctx[0]][0] <= answer_start and offsets[ctx[-1]][1] >= answer_start + len(answers[qid])
        if inside:
            found[qid] += 1
            assert contexts[qid][offsets[start][0]:offsets[end][1]] == answers[qid]
            assert wordpiece_tokenizer.decode(train[row]["input_ids"][start:end + 1]) == answers[qid].lower()
        else:
            assert (start, end) == (0, 0)  # CLS: the answer is not in this window
        # question and special tokens carry no offsets; the question comes first
        assert offsets[0] is None and offsets[1] is None and train[row]["token_type_ids"][ctx[0]] == 1
    assert all(count >= 1 for count in found.values())


def test_stride_overlap_between_windows(examples, wordpiece_tokenizer):
    evals = prepare_squad_eval(examples, wordpiece_tokenizer, MAX_LEN, STRIDE)
    rows = [r for r in range(len(evals)) if evals[r]["example_id"] == "q1"]
    first, second = (evals[r]["offset_mapping"] for r in rows[:2])
    first_spans = [tuple(first[i]) for i in context_tokens(first)]
    second_spans = [tuple(second[i]) for i in context_tokens(second)]
    assert first_spans[-STRIDE:] == second_spans[:STRIDE]


def rows_of(features, qid):
    return [r for r, ex in enumerate(features["example_id"]) if ex == qid]


def answer_tokens(offsets, context, answer):
    start_char = context.index(answer)
    end_char = start_char + len(answer)
    start = next(i for i, s in enumerate(offsets) if s is not None and s[0] == start_char)
    end = next(i for i, s in enumerate(offsets) if s is not None and s[1] == end_char)
    return start, end


def answer_tokens_or_none(offsets, context, answer):
    try:
        return answer_tokens(offsets, context, answer)
    except StopIteration:
        return None, None


def window_with_answer(features, qid, context, answer):
    for row in rows_of(features, qid):
        offsets = features[row]["offset_mapping"]
        try:
            return row, offsets, answer_tokens(offsets, context, answer)
        except StopIteration:
            continue
    raise AssertionError(f"no window holds the answer of {qid}")


def test_postprocess_picks_the_best_span_across_windows(examples, wordpiece_tokenizer):
    features = prepare_squad_eval(examples, wordpiece_tokenizer, MAX_LEN, STRIDE)
    starts = np.full((len(features), MAX_LEN), -100.0)
    ends = np.full((len(features), MAX_LEN), -100.0)
    row, _, (s, e) = window_with_answer(features, "q2", LONG_CONTEXT, "Carolina Panthers")
    starts[row, s], ends[row, e] = 6.0, 6.0
    other = next(r for r in rows_of(features, "q2") if r != row)
    token = context_tokens(features[other]["offset_mapping"])[0]
    starts[other, token], ends[other, token] = 4.0, 4.0
    assert postprocess_squad(examples, features, starts, ends)["q2"] == "Carolina Panthers"
    # make the other window's span better: it wins, whichever window it is in
    starts[other, token] = ends[other, token] = 7.0
    span = features[other]["offset_mapping"][token]
    assert postprocess_squad(examples, features, starts, ends)["q2"] == LONG_CONTEXT[span[0]:span[1]]
    # an example with no valid span gets the empty string
    blank = np.full_like(starts, -100.0)
    blank[:, 0] = 100.0  # only [CLS] looks good, and it is not a context token
    answers = postprocess_squad(examples, features, blank, blank, n_best=1)
    assert answers == {"q1": "", "q2": "", "q3": "", "q4": ""}


def test_postprocess_rejects_invalid_spans(examples, wordpiece_tokenizer):
    features = prepare_squad_eval(examples, wordpiece_tokenizer, MAX_LEN, STRIDE)
    # a window with at least 3 context tokens on either side of the answer
    row, s, e, ctx = next(
        (r, s, e, ctx)
        for r in rows_of(features, "q2")
        for ctx in [context_tokens(features[r]["offset_mapping"])]
        for s, e in [answer_tokens_or_none(features[r]["offset_mapping"], LONG_CONTEXT, "Carolina Panthers")]
        if s is not None and s - ctx[0] >= 3 and ctx[-1] - e >= 3
    )

    def logits():
        starts = np.full((len(features), MAX_LEN), -100.0)
        ends = np.full((len(features), MAX_LEN), -100.0)
        starts[row, s], ends[row, e] = 6.0, 6.0
        return starts, ends

    starts, ends = logits()
    starts[row, 0] = ends[row, 1] = 50.0  # [CLS] and a question token: no offsets
    assert postprocess_squad(examples, features, starts, ends)["q2"] == "Carolina Panthers"

    starts, ends = logits()
    late, early = ctx[-1], ctx[0]
    assert early < s and e < late
    starts[row, late] = ends[row, early] = 40.0  # end before start
    assert postprocess_squad(examples, features, starts, ends)["q2"] == "Carolina Panthers"

    starts, ends = logits()
    assert e - early + 1 > 3 and late - s + 1 > 3
    starts[row, early] = ends[row, late] = 40.0  # longer than max_answer_length
    assert postprocess_squad(examples, features, starts, ends, max_answer_length=3)["q2"] == "Carolina Panthers"
    assert postprocess_squad(examples, features, starts, ends, max_answer_length=MAX_LEN)["q2"] != "Carolina Panthers"


def test_end_to_end_exact_match_and_f1(examples, wordpiece_tokenizer):
    train = prepare_squad_train(examples, wordpiece_tokenizer, MAX_LEN, STRIDE)
    features = prepare_squad_eval(examples, wordpiece_tokenizer, MAX_LEN, STRIDE)
    starts = np.zeros((len(features), MAX_LEN))
    ends = np.zeros((len(features), MAX_LEN))
    for row in range(len(train)):
        if train[row]["start_positions"] != 0:
            starts[row, train[row]["start_positions"]] = 10.0
            ends[row, train[row]["end_positions"]] = 10.0
    references = squad_references(examples)
    predictions = postprocess_squad(examples, features, starts, ends)
    assert predictions["q4"] == "The cat"
    assert squad_metrics(predictions, references) == {"exact_match": 100.0, "f1": 100.0}

    # cut "Carolina Panthers" to "Carolina": EM 0 and F1 2/3 for q2 (precision 1, recall 1/2)
    row, _, (s, e) = window_with_answer(features, "q2", LONG_CONTEXT, "Carolina Panthers")
    for r in rows_of(features, "q2"):
        starts[r], ends[r] = 0.0, 0.0
    starts[row, s], ends[row, s] = 10.0, 10.0
    predictions = postprocess_squad(examples, features, starts, ends)
    assert predictions["q2"] == "Carolina"
    result = squad_metrics(predictions, references)
    assert result["exact_match"] == pytest.approx(75.0)
    assert result["f1"] == pytest.approx(100 * (3 + 2 / 3) / 4)


def test_feature_cache(examples, wordpiece_tokenizer, tmp_path):
    cache = tmp_path / "cache"
    first = prepare_squad_eval(examples, wordpiece_tokenizer, MAX_LEN, STRIDE, cache_dir=str(cache))
    again = prepare_squad_eval(examples, wordpiece_tokenizer, MAX_LEN, STRIDE, cache_dir=str(cache))
    assert first.cache_files and again.cache_files == first.cache_files
    prepare_squad_train(examples, wordpiece_tokenizer, MAX_LEN, STRIDE, cache_dir=str(cache))
    prepare_squad_eval(examples, wordpiece_tokenizer, MAX_LEN, STRIDE + 1, cache_dir=str(cache))
    assert len(list(cache.iterdir())) == 3


def test_input_checks(examples, wordpiece_tokenizer):
    slow = types.SimpleNamespace(is_fast=False)
    with pytest.raises(UserError, match="needs a fast tokenizer"):
        prepare_squad_train(examples, slow, MAX_LEN, STRIDE)
    with pytest.raises(UserError, match="doc_stride=24 must be"):
        prepare_squad_eval(examples, wordpiece_tokenizer, MAX_LEN, MAX_LEN)
    # a stride that leaves no room next to the question is reported, not a Rust panic
    with pytest.raises(UserError, match="larger max_seq_length or a smaller doc_stride"):
        prepare_squad_eval(examples, wordpiece_tokenizer, 16, 12)


def write_json(path, document):
    path.write_text(json.dumps(document) if not isinstance(document, str) else document, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"data": [ {"title": "x",, } ]}', r"line 1 column 26: invalid JSON"),
        ({"version": "1.1"}, r"no top-level 'data' list"),
        ({"data": [{"title": "t", "paragraphs": [{"qas": []}]}]}, r"data\[0\]\.paragraphs\[0\]: missing 'context'"),
        ({"data": [{"paragraphs": [{"context": "c", "qas": [
            {"id": "a", "question": "q", "answers": [{"text": "c"}]}]}]}]},
         r"data\[0\]\.paragraphs\[0\]\.qas\[0\]\.answers\[0\]: missing 'answer_start'"),
        ({"data": [{"paragraphs": [{"context": "c", "qas": [
            {"id": "a", "question": "q", "answers": []}, {"id": "a", "question": "q", "answers": []}]}]}]},
         r"duplicate question id 'a'"),
        ({"data": [{"paragraphs": [{"context": "c", "qas": [
            {"id": "a", "question": "q", "answers": [], "is_impossible": True}]}]}]}, r"SQuAD v2\.0 is not supported"),
    ],
)
def test_malformed_json(tmp_path, document, message):
    path = write_json(tmp_path / "dev-v1.1.json", document)
    with pytest.raises(UserError, match=message) as err:
        load_raw(get_task("squad"), data_files={"validation": str(path)})
    assert str(path) in str(err.value)


def test_missing_squad_file(squad_dir):
    with pytest.raises(UserError, match=r"no train-v1\.1\.json in .*SQuAD \(needed for split 'train'\)"):
        load_raw(get_task("squad"), data_dir=str(squad_dir), splits=("train", "validation"))
    with pytest.raises(UserError, match="has no split 'test'"):
        load_raw(get_task("squad"), data_dir=str(squad_dir), splits=("test",))
