"""Prepared pre-training data: sources, tokenizer, sentence packing, static masks, the prepared
folder (idempotent, resumable, deterministic), the collator and the chunked data order."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from bert_ticket_cli.config.compose import compose, validate
from bert_ticket_cli.data.mlm import EVAL_SEED, Masker, example_seed
from bert_ticket_cli.data.pretraining import (
    MANIFEST, Packer, PretrainCollator, _mask_batch, held_out_documents,
    iter_documents, load_named_tokenizer, open_prepared, prepare, resolve_sources, split_sentences,
    train_wordpiece,
)
from bert_ticket_cli.engine.batches import ChunkedOrder, StepBatches, steps_per_epoch
from bert_ticket_cli.errors import UserError

SEQ, MAXP, K, P, FRACTION = 32, 3, 3, 0.15, 0.1
WORDS = ("the cat sat on a mat dog ran quickly walking talked running jumped over lazy fox brown big "
         "small house tree river green light").split()
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _marker(i: int) -> str:
    """A word naming document i (no other word contains 'qx')."""
    return f"qx{LETTERS[i // 26]}{LETTERS[i % 26]}"


def _sentence(rng: random.Random, lo: int = 3, hi: int = 10) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))).capitalize() + rng.choice(".!?")


def _document(rng: random.Random, i: int, *, long: bool = False) -> list[str]:
    """Lines of document i: its marker opens the first sentence."""
    sentences = [f"{_marker(i).capitalize()} {_sentence(rng).lower()}"]
    sentences += [_sentence(rng) for _ in range(rng.randint(0, 4))]
    if long:  # one sentence longer than a whole block body
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(45)) + ".")
    half = max(1, len(sentences) // 2)
    return [" ".join(sentences[:half]), " ".join(sentences[half:])] if len(sentences) > 1 else sentences


def _write_corpus(root: Path) -> Path:
    """40 documents: 16 blank-line separated (a.txt), 12 JSON lines, 12 one per line (sub/c.txt)."""
    rng = random.Random(3)
    corpus = root / "corpus"
    (corpus / "sub").mkdir(parents=True)
    a = ["\n".join(_document(rng, i, long=i == 5)) for i in range(16)]
    (corpus / "a.txt").write_text("\n\n".join(a) + "\n", encoding="utf-8")
    b = [json.dumps({"text": " ".join(_document(rng, i))}) for i in range(16, 28)]
    (corpus / "b.jsonl").write_text("\n".join(b) + "\n", encoding="utf-8")
    c = [" ".join(_document(rng, i)) for i in range(28, 40)]
    (corpus / "sub" / "c.txt").write_text("\n".join(c) + "\n", encoding="utf-8")
    (corpus / "notes.md").write_text("not text for the corpus\n", encoding="utf-8")
    return corpus


def _cfg(corpus, tmp: Path, *extra: str):
    return validate(compose("pretrain", [
        f"pretrain.data.corpus=[{corpus}]", "pretrain.data.vocab_size=200", f"pretrain.data.seq_length={SEQ}",
        f"pretrain.data.duplication={K}", f"pretrain.data.max_predictions={MAXP}",
        f"pretrain.data.mlm_probability={P}", f"pretrain.data.validation_fraction={FRACTION}",
        "pretrain.data.shard_rows=16", f"cache_dir={tmp / 'cache'}", *extra]), "pretrain")


def _quiet(lines: list[str] | None = None):
    return (lambda s: lines.append(s)) if lines is not None else (lambda s: None)


def _load(folder: Path, part: str):
    return datasets.load_from_disk(str(folder / part))


def _columns(folder: Path, part: str) -> dict[str, list]:
    return _load(folder, part).to_dict()


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def _unmask(row: dict) -> list[int]:
    ids = list(row["input_ids"])
    for pos, label in zip(row["mlm_positions"], row["mlm_labels"]):
        ids[pos] = label
    return ids


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One corpus, prepared into the default (fingerprinted) cache folder and into an explicit dir."""
    tmp = tmp_path_factory.mktemp("pretrain")
    corpus = _write_corpus(tmp)
    cfg = _cfg(corpus, tmp)
    lines: list[str] = []
    folder = prepare(cfg, log=_quiet(lines))
    explicit = prepare(_cfg(corpus, tmp, f"pretrain.data.dir={tmp / 'explicit'}"), log=_quiet())
    tokenizer = open_prepared(folder).tokenizer
    return {"tmp": tmp, "corpus": corpus, "cfg": cfg, "folder": folder, "explicit": explicit, "lines": lines,
            "tokenizer": tokenizer}


