"""Magnitude pruning with exact counts: global (IMP, Chen et al. 2020) and layer-wise.

Pure functions over ``{name: weight}`` and ``{name: bool mask}`` (True = kept); they never
touch a model.  Three promises:

* **Exact counts.**  After ``global_magnitude_prune(w, m, n)`` exactly ``n`` weights are
  pruned in total, to the element, however many weights share the threshold magnitude.
* **Masks only shrink.**  A weight pruned in ``m`` stays pruned; the new removals are the
  smallest-magnitude *surviving* weights.
* **Deterministic ties.**  Among surviving weights of exactly the threshold magnitude, the
  first ones in (matrix order of the ``weights`` dict, then row-major flat index) are removed.

How the threshold is found without concatenating 85.5M weights (340 MB for BERT-base):

Magnitudes are compared as integer *keys*: the bits of ``|w|`` in fp32 read as int32, which
order exactly like the non-negative floats they encode (bf16 / fp16 weights are widened to
fp32 first, exactly; fp64 are rounded to fp32).  ``-0.0`` and ``0.0`` are equal; a NaN weight
counts as larger than any number (it is kept).  Integer keys make ties exact and are immune to
flush-to-zero of subnormal floats.

1. *Estimate.*  A fixed-seed random sample of ~262k weights gives a key range ``[lo, hi]``
   that contains the threshold (the k-th smallest surviving key) unless a ~5-sigma event
   happens; its width is ~0.6 % of the survivors.
2. *One pass* over every matrix in chunks of 512k elements (the chunk's keys stay in cache):
   write ``key > hi`` into the new mask directly, count the survivors below ``lo``, and keep
   the keys and flat indices of the survivors inside ``[lo, hi]`` (the "band").  The
   comparisons are integer arithmetic and the band is located word by word (see
   ``_band_pass`` and ``_positions`` for why: both are several times faster on the CPU).
3. *Finish* on the band alone: its ``r``-th smallest key is the threshold (``kthvalue``,
   linear time), ties are broken by position, and the band's kept entries are scattered into
   the masks.

If the estimate missed, or the band would exceed 2^20 entries (massive ties, e.g. many equal
weights), an exact counting selection takes over: each pass histograms the keys of the
region known to hold the threshold into 4096 buckets (``bincount`` per chunk), narrowing the
region 4096-fold, so at most three passes reach the exact key; one more pass writes the masks.
Slower (4-5 passes instead of one), never wrong.

Extra memory beyond the returned masks (one byte per weight): the chunk scratch (2.5 MB), the
sample (~3 MB, freed before the pass) and the band (8 bytes per entry: ~4 MB for BERT-base,
at most 8 MB), i.e. about one BERT-base FFN matrix whatever the model size; measured peak
for BERT-base: ~15 MB, 4 % of its 342 MB of fp32 weights (``benchmarks/prune_speed.py``).
Weights that are not contiguous are copied one matrix at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from bert_ticket_cli.errors import UserError

KEY_MAX = 0x7FFFFFFF  # the largest key (a NaN pattern); keys are in [0, KEY_MAX]
CHUNK = 1 << 19  # elements per chunk: 2 MB of keys, about the size of a CPU core's L2 cache
SAMPLE = 1 << 18  # sampled weights for the estimate (scaled up when most weights are pruned)
SAMPLE_SEED = 20200101  # the sample is part of the algorithm, not of the experiment: fixed
SIGMAS = 5.0  # half-width of the estimated band, in binomial standard deviations
BAND_CAP = 1 << 20  # most band entries kept in memory (8 bytes each: int32 index and key)
HIST_BITS = 12  # buckets per counting pass = 2**HIST_BITS

SCHEDULES = ("linear", "geometric")
SCOPES = ("global", "layer")


def round_half_up(x: float) -> int:
    """``floor(x + 0.5)``: the rounding every count in this package uses (Python's ``round``
    rounds halves to even, which would make 0.5 -> 0 and 1.5 -> 2)."""
    return int(math.floor(x + 0.5))


def level_target(level: int, *, rate: float = 0.1, schedule: str = "linear", total: int) -> int:
    """How many of ``total`` prunable weights are removed in all after ``level`` rounds.

    ``linear``: ``rate`` of the *original* count per round (10 %, 20 %, 30 %, ... as in
    Chen et al.).  ``geometric``: ``rate`` of what *remains* per round (10 %, 19 %, 27.1 %, ...
    as in Frankle & Carbin).  Level 0 removes nothing.  A level that would remove every
    weight is a :class:`UserError`.
    """
    if isinstance(level, bool) or not isinstance(level, int) or level < 0:
        raise UserError(f"pruning level must be a whole number >= 0, got {level!r}")
    if not (0.0 < float(rate) < 1.0):
        raise UserError(f"pruning rate must be in (0, 1), got {rate!r}: e.g. rate=0.1 removes 10% per level")
    if schedule not in SCHEDULES:
        raise UserError(f"unknown pruning schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    if level == 0:
        return 0
    if schedule == "linear":
        removed = round_half_up(level * rate * total)
    else:
        removed = total - round_half_up(total * (1.0 - rate) ** level)
    if removed >= total:
        raise UserError(f"pruning level {level} at rate {rate} ({schedule}) would remove all {total} prunable "
                        f"weights: use fewer levels, a smaller rate or schedule=geometric")
    return removed


# ------------------------------------------------------------------------------ internals

@dataclass
class _Matrix:
    """One weight matrix, flattened, with its mask and survivor count."""

    name: str
    shape: torch.Size
    w: torch.Tensor  # flat view (or copy, if the weight was not contiguous)
    m: torch.Tensor  # flat bool mask
    numel: int
    survivors: int

    @property
    def has_pruned(self) -> bool:
        return self.survivors < self.numel


class _Scratch:
    """Per-chunk buffers, reused for every chunk of every matrix on one device: 5 bytes per
    chunk element (int32 keys + one flag byte)."""

    def __init__(self, device: torch.device):
        self.keys = torch.empty(CHUNK, dtype=torch.int32, device=device)
        self.flag = torch.empty(_round8(CHUNK), dtype=torch.bool, device=device)  # 8-byte words: _positions


def _round8(n: int) -> int:
    return (n + 7) // 8 * 8


def _count_true(flags: torch.Tensor) -> int:
    """Number of True entries of a flat bool tensor.

    Summed as bytes in rows of 256 with int16 partial sums (<= 256 each, no overflow), which
    vectorises well; a plain ``sum`` of bool or uint8 is 3-5x slower on the CPU.
    """
    if flags.dtype != torch.bool:
        return int(torch.count_nonzero(flags))
    n = flags.numel()
    u8 = flags.view(torch.uint8)
    body = n - n % 256
    total = int(u8[:body].view(-1, 256).sum(dim=1, dtype=torch.int16).sum(dtype=torch.int64)) if body else 0
    return total + (int(u8[body:].sum(dtype=torch.int64)) if body < n else 0)


def _prepare(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> list[_Matrix]:
    if set(weights) != set(masks):
        missing = sorted(set(weights) ^ set(masks))
        raise ValueError(f"weights and masks must have the same names; differing: {missing[:3]}")
    out = []
    for name, weight in weights.items():
        mask = masks[name]
        if mask.dtype != torch.bool:
            raise ValueError(f"mask {name} must be a bool tensor, got {mask.dtype}")
        if tuple(mask.shape) != tuple(weight.shape):
            raise ValueError(f"mask {name} has shape {tuple(mask.shape)}, weight {tuple(weight.shape)}")
        if not weight.is_floating_point():
            raise ValueError(f"weight {name} must be a floating-point tensor, got {weight.dtype}")
        w = weight.detach().reshape(-1)
        m = mask.detach().reshape(-1)
        if m.device != w.device:
            m = m.to(w.device)
        survivors = _count_true(m)
        out.append(_Matrix(name, weight.shape, w, m, w.numel(), survivors))
    return out


def _keys(w: torch.Tensor, scratch: _Scratch) -> torch.Tensor:
    """The int32 magnitude keys of one chunk of weights, in the scratch buffer."""
    keys = scratch.keys[:w.numel()]
    if w.dtype == torch.float32:
        torch.bitwise_and(w.view(torch.int32), KEY_MAX, out=keys)
    else:
        keys.view(torch.float32).copy_(w)  # bf16 / fp16 widen exactly; fp64 rounds to fp32
        keys.bitwise_and_(KEY_MAX)
    return keys


def _keys_of(values: torch.Tensor) -> torch.Tensor:
    """Keys of a few gathered weights (a new tensor)."""
    return torch.bitwise_and(values.to(torch.float32).view(torch.int32), KEY_MAX)


def _chunks(n: int):
    for start in range(0, n, CHUNK):
        yield start, min(start + CHUNK, n)


def _sample_keys(mats: list[_Matrix], survivors: int) -> torch.Tensor:
    """Keys of a fixed-seed random sample of the surviving weights (uniform over positions)."""
    total = sum(m.numel for m in mats)
    # ~SAMPLE survivors (more draws when most weights are already pruned), but never many
    # more draws than there are weights: small models do not pay for a big sample.
    size = min(SAMPLE * max(1, total // max(survivors, 1)), 8 * SAMPLE, 4 * total)
    gen = torch.Generator().manual_seed(SAMPLE_SEED)
    parts = []
    for mat in mats:
        if mat.survivors == 0:
            continue
        count = max(1, math.ceil(size * mat.numel / total))
        idx = torch.randint(mat.numel, (count,), generator=gen).to(mat.w.device)
        if mat.has_pruned:
            idx = idx[mat.m[idx]]
        parts.append(_keys_of(mat.w[idx]).cpu())
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int32)


def _estimate_band(sample: torch.Tensor, k: int, survivors: int) -> tuple[int, int]:
    """A key range ``[lo, hi]`` that very probably holds the k-th smallest surviving key."""
    m = sample.numel()
    if m == 0:
        return 0, KEY_MAX
    q = k / survivors
    centre = q * m
    margin = SIGMAS * math.sqrt(m * q * (1.0 - q)) + 2.0
    lo_rank = math.floor(centre - margin)  # 0-based ranks in the sorted sample
    hi_rank = math.ceil(centre + margin)
    lo = int(torch.kthvalue(sample, lo_rank + 1).values) if lo_rank >= 0 else 0
    hi = int(torch.kthvalue(sample, hi_rank + 1).values) if hi_rank < m else KEY_MAX
    return lo, hi


def _positions(flag: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the True entries among the first ``n`` of ``flag`` (a scratch flag whose padding
    up to a multiple of 8 is False).

    The band is sparse (~0.5 %), and ``nonzero`` over every byte was the slowest step of the
    pass; so find the non-zero 8-byte words first (8x fewer elements to scan), then the true
    bytes among those words only.
    """
    words = flag[:_round8(n)].view(torch.int64)
    hit = words.nonzero().squeeze(1)
    if hit.numel() * 32 > words.numel():  # dense (a wide band): plain nonzero is cheaper
        return flag[:n].nonzero().squeeze(1)
    lanes = words.index_select(0, hit).view(torch.bool).nonzero().squeeze(1)  # byte j of hit word j // 8
    return hit.index_select(0, lanes >> 3).mul_(8).add_(lanes & 7)


