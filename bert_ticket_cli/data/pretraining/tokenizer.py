"""The pre-training tokenizer: a deterministic WordPiece vocabulary learned on the training
documents, or a named one (step 2 of the package doc)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bert_ticket_cli.data.common import file_digest, one_line
from bert_ticket_cli.data.tokenize import tokenizer_fingerprint
from bert_ticket_cli.errors import UserError

#: The trained tokenizer's special tokens, at ids 0..4.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece(texts: Callable[[], Iterator[list[str]]], vocab_size: int, lowercase: bool):
    """A BERT WordPiece tokenizer learned from ``texts()`` (called twice), deterministically."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertTokenizerFast

    def bare(vocab: dict[str, int] | None = None) -> Tokenizer:
        model = models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix="##") if vocab \
            else models.WordPiece(unk_token="[UNK]", continuing_subword_prefix="##")
        tok = Tokenizer(model)
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                    lowercase=bool(lowercase))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        return tok

    def trainer(size: int, specials: list[str]):
        return trainers.WordPieceTrainer(vocab_size=size, special_tokens=specials, show_progress=False,
                                         continuing_subword_prefix="##")

    probe = bare()  # pass 1: the alphabet and the ## pieces only (no merges)
    probe.train_from_iterator(texts(), trainer(0, list(SPECIAL_TOKENS)))
    pieces = sorted(t for t in probe.get_vocab() if t.startswith("##") and t not in SPECIAL_TOKENS)
    if not probe.get_vocab().keys() - set(SPECIAL_TOKENS):
        raise UserError("the training documents hold no text to learn a vocabulary from")
    learned = bare()
    learned.train_from_iterator(texts(), trainer(int(vocab_size), [*SPECIAL_TOKENS, *pieces]))
    vocab = learned.get_vocab()
    tok = bare(vocab)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece(prefix="##")
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                             sep_token="[SEP]", mask_token="[MASK]", do_lower_case=bool(lowercase))


def tokenizer_identity(cfg: Any) -> Any:
    spec = str(cfg.pretrain.data.tokenizer)
    if spec == "train":
        return "train"
    name = (cfg.model.tokenizer or cfg.model.name_or_path) if spec == "model" else spec
    local = Path(str(name)).expanduser() if name else None
    if local is not None and local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file())
        return [spec, "dir", [[str(p.relative_to(local)), file_digest(p)] for p in files]]
    return [spec, name]


def load_named_tokenizer(cfg: Any):
    """The tokenizer of ``pretrain.data.tokenizer`` when it is not ``train``."""
    spec = str(cfg.pretrain.data.tokenizer)
    if spec == "model":
        from bert_ticket_cli.model.build import load_tokenizer

        return load_tokenizer(cfg.model, cfg.task)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(Path(spec).expanduser()) if Path(spec).expanduser().is_dir()
                                             else spec, use_fast=True)
    except Exception as exc:  # noqa: BLE001 - any failure here is about the tokenizer source
        raise UserError(f"could not load tokenizer {spec!r} ({one_line(exc)}): set pretrain.data.tokenizer=train, "
                        f"model, a local tokenizer folder or a hub id available offline") from None


def check_tokenizer(tokenizer: Any, spec: str) -> None:
    for attr in ("cls_token_id", "sep_token_id", "mask_token_id", "pad_token_id"):
        if getattr(tokenizer, attr, None) is None:
            raise UserError(f"tokenizer {spec!r} has no {attr[:-3]} (BERT pre-training needs [CLS], [SEP], "
                            f"[MASK] and [PAD]): use pretrain.data.tokenizer=train or a BERT tokenizer")


def tokenizer_info(tokenizer: Any, spec: str) -> dict[str, Any]:
    return {
        "source": spec,
        "vocab_size": len(tokenizer),
        "pad_id": int(tokenizer.pad_token_id),
        "unk_id": None if tokenizer.unk_token_id is None else int(tokenizer.unk_token_id),
        "cls_id": int(tokenizer.cls_token_id),
        "sep_id": int(tokenizer.sep_token_id),
        "mask_id": int(tokenizer.mask_token_id),
        "special_ids": sorted(int(i) for i in tokenizer.all_special_ids),
        "fingerprint": tokenizer_fingerprint(tokenizer),
    }


def load_saved_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), use_fast=True)
