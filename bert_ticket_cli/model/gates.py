"""Gates on attention heads and FFN units, put in by hooks: the importance probe of super
tickets and the masked (not compacted) form of a structured ticket.

transformers 5 has no ``head_mask``, so a head's gate multiplies its slice of the *input of the
attention-output projection* (the head's context vector ``softmax(QK^T)V``, as in
:mod:`.slimming`), with every attention kernel (SDPA stays on).  An FFN unit is either

- a whole FFN sub-layer (``ffn_unit="layer"``, the paper's unit): its gate multiplies the
  *output* of the FFN output projection (after its bias, before the residual and the
  LayerNorm), so gate 0 leaves ``LayerNorm(attention_output)``; or
- one intermediate neuron (``ffn_unit="neuron"``): its gate multiplies the neuron's activation,
  the input of the FFN output projection (the bias stays).

The gates are plain tensors held here, not parameters of the model: nothing in the state dict,
the optimizer or a checkpoint changes.

**Importance** (:class:`ImportanceProbe`, Michel et al., NeurIPS 2019; Liang et al., ACL 2021):
with every gate at 1, ``dL/dxi_h = sum over the batch's tokens of <ctx_h, dL/dctx_h>`` is the
first-order Taylor estimate of the loss change when head ``h`` is removed (likewise ``o_l`` for
an FFN layer, ``a_j`` for a neuron).  After each batch's backward, :meth:`ImportanceProbe.accumulate`
adds ``|dL/dxi|`` to the scores and clears the gradient, so every batch counts once (the
reference code never clears it: its later batches add the running sum again).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

FFN_UNITS = ("layer", "neuron")


def _layers(model: nn.Module) -> Any:
    return getattr(model, "base_model", model).encoder.layer


def _input_hook(gate: torch.Tensor, per: int | None):
    """A forward pre-hook scaling the first input by ``gate`` (``per``: units of equal width
    along the last dimension, i.e. heads; None: one gate per feature, i.e. neurons)."""

    def hook(_module: nn.Module, args: tuple) -> tuple:
        x, *rest = args
        g = gate.to(x.dtype)
        if per is not None:
            shape = x.shape
            x = (x.view(*shape[:-1], per, -1) * g[:, None]).view(shape)
        else:
            x = x * g
        return (x, *rest)

    return hook


def _output_hook(gate: torch.Tensor):
    """A forward hook scaling a module's output by the scalar ``gate``."""

    def hook(_module: nn.Module, _args: tuple, out: torch.Tensor) -> torch.Tensor:
        return out * gate.to(out.dtype)

    return hook


class UnitGates:
    """One gate per attention head (``[layers, heads]``) and per FFN unit (``[layers]`` or
    ``[layers, intermediate]``), hooked into ``model`` in place; :meth:`remove` takes them out.

    ``heads`` / ``ffn`` give the gate values (e.g. a ticket's 0/1 masks); default all ones.
    ``requires_grad`` makes them leaves of the autograd graph (the importance probe)."""

    def __init__(self, model: nn.Module, *, ffn_unit: str = "layer", heads: torch.Tensor | None = None,
                 ffn: torch.Tensor | None = None, requires_grad: bool = False):
        if ffn_unit not in FFN_UNITS:
            raise ValueError(f"ffn_unit must be layer or neuron, got {ffn_unit!r}")
        layers = _layers(model)
        self.ffn_unit = ffn_unit
        self.heads: list[torch.Tensor] = []
        self.ffn: list[torch.Tensor] = []
        self._handles: list[Any] = []
        for i, layer in enumerate(layers):
            att = layer.attention.self
            device = layer.output.dense.weight.device
            n_heads = att.num_attention_heads
            h = torch.ones(n_heads) if heads is None else heads[i].float()
            h = h.to(device).detach().requires_grad_(requires_grad)
            self.heads.append(h)
            self._handles.append(layer.attention.output.register_forward_pre_hook(_input_hook(h, n_heads)))
            if ffn_unit == "layer":
                f = torch.ones(()) if ffn is None else ffn[i].float().reshape(())
                f = f.to(device).detach().requires_grad_(requires_grad)
                self._handles.append(layer.output.dense.register_forward_hook(_output_hook(f)))
            else:
                width = layer.output.dense.in_features
                f = torch.ones(width) if ffn is None else ffn[i].float()
                f = f.to(device).detach().requires_grad_(requires_grad)
                self._handles.append(layer.output.register_forward_pre_hook(_input_hook(f, None)))
            self.ffn.append(f)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class ImportanceProbe(UnitGates):
    """Gates at 1 that collect ``sum over batches of |dL/dxi|`` (see the module docstring).

    Per batch: ``loss.backward()`` then :meth:`accumulate`.  The model's own parameters may
    (and for speed should) have ``requires_grad=False``: only the gates need gradients."""

    def __init__(self, model: nn.Module, *, ffn_unit: str = "layer"):
        super().__init__(model, ffn_unit=ffn_unit, requires_grad=True)
        self.head_sums = torch.zeros(len(self.heads), self.heads[0].numel(), dtype=torch.float64)
        ffn_shape = (len(self.ffn),) if ffn_unit == "layer" else (len(self.ffn), self.ffn[0].numel())
        self.ffn_sums = torch.zeros(ffn_shape, dtype=torch.float64)
        self.batches = 0

    @torch.no_grad()
    def accumulate(self) -> None:
        """Add this batch's ``|dL/dxi|`` to the scores and clear the gates' gradients."""
        for store, gates in ((self.head_sums, self.heads), (self.ffn_sums, self.ffn)):
            for i, gate in enumerate(gates):
                if gate.grad is not None:
                    store[i] += gate.grad.detach().abs().double().cpu()
                    gate.grad = None
        self.batches += 1

    def load(self, heads: torch.Tensor, ffn: torch.Tensor, batches: int) -> None:
        """Continue from saved partial sums (a resumed pass)."""
        self.head_sums = heads.double().clone()
        self.ffn_sums = ffn.double().clone()
        self.batches = int(batches)

    def scores(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(heads [layers, heads], ffn [layers] or [layers, intermediate])`` as float64 CPU tensors."""
        return self.head_sums.clone(), self.ffn_sums.clone()


def mask_structure(model: nn.Module, heads: torch.Tensor, neurons: torch.Tensor,
                   ffn_layers: torch.Tensor | None = None) -> UnitGates:
    """The masked (full-size) form of a structured ticket: removed heads and neurons gated to 0,
    and with ``ffn_layers`` (False = the FFN sub-layer removed) the removed layers' FFN output
    (bias included) gated to 0.  What :func:`.compact.compact_` computes, without slicing."""
    gates = UnitGates(model, ffn_unit="neuron", heads=heads, ffn=neurons)
    if ffn_layers is not None:
        layer_gates = UnitGates(model, ffn_unit="layer", heads=torch.ones_like(heads, dtype=torch.float),
                                ffn=ffn_layers)
        gates._handles.extend(layer_gates._handles)
    return gates