def _band_pass(mats, outs, lo, hi, scratch):
    """Pass over all weights: ``key > hi`` into ``outs``; count survivors below ``lo``; collect
    the band (survivors with ``lo <= key <= hi``) unless it outgrows BAND_CAP.

    The comparisons are integer arithmetic in place on the chunk's keys: on the CPU, torch's
    comparison kernels that write bool are several times slower than a subtraction, a clamp
    and a conversion to bool (= "is non-zero").  With ``d = max(key - (lo - 1), 0)``,
    ``key >= lo`` is ``d != 0``; and ``key > hi`` is ``d - (hi - lo + 1) > 0``.  Keys and
    thresholds lie in [0, 2**31 - 1] and ``lo >= 1`` here, so nothing overflows.
    """
    below = band_size = 0
    band: list[tuple[int, torch.Tensor, torch.Tensor]] | None = []
    span = hi - lo + 1
    for i, mat in enumerate(mats):
        out = outs[i]
        kept = 0
        for s, e in _chunks(mat.numel):
            n = e - s
            d = _keys(mat.w[s:e], scratch)
            flag = scratch.flag
            flag[n:_round8(n)] = False  # padding of the last 8-byte word, for _positions
            inband = flag[:n]
            o = out[s:e]
            if lo > 0:
                d.sub_(lo - 1).clamp_min_(0)
                inband.copy_(d)  # key >= lo
                d.sub_(span)
            else:
                inband.fill_(True)
                d.sub_(hi)
            d.clamp_(0, 1)
            o.copy_(d)  # key > hi
            if mat.has_pruned:
                mc = mat.m[s:e]
                o.logical_and_(mc)
                inband.logical_and_(mc)
                kept += _count_true(o)
            else:
                kept += int(d.sum(dtype=torch.int32))
            inband.logical_xor_(o)  # o implies inband (hi >= lo): xor = lo <= key <= hi
            idx = _positions(flag, n)
            found = idx.numel()
            band_size += found
            if band is not None and found:
                if band_size > BAND_CAP:
                    band = None  # too many (massive ties): the counting selection takes over
                else:
                    band.append((i, (idx + s).to(torch.int32), _keys_of(mat.w[s:e][idx])))
        below += mat.survivors - kept
    below -= band_size
    return below, band_size, band


