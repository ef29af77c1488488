"""Run a 2:4 ticket on sparse tensor cores: ``torch.sparse.to_sparse_semi_structured``.

A model trained from a ``prune.pattern=2:4`` ticket has, in every pruned ``nn.Linear``, exact
zeros in 2 of every 4 consecutive input weights.  :func:`to_semi_structured` swaps those
weights for torch's semi-structured sparse tensors, so the matrix products use the GPU's 2:4
kernels (about half the multiply-adds); everything else stays dense.  For inference only.

Needs CUDA compute capability >= 8.0 (Ampere or newer) and fp16 / bf16 weights; anywhere else
it raises a :class:`UserError` that says so (the masked dense model computes the same outputs).
"""

from __future__ import annotations

import torch
from torch import nn

from bert_ticket_cli.errors import UserError

#: The dtypes the 2:4 kernels take here (the model is cast to one of them).
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "float16": torch.float16, "bfloat16": torch.bfloat16}


def support(device: torch.device | str) -> str | None:
    """None when ``device`` can run 2:4 kernels, else why not (one sentence)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return (f"2:4 semi-structured kernels need a CUDA GPU of compute capability >= 8.0; "
                f"this model is on {device.type}")
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        return (f"2:4 semi-structured kernels need compute capability >= 8.0 (Ampere or newer); "
                f"{torch.cuda.get_device_name(device)} has {major}.{minor}")
    if not hasattr(torch.sparse, "to_sparse_semi_structured"):
        return f"this torch ({torch.__version__}) has no torch.sparse.to_sparse_semi_structured"
    return None


def is_two_four(weight: torch.Tensor) -> bool:
    """Every group of 4 consecutive input weights (last dimension) has at most 2 non-zeros."""
    if weight.dim() != 2 or weight.shape[-1] % 4:
        return False
    return bool(((weight.detach().reshape(-1, 4) != 0).sum(-1) <= 2).all())


def two_four_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``name -> nn.Linear`` of every linear layer whose weight keeps the 2:4 pattern."""
    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, nn.Linear) and is_two_four(mod.weight)}


def to_semi_structured(model: nn.Module, dtype: str | torch.dtype = "bf16") -> list[str]:
    """Cast ``model`` to ``dtype`` (fp16 / bf16) and give every 2:4 ``nn.Linear`` a semi-structured
    sparse weight; returns the converted layers' names.  A :class:`UserError` on a CPU or an
    older GPU, for another dtype, or when no layer keeps the pattern."""
    dt = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dt not in (torch.float16, torch.bfloat16):
        raise UserError(f"2:4 semi-structured kernels take fp16 or bf16 weights, not {dtype}: "
                        f"use engine.mixed_precision=bf16 (or fp16)")
    device = next(model.parameters()).device
    why = support(device)
    if why:
        raise UserError(f"{why}: evaluate the masked dense model instead (leave eval.semi_structured=false)")
    layers = two_four_linears(model)
    if not layers:
        raise UserError("no linear layer of this model keeps the 2:4 pattern: evaluate a model trained from a "
                        "ticket found with prune.pattern=2:4")
    from torch.sparse import to_sparse_semi_structured

    model.to(dt)
    model.eval()
    done = []
    for name, mod in layers.items():
        try:
            sparse = to_sparse_semi_structured(mod.weight.detach())
        except (RuntimeError, ValueError) as exc:  # e.g. a shape the kernels do not take
            raise UserError(f"{name} {list(mod.weight.shape)} cannot use the 2:4 kernels ({exc}); "
                            f"leave eval.semi_structured=false") from None
        mod.weight = nn.Parameter(sparse, requires_grad=False)
        done.append(name)
    return done
