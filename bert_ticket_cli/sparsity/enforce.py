"""Keep pruned weights at exactly zero while a ticket trains.

:class:`MaskEnforcer` plugs into :func:`bert_ticket_cli.engine.loop.fit` as a ``StepHooks``
(``fit(..., hooks=[enforcer])``) and needs nothing from Accelerate.  The invariant (DESIGN,
"Mask invariants"): masked weights are exactly zero after every optimizer step, under AdamW with
weight decay, mixed precision, gradient accumulation, DDP and DeepSpeed ZeRO-1/2.  Three parts:

1. ``apply_weights()`` zeroes the pruned weights once, before training (after the rewind
   weights are loaded, before ``fit`` prepares the model).
2. The gradients of pruned weights are made exactly zero *during backward*, by a
   ``register_post_accumulate_grad_hook`` on each masked parameter that multiplies its
   ``.grad`` in place by the mask.  Then AdamW's moments stay exactly zero at pruned positions
   (``exp_avg = b1*0 + (1-b1)*0``), its update there is ``lr * 0 / (sqrt(0) + eps) = 0`` and
   decoupled weight decay keeps ``0 * (1 - lr*wd) = 0``: the weights never move.
3. ``after_step`` multiplies the weights by the mask again: cheap insurance against anything
   that writes the weights outside that arithmetic.

Why the gradient mask lives in a backward hook and not in ``before_step`` (the engine's
"gradients ready, not yet applied" call):

* DeepSpeed (any ZeRO stage) through Accelerate runs ``engine.step()`` *inside*
  ``accelerator.backward`` at the accumulation boundary, so by the time ``fit`` calls
  ``before_step`` the optimizer has already stepped.  And ZeRO-2 moves each gradient into its
  partitioned buffers from its own post-accumulate-grad hook during backward, setting
  ``param.grad = None``: there is no ``.grad`` left to mask afterwards.  Our hook is registered
  on the same parameters and is put first in their hook order (it is registered before
  ``accelerator.prepare`` creates DeepSpeed's, and reordered to the front if it was not), so
  DeepSpeed only ever sees masked gradients.
* DDP: post-accumulate-grad hooks run inside autograd's AccumulateGrad node, before DDP's
  reducer hook (a post-hook of that node; under compiled autograd a post-accumulate-grad hook
  registered when DDP wraps the model, i.e. after ours) copies the gradient into its bucket
  and before the bucket is all-reduced.  Every rank contributes masked gradients, so the
  average is masked too.  (Masking after the all-reduce would also be right by linearity, but
  this way there is one code path for every engine.)
* Gradient accumulation: the hook fires after every micro-batch's accumulation into ``.grad``,
  so the running sum is masked at every point, whoever reads it.
* Mixed precision: the hook sees the gradient in the parameter's dtype (fp32 under Accelerate
  autocast, bf16 under DeepSpeed bf16); the mask is cached in that dtype.  An fp16 loss scale
  multiplies zeros, which stay zeros.

What remains for ``before_step``: gradients that did not pass through autograd's
accumulation since the last step (assigned directly, or produced by code that bypasses
AccumulateGrad).  A per-parameter "hook ran" flag finds them for the price of a Python loop over
the masked parameters, and they are masked in one ``torch._foreach_mul_``; in the usual case
there is none and ``before_step`` does no tensor work.

Speed: each masked tensor is multiplied in place by a mask cached as a 0/1 tensor of the same
dtype and device (created lazily, on first use after the model moved: Accelerate moves it in
``prepare``).  On CPU a float ``mul_`` is ~4x faster than a bool-mask ``mul_`` and ~15x faster
than ``masked_fill_`` / ``torch.where``, whose bool kernels are not vectorised there.  The price
is one mask-sized tensor per masked parameter (the size of the weights themselves), and
``0 * inf = NaN``: a gradient entry that overflowed at a pruned position would turn into NaN.
Such an overflow means training has diverged already (fp16 steps with inf/NaN gradients are
skipped by the loss scaler; ``fit`` stops on a non-finite loss), and ``check()`` counts a NaN
as a violation, so it cannot pass unnoticed.

Parameters are resolved once, by name, on the unwrapped model and kept as references: DDP's
``module.`` prefix, DeepSpeed's engine and device moves (which keep the Parameter objects) do
not matter afterwards.  Not supported: ZeRO-3 and FSDP, which replace the parameters' storage
with shards.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn

from bert_ticket_cli.errors import UserError


def _unwrap(model: nn.Module) -> nn.Module:
    """The model under DDP / DataParallel / torch.compile / DeepSpeed wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if not isinstance(inner, nn.Module):
            wrapper = isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) or (
                type(model).__name__ == "DeepSpeedEngine"
            )
            inner = getattr(model, "module", None) if wrapper else None
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _base_prefix(model: nn.Module) -> str:
    """``"bert."`` for a task model whose base model sits under ``base_model_prefix``; ``""``
    when ``model`` is the base model itself."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    return f"{prefix}." if prefix and isinstance(getattr(model, prefix, None), nn.Module) else ""


def _keep_mask(name: str, mask, param: nn.Parameter) -> torch.Tensor:
    """The mask as a bool tensor on the CPU (True = kept), checked against the parameter."""
    if not isinstance(mask, torch.Tensor):
        raise UserError(f"mask for {name} is a {type(mask).__name__}, not a tensor: masks map names to 0/1 tensors")
    if tuple(mask.shape) != tuple(param.shape):
        raise UserError(
            f"mask for {name} has shape {tuple(mask.shape)} but the model's parameter has shape "
            f"{tuple(param.shape)}: the ticket was made for a different model; prune this model or pick its ticket"
        )
    mask = mask.detach().to("cpu")
    if mask.dtype == torch.bool:
        return mask.clone()
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise UserError(f"mask for {name} has values other than 0 and 1: a ticket mask must be binary (1 = keep)")
    return mask != 0


class MaskEnforcer:
    """Keeps pruned weights at exactly zero through training (a ``StepHooks`` for ``fit``).

    ``masks`` maps parameter names relative to the base BertModel (``encoder.layer.0.attention.
    self.query.weight``; the task model's ``base_model_prefix + "."`` stripped) to 0/1 or bool
    tensors of the parameter's shape, 1/True = kept.  Full names (``bert.encoder...``) are
    accepted too.  Masks that keep everything cost nothing (they are dropped).

    Build it on the plain model *before* ``fit`` (i.e. before ``accelerator.prepare``), call
    :meth:`apply_weights` once, then pass it in ``hooks``.  :meth:`remove` detaches its hooks.
    """

    def __init__(self, model: nn.Module, masks: Mapping[str, torch.Tensor]):
        base = _unwrap(model)
        by_name = dict(base.named_parameters(remove_duplicate=False))
        prefix = _base_prefix(base)
        merged: dict[int, tuple[str, nn.Parameter, torch.Tensor]] = {}
        for name, mask in masks.items():
            param = by_name.get(prefix + name)
            if param is None:
                param = by_name.get(name)
            if param is None:
                example = next((n[len(prefix):] for n in by_name if n.startswith(prefix) and n.endswith(".weight")),
                               next(iter(by_name), "?"))
                raise UserError(
                    f"mask names parameter '{name}', which the model does not have (names are relative to the "
                    f"base model, e.g. '{example}'): the ticket was made for a different model"
                )
            keep = _keep_mask(name, mask, param)
            if id(param) in merged:  # two names of one tied parameter: prune the union
                first, _, other = merged[id(param)]
                keep = keep & other
                name = first
            merged[id(param)] = (name, param, keep)

        self.names: list[str] = []
        self._params: list[nn.Parameter] = []
        # One 0/1 mask per parameter; starts as a CPU bool tensor and is replaced, on first use,
        # by a copy in the dtype/device of the tensor it multiplies (see _mask_for).
        self._masks: list[torch.Tensor] = []
        self.n_pruned = 0  # pruned entries over all masked parameters
        self.n_masked = 0  # entries of the masked parameters (kept + pruned)
        for name, param, keep in merged.values():
            pruned = keep.numel() - int(keep.sum())
            if pruned == 0:
                continue
            self.names.append(name)
            self._params.append(param)
            self._masks.append(keep)
            self.n_pruned += pruned
            self.n_masked += keep.numel()
        self._fresh = [False] * len(self._params)  # hook masked this .grad since the last step
        self._handles = []
        for i, param in enumerate(self._params):
            if param.requires_grad:
                self._handles.append(self._register_first(param, self._grad_hook(i)))

    # ---- the StepHooks interface -------------------------------------------------------

    def before_step(self, model: nn.Module | None = None) -> None:
        """Mask any gradient the backward hook did not see (normally none: no tensor work)."""
        grads, masks = [], []
        for i, param in enumerate(self._params):
            if self._fresh[i]:
                self._fresh[i] = False
            elif param.grad is not None:
                grads.append(param.grad)
                masks.append(self._mask_for(i, param.grad))
        if grads:
            with torch.no_grad():
                torch._foreach_mul_(grads, masks)

    def after_step(self, model: nn.Module | None = None) -> None:
        """Re-zero the pruned weights (they are zero already when the gradients were masked)."""
        self.apply_weights()

    # ---- the rest ----------------------------------------------------------------------

    @torch.no_grad()
    def apply_weights(self) -> None:
        """Zero the pruned weights, in place (call once before training)."""
        if self._params:
            torch._foreach_mul_(self._params, [self._mask_for(i, p) for i, p in enumerate(self._params)])

    @torch.no_grad()
    def check(self) -> int:
        """How many pruned weights are not exactly zero (NaN counts): 0 = the invariant holds."""
        bad = []
        for i, param in enumerate(self._params):
            pruned = self._mask_for(i, param) == 0
            bad.append(torch.count_nonzero(torch.where(pruned, param, 0)))
        return int(torch.stack(bad).sum()) if bad else 0

    @property
    def sparsity(self) -> float:
        """Fraction of the masked parameters' entries that are pruned."""
        return self.n_pruned / self.n_masked if self.n_masked else 0.0

    def remove(self) -> None:
        """Detach the backward hooks (the weights stay as they are)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __repr__(self) -> str:
        return (f"MaskEnforcer({len(self._params)} parameters, {self.n_pruned} of {self.n_masked} "
                f"entries pruned, sparsity {self.sparsity:.3f})")

    # ---- internals ---------------------------------------------------------------------

    def _mask_for(self, i: int, like: torch.Tensor) -> torch.Tensor:
        """Parameter ``i``'s mask as a 0/1 tensor in ``like``'s dtype and device, cached."""
        mask = self._masks[i]
        if mask.dtype != like.dtype or mask.device != like.device:
            mask = mask.to(device=like.device, dtype=like.dtype)
            self._masks[i] = mask
        return mask

    def _grad_hook(self, i: int):
        def mask_grad(param: torch.Tensor) -> None:
            grad = param.grad
            if grad is None:  # pragma: no cover - an earlier hook took it (see _register_first)
                return
            grad.mul_(self._mask_for(i, grad))
            self._fresh[i] = True

        return mask_grad

    @staticmethod
    def _register_first(param: nn.Parameter, hook):
        """Register ``hook`` to run before the parameter's other post-accumulate-grad hooks.

        DeepSpeed ZeRO-2 registers such a hook that moves ``.grad`` into its buffers and clears
        it; ours must run before it.  When the enforcer is built before ``accelerator.prepare``
        (as intended) ours is first anyway; otherwise the hook table is rebuilt with ours
        first.  The C++ side iterates the dict in insertion order and holds the same dict
        object, so it is cleared and refilled in place (other hooks keep working handles).
        """
        handle = param.register_post_accumulate_grad_hook(hook)
        table = getattr(param, "_post_accumulate_grad_hooks", None)
        if table is None or len(table) <= 1:
            return handle
        try:
            others = [(k, v) for k, v in table.items() if k != handle.id]
            table.clear()
            table[handle.id] = hook
            table.update(others)
        except Exception:  # pragma: no cover - a torch without this (private) table layout
            warnings.warn("MaskEnforcer could not put its gradient hook first; build it before "
                          "accelerator.prepare (before fit) so DeepSpeed sees masked gradients", stacklevel=3)
        return handle
