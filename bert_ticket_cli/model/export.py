"""Padded export: a compacted model (EarlyBERT, super tickets) as a plain full-size BERT.

:mod:`.compact` slices the removed heads and FFN neurons away and records the per-layer sizes in
``config.json`` (``bert_ticket_compact``), so only :func:`~.compact.load_compact` can load it;
plain ``from_pretrained`` builds full-size layers and fails on the size mismatch.  This module
writes the same network in the original geometry, every removed unit present as exact zeros:

* a removed head: its query, key and value rows and biases are zero, and so are its columns of
  the attention-output matrix.  Its scores are all zero (a uniform softmax, harmless), its
  values are zero, so its context is zero, and the zero output columns would cancel it anyway;
* a removed FFN neuron: its intermediate row and bias are zero (the activation of 0 is 0 for
  GELU / ReLU / SiLU) and its column of the FFN-output matrix is zero;
* the output projections' biases (attention output, FFN output) are kept as they are: in the
  compact model they are added whatever is kept, even when a layer keeps no head or no neuron;
* a removed FFN sub-layer (super tickets; ``ffn_removed`` in the stored sizes): its intermediate
  and output matrices *and the output bias* are zero, so the FFN adds exactly nothing.

Everything else (embeddings, LayerNorms, pooler, task heads, dtypes) is copied unchanged, so
``AutoModelFor*.from_pretrained`` (no bert_ticket code) loads the folder and computes the
compact model's outputs up to floating-point summation order.

Where the kept units sit: a compact model keeps its heads / neurons in their original order but
no longer knows their original indices, so by default the kept units of a layer go first and
the zeros after them (a layer's output does not depend on the order of its heads or neurons).
Given the structured :class:`~bert_ticket_cli.sparsity.ticket.Ticket` it was compacted with,
the kept units go back to their original positions: the export then equals the full model
with the ticket's pruned heads and neurons zeroed.

Only safetensors are read and written; the export is written to a temporary sibling folder and
renamed into place, so ``dest`` is either absent or complete.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.model.compact import CONFIG_KEY

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: Tokenizer files copied along when the source has them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt")
_SHARD_INDEX = "model.safetensors.index.json"
_LAYER_KEY = re.compile(r"^(?P<prefix>(?:.+\.)?)encoder\.layer\.(?P<layer>\d+)\.(?P<rest>.+)$")
_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")
_ATT_OUT = "attention.output.dense"
_INTER = "intermediate.dense"
_FFN_OUT = "output.dense"


# ------------------------------------------------------------------------------ public API

def padded_state_dict(state: dict[str, torch.Tensor], config: dict[str, Any],
                      ticket: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The full-size state dict and config dict of a compacted model's ``state`` / ``config``
    (the parsed ``config.json``).  Pure: the inputs are not modified.  ``ticket`` (optional, a
    structured Ticket) puts the kept units back at their original positions.  An uncompacted
    ``config`` returns both unchanged (copies)."""
    config = dict(config)
    sizes = config.pop(CONFIG_KEY, None)
    if not sizes:
        return dict(state), config
    geometry = _geometry(config, sizes)
    n_layers, n_heads, head_size, width, hidden = geometry
    prefix = _encoder_prefix(state)
    heads_pos, neurons_pos = _positions(sizes, n_layers, n_heads, width, ticket)
    out: dict[str, torch.Tensor] = {}
    layers: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layers)]
    for name, tensor in state.items():
        found = _LAYER_KEY.match(name)
        if not found:
            out[name] = tensor
        elif int(found.group("layer")) < n_layers:
            layers[int(found.group("layer"))][found.group("rest")] = tensor
        else:
            raise UserError(f"{name} names layer {found.group('layer')}, but config.json has {n_layers} layers: "
                            f"the folder is not a consistent compacted model; re-save it with bert-ticket")
    dtype = _reference_dtype(state, prefix)
    removed = {int(i) for i in sizes.get("ffn_removed") or []}
    for i, layer in enumerate(layers):
        if i in removed:  # no FFN tensors at all in the compact model: zeros, output bias included
            layer[f"{_INTER}.weight"] = torch.zeros(0, hidden, dtype=dtype)
            layer[f"{_INTER}.bias"] = torch.zeros(0, dtype=dtype)
            layer[f"{_FFN_OUT}.weight"] = torch.zeros(hidden, 0, dtype=dtype)
            layer[f"{_FFN_OUT}.bias"] = torch.zeros(hidden, dtype=dtype)
        rows = (heads_pos[i][:, None] * head_size + torch.arange(head_size)).flatten()
        for proj in _QKV:  # absent when the layer keeps no head
            _pad_into(layer, f"{proj}.weight", 0, rows, (n_heads * head_size, hidden), dtype, i)
            _pad_into(layer, f"{proj}.bias", 0, rows, (n_heads * head_size,), dtype, i)
        _pad_into(layer, f"{_ATT_OUT}.weight", 1, rows, (hidden, n_heads * head_size), dtype, i, required=True)
        _pad_into(layer, f"{_INTER}.weight", 0, neurons_pos[i], (width, hidden), dtype, i, required=True)
        _pad_into(layer, f"{_INTER}.bias", 0, neurons_pos[i], (width,), dtype, i)
        _pad_into(layer, f"{_FFN_OUT}.weight", 1, neurons_pos[i], (hidden, width), dtype, i, required=True)
        out.update({f"{prefix}encoder.layer.{i}.{rest}": t for rest, t in layer.items()})
    return out, config


