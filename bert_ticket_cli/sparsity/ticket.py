"""The ticket: which weights (or heads and FFN neurons) a subnetwork keeps, and its file format.

One type for every method.  *Unstructured* tickets (IMP, random pruning) hold a bool mask per
prunable matrix, named relative to the base BERT model (see :mod:`.prunable`); *structured*
tickets (EarlyBERT, super tickets) hold bool ``heads [layers, heads]`` and
``neurons [layers, intermediate]``, and super tickets that remove whole FFN sub-layers also
``ffn_layers [layers]`` (False: the layer's FFN is gone, output bias included; its neurons are
all False too).  True always means *kept*.

On disk a ticket is a folder with two files::

    ticket.safetensors   the masks (bool tensors "masks/<name>", "structure/heads",
                         "structure/neurons", "structure/ffn_layers"); its header metadata (str -> str) carries the
                         format, the mask order, the fingerprint and the whole ``meta`` as JSON
    ticket.json          what a person (or ``jq``) reads: method, level, sparsity over the
                         prunable set and over all model parameters, per-matrix sparsity,
                         model id, fingerprint of the prunable shapes, source task, seed,
                         rewind point, creation time, the sha256 of ticket.safetensors and
                         the format version

No pickle anywhere.  :meth:`Ticket.save` is atomic (a fresh folder is written under a
temporary name and renamed into place; into an existing, non-empty folder the two files are
written under temporary names and renamed over the old ones, the JSON last) and
:meth:`Ticket.load` refuses a file whose checksum does not match.

Fitting a ticket to a model that lacks a parameter it has a mask for is an error, with one
exception: ``pooler.dense.weight`` is skipped when the model has no pooler (``BertForMaskedLM``
is built without one), so a ticket found on a classification task applies to an MLM model; the
rest of the ticket still applies.  Masks are never broadcast: a shape mismatch is an error.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bert_ticket_cli.artifacts.paths import TICKET_JSON, TICKET_TENSORS
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.sparsity.prunable import (
    POOLER,
    base_model,
    model_id,
    prunable_parameters,
    shapes_fingerprint,
    total_parameters,
)

FORMAT = "bert-ticket/ticket"
FORMAT_VERSION = 1
TENSORS_FILE = TICKET_TENSORS
JSON_FILE = TICKET_JSON
MASK_PREFIX = "masks/"
HEADS_KEY = "structure/heads"
NEURONS_KEY = "structure/neurons"
FFN_LAYERS_KEY = "structure/ffn_layers"
#: Masks the model may lack (skipped by check_fits): models built without a pooler.
OPTIONAL_MASKS = frozenset({POOLER})


def _as_bool(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A mask as a bool tensor; 0/1 tensors of other dtypes are accepted, anything else is not."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype == torch.bool:
        return tensor
    if bool(((tensor != 0) & (tensor != 1)).any()):
        raise ValueError(f"{name} must be a bool (or 0/1) mask")
    return tensor != 0


def _shape(t: torch.Tensor) -> list[int]:
    return [int(d) for d in t.shape]


@dataclass(eq=False)
class Ticket:
    """Masks (True = kept) plus free-form metadata; see the module docstring."""

    masks: dict[str, torch.Tensor]
    heads: torch.Tensor | None = None
    neurons: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    ffn_layers: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.masks = {str(n): _as_bool(f"mask {n}", m) for n, m in dict(self.masks or {}).items()}
        for attr in ("heads", "neurons"):
            value = getattr(self, attr)
            if value is not None:
                value = _as_bool(attr, value)
                if value.dim() != 2:
                    raise ValueError(f"{attr} must be a [layers, n] mask, got shape {_shape(value)}")
                setattr(self, attr, value)
        if self.ffn_layers is not None:
            self.ffn_layers = _as_bool("ffn_layers", self.ffn_layers)
            if self.ffn_layers.dim() != 1:
                raise ValueError(f"ffn_layers must be a [layers] mask, got shape {_shape(self.ffn_layers)}")
            if self.neurons is None or self.neurons.shape[0] != self.ffn_layers.numel():
                raise ValueError("ffn_layers needs neurons with one row per layer")
            if bool(self.neurons[~self.ffn_layers].any()):
                raise ValueError("a removed FFN layer (ffn_layers False) keeps no neuron")
        self.meta = dict(self.meta or {})

    # ------------------------------------------------------------------- summaries

    @property
    def kind(self) -> str:
        """``structured`` if the ticket has heads or neurons, else ``unstructured``."""
        return "structured" if (self.heads is not None or self.neurons is not None) else "unstructured"

    @property
    def structure(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(heads, neurons, ffn_layers)`` of a structured ticket (what ``compact_`` takes)."""
        return self.heads, self.neurons, self.ffn_layers

    def _counted(self) -> list[torch.Tensor]:
        if self.masks:
            return list(self.masks.values())
        return [t for t in (self.heads, self.neurons) if t is not None]

    def kept(self) -> int:
        """Kept entries: weights over the masks, or (a structured ticket without masks) units."""
        return sum(int(torch.count_nonzero(t)) for t in self._counted())

    def total(self) -> int:
        return sum(t.numel() for t in self._counted())

    def sparsity(self) -> float:
        """Fraction removed over the ticket's masks (the prunable set)."""
        total = self.total()
        return 1.0 - self.kept() / total if total else 0.0

    def per_matrix_sparsity(self) -> dict[str, float]:
        """``name -> fraction removed``; structured tickets add one entry per layer for heads
        (``encoder.layer.<i>.attention.heads``) and FFN neurons (``...intermediate.neurons``)."""
        out = {n: (1.0 - int(torch.count_nonzero(m)) / m.numel()) if m.numel() else 0.0
               for n, m in self.masks.items()}
        for key, units, suffix in ((HEADS_KEY, self.heads, "attention.heads"),
                                   (NEURONS_KEY, self.neurons, "intermediate.neurons")):
            if units is not None:
                for layer, row in enumerate(units):
                    out[f"encoder.layer.{layer}.{suffix}"] = (
                        1.0 - int(torch.count_nonzero(row)) / row.numel() if row.numel() else 0.0)
        return out

    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = {n: tuple(m.shape) for n, m in self.masks.items()}
        if self.heads is not None:
            shapes[HEADS_KEY] = tuple(self.heads.shape)
        if self.neurons is not None:
            shapes[NEURONS_KEY] = tuple(self.neurons.shape)
        if self.ffn_layers is not None:
            shapes[FFN_LAYERS_KEY] = tuple(self.ffn_layers.shape)
        return shapes

    def fingerprint(self) -> str:
        """:func:`shapes_fingerprint` of the masks (and heads / neurons) shapes."""
        return shapes_fingerprint(self.shapes())

    def overall_sparsity(self) -> float | None:
        """Pruned weights over *all* model parameters, when ``meta["total_model_params"]`` is known
        (unstructured tickets only)."""
        total_params = self.meta.get("total_model_params")
        if not total_params or self.kind != "unstructured":
            return None
        return (self.total() - self.kept()) / float(total_params)

    # ------------------------------------------------------------------------- files

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/ticket.safetensors`` and ``directory/ticket.json`` atomically.

        Stamps ``meta["created"]`` (UTC, ISO 8601) when absent.  ``meta`` must be JSON-serialisable.
        """
        from safetensors.torch import save as st_save

        directory = Path(directory)
        self.meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        try:
            meta_json = json.dumps(self.meta, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ticket meta must be JSON-serialisable: {exc}") from exc
        tensors: dict[str, torch.Tensor] = {
            MASK_PREFIX + n: m.detach().to("cpu", torch.bool).contiguous() for n, m in self.masks.items()}
        if self.heads is not None:
            tensors[HEADS_KEY] = self.heads.detach().to("cpu", torch.bool).contiguous()
        if self.neurons is not None:
            tensors[NEURONS_KEY] = self.neurons.detach().to("cpu", torch.bool).contiguous()
        if self.ffn_layers is not None:
            tensors[FFN_LAYERS_KEY] = self.ffn_layers.detach().to("cpu", torch.bool).contiguous()
        fingerprint = self.fingerprint()
        header = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "kind": self.kind,
            "fingerprint": fingerprint,
            "order": json.dumps(list(self.masks)),  # safetensors sorts tensors by name on disk
            "meta": meta_json,
        }
        data = st_save(tensors, metadata=header)
        record = self._record(fingerprint, hashlib.sha256(data).hexdigest())
        text = json.dumps(record, indent=2, allow_nan=False) + "\n"
        try:
            _write_pair(directory, data, text.encode("utf-8"))
        except OSError as exc:
            raise UserError(f"cannot write the ticket to {directory}: {exc.strerror or exc}; "
                            f"choose a writable output directory") from exc
        return directory

    def _record(self, fingerprint: str, checksum: str) -> dict[str, Any]:
        meta = self.meta
        overall = self.overall_sparsity()
        record: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "method": meta.get("method"),
            "level": meta.get("level"),
            "sparsity": {
                "prunable": round(self.sparsity(), 8),
                "overall": None if overall is None else round(overall, 8),
            },
            "kept": self.kept(),
            "total": self.total(),
            "total_model_params": meta.get("total_model_params"),
            "model": meta.get("model"),
            "fingerprint": fingerprint,
            "source_task": meta.get("source_task"),
            "seed": meta.get("seed"),
            "rewind_point": meta.get("rewind_point"),
            "pattern": meta.get("pattern"),
            "created": meta.get("created"),
            "checksum": {"sha256": checksum, "file": TENSORS_FILE},
        }
        if self.kind == "structured":
            record["structure"] = {
                "heads": None if self.heads is None else _shape(self.heads),
                "kept_heads": None if self.heads is None else int(torch.count_nonzero(self.heads)),
                "neurons": None if self.neurons is None else _shape(self.neurons),
                "kept_neurons": None if self.neurons is None else int(torch.count_nonzero(self.neurons)),
            }
            if self.ffn_layers is not None:
                record["structure"]["ffn_layers"] = _shape(self.ffn_layers)
                record["structure"]["kept_ffn_layers"] = int(torch.count_nonzero(self.ffn_layers))
        record["per_matrix_sparsity"] = {n: round(v, 8) for n, v in self.per_matrix_sparsity().items()}
        record["meta"] = meta
        return record

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Ticket":
        """Read a ticket folder; a missing, unreadable or corrupt file is a :class:`UserError`."""
        from safetensors.torch import load as st_load

        directory = Path(directory)
        tensors_path, json_path = directory / TENSORS_FILE, directory / JSON_FILE
        if not directory.is_dir():
            raise UserError(f"ticket folder {directory} does not exist: pass the folder that holds "
                            f"{TENSORS_FILE} and {JSON_FILE}")
        for path in (tensors_path, json_path):
            if not path.is_file():
                raise UserError(f"{path} is missing: the ticket is incomplete; re-create it with bert-ticket prune")
        try:
            record = json.loads(json_path.read_text(encoding="utf-8"))
            expected = record["checksum"]["sha256"]
            version = int(record.get("format_version", 0))
            if record.get("format") != FORMAT:
                raise ValueError("not a ticket file")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise UserError(f"{json_path} is not a valid ticket record (corrupt or not a ticket): "
                            f"re-create the ticket with bert-ticket prune") from None
        if version > FORMAT_VERSION:
            raise UserError(f"{json_path} has ticket format version {version}, newer than this bert-ticket "
                            f"reads ({FORMAT_VERSION}): upgrade bert-ticket")
        data = tensors_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected:
            raise UserError(f"{tensors_path} is corrupt (its sha256 does not match {JSON_FILE}): "
                            f"re-create the ticket with bert-ticket prune")
        try:
            header = _header_metadata(data)
            tensors = st_load(data)
            order = json.loads(header.get("order", "[]"))
            meta = json.loads(header.get("meta", "{}"))
        except Exception:  # noqa: BLE001 - any parse failure of a checksummed file: not a ticket
            raise UserError(f"{tensors_path} cannot be read as a ticket: re-create it with bert-ticket prune") from None
        masks = {n[len(MASK_PREFIX):]: t for n, t in tensors.items() if n.startswith(MASK_PREFIX)}
        ordered = {n: masks.pop(n) for n in order if n in masks}
        ordered.update(sorted(masks.items()))
        try:
            ticket = cls(ordered, tensors.get(HEADS_KEY), tensors.get(NEURONS_KEY), meta,
                         ffn_layers=tensors.get(FFN_LAYERS_KEY))
        except ValueError as exc:
            raise UserError(f"{tensors_path} is not a consistent ticket ({exc}): re-create it with "
                            f"bert-ticket prune") from None
        if record.get("pattern", meta.get("pattern")) != meta.get("pattern"):
            raise UserError(f"{json_path} says pattern {record.get('pattern')!r} but the ticket's tensors say "
                            f"{meta.get('pattern')!r}: re-create the ticket with bert-ticket prune")
        ticket.check_pattern(str(directory))
        return ticket

    @property
    def pattern(self) -> tuple[int, int] | None:
        """The N:M pattern the ticket claims (``meta["pattern"]``, e.g. ``"2:4"``), or None."""
        from bert_ticket_cli.sparsity.nm import parse_pattern

        return parse_pattern(self.meta.get("pattern"))

    def check_pattern(self, where: str = "the ticket") -> None:
        """A ticket that claims an N:M pattern keeps exactly N of every M input weights of every
        mask; else a :class:`UserError` (a 2:4 kernel would silently compute something else)."""
        from bert_ticket_cli.sparsity.nm import check_nm

        nm = self.pattern
        if nm is not None:
            if not self.masks:
                raise UserError(f"{where} claims the {nm[0]}:{nm[1]} pattern but has no weight masks")
            check_nm(self.masks, nm, where)

    # ------------------------------------------------------------------------ models

    def _describe(self) -> str:
        return f"ticket from {self.meta.get('model') or 'an unknown model'} (fingerprint {self.fingerprint()})"

    def check_fits(self, model: nn.Module) -> None:
        """Every mask names a parameter of ``model``'s base model with the same shape (the pooler
        may be absent), and heads / neurons match its config; else a :class:`UserError`.  A ticket
        that claims an N:M pattern must keep it (:meth:`check_pattern`)."""
        self.check_pattern(self._describe())
        base = base_model(model)
        params = dict(base.named_parameters())
        prefix = getattr(model, "base_model_prefix", "") or ""
        for name, mask in self.masks.items():
            param = params.get(name)
            if param is None:
                if name in OPTIONAL_MASKS:
                    continue
                hint = ""
                if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1:] in params:
                    hint = f" (mask names are relative to the base model: drop the '{prefix}.' prefix)"
                raise UserError(f"{self._describe()} does not fit this model: it has a mask for {name}, which "
                                f"this model lacks{hint}; use a ticket found on the same architecture")
            if tuple(param.shape) != tuple(mask.shape):
                raise UserError(f"{self._describe()} does not fit this model: {name} is {_shape(mask)} in the "
                                f"ticket and {_shape(param)} in the model; use a ticket found on the same "
                                f"architecture")
        if self.heads is None and self.neurons is None:
            return
        config = getattr(model, "config", None)
        if config is None:
            raise UserError(f"{self._describe()} is structured and needs a transformers model with a config")
        for attr, units, width in (("heads", self.heads, config.num_attention_heads),
                                   ("neurons", self.neurons, config.intermediate_size)):
            if units is None:
                continue
            want = [int(config.num_hidden_layers), int(width)]
            if _shape(units) != want:
                raise UserError(f"{self._describe()} does not fit this model: {attr} is {_shape(units)} in the "
                                f"ticket and {want} in the model; use a ticket found on the same architecture")
        if self.ffn_layers is not None and self.ffn_layers.numel() != int(config.num_hidden_layers):
            raise UserError(f"{self._describe()} does not fit this model: it has {self.ffn_layers.numel()} FFN "
                            f"layers, the model {config.num_hidden_layers}; use a ticket found on the same architecture")

    def is_subset_of(self, other: "Ticket") -> bool:
        """True when every weight (head, neuron) kept here is also kept in ``other``: the
        relation between an IMP level and the level before it (masks only shrink)."""
        for name, mask in self.masks.items():
            theirs = other.masks.get(name)
            if theirs is None or theirs.shape != mask.shape:
                return False
            if bool((mask & ~theirs.to(mask.device)).any()):
                return False
        for mine, theirs in ((self.heads, other.heads), (self.neurons, other.neurons),
                             (self.ffn_layers, other.ffn_layers)):
            if mine is None:
                continue
            if theirs is None or theirs.shape != mine.shape or bool((mine & ~theirs.to(mine.device)).any()):
                return False
        return True


def full_ticket(model: nn.Module, include_pooler: bool = True) -> Ticket:
    """The dense ticket of ``model``: every prunable weight kept (level 0 of IMP)."""
    masks = {n: torch.ones(tuple(p.shape), dtype=torch.bool)
             for n, p in prunable_parameters(model, include_pooler=include_pooler).items()}
    meta = {"method": "full", "level": 0, "model": model_id(model),
            "total_model_params": total_parameters(model)}
    return Ticket(masks, meta=meta)


# ----------------------------------------------------------------------------- helpers

def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file (8-byte little-endian header size, JSON header)."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size].decode("utf-8"))
    meta = header.get("__metadata__") or {}
    if meta.get("format", FORMAT) != FORMAT:
        raise ValueError("not a ticket")
    return meta


def _write_file(path: Path, payload: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def _write_pair(directory: Path, tensors: bytes, record: bytes) -> None:
    """Both files or neither: build them in a temporary sibling folder, then rename."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_file(tmp / TENSORS_FILE, tensors)
        _write_file(tmp / JSON_FILE, record)
        if directory.is_dir() and any(directory.iterdir()):
            # A folder with other content (or an older ticket): replace the two files, the
            # record last.  A reader between the two renames sees new tensors with the old
            # record: a checksum mismatch (a clear error), never a silently wrong ticket.
            os.replace(tmp / TENSORS_FILE, directory / TENSORS_FILE)
            os.replace(tmp / JSON_FILE, directory / JSON_FILE)
            tmp.rmdir()
        else:
            os.replace(tmp, directory)  # an empty target folder is replaced atomically too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
