"""A multi-task BERT (MT-DNN style) whose tasks share one encoder, each seen through its own
structured ticket (Liang et al., ACL 2021, "ticket sharing").

:class:`MultiTaskBert` holds the shared encoder (a ``BertModel`` with its pooler), one head per
task (dropout + a linear layer on the pooled ``[CLS]``: classification with cross-entropy,
regression (one output) with mean squared error, as ``BertForSequenceClassification``), and
per task the masks of its ticket as non-persistent buffers.  Every batch holds one task (its
``task`` tensor); :meth:`MultiTaskBert.forward` copies that task's masks into the gates before
the encoder runs, so the batch sees exactly the task's subnetwork:

- a head's gate multiplies its context vector (the input of the attention-output projection);
- a neuron's gate multiplies its activation (the input of the FFN output projection);
- a whole FFN sub-layer's gate multiplies the FFN output (after its bias).

Masks are multiplications, not skipped modules: every encoder weight is in every step's graph
(a masked weight's gradient is exactly zero), so DDP sees every encoder parameter at every
step.  Only the other tasks' heads are idle in a step; the engine runs DDP with
``find_unused_parameters`` for this model, their gradients stay ``None`` and AdamW leaves them
(and their weight decay) alone, as a single-task run would.  A task without a ticket (dense)
has every gate at 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

SPEC_FILE = "multitask.json"
HEADS_FILE = "heads.safetensors"
ENCODER_DIR = "encoder"
TICKETS_DIR = "tickets"


def _head_hook(model: "MultiTaskBert", i: int, n_heads: int):
    def hook(_m: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        shape = x.shape
        g = model.gate_heads[i].to(x.dtype)
        return ((x.view(*shape[:-1], n_heads, -1) * g[:, None]).view(shape), *rest)

    return hook


def _neuron_hook(model: "MultiTaskBert", i: int):
    def hook(_m: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        return (x * model.gate_neurons[i].to(x.dtype), *rest)

    return hook


def _ffn_hook(model: "MultiTaskBert", i: int):
    def hook(_m: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out * model.gate_ffn[i].to(out.dtype)

    return hook


class MultiTaskBert(nn.Module):
    """Shared encoder + one head per task + one ticket per task (see the module docstring).

    ``tasks``: ``{name: num_labels}`` in a fixed order (task id = position; 1 label = regression);
    ``tickets``: ``{name: (heads [L,H], neurons [L,I], ffn_layers [L] or None)}`` for the tasks
    that have one."""

    def __init__(self, encoder: nn.Module, tasks: dict[str, int], tickets: dict[str, Any] | None = None,
                 dropout: float | None = None):
        super().__init__()
        self.bert = encoder
        config = encoder.config
        self.config = config
        self.task_names = list(tasks)
        self.num_labels = dict(tasks)
        p = config.hidden_dropout_prob if dropout is None else dropout
        self.dropout = nn.Dropout(getattr(config, "classifier_dropout", None) or p)
        self.heads = nn.ModuleDict({name: nn.Linear(config.hidden_size, n) for name, n in tasks.items()})
        for head in self.heads.values():  # BERT's initialiser for the new heads
            head.weight.data.normal_(mean=0.0, std=config.initializer_range)
            head.bias.data.zero_()
        n_layers, n_heads, width = config.num_hidden_layers, config.num_attention_heads, config.intermediate_size
        self.tickets = {}
        for name in self.task_names:
            heads, neurons, layers = (tickets or {}).get(name) or (None, None, None)
            if heads is not None:
                self.tickets[name] = True
            self.register_buffer(f"mask_heads_{name}", _float(heads, (n_layers, n_heads)), persistent=False)
            self.register_buffer(f"mask_neurons_{name}", _float(neurons, (n_layers, width)), persistent=False)
            self.register_buffer(f"mask_ffn_{name}", _float(layers, (n_layers,)), persistent=False)
        self.register_buffer("gate_heads", torch.ones(n_layers, n_heads), persistent=False)
        self.register_buffer("gate_neurons", torch.ones(n_layers, width), persistent=False)
        self.register_buffer("gate_ffn", torch.ones(n_layers), persistent=False)
        for i, layer in enumerate(encoder.encoder.layer):
            layer.attention.output.register_forward_pre_hook(_head_hook(self, i, n_heads))
            layer.output.register_forward_pre_hook(_neuron_hook(self, i))
            layer.output.dense.register_forward_hook(_ffn_hook(self, i))

    # ---- masks ----

    def use_task(self, name: str) -> None:
        """Set the gates to ``name``'s ticket (every gate 1 for a dense task)."""
        with torch.no_grad():
            self.gate_heads.copy_(getattr(self, f"mask_heads_{name}"))
            self.gate_neurons.copy_(getattr(self, f"mask_neurons_{name}"))
            self.gate_ffn.copy_(getattr(self, f"mask_ffn_{name}"))

    def kept_fraction(self, name: str) -> float:
        """Fraction of the encoder layers' parameters ``name``'s ticket keeps (1.0 dense)."""
        from bert_ticket_cli.model.compact import encoder_layer_params, structure_params

        if name not in self.tickets:
            return 1.0
        heads = getattr(self, f"mask_heads_{name}").bool().cpu()
        neurons = getattr(self, f"mask_neurons_{name}").bool().cpu()
        layers = getattr(self, f"mask_ffn_{name}").bool().cpu()
        from transformers import BertModel

        _, kept = structure_params(BertModel, self.config, heads, neurons, None if layers.all() else layers)
        return kept / encoder_layer_params(self.bert)

    # ---- forward ----

    def forward(self, task: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None, **_: Any):
        from transformers.modeling_outputs import SequenceClassifierOutput

        name = self.task_names[int(task.reshape(-1)[0])]
        self.use_task(name)
        pooled = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                           token_type_ids=token_type_ids).pooler_output
        logits = self.heads[name](self.dropout(pooled))
        loss = None
        if labels is not None:
            if self.num_labels[name] == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits.float(), labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)

    # ---- files ----

    def save(self, dest: str | Path, tokenizer: Any = None, tickets: dict[str, Any] | None = None,
             spec: dict[str, Any] | None = None) -> Path:
        """``dest/encoder/`` (the shared encoder, HF format), ``heads.safetensors``,
        ``tickets/<task>/`` (each task's ticket) and ``multitask.json`` (tasks, labels, what
        each task was trained with), written to a temporary folder and renamed."""
        import os
        import shutil
        import uuid

        from safetensors.torch import save_file

        dest = Path(dest)
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            self.bert.save_pretrained(tmp / ENCODER_DIR, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / ENCODER_DIR)
            save_file({k: v.detach().cpu().contiguous() for k, v in self.heads.state_dict().items()},
                      str(tmp / HEADS_FILE))
            for name, ticket in (tickets or {}).items():
                ticket.save(tmp / TICKETS_DIR / name)
            (tmp / SPEC_FILE).write_text(json.dumps({
                "format": "bert-ticket/multitask", "tasks": self.num_labels,
                "tickets": sorted(tickets or {}), **(spec or {})}, indent=2, sort_keys=True) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest


def _float(mask: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape)
    if tuple(mask.shape) != shape:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit {shape}")
    return mask.float().clone()


def is_multitask_dir(path: str | Path) -> bool:
    return (Path(path) / SPEC_FILE).is_file()


def load_multitask(path: str | Path) -> tuple[MultiTaskBert, dict[str, Any], dict[str, Any]]:
    """A saved multi-task model: ``(model, spec, {task: Ticket})``."""
    from safetensors.torch import load_file
    from transformers import BertModel

    from bert_ticket_cli.errors import UserError
    from bert_ticket_cli.sparsity.ticket import Ticket

    path = Path(path)
    try:
        spec = json.loads((path / SPEC_FILE).read_text())
        tasks = {str(k): int(v) for k, v in spec["tasks"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path / SPEC_FILE} is not a multi-task model record: re-save the model") from None
    encoder = BertModel.from_pretrained(path / ENCODER_DIR)
    tickets = {name: Ticket.load(path / TICKETS_DIR / name) for name in spec.get("tickets", [])}
    model = MultiTaskBert(encoder, tasks, {n: t.structure for n, t in tickets.items()})
    state = load_file(str(path / HEADS_FILE))
    missing, unexpected = model.heads.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{path / HEADS_FILE} does not match the tasks {list(tasks)}: re-save the model")
    return model, spec, tickets