def export_padded(source_dir: str | os.PathLike, dest_dir: str | os.PathLike, *, ticket: Any = None,
                  overwrite: bool = False) -> Path:
    """Write ``source_dir`` (a model folder saved by bert-ticket, compacted or not) to ``dest_dir``
    as a plain BERT that ``transformers.AutoModel*.from_pretrained`` loads: ``config.json``
    without ``bert_ticket_compact``, ``model.safetensors`` with the removed heads / neurons as
    exact zeros, and the tokenizer files the source has.  An uncompacted source is copied as it
    is.  ``ticket``: a structured Ticket or its folder, to put the kept units back at their
    original positions (optional; ignored for an uncompacted source).  ``dest_dir`` must be absent or empty unless ``overwrite``.
    Returns ``dest_dir``.  Bad input is a one-line :class:`UserError`."""
    source, dest = Path(source_dir), Path(dest_dir)
    config = _read_config(source)
    weights = sorted(source.glob("*.safetensors"))
    if not weights:
        raise UserError(f"no safetensors weights (*.safetensors) in {source}: export needs a model folder "
                        f"saved by bert-ticket (pickle weights are not read)")
    _check_dest(source, dest, overwrite)
    if isinstance(ticket, (str, os.PathLike)):
        from bert_ticket_cli.sparsity.ticket import Ticket

        ticket = Ticket.load(ticket)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        if config.get(CONFIG_KEY):
            from safetensors.torch import save_file

            state, new_config = padded_state_dict(_load_weights(weights), config, ticket)
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_FILE),
                      metadata={"format": "pt"})  # transformers refuses safetensors without it
            (tmp / CONFIG_FILE).write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n",
                                           encoding="utf-8")
        else:  # nothing was sliced away: the folder already loads in plain transformers
            for f in [*weights, source / CONFIG_FILE, source / _SHARD_INDEX]:
                if f.is_file():
                    shutil.copyfile(f, tmp / f.name)
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
        _move_into_place(tmp, dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write the export to {dest}: {exc.strerror or exc}; "
                        f"choose a writable output directory") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def export_padded_model(model: Any, dest_dir: str | os.PathLike, tokenizer: Any = None, *, ticket: Any = None,
                        overwrite: bool = False) -> Path:
    """:func:`export_padded` of an in-memory model (compacted or not; unwrap DDP / Accelerate
    first) and its tokenizer: saved with ``save_pretrained`` to a staging folder next to
    ``dest_dir``, then exported from there."""
    dest = Path(dest_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.stage-", dir=dest.parent) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        return export_padded(staging, dest, ticket=ticket, overwrite=overwrite)


# -------------------------------------------------------------------------------- helpers

def _read_config(source: Path) -> dict[str, Any]:
    if not source.is_dir():
        raise UserError(f"model folder {source} does not exist: pass the folder that holds config.json "
                        f"and the safetensors weights (a run's model/ folder)")
    path = source / CONFIG_FILE
    if not path.is_file():
        raise UserError(f"{source} is not a model folder (no config.json): pass a run's model/ folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON: the model folder is corrupt; re-save the model") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is not a model config (a JSON object): re-save the model")
    return config


def _geometry(config: dict[str, Any], sizes: Any) -> tuple[int, int, int, int, int]:
    try:
        n_layers, n_heads = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
        width, hidden = int(config["intermediate_size"]), int(config["hidden_size"])
        heads, neurons = [int(h) for h in sizes["heads"]], [int(n) for n in sizes["intermediate"]]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"config.json is not a compacted BERT config (num_hidden_layers, num_attention_heads, "
                        f"intermediate_size, hidden_size and {CONFIG_KEY} heads / intermediate needed): "
                        f"re-save the model with bert-ticket") from None
    if (len(heads) != n_layers or len(neurons) != n_layers or not all(0 <= h <= n_heads for h in heads)
            or not all(0 <= n <= width for n in neurons) or n_heads <= 0 or hidden % n_heads):
        raise UserError(f"config.json: {CONFIG_KEY} {sizes} does not fit {n_layers} layers of {n_heads} heads and "
                        f"{width} neurons: the folder is not a consistent compacted model")
    return n_layers, n_heads, hidden // n_heads, width, hidden