def _documents(base) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents) in corpus order, as the preparation saw them."""
    sources = resolve_sources([str(base["corpus"])], "corpus", "train")
    every = [d for batch in iter_documents(sources) for d in batch]
    held = set(held_out_documents(len(every), FRACTION, base["cfg"].seed).tolist())
    return [d for i, d in enumerate(every) if i not in held], [d for i, d in enumerate(every) if i in held]


def _sentence_ids(tokenizer, documents: list[str]) -> list[list[int]]:
    sentences = [s for d in documents for s in split_sentences(d)]
    return [ids for ids in tokenizer(sentences, add_special_tokens=False)["input_ids"] if ids]


# ------------------------------------------------------------------------------- pieces


def test_sentence_splitter_rules():
    doc = 'First one. Second one! Third? "Quoted." (Aside.) Pi is 3.14 here\nNew line no stop\n\n  '
    assert split_sentences(doc) == ["First one.", "Second one!", "Third?", '"Quoted."', "(Aside.)",
                                    "Pi is 3.14 here", "New line no stop"]
    assert split_sentences("   \n ") == []


def test_packer_is_greedy_and_cuts_only_long_sentences():
    p = Packer(8, cls_id=2, sep_id=3)  # body of 6
    out = p.add([10, 11, 12]) + p.add([13, 14]) + p.add([15, 16])  # 3 + 2 fit; 2 more do not
    assert out == [[2, 10, 11, 12, 13, 14, 3]]
    out = p.add(list(range(20, 34)))  # 14 tokens: closes [15, 16], then 6 + 6, and 2 stay open
    assert out == [[2, 15, 16, 3], [2, 20, 21, 22, 23, 24, 25, 3], [2, 26, 27, 28, 29, 30, 31, 3]]
    assert p.add([40, 41]) == [] and p.finish() == [[2, 32, 33, 40, 41, 3]]
    assert p.add([]) == [] and p.finish() == []
    exact = Packer(8, cls_id=2, sep_id=3)
    assert exact.add(list(range(12))) == [[2, 0, 1, 2, 3, 4, 5, 3]]  # the last full piece stays open
    assert exact.finish() == [[2, 6, 7, 8, 9, 10, 11, 3]]


def test_trained_tokenizer_is_deterministic_bert_wordpiece():
    rng = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 8))) for _ in range(150)]
    docs = [" ".join(rng.choice(words) for _ in range(30)) + "." for _ in range(60)]

    def texts():
        for i in range(0, len(docs), 7):
            yield docs[i:i + 7]

    a, b = train_wordpiece(texts, 250, True), train_wordpiece(texts, 250, True)
    assert a.get_vocab() == b.get_vocab() and len(a) == 250
    assert [a.convert_ids_to_tokens(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    enc = a("Hello There")
    assert enc["input_ids"][0] == 2 and enc["input_ids"][-1] == 3 and set(enc["token_type_ids"]) == {0}
    assert a.decode(a("abc def", add_special_tokens=False)["input_ids"]) == "abc def"
    cased = train_wordpiece(lambda: iter([["Hello World hello"]]), 60, False)
    assert "H" in cased.get_vocab() and cased.tokenize("Hello")[0].startswith("H")


def test_named_tokenizer_errors_are_user_errors(base):
    cfg = _cfg(base["corpus"], base["tmp"], "pretrain.data.tokenizer=no-such-org/no-such-tokenizer")
    with pytest.raises(UserError, match="could not load tokenizer"):
        load_named_tokenizer(cfg)
    cfg = _cfg(base["corpus"], base["tmp"], "pretrain.data.tokenizer=model",
               f"model.tokenizer={base['folder'] / 'tokenizer'}")
    assert load_named_tokenizer(cfg).get_vocab() == base["tokenizer"].get_vocab()


# ------------------------------------------------------------------------------- prepared folder


def test_layout_and_manifest(base):
    folder = base["folder"]
    assert folder.parent == base["tmp"] / "cache" / "pretrain" and len(folder.name) == 16
    for part in ["tokenizer", "blocks", "validation", *(f"train/copy-{k:02d}" for k in range(K))]:
        assert (folder / part).is_dir(), part
    assert not list(folder.rglob(".tmp-*")) and not (folder / ".work").exists()
    m = json.loads((folder / MANIFEST).read_text())
    assert list(m)[-1] == "complete" and m["complete"] is True and m["fingerprint"] == folder.name
    assert m["parts"] == ["tokenizer", "blocks", "validation", "copy-00", "copy-01", "copy-02"]
    assert m["tokenizer"]["special_ids"] == [0, 1, 2, 3, 4] and m["tokenizer"]["mask_id"] == 4
    c = m["counts"]
    assert c["documents"] == 36 and c["held_out_documents"] == c["validation_documents"] == 4
    assert c["train_rows"] == K * c["blocks"] == K * c["train_rows_per_copy"] and c["long_sentences_cut"] >= 1
    assert len(_load(folder, "blocks")) == c["blocks"] and len(_load(folder, "validation")) == c["validation_rows"]
    blocks = _load(folder, "blocks")
    assert len(list((folder / "blocks").glob("*.arrow"))) == -(-len(blocks) // 16)  # ceil(rows / shard_rows)
    assert blocks.features["input_ids"].feature.dtype == "uint16"
    copy = _load(folder, "train/copy-00")
    assert copy.features["mlm_positions"].feature.dtype == "int16"
    assert copy.features["mlm_labels"].feature.dtype == "uint16"
    assert any("blocks:" in line for line in base["lines"])


def test_blocks_pack_whole_sentences_in_order(base):
    tok = base["tokenizer"]
    blocks = _columns(base["folder"], "blocks")["input_ids"]
    assert all(len(b) <= SEQ and b[0] == tok.cls_token_id and b[-1] == tok.sep_token_id for b in blocks)
    assert sum(len(b) for b in blocks) == json.loads((base["folder"] / MANIFEST).read_text())["counts"]["tokens"]
    train_docs, _ = _documents(base)
    sentences = _sentence_ids(tok, train_docs)
    stream = [t for s in sentences for t in s]
    bodies = [b[1:-1] for b in blocks]
    assert [t for body in bodies for t in body] == stream  # nothing lost, reordered or added
    # Every block boundary is a sentence boundary, unless inside a sentence longer than a body;
    # and a block ends at a sentence boundary only when the next sentence did not fit.
    body = SEQ - 2
    ends, inside_long, offset = {}, set(), 0
    for s in sentences:
        if len(s) > body:
            inside_long.update(range(offset + 1, offset + len(s)))
        offset += len(s)
        ends[offset] = len(s)
    starts = dict(zip(ends, [len(s) for s in sentences[1:]]))  # boundary -> next sentence's length
    offset = 0
    for b in bodies[:-1]:
        offset += len(b)
        assert offset in ends or offset in inside_long
        if offset in ends and not (offset in inside_long):
            assert len(b) + starts[offset] > body or starts[offset] > body
    assert any(len(b) == body for b in bodies)


def test_masks_follow_bert_with_the_cap(base):
    tok, folder = base["tokenizer"], base["folder"]
    special = set(tok.all_special_ids)
    blocks = _columns(folder, "blocks")["input_ids"]
    for k in range(K):
        copy = _load(folder, f"train/copy-{k:02d}")
        assert len(copy) == len(blocks)
        for i, row in enumerate(copy):
            block = blocks[i]
            pos = row["mlm_positions"]
            candidates = sum(t not in special for t in block)
            assert len(pos) == min(candidates, MAXP, max(1, int(P * len(block) + 0.5)))
            assert pos == sorted(set(pos)) and all(block[p] not in special for p in pos)
            assert row["mlm_labels"] == [block[p] for p in pos]
            assert _unmask(row) == block and len(row["input_ids"]) == len(block)
            assert all(row["input_ids"][j] == block[j] for j in range(len(block)) if j not in pos)
    # The cap binds on full blocks (round(0.15 x 32) = 5 > 3); short blocks get fewer.
    counts = {len(r["mlm_positions"]) for r in _load(folder, "train/copy-00")}
    assert MAXP in counts


def test_masks_match_the_seeded_masker_and_copies_differ(base):
    tok, folder = base["tokenizer"], base["folder"]
    masker = Masker(tok, P, max_predictions=MAXP)
    blocks = _columns(folder, "blocks")["input_ids"]
    copies = [_load(folder, f"train/copy-{k:02d}") for k in range(K)]
    seed = base["cfg"].seed
    for k, copy in enumerate(copies):
        for i in (0, len(blocks) // 2, len(blocks) - 1):
            masked, labels = masker(torch.tensor(blocks[i]), example_seed(seed, i, epoch=k))
            assert copy[i]["input_ids"] == masked.tolist()
            assert copy[i]["mlm_positions"] == (labels != -100).nonzero().squeeze(1).tolist()
    for a in range(K):
        for b in range(a + 1, K):
            same = sum(x == y for x, y in zip(copies[a]["mlm_positions"], copies[b]["mlm_positions"]))
            assert same < len(blocks) // 2
    val = _load(folder, "validation")
    row = val[0]
    masked, _ = masker(torch.tensor(_unmask(row)), example_seed(EVAL_SEED, 0, epoch=0))
    assert row["input_ids"] == masked.tolist()


def test_masking_split_is_80_10_10(base):
    tok = base["tokenizer"]
    masker = Masker(tok, P, max_predictions=20)
    rng = np.random.default_rng(0)
    words = np.arange(5, len(tok))
    rows = [np.concatenate([[2], rng.choice(words, 126), [3]]) for _ in range(1500)]
    out = _mask_batch({"input_ids": rows}, range(len(rows)), masker=masker, seed=9, epoch=0,
                      id_type="uint16", position_type="int16")
    masked = replaced = kept = 0
    for ids, pos, lab, orig in zip(out["input_ids"], out["mlm_positions"], out["mlm_labels"], rows):
        assert len(pos) == 19  # round(0.15 x 128)
        now = ids[pos]
        masked += int((now == tok.mask_token_id).sum())
        kept += int((now == lab).sum())
        replaced += int(((now != lab) & (now != tok.mask_token_id)).sum())
        assert (now[now != tok.mask_token_id] >= 5).all()  # random tokens are never special
    n = masked + replaced + kept
    assert abs(masked / n - 0.8) < 0.02 and abs(replaced / n - 0.1) < 0.015 and abs(kept / n - 0.1) < 0.015


def test_validation_comes_from_held_out_documents_only(base):
    tok, folder = base["tokenizer"], base["folder"]
    train_docs, held_docs = _documents(base)
    assert len(held_docs) == 4 and not set(held_docs) & set(train_docs)
    val_rows = [_unmask(r) for r in _load(folder, "validation")]
    assert [t for b in val_rows for t in b[1:-1]] == [t for s in _sentence_ids(tok, held_docs) for t in s]

    def markers(rows) -> set[str]:
        text = " ".join(tok.decode(r, skip_special_tokens=True) for r in rows)
        return {w for w in text.split() if w.startswith("qx")}

    held = {d.split()[0].lower() for d in held_docs}
    train_markers = markers(_columns(folder, "blocks")["input_ids"])
    assert markers(val_rows) == held and len(train_markers) == 36 and not train_markers & held


def test_preparation_is_deterministic_across_folders(base):
    a, b = base["folder"], base["explicit"]
    assert a != b
    for part in ["blocks", "validation", *(f"train/copy-{k:02d}" for k in range(K))]:
        x, y = _load(a, part), _load(b, part)
        assert x.features == y.features and x.data.table.equals(y.data.table), part
    assert json.loads((a / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"] == \
        json.loads((b / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    ma, mb = (json.loads((f / MANIFEST).read_text()) for f in (a, b))
    assert ma["fingerprint"] == mb["fingerprint"] and ma["counts"] == mb["counts"]


def test_second_call_finds_the_data_without_rewriting(base):
    before = _mtimes(base["folder"])
    lines: list[str] = []
    t0 = time.perf_counter()
    assert prepare(base["cfg"], log=_quiet(lines)) == base["folder"]
    assert time.perf_counter() - t0 < 2.0
    assert lines == [f"prepared data found at {base['folder']}"]
    assert _mtimes(base["folder"]) == before


@pytest.mark.parametrize("how", ["part-and-entry", "folder-only"])
def test_resume_rebuilds_only_the_missing_copy(base, tmp_path, how):
    folder = tmp_path / "prepared"
    shutil.copytree(base["explicit"], folder)
    original = _columns(folder, "train/copy-01")
    shutil.rmtree(folder / "train" / "copy-01")
    if how == "part-and-entry":
        m = json.loads((folder / MANIFEST).read_text())
        m["parts"].remove("copy-01")
        m["complete"] = False
        (folder / MANIFEST).write_text(json.dumps(m))
    before = _mtimes(folder)
    lines: list[str] = []
    prepare(_cfg(base["corpus"], base["tmp"], f"pretrain.data.dir={folder}"), log=_quiet(lines))
    assert any("preparing" in s and s.endswith(": copy-01") for s in lines), lines
    assert _columns(folder, "train/copy-01") == original
    after = _mtimes(folder)
    assert {k: v for k, v in after.items() if "copy-01" not in k and k != MANIFEST} == \
        {k: v for k, v in before.items() if k != MANIFEST}
    assert json.loads((folder / MANIFEST).read_text())["complete"] is True


def test_resume_after_an_interrupted_part(base, tmp_path):
    folder = tmp_path / "prepared"
    shutil.copytree(base["explicit"], folder)
    original = _columns(folder, "validation")
    m = json.loads((folder / MANIFEST).read_text())
    m["parts"] = [p for p in m["parts"] if p not in ("validation", "copy-02")]
    m["complete"] = False
    (folder / MANIFEST).write_text(json.dumps(m))
    shutil.rmtree(folder / "validation")
    shutil.rmtree(folder / "train" / "copy-02")
    (folder / ".tmp-validation").mkdir()  # interrupted while writing
    (folder / ".tmp-validation" / "data-00000-of-00001.arrow").write_bytes(b"half")
    blocks_before = _mtimes(folder / "blocks")
    lines: list[str] = []
    prepare(_cfg(base["corpus"], base["tmp"], f"pretrain.data.dir={folder}"), log=_quiet(lines))
    assert any(s.endswith(": validation, copy-02") for s in lines), lines
    assert _columns(folder, "validation") == original
    assert _columns(folder, "train/copy-02") == _columns(base["explicit"], "train/copy-02")
    assert _mtimes(folder / "blocks") == blocks_before
    assert not list(folder.rglob(".tmp-*")) and not (folder / ".work").exists()
    assert len(open_prepared(folder).train) == K * len(_load(folder, "blocks"))


def test_other_settings_on_an_explicit_dir_are_refused(base):
    before = _mtimes(base["explicit"])
    cfg = _cfg(base["corpus"], base["tmp"], f"pretrain.data.dir={base['explicit']}", "pretrain.data.seq_length=64")
    with pytest.raises(UserError, match=r"prepared with other settings \(pretrain.data.seq_length: 32 there, 64 now\)"
                                        r".*choose another pretrain.data.dir or delete it"):
        prepare(cfg, log=_quiet())
    cfg = _cfg(base["corpus"], base["tmp"], f"pretrain.data.dir={base['explicit']}", "seed=7")
    with pytest.raises(UserError, match=r"\(seed: 42 there, 7 now\)"):
        prepare(cfg, log=_quiet())
    assert _mtimes(base["explicit"]) == before


def test_bad_sources_are_user_errors(base, tmp_path):
    with pytest.raises(UserError, match=r"pretrain.data.corpus=\[path/to/text\]"):
        prepare(_cfg(base["corpus"], tmp_path, "pretrain.data.corpus=[]"), log=_quiet())
    with pytest.raises(UserError, match="nowhere.txt does not exist"):
        prepare(_cfg(tmp_path / "nowhere.txt", tmp_path), log=_quiet())
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no .txt"):
        prepare(_cfg(tmp_path / "empty", tmp_path), log=_quiet())
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(UserError, match="holds no text"):
        prepare(_cfg(tmp_path / "blank.txt", tmp_path), log=_quiet())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty and holds no prepared data"):
        prepare(_cfg(base["corpus"], tmp_path, f"pretrain.data.dir={tmp_path / 'busy'}"), log=_quiet())
    assert (tmp_path / "busy" / "mine.txt").read_text() == "keep me"


def test_explicit_validation_and_a_tokenizer_folder(base, tmp_path):
    val = tmp_path / "valid.txt"
    val.write_text("Qxzz the cat sat. The dog ran!\n\nThe big house. A green tree.\n")
    cfg = _cfg(base["corpus"], tmp_path, f"pretrain.data.validation=[{val}]",
               f"pretrain.data.tokenizer={base['folder'] / 'tokenizer'}")
    p = open_prepared(prepare(cfg, log=_quiet()))
    assert p.tokenizer.get_vocab() == base["tokenizer"].get_vocab()
    c = p.manifest["counts"]
    assert c["documents"] == 40 and c["held_out_documents"] == 0 and c["validation_documents"] == 2
    text = " ".join(p.tokenizer.decode(_unmask(r), skip_special_tokens=True) for r in p.validation)
    assert text.split()[0] == "qxzz" and len(p.validation) == 1


def test_masking_in_several_processes_gives_the_same_rows(base, tmp_path):
    cfg = _cfg(base["corpus"], base["tmp"], f"pretrain.data.dir={tmp_path / 'np2'}")
    folder = prepare(cfg, log=_quiet(), num_proc=2)
    for part in ["validation", *(f"train/copy-{k:02d}" for k in range(K))]:
        assert _load(folder, part).data.table.equals(_load(base["explicit"], part).data.table), part


def test_hub_sources_use_the_split_and_skip_blank_rows(monkeypatch):
    import bert_ticket_cli.data.mlm as mlm

    calls = []

    def fake_hub(task, spec, splits):
        calls.append((spec, tuple(splits)))
        return datasets.DatasetDict({splits[0]: datasets.Dataset.from_dict({"text": ["One. Two.", "", "  ", "Three"]})})

    monkeypatch.setattr(mlm, "load_text_from_hub", fake_hub)
    (src,) = resolve_sources(["hub:org/corpus:cfg"], "pretrain.data.validation", "validation")
    assert calls == [("org/corpus:cfg", ("validation",))]
    assert src.identity[:3] == ["hub", "org/corpus:cfg", "validation"] and src.identity[3]
    assert [d for b in iter_documents([src]) for d in b] == ["One. Two.", "Three"]
    with pytest.raises(UserError, match="names no dataset"):
        resolve_sources(["hub:"], "pretrain.data.corpus", "train")


# ------------------------------------------------------------------------------- reading


def test_open_prepared(base):
    p = open_prepared(base["folder"])
    n = len(_load(base["folder"], "blocks"))
    assert len(p.train) == K * n and p.seq_length == SEQ and p.max_predictions == MAXP
    assert p.train[n + 1] == _load(base["folder"], "train/copy-01")[1]  # copy k follows copy k-1
    assert p.manifest["complete"] and p.tokenizer.mask_token_id == 4
    batch = p.collator()([p.train[i] for i in range(5)])
    assert batch["input_ids"].shape == (5, SEQ) and batch["mlm_positions"].shape == (5, MAXP)


def test_open_prepared_refuses_missing_or_incomplete_folders(base, tmp_path):
    with pytest.raises(UserError, match="no prepared pre-training data .* run `bert-ticket pretrain prepare"):
        open_prepared(tmp_path / "absent")
    folder = tmp_path / "partial"
    shutil.copytree(base["explicit"], folder)
    m = json.loads((folder / MANIFEST).read_text())
    m["complete"] = False
    (folder / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(UserError, match="incomplete .* `bert-ticket pretrain prepare"):
        open_prepared(folder)
    m["complete"] = True
    (folder / MANIFEST).write_text(json.dumps(m))
    shutil.rmtree(folder / "train" / "copy-02")
    with pytest.raises(UserError, match="incomplete"):
        open_prepared(folder)


def test_collator_pads_to_fixed_shapes():
    rows = [{"input_ids": [2, 9, 4, 3], "mlm_positions": [2], "mlm_labels": [7]},
            {"input_ids": np.array([2, 4, 8, 4, 6, 3], dtype=np.uint16), "mlm_positions": np.array([1, 3], np.int16),
             "mlm_labels": np.array([5, 11], np.uint16)}]
    batch = PretrainCollator(pad_id=0, seq_length=8, max_predictions=3)(rows)
    assert all(v.dtype == torch.long for v in batch.values())
    assert batch["input_ids"].tolist() == [[2, 9, 4, 3, 0, 0, 0, 0], [2, 4, 8, 4, 6, 3, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0]]
    assert batch["token_type_ids"].tolist() == [[0] * 8, [0] * 8]
    assert batch["mlm_positions"].tolist() == [[2, 0, 0], [1, 3, 0]]
    assert batch["mlm_labels"].tolist() == [[7, -100, -100], [5, 11, -100]]
    columns = {k: [r[k] for r in rows] for k in rows[0]}
    assert all(torch.equal(batch[k], v) for k, v in PretrainCollator(0, 8, 3)(columns).items())
    with pytest.raises(ValueError):
        PretrainCollator(0, 4, 3)(rows)


# ------------------------------------------------------------------------------- data order


def test_chunked_order_is_a_permutation_per_epoch():
    n, chunk = 1000, 64  # 16 chunks, the last one of 40 rows
    orders = [ChunkedOrder(n, seed=5, epoch=e, chunk=chunk)[:] for e in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(n))
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
    assert np.array_equal(orders[0], ChunkedOrder(n, seed=5, epoch=0, chunk=chunk)[:])
    assert not np.array_equal(orders[0], ChunkedOrder(n, seed=6, epoch=0, chunk=chunk)[:])
    o = ChunkedOrder(n, seed=5, epoch=0, chunk=chunk)
    # Rows of one chunk stay together (the chunk is the unit of locality).
    chunks_seen = [int(r) // chunk for r in o[:]]
    assert sum(a != b for a, b in zip(chunks_seen, chunks_seen[1:])) == 15
    assert all(o[i] == orders[0][i] for i in (0, 1, 63, 64, 500, 999, -1))
    assert np.array_equal(o.take(100, 300), orders[0][100:300])
    assert sorted(ChunkedOrder(1000, seed=1, epoch=0, chunk=5000)[:].tolist()) == list(range(1000))  # one chunk
    assert ChunkedOrder(0, seed=1, epoch=0, chunk=8)[:].size == 0


def _step_union(n, steps, **kw) -> list[list[int]]:
    world, accumulation, micro = kw.pop("world"), kw.pop("acc"), kw.pop("micro")
    out = [[] for _ in range(steps)]
    for rank in range(world):
        sampler = StepBatches(ChunkedOrder(n, seed=3, epoch=1, chunk=50), global_batch=micro * world * accumulation,
                              micro_batch=micro, world_size=world, rank=rank, steps=steps, **kw)
        assert len(sampler) == (steps - kw.get("start_step", 0)) * accumulation
        for j, batch in enumerate(sampler):
            out[kw.get("start_step", 0) + j // accumulation].extend(batch)
    return [sorted(s) for s in out]


def test_batches_are_independent_of_processes_and_accumulation():
    n, steps = 1000, steps_per_epoch(1000, 32)
    assert steps == 31
    single = _step_union(n, steps, world=1, acc=1, micro=32)
    assert _step_union(n, steps, world=2, acc=1, micro=16) == single
    assert _step_union(n, steps, world=2, acc=4, micro=4) == single
    assert _step_union(n, steps, world=1, acc=8, micro=4) == single
    flat = [i for s in single for i in s]
    assert len(set(flat)) == len(flat) == 31 * 32
    resumed = _step_union(n, steps, world=2, acc=2, micro=8, start_step=17)
    assert resumed[17:] == single[17:] and resumed[:17] == [[]] * 17
    first = next(iter(StepBatches(ChunkedOrder(n, seed=3, epoch=1, chunk=50), global_batch=32, micro_batch=32,
                                  world_size=1, rank=0, steps=steps)))
    assert first == ChunkedOrder(n, seed=3, epoch=1, chunk=50)[:32].tolist()
    with pytest.raises(UserError, match="fewer than one global batch.*train.batch_size"):
        steps_per_epoch(10, 32)


def test_order_of_a_huge_corpus_needs_no_array_of_its_size():
    n = 10**12
    t0 = time.perf_counter()
    sampler = StepBatches(ChunkedOrder(n, seed=1, epoch=0, chunk=10**6), global_batch=4096, micro_batch=1024,
                          world_size=2, rank=1, steps=steps_per_epoch(n, 4096), start_step=123_456_789)
    batch = next(iter(sampler))
    assert len(batch) == 1024 and len(set(batch)) == 1024 and all(0 <= i < n for i in batch)
    order = sampler.order
    assert order.slots.nbytes <= 8 * 10**6 and len(order._cache) <= 4
    assert order[n - 1] != order[0] and time.perf_counter() - t0 < 5.0
