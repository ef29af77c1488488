"""Physical compaction of a structured ticket: a smaller BERT with only the kept heads and
FFN neurons (EarlyBERT, super tickets).  transformers 5 has no ``prune_heads``, so we slice.

Per layer: query/key/value keep the rows of the kept heads, the attention output keeps the
matching columns; the intermediate layer keeps the rows of the kept neurons, the FFN output
the matching columns.  A layer may keep no head (its attention adds only the output bias) or
no neuron (its output projections still add their biases).  A layer whose whole FFN
sub-layer is removed (``ffn_layers`` False: super tickets' unit) has no intermediate and no
FFN output projection at all: the FFN adds exactly zero (no bias), and the residual and the
LayerNorm stay, so the layer computes ``LayerNorm(attention_output)``.  The per-layer sizes
are stored in the config (``bert_ticket_compact``), so :func:`load_compact` rebuilds the same
shapes and loads the safetensors weights; plain ``from_pretrained`` cannot (it builds
full-size layers; :mod:`.export` writes a padded copy that it can load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bert_ticket_cli.errors import UserError

CONFIG_KEY = "bert_ticket_compact"


class _NoHeads(nn.Module):
    """Stands in for a self-attention with every head removed: an empty context."""

    def __init__(self, head_size: int):
        super().__init__()
        self.attention_head_size = head_size
        self.num_attention_heads = 0
        self.all_head_size = 0

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0), None


class _NoIntermediate(nn.Module):
    """Stands in for the intermediate layer of a removed FFN sub-layer: no activations."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.new_zeros(*hidden_states.shape[:-1], 0)


