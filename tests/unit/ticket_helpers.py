"""Test helper: zero the pruned weights of a model in place, as a ticket says (what training
does through :class:`~bert_ticket_cli.sparsity.enforce.MaskEnforcer` and, for a structured
ticket, through compaction).  The tests build their reference models with it."""

from __future__ import annotations

import torch
from torch import nn

from bert_ticket_cli.sparsity.prunable import base_model


@torch.no_grad()
def apply_ticket(ticket, model: nn.Module) -> None:
    """Set the pruned weights of ``model`` to exactly zero, in place (after ``check_fits``).

    Unstructured: every masked weight (a mask the model lacks, the pooler, is skipped).
    Structured: a pruned head's query/key/value rows and biases and its attention-output
    columns; a pruned neuron's intermediate row and bias and its output column.
    """
    ticket.check_fits(model)
    base = base_model(model)
    params = dict(base.named_parameters())
    for name, mask in ticket.masks.items():
        param = params.get(name)
        if param is not None:
            param.masked_fill_(~mask.to(param.device), 0)
    if ticket.heads is None and ticket.neurons is None:
        return
    head_dim = int(model.config.hidden_size) // int(model.config.num_attention_heads)
    for i, layer in enumerate(base.encoder.layer):
        if ticket.heads is not None:
            pruned = torch.nonzero(~ticket.heads[i]).flatten()
            if pruned.numel():
                rows = (pruned[:, None] * head_dim + torch.arange(head_dim)).flatten()
                attn = layer.attention
                for lin in (attn.self.query, attn.self.key, attn.self.value):
                    lin.weight[rows] = 0
                    if lin.bias is not None:
                        lin.bias[rows] = 0
                attn.output.dense.weight[:, rows] = 0
        if ticket.neurons is not None:
            pruned = torch.nonzero(~ticket.neurons[i]).flatten()
            if pruned.numel():
                inter, out = layer.intermediate.dense, layer.output.dense
                inter.weight[pruned] = 0
                if inter.bias is not None:
                    inter.bias[pruned] = 0
                out.weight[:, pruned] = 0
