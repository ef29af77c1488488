"""N:M semi-structured sparsity (``prune.pattern=2:4``): every group of M consecutive input
weights keeps exactly N.

A group is M consecutive entries along the *last* dimension of a prunable matrix, i.e. the
input dimension of ``nn.Linear.weight [out, in]``: the layout NVIDIA's sparse tensor cores
(and ``torch.sparse.to_sparse_semi_structured``, 2:4) read.  Pure functions over bool masks
(True = kept) and weights; nothing here touches a model.

* :func:`parse_pattern` turns ``"2:4"`` into ``(2, 4)`` (None stays None: unstructured).
* :func:`nm_magnitude_masks` keeps the N largest-magnitude surviving weights of each group
  (exactly N: ties broken by position, the later entry kept, like the global pruning's "first
  ones removed"); a weight already pruned stays pruned, so a group needs N survivors.
* :func:`nm_random_masks` keeps N random entries per group (the random baseline).
* :func:`nm_violations` / :func:`check_nm` verify a set of masks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence

import torch

from bert_ticket_cli.errors import UserError

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern: object) -> tuple[int, int] | None:
    """``"N:M"`` -> ``(N, M)`` with ``1 <= N < M``; None / "" / "none" -> None (unstructured)."""
    if pattern is None or (isinstance(pattern, str) and pattern.strip().lower() in ("", "none", "null")):
        return None
    match = _PATTERN.match(str(pattern))
    if not match:
        raise UserError(f"prune.pattern must be N:M (e.g. prune.pattern=2:4) or null, got {pattern!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 1 <= n < m:
        raise UserError(f"prune.pattern={pattern}: N:M needs 1 <= N < M (e.g. 2:4 keeps 2 of every 4 weights)")
    return n, m


def pattern_name(nm: tuple[int, int] | None) -> str | None:
    return None if nm is None else f"{nm[0]}:{nm[1]}"


def nm_sparsity(nm: tuple[int, int]) -> float:
    """The fraction an N:M pattern removes: ``1 - N/M``."""
    return 1.0 - nm[0] / nm[1]


def _groups(name: str, t: torch.Tensor, m: int) -> torch.Tensor:
    """``t`` as ``[rows, in // m, m]`` groups along its last dimension."""
    if t.dim() < 1 or t.shape[-1] % m:
        raise UserError(f"{name} has shape {list(t.shape)}: its input dimension (the last, "
                        f"{t.shape[-1] if t.dim() else 0}) is not a multiple of M={m}, so the N:M pattern cannot "
                        f"apply; choose the matrices with prune.patterns")
    return t.reshape(-1, t.shape[-1] // m, m)


def check_shapes(shapes: Mapping[str, Sequence[int]], nm: tuple[int, int]) -> None:
    """Every matrix's last dimension is a multiple of M, else a :class:`UserError`."""
    for name, shape in shapes.items():
        _groups(name, torch.empty(tuple(shape), device="meta"), nm[1])


def nm_magnitude_masks(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                       nm: tuple[int, int]) -> dict[str, torch.Tensor]:
    """New masks keeping, in every group of M input weights, the N surviving weights of largest
    magnitude (exactly N per group)."""
    n, m = nm
    out = {}
    for name, weight in weights.items():
        mask = masks[name].to(torch.bool)
        w = _groups(name, weight.detach().float().cpu(), m)
        g = _groups(name, mask.cpu(), m)
        short = int((g.sum(-1) < n).sum())
        if short:
            raise UserError(f"{name}: {short} groups of {m} keep fewer than {n} weights already, so the {n}:{m} "
                            f"pattern cannot keep {n} in each: prune with a pattern from the dense model")
        # Integer keys: the magnitude's fp32 bits (they order like the magnitudes), times M,
        # plus the position in the group, so no two keys in a group tie; pruned entries -1.
        key = torch.bitwise_and(w.contiguous().view(torch.int32), 0x7FFFFFFF).to(torch.int64) * m
        key = key + torch.arange(m, dtype=torch.int64)
        key = torch.where(g, key, torch.full_like(key, -1))
        keep = torch.zeros_like(g)
        keep.scatter_(-1, key.topk(n, dim=-1).indices, True)
        out[name] = keep.reshape(mask.shape).to(masks[name].device)
    return out


def _seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{int(seed)}\x00nm\x00{name}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def nm_random_masks(shapes: Mapping[str, Sequence[int]], nm: tuple[int, int], *, seed: int) -> dict[str, torch.Tensor]:
    """Random N:M masks: N random entries kept per group; each matrix from its own generator
    seeded from ``(seed, name)`` (reproducible, independent of the other matrices)."""
    n, m = nm
    out = {}
    for name, shape in shapes.items():
        shape = tuple(int(d) for d in shape)
        gen = torch.Generator().manual_seed(_seed(seed, name))
        scores = _groups(name, torch.rand(shape, generator=gen), m)
        keep = torch.zeros(scores.shape, dtype=torch.bool)
        keep.scatter_(-1, scores.topk(n, dim=-1).indices, True)
        out[name] = keep.reshape(shape)
    return out


def nm_violations(masks: Mapping[str, torch.Tensor], nm: tuple[int, int]) -> dict[str, int]:
    """``name -> number of groups that do not keep exactly N`` (only the matrices that break it;
    a matrix whose last dimension is not a multiple of M counts all its rows)."""
    n, m = nm
    bad = {}
    for name, mask in masks.items():
        if mask.dim() < 1 or mask.shape[-1] % m:
            bad[name] = max(1, mask.numel() // max(1, mask.shape[-1] if mask.dim() else 1))
            continue
        count = int((mask.reshape(-1, m).sum(-1) != n).sum())
        if count:
            bad[name] = count
    return bad


def check_nm(masks: Mapping[str, torch.Tensor], nm: tuple[int, int], where: str) -> None:
    """A :class:`UserError` naming the first matrix whose masks break the N:M pattern."""
    bad = nm_violations(masks, nm)
    if bad:
        name, count = next(iter(bad.items()))
        raise UserError(f"{where} claims the {nm[0]}:{nm[1]} pattern but {len(bad)} of its masks break it "
                        f"({name}: {count} groups of {nm[1]} do not keep exactly {nm[0]}): re-create the ticket "
                        f"with bert-ticket prune prune.pattern={nm[0]}:{nm[1]}")
