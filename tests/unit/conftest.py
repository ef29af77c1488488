"""Shared fixtures for the data and metrics tests: a tiny offline tokenizer and a TSV writer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

# Every word used by the test texts; anything else becomes [UNK], which tests try to avoid.
WORDPIECE_WORDS = """
the a an cat dog sat ran on mat it is was not very good bad movie film great plot boring
and of to in at by for with this that he she they said who what which where when why how
man woman child plays playing guitar piano riding horse rides slicing bread cuts eating
won game team final season champion title played stadium city year first second third
denver broncos carolina panthers super bowl football league american national conference
fifty gold golden anniversary many people watched new record score points scored
question answer context window stride long short text word words here there
yes no maybe . , ? ! ' " - ( ) : ; 0 1 2 3 4 5 6 7 8 9 10 24 50 2015 2016
""".split()
WORDPIECE_PIECES = ["##s", "##ed", "##ing", "##ly"]


@pytest.fixture(scope="session")
def wordpiece_vocab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wordpiece") / "vocab.txt"
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDPIECE_WORDS), *WORDPIECE_PIECES]
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def wordpiece_tokenizer(wordpiece_vocab_file: Path):
    """A lower-casing BERT WordPiece tokenizer (fast), built offline from the vocab above."""
    from transformers import BertTokenizerFast

    # transformers 5 takes the vocabulary as `vocab=`; `vocab_file=` is silently ignored there.
    tokenizer = BertTokenizerFast(vocab=str(wordpiece_vocab_file))
    assert tokenizer.get_vocab()["cat"] > 4, "vocabulary was not loaded"
    return tokenizer


@pytest.fixture
def write_tsv() -> Callable[..., Path]:
    """Write rows (lists of fields) as a TSV file; ``bom`` prefixes a UTF-8 byte-order mark."""

    def write(path: Path, rows: Sequence[Sequence[object]], *, bom: bool = False) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join("\t".join(str(field) for field in row) + "\n" for row in rows)
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
        return path

    return write
