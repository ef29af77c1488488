"""Build or load the model and tokenizer a run needs.

Three sources, one code path: a hub id (``google-bert/bert-base-uncased``), a local model
directory (any ``save_pretrained`` output, e.g. a run's ``model/`` folder), or a BertConfig
given in the config (tiny test models).  Loading problems that the user can fix (missing
directory, hub unreachable offline) become one-line :class:`UserError` s.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from bert_ticket_cli.config.schema import ModelConfig, TaskConfig
from bert_ticket_cli.errors import UserError


#: Keys a task model legitimately lacks in a pre-trained checkpoint (its new head) or does not
#: use (another head): transformers' LOAD REPORT of only these is expected and not printed.
_EXPECTED_LOAD_KEYS = ("classifier.", "qa_outputs.", "cls.", "pooler.", "bert.pooler.", "lm_head.")


class _LoadReportFilter(logging.Filter):
    """transformers 5 logs a multi-line "LOAD REPORT" table (with raw colour codes) as a warning
    from ``from_pretrained`` whenever keys are missing or unused, i.e. at every task-model load
    from a pre-trained encoder: about half of a 2-level IMP log.  Loading errors are raised by
    transformers, not logged, so nothing real is hidden here: an expected report (only a new or
    unused head) is dropped; anything else becomes one plain line (missing encoder weights,
    shape mismatches)."""

    _ansi = re.compile(r"\x1b\[[0-9;]*m")

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001  (never break logging)
            return True
        if "LOAD REPORT" not in msg:
            return True
        plain = self._ansi.sub("", msg)
        source = plain.split("from:", 1)[1].splitlines()[0].strip() if "from:" in plain else "?"
        found: dict[str, list[str]] = {}
        for line in plain.splitlines():
            cells = [c.strip() for c in line.split("|")]
            if len(cells) >= 2 and cells[1] in ("MISSING", "UNEXPECTED", "MISMATCH", "CONVERSION"):
                found.setdefault(cells[1], []).append(cells[0])
        if not found:  # a report format we do not know: print it as transformers wrote it
            return True
        odd = [k for k in found.get("MISSING", []) if not k.startswith(_EXPECTED_LOAD_KEYS)]
        if not odd and not found.get("MISMATCH") and not found.get("CONVERSION"):
            return False
        parts = [f"{status.lower()} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                 for status, keys in found.items()]
        record.msg, record.args = f"loading {source}: " + "; ".join(parts), ()
        return True


logging.getLogger("transformers.modeling_utils").addFilter(_LoadReportFilter())


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False") or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ) not in ("0", "", "false", "False")


def _check_source(path_or_id: str, what: str) -> None:
    """Fail fast and clearly for a path that looks local but is not there."""
    looks_local = path_or_id.startswith((".", "/", "~")) or os.sep in path_or_id.strip("/").split("/", 1)[-1]
    p = Path(path_or_id).expanduser()
    if p.exists():
        if p.is_dir() and not (p / "config.json").exists() and what == "model":
            raise UserError(f"{p} has no config.json: point model.name_or_path at a saved model directory")
        return
    if looks_local or path_or_id.count("/") > 1:
        raise UserError(f"{what} directory {path_or_id} does not exist: check model.name_or_path")


def _wrap_load_error(exc: Exception, source: str, what: str) -> UserError:
    if _offline():
        return UserError(
            f"{what} '{source}' is not available offline (HF_HUB_OFFLINE=1) and not in the local cache: "
            f"pass model.name_or_path=/path/to/local/model_dir, or unset HF_HUB_OFFLINE"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"cannot load {what} '{source}': {first}")


def _check_weight_files(path: str) -> None:
    """Every ``*.safetensors`` of a model folder must be readable (not truncated, not garbage)
    before transformers opens it: one line instead of its traceback."""
    from bert_ticket_cli.artifacts.records import check_weights_file

    folder = Path(path).expanduser()
    if not folder.is_dir():
        return
    for f in sorted(folder.glob("*.safetensors")):
        why = check_weights_file(f)
        if why:
            raise UserError(f"{f} is not a readable safetensors file ({why}): it is truncated or corrupt; "
                            f"save the model again or point at another model folder")


def load_tokenizer(model: ModelConfig, task: TaskConfig):
    """The tokenizer for ``model`` (``synthetic`` = the generated task's word-level one)."""
    name = model.tokenizer or model.name_or_path
    if name == "synthetic" or (name is None and task.name == "synthetic"):
        from bert_ticket_cli.data.synthetic import build_tokenizer

        return build_tokenizer(task.synthetic)
    if name is None:
        raise UserError("no tokenizer: set model.tokenizer=HUB_ID_OR_DIR for a model built from config")
    from transformers import AutoTokenizer

    _check_source(name, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(name, use_fast=True)
    except (OSError, ValueError) as exc:
        raise _wrap_load_error(exc, name, "tokenizer") from None


def _model_class(kind: str):
    from transformers import AutoModelForMaskedLM, AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    if kind == "mlm":
        return AutoModelForMaskedLM
    return AutoModelForQuestionAnswering if kind == "qa" else AutoModelForSequenceClassification


def build_model(model: ModelConfig, *, kind: str, num_labels: int, vocab_size: int | None = None,
                source: str | None = None):
    """A task model: sequence classification/regression, span extraction for ``qa``, or a
    masked-LM head for ``mlm``.

    ``source`` (a model directory) overrides ``model.name_or_path``: ``eval`` uses it to load
    a trained checkpoint.  Config overrides in ``model.config`` apply either way.
    """
    from transformers import AutoConfig, BertConfig

    overrides: dict[str, Any] = dict(model.config or {})
    path = source or model.name_or_path
    extra: dict[str, Any] = {}
    if kind not in ("qa", "mlm"):
        extra["num_labels"] = num_labels
        extra["problem_type"] = "regression" if kind == "regression" else "single_label_classification"
    if path is None:
        if vocab_size is not None:
            overrides.setdefault("vocab_size", vocab_size)
        try:
            config = BertConfig(**overrides, **extra)
            config._attn_implementation = model.attn_implementation
            return _model_class(kind).from_config(config, attn_implementation=model.attn_implementation)
        except (TypeError, ValueError) as exc:  # e.g. hidden_size not a multiple of the heads
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"bad model.config: {first}") from None
    _check_source(path, "model")
    _check_weight_files(path)
    if Path(path).is_dir() and '"bert_ticket_compact"' in (Path(path) / "config.json").read_text():
        from bert_ticket_cli.model.compact import load_compact  # heads / neurons sliced away

        return load_compact(_model_class(kind), path, **overrides, **extra)
    try:
        config = AutoConfig.from_pretrained(path, **overrides, **extra)
        return _model_class(kind).from_pretrained(
            path, config=config, attn_implementation=model.attn_implementation
        )
    except (OSError, ValueError) as exc:
        raise _wrap_load_error(exc, path, "model") from None
    except RuntimeError as exc:
        if "mismatched" not in str(exc):
            raise
        raise UserError(
            f"the weights in {path} do not fit the model config (sizes differ; model.config={overrides or {}}): "
            f"drop the size overrides from model.config, or check that num_labels matches the task"
        ) from None
