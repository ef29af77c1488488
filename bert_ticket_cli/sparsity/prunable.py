"""The prunable set: which weight matrices a ticket covers, and the names they go by.

Names are always relative to the *base* BERT model, i.e. a task model's
``base_model_prefix + "."`` (``"bert."``) is not part of them::

    encoder.layer.3.attention.self.query.weight
    pooler.dense.weight

so that a ticket found on ``BertForSequenceClassification`` applies unchanged to
``BertForQuestionAnswering`` or ``BertForMaskedLM`` built from the same config (the task
heads are never prunable, and they are the only thing that differs).

The default set is the one of Chen et al. (2020): per encoder layer the query, key, value,
attention-output, intermediate and output weight matrices, plus the pooler's; weights only
(no embeddings, biases, LayerNorm, task heads).  For BERT-base: 73 matrices, 85,524,480
weights.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from bert_ticket_cli.errors import UserError

#: Glob patterns (``fnmatch``: ``*`` matches anything, dots included) over names relative to
#: the base model.  The order is the order of the matrices within one layer.
LAYER_PATTERNS: tuple[str, ...] = (
    "encoder.layer.*.attention.self.query.weight",
    "encoder.layer.*.attention.self.key.weight",
    "encoder.layer.*.attention.self.value.weight",
    "encoder.layer.*.attention.output.dense.weight",
    "encoder.layer.*.intermediate.dense.weight",
    "encoder.layer.*.output.dense.weight",
)
POOLER = "pooler.dense.weight"
DEFAULT_PATTERNS: tuple[str, ...] = LAYER_PATTERNS + (POOLER,)

_LAYER_INDEX = re.compile(r"(?:^|\.)layer\.(\d+)\.")


def base_model(model: nn.Module) -> nn.Module:
    """The bare encoder (``BertModel``) inside a task model, or the model itself."""
    inner = getattr(model, "base_model", None)
    return inner if isinstance(inner, nn.Module) else model


def _layer_key(name: str) -> tuple[int, int]:
    """Sort key: encoder layers in numeric order, everything without a layer index after them."""
    found = _LAYER_INDEX.search(name)
    return (0, int(found.group(1))) if found else (1, 0)


def prunable_parameters(model: nn.Module, include_pooler: bool = True,
                        patterns: Sequence[str] | None = None) -> dict[str, nn.Parameter]:
    """The prunable weights of ``model``, by name relative to its base model, ordered by layer.

    ``patterns`` (default :data:`DEFAULT_PATTERNS`) are globs over those relative names.  A
    user-given pattern that matches nothing is a :class:`UserError` (a typo would otherwise
    silently prune less); among the defaults only the pooler may be absent (``BertForMaskedLM``
    has none).  Works on meta-device models (for counting).
    """
    user_patterns = patterns is not None
    pats = tuple(DEFAULT_PATTERNS if patterns is None else patterns)
    if not include_pooler:
        pats = tuple(p for p in pats if not p.startswith("pooler."))
    named = list(base_model(model).named_parameters())
    chosen: dict[str, nn.Parameter] = {}
    used: set[str] = set()
    for name, param in named:
        if not include_pooler and name.startswith("pooler."):
            continue
        for pat in pats:
            if fnmatch.fnmatchcase(name, pat):
                chosen[name] = param
                used.add(pat)
                break
    if user_patterns:
        unused = [p for p in pats if p not in used]
        if unused:
            raise UserError(f"prunable pattern {unused[0]!r} matches no parameter of the model; "
                            f"patterns are globs over names like {LAYER_PATTERNS[0]!r}: fix the pattern")
    if not chosen:
        raise UserError("the model has no prunable weights (no BERT encoder layers matched); "
                        "use a BERT-style model or set the prunable patterns")
    # named_parameters is already in module order; the stable sort only guarantees that
    # layer 10 follows layer 9 for models that register their layers in another order.
    ordered = sorted(chosen.items(), key=lambda item: _layer_key(item[0]))
    return dict(ordered)


def shapes_fingerprint(shapes: Mapping[str, Iterable[int]]) -> str:
    """A short stable id of a set of named shapes (sha256 of sorted ``name:AxB`` lines, 16 hex)."""
    lines = sorted(f"{name}:{'x'.join(str(int(d)) for d in shape)}" for name, shape in shapes.items())
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:16]


def model_id(model: nn.Module) -> str:
    """What a ticket records as its model: the hub id / directory it came from, else the class."""
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", "") if config is not None else ""
    return str(name) if name else type(base_model(model)).__name__


def total_parameters(model: nn.Module) -> int:
    """All parameters of ``model`` (task head included): the denominator of 'overall' sparsity."""
    return sum(p.numel() for p in model.parameters())

