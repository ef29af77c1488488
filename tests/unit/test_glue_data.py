"""GLUE loading from local folders, data files and the (offline) hub; leaderboard files."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Value

from bert_ticket_cli.data import glue
from bert_ticket_cli.data.glue import load_raw, write_glue_predictions
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.tasks import TASKS, get_task

MNLI_TRAIN_HEADER = [
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label",
]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
MNLI_TEST_HEADER = MNLI_TRAIN_HEADER[:10]
STSB_HEADER = [
    "index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score",
]


def mnli_row(i, premise, hypothesis, labels):
    return [i, 100 + i, f"{i}e", "fiction", "( x )", "( y )", "(S x)", "(S y)", premise, hypothesis, *labels]


def stsb_row(i, s1, s2, *score):
    return [i, "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", s1, s2, *score]


# ----------------------------------------------------------------------------- tasks


def test_task_table_is_consistent():
    for name, task in TASKS.items():
        assert task.name == name
        assert task.main_metric in task.metrics
        assert len(task.leaderboard_files) == len(task.test_splits) or task.kind == "qa"
        if task.kind == "classification":
            assert task.num_labels == len(task.label_names) >= 2
    assert TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert TASKS["stsb"].num_labels == 1 and TASKS["squad"].num_labels == 0


def test_get_task_aliases_and_unknown():
    assert get_task("SST-2").name == "sst2"
    assert get_task("sts-b").name == "stsb"
    assert get_task(" MRPC ").name == "mrpc"
    with pytest.raises(UserError, match="known tasks: cola, sst2"):
        get_task("imdb")
    with pytest.raises(UserError, match="use task 'mnli'"):
        get_task("mnli-mm")


# ----------------------------------------------------------------------------- local folders


def test_cola_headerless_train_dev_and_headed_test(tmp_path, write_tsv):
    folder = tmp_path / "CoLA"
    write_tsv(folder / "train.tsv", [
        ["gj04", 1, "", "the cat sat ."], ["gj04", 0, "*", "cat the sat ."], ["gj04", 1, "", "it ran ."],
    ])
    write_tsv(folder / "dev.tsv", [["cj99", 0, "*", 'a "quoted dog'], ["cj99", 1, "", "the dog ran ."]])
    write_tsv(folder / "test.tsv", [["index", "sentence"], [0, "dog sat ."], [1, "cat ran ."]])
    dd = load_raw(get_task("cola"), data_dir=str(folder))
    assert list(dd) == ["train", "validation", "test"]
    train = dd["train"]
    assert train.column_names == ["sentence", "label", "idx"]
    assert train["label"] == [1, 0, 1] and train["idx"] == [0, 1, 2]
    assert train[0]["sentence"] == "the cat sat ."
    assert isinstance(train.features["label"], ClassLabel) and train.features["idx"] == Value("int64")
    assert dd["validation"]["sentence"][0] == 'a "quoted dog'  # bare quote kept verbatim
    assert dd["test"]["label"] == [-1, -1] and dd["test"]["idx"] == [0, 1]


def test_sst2_and_task_folder_found_in_any_case(tmp_path, write_tsv):
    write_tsv(tmp_path / "sst-2" / "train.tsv", [["sentence", "label"], ["good movie ", 1], ["bad film ", 0]])
    write_tsv(tmp_path / "sst-2" / "dev.tsv", [["sentence", "label"], ["very good", 1]])
    write_tsv(tmp_path / "sst-2" / "test.tsv", [["index", "sentence"], [7, "boring"], [3, "great"]])
    # data_dir is the GLUE root; the task folder is matched case-insensitively.
    dd = load_raw(get_task("SST-2"), data_dir=str(tmp_path), splits=("train", "validation", "test"))
    assert dd["train"]["sentence"] == ["good movie ", "bad film "]
    assert dd["train"]["label"] == [1, 0]
    assert len(dd["validation"]) == 1
    # test idx comes from the file's index column: that is what the leaderboard matches on
    assert dd["test"]["idx"] == [7, 3]


def test_mrpc_with_bom_header(tmp_path, write_tsv):
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    write_tsv(
        tmp_path / "MRPC" / "train.tsv",
        [header, [1, 11, 12, 'he said " hi', "he said hi"], [0, 13, 14, "a cat", "a dog"]],
        bom=True,
    )
    write_tsv(tmp_path / "MRPC" / "test.tsv", [["index", *header[1:]], [0, 1, 2, "x", "y"]], bom=True)
    dd = load_raw(get_task("mrpc"), data_dir=str(tmp_path / "MRPC"), splits=("train", "test"))
    train = dd["train"]
    assert train.column_names == ["sentence1", "sentence2", "label", "idx"]
    assert train["label"] == [1, 0]
    assert train["sentence1"] == ['he said " hi', "a cat"]
    assert train["sentence2"] == ["he said hi", "a dog"]
    assert dd["test"]["sentence2"] == ["y"] and dd["test"]["label"] == [-1]


def test_stsb_scores(tmp_path, write_tsv):
    folder = tmp_path / "STS-B"
    write_tsv(folder / "train.tsv", [
        STSB_HEADER, stsb_row(0, "a man", "a man", "5.000"), stsb_row(1, "a dog", "a cat", "0.750"),
    ])
    write_tsv(folder / "test.tsv", [STSB_HEADER[:-1], stsb_row(0, "a man", "a woman")])
    dd = load_raw(get_task("stsb"), data_dir=str(folder))
    assert list(dd) == ["train", "test"]  # no dev.tsv and no splits asked: read what exists
    assert dd["train"].features["label"] == Value("float32")
    assert dd["train"]["label"] == pytest.approx([5.0, 0.75])
    assert dd["test"]["label"] == [-1.0]
    assert dd["test"]["sentence2"] == ["a woman"]


def test_mnli_matched_mismatched_label_is_last_column(tmp_path, write_tsv):
    folder = tmp_path / "MNLI"
    write_tsv(folder / "train.tsv", [MNLI_TRAIN_HEADER, mnli_row(0, "p0", "h0", ["neutral", "neutral"]),
                                     mnli_row(1, "p1", "h1", ["entailment", "entailment"])])
    # label1 disagrees with gold_label: the gold label (last column) must win
    write_tsv(folder / "dev_matched.tsv", [
        MNLI_DEV_HEADER, mnli_row(0, "pm", "hm", ["neutral", "x", "y", "z", "w", "contradiction"]),
    ])
    write_tsv(folder / "dev_mismatched.tsv", [MNLI_DEV_HEADER,
                                              mnli_row(0, "pa", "ha", ["entailment"] * 6),
                                              mnli_row(1, "pb", "hb", ["neutral"] * 6)])
    write_tsv(folder / "test_matched.tsv", [MNLI_TEST_HEADER, mnli_row(0, "tp", "th", [])])
    task = get_task("mnli")
    splits = ("train", "validation_matched", "validation_mismatched", "test_matched")
    dd = load_raw(task, data_dir=str(folder), splits=splits)
    assert dd["train"].column_names == ["premise", "hypothesis", "label", "idx"]
    assert dd["train"]["label"] == [1, 0]
    assert dd["validation_matched"]["label"] == [2]
    assert dd["validation_matched"]["premise"] == ["pm"] and dd["validation_matched"]["hypothesis"] == ["hm"]
    assert dd["validation_mismatched"]["label"] == [0, 1]
    assert dd["test_matched"]["premise"] == ["tp"] and dd["test_matched"]["label"] == [-1]
    with pytest.raises(UserError, match=r"no test_mismatched\.tsv in .*MNLI \(needed for split 'test_mismatched'\)"):
        load_raw(task, data_dir=str(folder), splits=("test_mismatched",))


def test_rte_text_labels_and_qqp(tmp_path, write_tsv):
    write_tsv(tmp_path / "RTE" / "dev.tsv", [["index", "sentence1", "sentence2", "label"],
                                            [0, "a b", "c", "not_entailment"], [1, "d", "e", "entailment"]])
    rte = load_raw(get_task("rte"), data_dir=str(tmp_path), splits=("validation",))["validation"]
    assert rte["label"] == [1, 0] and rte["idx"] == [0, 1]
    assert rte.features["label"].names == ["entailment", "not_entailment"]

    write_tsv(tmp_path / "QQP" / "train.tsv", [["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
                                              [9001, 1, 2, "what ?", "what is ?", 1],
                                              [4, 3, 4, "why ?", "who ?", 0]])
    write_tsv(tmp_path / "QQP" / "test.tsv", [["id", "question1", "question2"], [0, "how ?", "when ?"]])
    qqp = load_raw(get_task("qqp"), data_dir=str(tmp_path), splits=("train", "test"))
    assert qqp["train"].column_names == ["question1", "question2", "label", "idx"]
    assert qqp["train"]["label"] == [1, 0]
    assert qqp["train"]["idx"] == [0, 1]  # training idx is the row number, as on the hub
    assert qqp["test"]["question2"] == ["when ?"] and qqp["test"]["idx"] == [0]


def test_only_requested_splits_are_read(tmp_path, write_tsv):
    folder = tmp_path / "SST-2"
    write_tsv(folder / "train.tsv", [["sentence", "label"], ["good", 1]])
    (folder / "test.tsv").write_text("garbage without tabs\n")
    dd = load_raw(get_task("sst2"), data_dir=str(folder), splits=("train",))
    assert list(dd) == ["train"]


def test_missing_dev_file(tmp_path, write_tsv):
    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    write_tsv(tmp_path / "MRPC" / "train.tsv", [header, [1, 1, 2, "a", "b"]])
    with pytest.raises(UserError) as err:
        load_raw(get_task("mrpc"), data_dir=str(tmp_path / "MRPC"), splits=("train", "validation"))
    message = str(err.value)
    assert f"no dev.tsv in {tmp_path / 'MRPC'} (needed for split 'validation')" in message
    assert "train.tsv/dev.tsv/test.tsv" in message


def test_folder_of_another_task_is_rejected(tmp_path, write_tsv):
    write_tsv(tmp_path / "SST-2" / "train.tsv", [["sentence", "label"], ["good", 1]])
    with pytest.raises(UserError, match=r"is the GLUE SST-2 folder, not CoLA"):
        load_raw(get_task("cola"), data_dir=str(tmp_path / "SST-2"))


def test_missing_data_dir_and_unknown_split(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_raw(get_task("rte"), data_dir=str(tmp_path / "nope"))
    with pytest.raises(UserError, match="no GLUE RTE files"):
        load_raw(get_task("rte"), data_dir=str(tmp_path))
    with pytest.raises(UserError, match="has no split 'validation_matched'"):
        load_raw(get_task("rte"), data_dir=str(tmp_path), splits=("validation_matched",))


@pytest.mark.parametrize(
    ("task", "rows", "expected"),
    [
        ("mrpc", [["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"], [1, 1, 2, "a", "b"], [0, 3, "c"]],
         r"line 3: expected 5 tab-separated columns, found 3; is this the GLUE MRPC layout\?"),
        ("rte", [["index", "sentence1", "sentence2", "label"], [0, "a", "b", "entailment"], [1, "c", "d", "maybe"]],
         r"line 3: unknown label 'maybe'; expected one of entailment, not_entailment"),
        ("stsb", [STSB_HEADER, stsb_row(0, "a", "b", "high")],
         r"line 2: expected a numeric similarity score, found 'high'"),
        ("cola", [["gj04", 1, "", "ok ."], ["gj04", 1, "no label column"]],
         r"line 2: expected 4 tab-separated columns, found 3"),
        ("sst2", [["sentence", "label"]], r"line 2: no data rows after the header"),
        ("sst2", [["text", "label"], ["good", 1]], r"line 1: header has no 'sentence' column; found text, label"),
    ],
)
def test_malformed_tsv(tmp_path, write_tsv, task, rows, expected):
    path = write_tsv(tmp_path / "train.tsv", rows)
    with pytest.raises(UserError, match=expected) as err:
        load_raw(get_task(task), data_dir=str(tmp_path), splits=("train",))
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_empty_file(tmp_path):
    (tmp_path / "dev.tsv").write_text("")
    with pytest.raises(UserError, match=r"dev\.tsv line 1: the file is empty"):
        load_raw(get_task("qnli"), data_dir=str(tmp_path), splits=("validation",))


def test_fingerprint_follows_file_contents(tmp_path, write_tsv):
    path = write_tsv(tmp_path / "train.tsv", [["sentence", "label"], ["good", 1]])
    first = load_raw(get_task("sst2"), data_dir=str(tmp_path))["train"]._fingerprint
    again = load_raw(get_task("sst2"), data_dir=str(tmp_path))["train"]._fingerprint
    write_tsv(path, [["sentence", "label"], ["good", 0]])
    changed = load_raw(get_task("sst2"), data_dir=str(tmp_path))["train"]._fingerprint
    assert first == again != changed


# ----------------------------------------------------------------------------- data_files


def test_csv_and_jsonl_data_files(tmp_path):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(
        'sentence1,sentence2,label,extra\n"a cat, here",007,entailment,x\nNA,"say ""hi""",1,y\n',
        encoding="utf-8",
    )
    jsonl_path = tmp_path / "dev.jsonl"
    jsonl_path.write_text(
        json.dumps({"sentence1": "p", "sentence2": "h", "label": "not_entailment", "idx": 40}) + "\n"
        + json.dumps({"sentence1": "q", "sentence2": "i", "label": 0, "idx": 41}) + "\n",
        encoding="utf-8",
    )
    dd = load_raw(get_task("rte"), data_files={"train": str(csv_path), "validation": str(jsonl_path)})
    train = dd["train"]
    assert train.column_names == ["sentence1", "sentence2", "label", "idx"]  # extra column dropped
    assert train["sentence1"] == ["a cat, here", "NA"]  # no NaN conversion
    assert train["sentence2"] == ["007", 'say "hi"']  # text stays text
    assert train["label"] == [0, 1] and train["idx"] == [0, 1]  # idx added
    assert dd["validation"]["label"] == [1, 0] and dd["validation"]["idx"] == [40, 41]


