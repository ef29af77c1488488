"""The loaders on the real GLUE / SQuAD files in ../shared/data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bert_ticket_cli.data.glue import GLUE_DIRS, load_raw, split_file_names
from bert_ticket_cli.data.squad import load_squad_raw, prepare_squad_eval, prepare_squad_train
from bert_ticket_cli.tasks import get_task

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
GLUE = SHARED / "glue"
SQUAD = SHARED / "squad"

pytestmark = pytest.mark.realdata


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


@pytest.mark.parametrize(
    ("task", "split", "rows"),
    [
        ("sst2", "validation", 872),
        ("cola", "validation", 1043),
        ("mrpc", "train", 3668),
        ("rte", "validation", 277),
        ("stsb", "validation", 1500),
        ("wnli", "validation", 71),
        ("qnli", "validation", 5463),
    ],
)
def test_glue_row_counts(task, split, rows):
    info = get_task(task)
    need(GLUE / GLUE_DIRS[info.name] / split_file_names(info)[split])
    ds = load_raw(info, data_dir=str(GLUE), splits=(split,))[split]
    assert len(ds) == rows
    labels = set(ds["label"])
    if info.kind == "classification":
        assert labels == set(range(info.num_labels))
    else:
        assert min(labels) >= 0.0 and max(labels) <= 5.0
    assert ds["idx"] == list(range(rows))


@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "stsb", "qnli", "rte", "wnli"])
def test_every_present_glue_file_loads(task):
    info = get_task(task)
    folder = need(GLUE / GLUE_DIRS[info.name])
    splits = tuple(s for s, name in split_file_names(info).items() if (folder / name).is_file())
    dd = load_raw(info, data_dir=str(folder), splits=splits)
    for split in info.test_splits:
        if split in dd:
            assert set(dd[split]["label"]) == {-1}
            assert dd[split]["idx"] == list(range(len(dd[split])))


def test_squad_dev(wordpiece_tokenizer):
    need(SQUAD / "dev-v1.1.json")
    examples = load_squad_raw(get_task("squad"), data_dir=str(SQUAD), splits=("validation",))["validation"]
    assert len(examples) == 10570
    sample = examples.select(range(200))
    train = prepare_squad_train(sample, wordpiece_tokenizer, 128, 32)
    evals = prepare_squad_eval(sample, wordpiece_tokenizer, 128, 32)
    assert len(train) == len(evals) > len(sample)  # long paragraphs need several windows
    answers = dict(zip(sample["id"], sample["answers"]))
    checked = 0
    for row in range(len(train)):
        start, end = train[row]["start_positions"], train[row]["end_positions"]
        if start == 0:
            continue
        answer = answers[evals[row]["example_id"]]
        first_char = answer["answer_start"][0]
        end_char = first_char + len(answer["text"][0])
        offsets = evals[row]["offset_mapping"]
        # The labelled tokens are the ones holding the answer's first and last character.
        # (Comparing texts would not do: some dev answers end inside a word, "gold" in
        # "golden", and some answer_start values point at the wrong occurrence.)
        assert offsets[start][0] <= first_char < offsets[start][1]
        assert offsets[end][0] < end_char <= offsets[end][1]
        checked += 1
    assert checked > 150
