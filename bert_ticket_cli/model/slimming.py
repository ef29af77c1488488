"""EarlyBERT's slimming coefficients: one learnable scale per attention head and per FFN neuron.

Chen et al. (ACL 2021) put a coefficient ``c`` (initialised to 1.0) on every self-attention
head, scaling that head's output (the context vector, after dropout on the attention
probabilities), and on every intermediate FFN neuron, scaling its activation after GELU; the
search stage trains them with an L1 penalty, and the heads and neurons with the smallest
``|c|`` are pruned.

Both scales act on the *input* of a linear layer, so they are applied there, by forward
pre-hooks, and the attention itself is not touched:

- head ``h`` of a layer: ``context[..., h*d:(h+1)*d] * c_h`` is the input of the attention
  output projection (``BertSelfOutput``).  ``c_h * (dropout(P_h) V_h)`` is exactly the paper's
  scaled head output, so this works with every attention implementation (SDPA, eager,
  flash): no fallback to eager attention is ever needed;
- neuron ``j``: ``gelu(x W_1 + b_1)_j * c_j`` is the input of the FFN output projection
  (``BertOutput``).

The coefficients are ordinary parameters of the model (``...attention.output.slim_heads``,
``...output.slim_neurons``), so the optimizer, DDP / DeepSpeed, checkpoints and resume treat
them like every other weight; they are 1-D, so the engine gives them no weight decay (the L1
term is their only regulariser).  :meth:`Slimming.remove` takes them out again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

HEADS_PARAM = "slim_heads"
NEURONS_PARAM = "slim_neurons"


def _layers(model: nn.Module) -> Any:
    base = getattr(model, "base_model", model)
    return base.encoder.layer


def _scale_heads(module: nn.Module, args: tuple) -> tuple:
    context, *rest = args
    coef = getattr(module, HEADS_PARAM)
    shape = context.shape
    scaled = (context.view(*shape[:-1], coef.numel(), -1) * coef.to(context.dtype)[:, None]).view(shape)
    return (scaled, *rest)


def _scale_neurons(module: nn.Module, args: tuple) -> tuple:
    hidden, *rest = args
    return (hidden * getattr(module, NEURONS_PARAM).to(hidden.dtype), *rest)


class Slimming:
    """Adds the coefficients to ``model`` (in place) and gives their L1 penalty and scores.

    Call before the model is handed to the engine (the optimizer must see the coefficients).
    """

    def __init__(self, model: nn.Module, *, l1_heads: float = 1e-4, l1_neurons: float = 1e-4):
        self.l1_heads, self.l1_neurons = float(l1_heads), float(l1_neurons)
        self.heads: list[nn.Parameter] = []
        self.neurons: list[nn.Parameter] = []
        self._handles = []
        self._modules: list[tuple[nn.Module, str]] = []
        for layer in _layers(model):
            att_out, ffn_out = layer.attention.output, layer.output
            n_heads = layer.attention.self.num_attention_heads
            n_neurons = layer.intermediate.dense.out_features
            device, dtype = ffn_out.dense.weight.device, ffn_out.dense.weight.dtype
            for module, name, size, hook, store in ((att_out, HEADS_PARAM, n_heads, _scale_heads, self.heads),
                                                    (ffn_out, NEURONS_PARAM, n_neurons, _scale_neurons,
                                                     self.neurons)):
                if hasattr(module, name):
                    raise ValueError("this model already has slimming coefficients")
                p = nn.Parameter(torch.ones(size, device=device, dtype=dtype))
                module.register_parameter(name, p)
                store.append(p)
                self._handles.append(module.register_forward_pre_hook(hook))
                self._modules.append((module, name))

    def penalty(self) -> torch.Tensor:
        """``l1_heads * sum|c_head| + l1_neurons * sum|c_neuron|`` (added to the task loss)."""
        heads = torch.stack([p.abs().sum() for p in self.heads]).sum()
        neurons = torch.stack([p.abs().sum() for p in self.neurons]).sum()
        return self.l1_heads * heads.float() + self.l1_neurons * neurons.float()

    @torch.no_grad()
    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``|c|`` as float32 CPU tensors: heads ``[layers, heads]``, neurons ``[layers, intermediate]``."""
        heads = torch.stack([p.detach().float().abs().cpu() for p in self.heads])
        neurons = torch.stack([p.detach().float().abs().cpu() for p in self.neurons])
        return heads, neurons

    def remove(self) -> None:
        """Take the coefficients and hooks out of the model (it computes what it did before
        they were added only while every coefficient is still 1)."""
        for handle in self._handles:
            handle.remove()
        for module, name in self._modules:
            delattr(module, name)
        self._handles, self._modules = [], []