def _finish_band(mats, outs, band, r: int) -> None:
    """Remove the ``r`` smallest band entries (ties by position), keep the others."""
    keys = torch.cat([b[2].cpu() for b in band])
    t = int(torch.kthvalue(keys, r).values)
    below_t = int((keys < t).sum())
    keep = keys > t
    ties = (keys == t).nonzero().squeeze(1)  # in band order = matrix order, then flat index
    keep[ties[r - below_t:]] = True  # the first r - below_t ties are removed, the rest kept
    start = 0
    for i, idx, _ in band:
        n = idx.numel()
        chosen = keep[start:start + n].to(idx.device)
        outs[i][idx[chosen].long()] = True
        start += n


def _exact_threshold(mats, k: int, lo: int, hi: int, below: int, scratch) -> tuple[int, int]:
    """Counting selection: the k-th smallest surviving key, knowing it lies in ``[lo, hi]`` and
    ``below`` survivors have smaller keys.  Returns ``(key, survivors with a smaller key)``."""
    while lo < hi:
        span = hi - lo
        shift = max(0, span.bit_length() - HIST_BITS)
        buckets = (span >> shift) + 1
        hist = torch.zeros(buckets, dtype=torch.int64)
        for mat in mats:
            for s, e in _chunks(mat.numel):
                keys = _keys(mat.w[s:e], scratch)
                sel = scratch.flag[:e - s]
                torch.ge(keys, lo, out=sel)
                sel.logical_and_(keys <= hi)
                if mat.has_pruned:
                    sel.logical_and_(mat.m[s:e])
                vals = keys[sel]
                if vals.numel():
                    vals = (vals - lo).bitwise_right_shift_(shift)
                    hist += torch.bincount(vals, minlength=buckets).cpu()
        cum = hist.cumsum(0)
        need = k - below
        j = int(torch.searchsorted(cum, need))
        if j > 0:
            below += int(cum[j - 1])
        lo, hi = lo + (j << shift), min(hi, lo + ((j + 1) << shift) - 1)
    return lo, below