class _ZeroProjection(nn.Module):
    """Stands in for the FFN output projection of a removed FFN sub-layer: exactly zero, no bias."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.out_features = hidden_size
        self.in_features = 0

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.new_zeros(*hidden_states.shape[:-1], self.out_features)


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping ``index`` along ``dim`` (0: outputs, 1: inputs)."""
    w = linear.weight.detach().index_select(dim, index.to(linear.weight.device)).clone()
    out_f, in_f = w.shape
    new = nn.Linear(in_f, out_f, bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if linear.bias is not None:
            b = linear.bias.detach()
            new.bias.copy_(b.index_select(0, index.to(b.device)) if dim == 0 else b)
    return new


def compact_(model: nn.Module, heads: torch.Tensor, neurons: torch.Tensor,
             ffn_layers: torch.Tensor | None = None) -> nn.Module:
    """Slice ``model`` in place to the kept ``heads`` [layers, heads] and ``neurons``
    [layers, intermediate] (bool, True = kept); ``ffn_layers`` [layers] (False = the whole FFN
    sub-layer removed, bias included; its neurons must all be removed too); records the sizes
    in ``model.config``."""
    if compact_sizes(model.config) is not None:
        raise UserError("this model is already compacted: compact the full model once")
    base = getattr(model, "base_model", model)
    layers = base.encoder.layer
    heads, neurons = heads.bool().cpu(), neurons.bool().cpu()
    if heads.shape[0] != len(layers) or neurons.shape[0] != len(layers):
        raise UserError(f"structured ticket has {heads.shape[0]} layers, the model {len(layers)}: "
                        f"use a ticket found on the same architecture")
    if ffn_layers is not None:
        ffn_layers = ffn_layers.bool().cpu().reshape(-1)
        if ffn_layers.numel() != len(layers):
            raise UserError(f"structured ticket has {ffn_layers.numel()} FFN layers, the model {len(layers)}: "
                            f"use a ticket found on the same architecture")
        if bool(neurons[~ffn_layers].any()):
            raise UserError("structured ticket keeps neurons of an FFN layer it removes: a removed FFN layer "
                            "keeps no neuron")
    head_counts, ffn_sizes, removed = [], [], []
    for i, layer in enumerate(layers):
        att = layer.attention.self
        n_heads, head_size = att.num_attention_heads, att.attention_head_size
        if heads.shape[1] != n_heads or neurons.shape[1] != layer.intermediate.dense.out_features:
            raise UserError(f"structured ticket shapes {tuple(heads.shape)} / {tuple(neurons.shape)} do not fit "
                            f"layer {i} ({n_heads} heads, {layer.intermediate.dense.out_features} neurons)")
        kept = torch.nonzero(heads[i]).flatten()
        rows = (kept[:, None] * head_size + torch.arange(head_size)).flatten()
        if kept.numel() == 0:
            layer.attention.self = _NoHeads(head_size)
        else:
            att.query = _slice_linear(att.query, rows, 0)
            att.key = _slice_linear(att.key, rows, 0)
            att.value = _slice_linear(att.value, rows, 0)
            att.num_attention_heads = int(kept.numel())
            att.all_head_size = int(rows.numel())
        layer.attention.output.dense = _slice_linear(layer.attention.output.dense, rows, 1)
        keep_n = torch.nonzero(neurons[i]).flatten()
        if ffn_layers is not None and not bool(ffn_layers[i]):
            layer.intermediate = _NoIntermediate()
            layer.output.dense = _ZeroProjection(layer.output.dense.out_features)
            removed.append(i)
        else:
            layer.intermediate.dense = _slice_linear(layer.intermediate.dense, keep_n, 0)
            layer.output.dense = _slice_linear(layer.output.dense, keep_n, 1)
        head_counts.append(int(kept.numel()))
        ffn_sizes.append(int(keep_n.numel()))
    sizes: dict[str, list[int]] = {"heads": head_counts, "intermediate": ffn_sizes}
    if removed:
        sizes["ffn_removed"] = removed
    setattr(model.config, CONFIG_KEY, sizes)
    return model


def encoder_layer_params(model: nn.Module) -> int:
    """Parameters of the encoder layers (attention, FFN, their LayerNorms): what a structured
    ticket shrinks."""
    return sum(p.numel() for p in getattr(model, "base_model", model).encoder.layer.parameters())


def structure_params(model_class: Any, config: Any, heads: torch.Tensor, neurons: torch.Tensor,
                     ffn_layers: torch.Tensor | None = None) -> tuple[int, int]:
    """``(all parameters, encoder-layer parameters)`` of ``model_class(config)`` compacted to the
    structure, counted on the meta device (no memory, no weights)."""
    import copy

    config = copy.deepcopy(config)
    setattr(config, CONFIG_KEY, None)
    with torch.device("meta"):
        model = model_class(config)
    compact_(model, heads, neurons, ffn_layers)  # the index tensors stay on the CPU
    return sum(p.numel() for p in model.parameters()), encoder_layer_params(model)


def compact_sizes(config: Any) -> dict[str, list[int]] | None:
    sizes = getattr(config, CONFIG_KEY, None)
    return dict(sizes) if sizes else None


def load_compact(model_class: Any, path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a compacted model directory: full-size skeleton from its config, sliced to the
    stored per-layer sizes (keeping the first k heads / neurons: the order was fixed when it
    was saved), then the saved weights."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    path = Path(path)
    config = AutoConfig.from_pretrained(path, **kwargs)
    sizes = compact_sizes(config)
    if sizes is None:
        raise UserError(f"{path} is not a compacted model (no {CONFIG_KEY} in config.json)")
    model = model_class.from_config(config) if hasattr(model_class, "from_config") else model_class(config)
    n_layers = config.num_hidden_layers
    heads = torch.zeros(n_layers, config.num_attention_heads, dtype=torch.bool)
    neurons = torch.zeros(n_layers, config.intermediate_size, dtype=torch.bool)
    for i, (h, n) in enumerate(zip(sizes["heads"], sizes["intermediate"])):
        heads[i, :h] = True
        neurons[i, :n] = True
    ffn_layers = None
    if sizes.get("ffn_removed"):
        ffn_layers = torch.ones(n_layers, dtype=torch.bool)
        ffn_layers[list(sizes["ffn_removed"])] = False
    setattr(config, CONFIG_KEY, None)  # the skeleton is full-size until sliced
    compact_(model, heads, neurons, ffn_layers)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise UserError(f"no safetensors weights in {path}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The encoder must match exactly.  Outside it, a head may differ as from_pretrained allows:
    # a compact pre-trained MLM model loads into a classifier (the MLM head unused; the task head
    # and pooler freshly initialised), but a head the file has *part* of is an error.  Tied
    # weights (an MLM decoder) may be absent from the file.
    base = getattr(model, "base_model_prefix", "bert") + "."

    def in_encoder(name: str) -> bool:
        return name.startswith(base) and ".pooler." not in name

    def head_of(name: str) -> str:
        return base + "pooler." if name.startswith(base) else name.split(".")[0] + "."

    real_missing = [m for m in missing if not m.endswith(("decoder.weight", "decoder.bias"))
                    and (in_encoder(m) or any(k.startswith(head_of(m)) for k in state))]
    unexpected = [u for u in unexpected if in_encoder(u)]
    if real_missing or unexpected:
        raise UserError(f"{path}: weights do not match the stored sizes "
                        f"(missing {real_missing[:3]}, unexpected {list(unexpected)[:3]})")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model