def test_json_array_stsb_and_unlabeled_test(tmp_path):
    train = tmp_path / "train.json"
    train.write_text(json.dumps([{"sentence1": "a", "sentence2": "b", "label": 3.5}]), encoding="utf-8")
    test = tmp_path / "test.json"
    test.write_text(json.dumps([{"sentence1": "c", "sentence2": "d"}]), encoding="utf-8")
    dd = load_raw(get_task("stsb"), data_files={"train": str(train), "test": str(test)})
    assert dd["train"]["label"] == [3.5]
    assert dd["test"]["label"] == [-1.0]


def test_data_files_errors(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("question,label\nwhat ?,1\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"missing column\(s\) sentence; found question, label"):
        load_raw(get_task("qnli"), data_files={"train": str(path)})
    with pytest.raises(UserError, match=r"no data file for split 'validation' in task\.data_files"):
        load_raw(get_task("qnli"), data_files={"train": str(path)}, splits=("validation",))
    bad = tmp_path / "bad.csv"
    bad.write_text("sentence,label\ngood,2\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.csv row 1: unknown label 2"):
        load_raw(get_task("sst2"), data_files={"train": str(bad)})
    other = tmp_path / "train.parquet"
    other.write_text("a")
    with pytest.raises(UserError, match=r"unsupported extension '\.parquet'"):
        load_raw(get_task("sst2"), data_files={"train": str(other)})


def test_official_glue_tsv_as_data_file(tmp_path, write_tsv):
    path = write_tsv(tmp_path / "whatever.tsv", [["gj04", 0, "*", "bad ."], ["gj04", 1, "", "good ."]])
    dd = load_raw(get_task("cola"), data_files={"validation": str(path)})
    assert dd["validation"]["label"] == [0, 1]


def test_hub_tsv_as_data_file_keeps_quotes(tmp_path, write_tsv):
    path = write_tsv(tmp_path / "train.tsv", [["sentence", "label"], ['a "quoted', "positive"]])
    dd = load_raw(get_task("sst2"), data_files={"train": str(path)})
    assert dd["train"]["sentence"] == ['a "quoted'] and dd["train"]["label"] == [1]


# ----------------------------------------------------------------------------- hub


@pytest.fixture
def isolated_hf_cache(tmp_path, monkeypatch):
    """Point the dataset/hub caches at an empty folder so nothing can come from a real cache."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    return tmp_path


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_offline_is_a_user_error(isolated_hf_cache, monkeypatch, variable):
    import huggingface_hub.constants as hub_constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    # as if the variable were set after the libraries were imported (they read it only then)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv(variable, "1")
    with pytest.raises(UserError) as err:
        load_raw(get_task("mrpc"), splits=("train",))
    assert str(err.value) == (
        f"dataset nyu-mll/glue (mrpc) is not available offline ({variable}=1): pass task.data_dir=PATH "
        f"to a local GLUE folder, or unset {variable}"
    )
    with pytest.raises(UserError, match=r"bert-ticket-tests/missing \(rte\) is not available offline"):
        load_raw(get_task("rte"), hub_dataset="bert-ticket-tests/missing")
    # the libraries' own switches are restored afterwards
    assert datasets.config.HF_HUB_OFFLINE is False and hub_constants.HF_HUB_OFFLINE is False


def test_hub_dataset_is_selected_and_idx_widened(monkeypatch):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append(args)
        features = datasets.Features({
            "sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"]), "idx": Value("int32"),
        })
        split = Dataset.from_dict({"sentence": ["a", "b"], "label": [0, 1], "idx": [0, 1]}, features=features)
        return DatasetDict({"train": split, "validation": split, "test": split})

    monkeypatch.setattr(glue.datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    dd = load_raw(get_task("sst2"), splits=("validation",))
    assert calls == [("nyu-mll/glue", "sst2")]
    assert list(dd) == ["validation"]
    assert dd["validation"].features["idx"] == Value("int64")
    dd = load_raw(get_task("sst2"), hub_dataset="me/my-glue")
    assert calls[-1] == ("me/my-glue", "sst2") and list(dd) == ["train", "validation", "test"]


def test_hub_failure_is_wrapped(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom\nwith detail")

    monkeypatch.setattr(glue.datasets, "load_dataset", broken)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    expected = r"could not load dataset nyu-mll/glue \(qnli\) from the Hugging Face hub \(boom with detail\)"
    with pytest.raises(UserError, match=expected):
        load_raw(get_task("qnli"))


# ----------------------------------------------------------------------------- leaderboard


def read_lines(path):
    return path.read_text(encoding="utf-8").splitlines()


def test_write_predictions_label_names_and_order(tmp_path):
    out = tmp_path / "sub" / "MNLI-m.tsv"
    write_glue_predictions(get_task("mnli"), "test_matched", [2, 0, 1], np.array([0, 2, 1]), out)
    assert read_lines(out) == ["index\tprediction", "0\tcontradiction", "1\tneutral", "2\tentailment"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["MNLI-m.tsv"]  # no temp file left
    assert glue.leaderboard_file(get_task("mnli"), "test_mismatched") == "MNLI-mm.tsv"


def test_write_predictions_binary_tasks_use_integers(tmp_path):
    out = tmp_path / "SST-2.tsv"
    logits = np.array([[0.1, 0.9], [2.0, -1.0]])  # logits are arg-maxed
    write_glue_predictions(get_task("sst2"), "test", [1, 0], logits, out)
    assert read_lines(out) == ["index\tprediction", "0\t0", "1\t1"]
    out = tmp_path / "RTE.tsv"
    write_glue_predictions(get_task("rte"), "test", [0, 1], np.array([1, 0]), out)
    assert read_lines(out) == ["index\tprediction", "0\tnot_entailment", "1\tentailment"]


def test_write_predictions_stsb_clipped(tmp_path):
    out = tmp_path / "STS-B.tsv"
    write_glue_predictions(get_task("stsb"), "test", [0, 1, 2], np.array([[-0.4], [2.71828], [5.6]]), out)
    assert read_lines(out) == ["index\tprediction", "0\t0.000", "1\t2.718", "2\t5.000"]


def test_write_predictions_rejects_bad_input_and_keeps_old_file(tmp_path):
    out = tmp_path / "CoLA.tsv"
    out.write_text("previous\n")
    with pytest.raises(ValueError):
        write_glue_predictions(get_task("cola"), "test", [0, 1], np.array([0, 3]), out)
    with pytest.raises(ValueError):
        write_glue_predictions(get_task("cola"), "test", [0, 1, 2], np.array([0, 1]), out)
    assert out.read_text() == "previous\n"
    assert [p.name for p in tmp_path.iterdir()] == ["CoLA.tsv"]