def _threshold_pass(mats, outs, t: int, tie_removals: int, scratch) -> None:
    """Write the masks for a known threshold key: keep ``key > t``, and of the ``key == t``
    survivors keep all but the first ``tie_removals`` (matrix order, then flat index)."""
    left = tie_removals
    for i, mat in enumerate(mats):
        out = outs[i]
        for s, e in _chunks(mat.numel):
            keys = _keys(mat.w[s:e], scratch)
            o = out[s:e]
            torch.gt(keys, t, out=o)
            eq = scratch.flag[:e - s]
            torch.eq(keys, t, out=eq)
            if mat.has_pruned:
                mc = mat.m[s:e]
                o.logical_and_(mc)
                eq.logical_and_(mc)
            if left > 0:
                rank = eq.cumsum(0)
                n_eq = int(rank[-1])
                o.logical_or_(eq & (rank > left))
                left -= min(left, n_eq)
            else:
                o.logical_or_(eq)


def _remove_smallest(mats: list[_Matrix], k: int) -> list[torch.Tensor]:
    """Flat new masks with the ``k`` smallest surviving weights (over all ``mats``) removed."""
    survivors = sum(m.survivors for m in mats)
    if k == 0:
        return [m.m.clone() for m in mats]
    if k == survivors:
        return [torch.zeros_like(m.m) for m in mats]
    devices = {m.w.device for m in mats}
    if len(devices) != 1:
        raise ValueError(f"all weights must be on one device, got {sorted(map(str, devices))}")
    scratch = _Scratch(devices.pop())
    outs = [torch.empty(m.numel, dtype=torch.bool, device=m.w.device) for m in mats]
    lo, hi = _estimate_band(_sample_keys(mats, survivors), k, survivors)
    below, band_size, band = _band_pass(mats, outs, lo, hi, scratch)
    r = k - below  # band entries to remove if the threshold lies in the band
    if 1 <= r <= band_size and band is not None:
        _finish_band(mats, outs, band, r)
        return outs
    del band
    # The estimate missed (or the band was too big): count exactly in the region that holds it.
    if r <= 0:
        lo, hi, below = 0, lo - 1, 0
    elif r > band_size:
        lo, hi, below = hi + 1, KEY_MAX, below + band_size
    t, below_t = _exact_threshold(mats, k, lo, hi, below, scratch)
    _threshold_pass(mats, outs, t, k - below_t, scratch)
    return outs