def _encoder_prefix(state: dict[str, torch.Tensor]) -> str:
    prefixes = {m.group("prefix") for m in map(_LAYER_KEY.match, state) if m}
    if len(prefixes) != 1:
        raise UserError(f"the weights hold {'no' if not prefixes else 'more than one'} BERT encoder "
                        f"({sorted(prefixes)}): export needs one BERT model's weights")
    return prefixes.pop()


def _reference_dtype(state: dict[str, torch.Tensor], prefix: str) -> torch.dtype:
    """The dtype of the layer weights (for the tensors a layer that keeps no head lacks)."""
    for name, tensor in state.items():
        if name.startswith(prefix + "encoder.layer.") and name.endswith(f"{_ATT_OUT}.weight"):
            return tensor.dtype
    return torch.float32


def _positions(sizes: dict[str, Any], n_layers: int, n_heads: int, width: int,
               ticket: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    heads, neurons = [int(h) for h in sizes["heads"]], [int(n) for n in sizes["intermediate"]]
    if ticket is None:  # the kept units first, in their (unknown) original order
        return [torch.arange(h) for h in heads], [torch.arange(n) for n in neurons]
    t_heads, t_neurons = getattr(ticket, "heads", None), getattr(ticket, "neurons", None)
    if t_heads is None or t_neurons is None:
        raise UserError("the ticket given to place the kept units is not a structured ticket (heads and "
                        "neurons): pass the ticket the model was compacted with, or none")
    if tuple(t_heads.shape) != (n_layers, n_heads) or tuple(t_neurons.shape) != (n_layers, width):
        raise UserError(f"the ticket's heads {list(t_heads.shape)} / neurons {list(t_neurons.shape)} do not fit "
                        f"the model ({n_layers} layers, {n_heads} heads, {width} neurons): pass the ticket "
                        f"the model was compacted with")
    kept_h = t_heads.bool().sum(1).tolist()
    kept_n = t_neurons.bool().sum(1).tolist()
    if kept_h != heads or kept_n != neurons:
        raise UserError(f"the ticket keeps {kept_h} heads / {kept_n} neurons per layer, the model {heads} / "
                        f"{neurons}: pass the ticket the model was compacted with")
    return ([torch.nonzero(r.bool().cpu()).flatten() for r in t_heads],
            [torch.nonzero(r.bool().cpu()).flatten() for r in t_neurons])


def _pad_into(layer: dict[str, torch.Tensor], key: str, dim: int, index: torch.Tensor, full: tuple[int, ...],
              dtype: torch.dtype, i: int, required: bool = False) -> None:
    """Replace ``layer[key]`` by a zero tensor of shape ``full`` holding it at ``index`` along
    ``dim``; a missing tensor (a layer that keeps no head) becomes all zeros."""
    small = layer.get(key)
    want = list(full)
    want[dim] = int(index.numel())
    if small is None:
        if required or index.numel():
            raise UserError(f"encoder.layer.{i}.{key} is missing from the weights: the folder is not a "
                            f"consistent compacted model; re-save it with bert-ticket")
        layer[key] = torch.zeros(full, dtype=dtype)
        return
    if list(small.shape) != want:
        raise UserError(f"encoder.layer.{i}.{key} is {list(small.shape)}, the stored sizes say {want}: the "
                        f"folder is not a consistent compacted model; re-save it with bert-ticket")
    big = torch.zeros(full, dtype=small.dtype)
    big.index_copy_(dim, index, small)
    layer[key] = big


def _load_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{f} cannot be read as safetensors ({exc}): the model folder is corrupt; "
                            f"re-save the model") from None
    return state


def _check_dest(source: Path, dest: Path, overwrite: bool) -> None:
    src, dst = source.resolve(), dest.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise UserError(f"export destination {dest} overlaps the model folder {source}: choose another folder")
    if dest.exists() and not dest.is_dir():
        raise UserError(f"export destination {dest} is a file: choose a folder")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise UserError(f"export destination {dest} is not empty: choose a new folder or remove it")


def _move_into_place(tmp: Path, dest: Path) -> None:
    if dest.is_dir() and any(dest.iterdir()):  # overwrite: swap, then drop the old folder
        old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, dest)  # an empty target folder is replaced atomically too