# ----------------------------------------------------------------------------------- API

def global_magnitude_prune(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                           n_remove_total: int) -> dict[str, torch.Tensor]:
    """New masks with exactly ``n_remove_total`` of all weights pruned (across all matrices).

    Weights already pruned in ``masks`` stay pruned and count towards the total; the rest are
    the smallest-magnitude survivors (ties: matrix order of ``weights``, then flat index).
    ``n_remove_total`` below the number already pruned, or >= the number of weights, is a
    ``ValueError``.  The inputs are not modified; the result is in the order of ``weights``.
    """
    mats = _prepare(weights, masks)
    total = sum(m.numel for m in mats)
    pruned = total - sum(m.survivors for m in mats)
    n_remove_total = int(n_remove_total)
    if n_remove_total >= total or n_remove_total < 0:
        raise ValueError(f"cannot remove {n_remove_total} of {total} weights: must be in [0, {total})")
    if n_remove_total < pruned:
        raise ValueError(f"cannot prune to {n_remove_total} removed weights: {pruned} are already pruned "
                         f"and masks only shrink")
    outs = _remove_smallest(mats, n_remove_total - pruned)
    return {m.name: o.view(m.shape) for m, o in zip(mats, outs)}


def layerwise_magnitude_prune(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor],
                              fraction_removed: float) -> dict[str, torch.Tensor]:
    """The same, per matrix: each one ends with ``round_half_up(fraction * numel)`` pruned."""
    if not (0.0 <= float(fraction_removed) < 1.0):
        raise ValueError(f"fraction_removed must be in [0, 1), got {fraction_removed}")
    mats = _prepare(weights, masks)
    result = {}
    for mat in mats:
        target = round_half_up(fraction_removed * mat.numel)
        pruned = mat.numel - mat.survivors
        if target < pruned:
            raise ValueError(f"{mat.name}: cannot prune to {target} removed weights, {pruned} are already "
                             f"pruned and masks only shrink")
        result[mat.name] = _remove_smallest([mat], target - pruned)[0].view(mat.shape)
    return result


def prune_to(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], *,
             target_sparsity: float, scope: str = "global") -> dict[str, torch.Tensor]:
    """Masks at ``target_sparsity`` (fraction removed), over all matrices (``global``) or per
    matrix (``layer``), pruning by magnitude on top of ``masks``."""
    try:
        target = float(target_sparsity)
    except (TypeError, ValueError):
        raise UserError(f"sparsity must be in [0, 1), got {target_sparsity!r}: e.g. sparsity=0.5") from None
    if not (0.0 <= target < 1.0):
        raise UserError(f"sparsity must be in [0, 1), got {target_sparsity!r}: e.g. sparsity=0.5")
    if scope not in SCOPES:
        raise UserError(f"unknown pruning scope {scope!r}: use one of {', '.join(SCOPES)}")
    pruned = {name: m.numel() - _count_true(m.detach().reshape(-1)) for name, m in masks.items()}
    if scope == "global":
        total = sum(w.numel() for w in weights.values())
        n = round_half_up(target * total)
        if n < sum(pruned.values()):
            raise UserError(f"target sparsity {target:.4f} is below the masks' current sparsity "
                            f"{sum(pruned.values()) / total:.4f}: masks only shrink; pick a higher target")
        return global_magnitude_prune(weights, masks, n)
    for name, mask in masks.items():
        if round_half_up(target * mask.numel()) < pruned[name]:
            raise UserError(f"target sparsity {target:.4f} is below the current sparsity "
                            f"{pruned[name] / mask.numel():.4f} of {name}: masks only shrink; pick a higher target")
    return layerwise_magnitude_prune(weights, masks, target)
