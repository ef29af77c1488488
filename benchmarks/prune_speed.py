"""Global magnitude pruning: ``methods.magnitude.global_magnitude_prune`` against
``torch.nn.utils.prune.global_unstructured``.

What is compared, in one process, on the same weights:

* ours  -- ``global_magnitude_prune(weights, masks, n)``: bool masks with exactly ``n`` of all
  prunable weights removed, found by a sampled threshold band and one chunked pass (see the
  module docstring of ``bert_ticket_cli/methods/magnitude.py``);
* torch -- what a user would otherwise write: ``prune.global_unstructured`` with
  ``L1Unstructured`` and ``amount=n`` (a count, not a fraction) on ``nn.Linear`` modules that
  hold the same weight tensors (shared, not copied).

The weights are a BERT-base-shaped prunable set built directly as tensors (no model): per
layer query, key, value, attention output (768x768), intermediate (3072x768), output
(768x3072), plus the pooler (768x768); 12 layers = 73 matrices, 85,524,480 weights, random
normal fp32.  Both sides prune from dense to 10 % (IMP level 1); ours is also timed for the
next level, 10 % -> 20 % on top of its level-1 masks (torch's PruningContainer semantics for a
second call differ, so that row has no baseline).  Both run under ``torch.no_grad()``.

Checks (first round): both leave exactly ``n`` zeros; the masks agree everywhere except among
weights whose magnitude equals the threshold (``topk`` breaks those ties arbitrarily, ours by
position), and the table reports how many such weights there are.

Timing: a warm-up call of each side, then ``--rounds`` rounds alternating the order
(``_common.alternate``); medians are reported.  OpenMP threads sleep when idle
(``OMP_WAIT_POLICY=PASSIVE`` unless exported; see ``_common.passive_openmp``).

Memory: the peak of the process's resident set during one call, minus the resident set just
before it, measured in a *fresh subprocess per side* (this script with ``--memory-child``):

* tracemalloc does not see torch's allocations, and torch has no CPU allocator statistics;
  sampling RSS from a thread can miss a short peak.  The kernel's own high-water mark
  (``VmHWM`` in /proc/self/status) is exact; writing ``5`` to /proc/self/clear_refs resets
  it to the current RSS right before the call.  (Without that file: ``ru_maxrss``, which is
  also a high-water mark but cannot be reset, so the child measures before building anything
  large and the figure is an upper bound.)
* A fresh process per side, because memory one side freed can stay in the allocator and be
  reused by the other without raising RSS.  The child also runs with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so that every large block is its own mapping, handed
  back to the kernel on free: RSS then tracks live tensor memory.
* Both sides first run once on a small input, so lazily loaded kernels and thread pools are
  not counted.

Each side's figure includes what it returns: our bool masks (1 byte per weight = 0.25 of the
fp32 weights), torch's float mask buffers plus the recomputed ``weight`` tensors (8 bytes per
weight).  ``extra_memory_ratio`` and ``torch_extra_memory_ratio`` are that peak *minus* those
result bytes (computed exactly from the sizes), divided by the weights' bytes: the working
memory the algorithm needs beyond its answer.  ``*_incl_output`` keep the result in.

Output: a table, then as the last line of stdout one JSON object::

    {"benchmark": "prune_speed", "time_ratio": ..., "extra_memory_ratio": ...,
     "torch_extra_memory_ratio": ..., ...}

``time_ratio`` = our seconds / torch's seconds (dense -> 10 %).  Run::

    .venv/bin/python benchmarks/prune_speed.py --quick    # 4 layers of BERT-base, well under a minute
    .venv/bin/python benchmarks/prune_speed.py            # BERT-base (85.5M weights), ~2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

_common.passive_openmp()  # before torch: see there (steady numbers on a shared machine)

import torch  # noqa: E402

BENCHMARK = "prune_speed"
AIMS = {"time_ratio": 0.04, "extra_memory_ratio": 0.1}
MMAP_THRESHOLD = 65536


@dataclass(frozen=True)
class Size:
    layers: int
    hidden: int
    intermediate: int
    rounds: int
    seed: int

    def shapes(self) -> dict[str, tuple[int, int]]:
        """The default prunable set of a BERT of this size (names as in a real ticket)."""
        h, i = self.hidden, self.intermediate
        per_layer = {
            "attention.self.query.weight": (h, h),
            "attention.self.key.weight": (h, h),
            "attention.self.value.weight": (h, h),
            "attention.output.dense.weight": (h, h),
            "intermediate.dense.weight": (i, h),
            "output.dense.weight": (h, i),
        }
        shapes = {f"encoder.layer.{layer}.{name}": shape
                  for layer in range(self.layers) for name, shape in per_layer.items()}
        shapes["pooler.dense.weight"] = (h, h)
        return shapes


DEFAULT = dict(layers=12, hidden=768, intermediate=3072, rounds=3)
QUICK = dict(layers=4, hidden=768, intermediate=3072, rounds=5)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Size]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 layers of BERT-base (28.9M weights): well under a minute")
    p.add_argument("--layers", type=int, help="encoder layers (default 12; quick 4)")
    p.add_argument("--hidden", type=int, help="hidden size (default 768)")
    p.add_argument("--intermediate", type=int, help="feed-forward size (default 4 x hidden)")
    p.add_argument("--rounds", type=int, help="alternating timed rounds; the median is reported (default 3; quick 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement subprocesses")
    p.add_argument("--memory-child", choices=("ours", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    base = dict(QUICK if args.quick else DEFAULT)
    for key in ("layers", "hidden", "intermediate", "rounds"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    if args.hidden is not None and args.intermediate is None:
        base["intermediate"] = 4 * args.hidden
    size = Size(seed=args.seed, **base)
    if size.layers < 1 or size.hidden < 1 or size.intermediate < 1 or size.rounds < 1:
        p.error("--layers, --hidden, --intermediate and --rounds must be >= 1")
    return args, size


# ---------------------------------------------------------------------------------- sides

def make_weights(size: Size) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(size.seed)
    return {name: torch.randn(shape, generator=gen) for name, shape in size.shapes().items()}


def dense_masks(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: torch.ones(w.shape, dtype=torch.bool) for n, w in weights.items()}


def ours(weights, masks, n_remove):
    from bert_ticket_cli.methods.magnitude import global_magnitude_prune

    with torch.no_grad():
        return global_magnitude_prune(weights, masks, n_remove)


def torch_modules(weights: dict[str, torch.Tensor]) -> list[torch.nn.Linear]:
    """One bias-free ``nn.Linear`` per matrix, holding that very tensor (no copy)."""
    modules = []
    for w in weights.values():
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device="meta")
        lin.weight = torch.nn.Parameter(w)
        modules.append(lin)
    return modules


def torch_prune(modules: list[torch.nn.Linear], n_remove: int) -> None:
    from torch.nn.utils import prune

    with torch.no_grad():
        prune.global_unstructured([(m, "weight") for m in modules], pruning_method=prune.L1Unstructured,
                                  amount=int(n_remove))


def result_bytes(side: str, n_weights: int) -> int:
    """Bytes of what each side hands back (exact): bool masks / float masks + new weights."""
    return n_weights if side == "ours" else 8 * n_weights


# --------------------------------------------------------------------------------- memory

def _proc_status() -> dict[str, int] | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    out = {}
    for key in ("VmRSS", "VmHWM"):
        found = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
        if found:
            out[key] = int(found.group(1)) * 1024
    return out if len(out) == 2 else None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def memory_child(side: str, size: Size) -> None:
    """Runs in a fresh process: build the inputs, warm up small, measure one call, print JSON."""
    from bert_ticket_cli.methods.magnitude import level_target

    # warm-up on a small input: kernels, thread pool, allocator arenas
    small = {"a": torch.randn(64, 64), "b": torch.randn(32, 96)}
    ours(small, dense_masks(small), 100)
    torch_prune(torch_modules(small), 100)
    del small
    gc.collect()

    weights = make_weights(size)
    n_weights = sum(w.numel() for w in weights.values())
    n_remove = level_target(1, total=n_weights)
    inputs = dense_masks(weights) if side == "ours" else torch_modules(weights)
    gc.collect()

    status = _proc_status()
    exact = status is not None and _reset_peak()
    before = _proc_status() if exact else None
    rss_before = before["VmRSS"] if before else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if side == "ours":
        result = ours(weights, inputs, n_remove)
    else:
        torch_prune(inputs, n_remove)
        result = inputs
    after = _proc_status()
    if exact and after:
        peak, rss_after, method = after["VmHWM"], after["VmRSS"], "VmHWM after clear_refs (exact peak)"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        rss_after = after["VmRSS"] if after else peak
        method = "ru_maxrss (upper bound)"
    del result
    print(json.dumps({"side": side, "peak_extra": peak - rss_before, "retained": rss_after - rss_before,
                      "weights": n_weights, "weight_bytes": 4 * n_weights, "method": method}))


def measure_memory(side: str, size: Size, threads: int | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", side, "--layers", str(size.layers),
           "--hidden", str(size.hidden), "--intermediate", str(size.intermediate), "--seed", str(size.seed)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        _common.log(f"[{BENCHMARK}] memory child ({side}) failed:\n{proc.stderr[-2000:]}")
        return {"side": side, "peak_extra": float("nan"), "retained": float("nan"), "method": "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------- main

def compare_masks(weights, ours_masks, modules) -> dict:
    """Zeros per side, and agreement outside the weights tied at the threshold magnitude."""
    threshold = max(float(w[~m].abs().max()) for w, m in zip(weights.values(), ours_masks.values())
                    if bool((~m).any()))
    zeros_ours = zeros_torch = tied = differ = differ_outside = 0
    for (name, w), mod in zip(weights.items(), modules):
        mine = ours_masks[name]
        theirs = mod.weight_mask.bool()
        zeros_ours += int((~mine).sum())
        zeros_torch += int((mod.weight == 0).sum())
        at_threshold = w.abs() == threshold
        tied += int(at_threshold.sum())
        diff = mine != theirs
        differ += int(diff.sum())
        differ_outside += int((diff & ~at_threshold).sum())
    return {"zeros_ours": zeros_ours, "zeros_torch": zeros_torch, "threshold": threshold,
            "tied_at_threshold": tied, "positions_differing": differ,
            "differing_outside_ties": differ_outside}


def main(argv: list[str] | None = None) -> int:
    args, size = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, size)
        return 0

    from bert_ticket_cli.methods.magnitude import level_target

    weights = make_weights(size)
    n_weights = sum(w.numel() for w in weights.values())
    weight_bytes = 4 * n_weights
    n1 = level_target(1, total=n_weights)
    n2 = level_target(2, total=n_weights)
    dense = dense_masks(weights)
    _common.log(f"[{BENCHMARK}] {'quick' if args.quick else 'default'} size: {size}; {len(weights)} matrices, "
                f"{n_weights:,} weights; torch threads {torch.get_num_threads()}")

    # warm-up (full size: first-call costs out of the timed rounds) and the correctness check
    level1 = ours(weights, dense, n1)
    modules = torch_modules(weights)
    torch_prune(modules, n1)
    check = compare_masks(weights, level1, modules)
    del modules
    gc.collect()
    _common.log(f"[{BENCHMARK}] warm-up done; zeros ours {check['zeros_ours']:,} torch {check['zeros_torch']:,}, "
                f"{check['tied_at_threshold']} weights at the threshold magnitude")

    level2_times: list[float] = []

    def ours_side() -> float:
        seconds, masks = _common.timed(lambda: ours(weights, dense, n1))
        seconds2, masks2 = _common.timed(lambda: ours(weights, masks, n2))
        level2_times.append(seconds2)
        assert sum(int((~m).sum()) for m in masks2.values()) == n2
        del masks, masks2
        gc.collect()
        return seconds

    def torch_side() -> float:
        mods = torch_modules(weights)
        seconds, _ = _common.timed(lambda: torch_prune(mods, n1))
        del mods
        gc.collect()
        return seconds

    ratios: list[float] = []

    def after_round(r: int, times: dict[str, float]) -> None:
        ratios.append(times["ours"] / times["torch"])
        _common.log(f"[{BENCHMARK}] round {r + 1}/{size.rounds}: ours {times['ours']:.3f} s "
                    f"(level 2: {level2_times[-1]:.3f} s), torch {times['torch']:.3f} s")

    results = _common.alternate(size.rounds, {"ours": ours_side, "torch": torch_side}, on_round=after_round)
    ours_s = _common.median(results["ours"])
    torch_s = _common.median(results["torch"])
    level2_s = _common.median(level2_times)
    time_ratio = ours_s / torch_s

    memory = {}
    if not args.no_memory:
        del level1
        gc.collect()
        for side in ("ours", "torch"):
            _common.log(f"[{BENCHMARK}] measuring memory: {side} (fresh process)")
            memory[side] = measure_memory(side, size, args.threads)

    def ratio(side: str, include_output: bool) -> float:
        if side not in memory:
            return float("nan")
        extra = memory[side]["peak_extra"]
        if not include_output:
            extra -= result_bytes(side, n_weights)
        return extra / weight_bytes

    mb = 1024 * 1024

    # ---- table ----
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"global magnitude pruning: {size.layers} layers, hidden {size.hidden}, {len(weights)} "
                        f"matrices, {n_weights:,} fp32 weights ({weight_bytes / mb:.0f} MiB), "
                        f"{torch.get_num_threads()} threads",
                  caption=f"median of {size.rounds} alternating rounds after a warm-up; memory: peak RSS during "
                          f"one call minus RSS before, fresh process per side; 'working' = that minus the "
                          f"returned result; {_common.load_note()}")
    table.add_column("side")
    table.add_column("pruning", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("rounds (s)", justify="right")
    table.add_column("spread", justify="right")
    table.add_column("peak extra MiB", justify="right")
    table.add_column("result MiB", justify="right")
    table.add_column("working MiB", justify="right")
    table.add_column("working / weights", justify="right")
    for label, key in (("ours: global_magnitude_prune", "ours"), ("torch: prune.global_unstructured", "torch")):
        mem = memory.get(key)
        peak = f"{mem['peak_extra'] / mb:.1f}" if mem else "-"
        res = f"{result_bytes(key, n_weights) / mb:.1f}"
        work = f"{(mem['peak_extra'] - result_bytes(key, n_weights)) / mb:.1f}" if mem else "-"
        table.add_row(label, "0 -> 10 %", f"{_common.median(results[key]):.3f}",
                      *_common.rounds_cells(results[key]),
                      peak, res, work, f"{ratio(key, False):.3f}" if mem else "-")
    table.add_row("ours: global_magnitude_prune", "10 -> 20 %", f"{level2_s:.3f}",
                  *_common.rounds_cells(level2_times),
                  "", "", "", "")
    table.add_section()
    table.add_row("ratio ours / torch", "0 -> 10 %", f"{time_ratio:.4f}", "", "", "", "", "",
                  f"{ratio('ours', False):.3f} / {ratio('torch', False):.3f}" if memory else "-")
    Console(width=170).print(table)
    print(f"check: zeros ours {check['zeros_ours']:,}, torch {check['zeros_torch']:,} (target {n1:,}); "
          f"masks differ at {check['positions_differing']} positions, {check['differing_outside_ties']} of them "
          f"outside the {check['tied_at_threshold']} weights tied at the threshold |w| = {check['threshold']:.9g}")
    if memory:
        print(f"memory method: {memory['ours'].get('method')}; child processes run with "
              f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}")
    meets = bool(time_ratio <= AIMS["time_ratio"] and ratio("ours", False) <= AIMS["extra_memory_ratio"])

    _common.emit_result({
        "benchmark": BENCHMARK,
        "time_ratio": round(time_ratio, 5),
        "extra_memory_ratio": round(ratio("ours", False), 5),
        "torch_extra_memory_ratio": round(ratio("torch", False), 5),
        "extra_memory_ratio_incl_output": round(ratio("ours", True), 5),
        "torch_extra_memory_ratio_incl_output": round(ratio("torch", True), 5),
        "ours_s": round(ours_s, 4),
        "torch_s": round(torch_s, 4),
        "ours_level2_s": round(level2_s, 4),
        "ours_rounds": [round(x, 4) for x in results["ours"]],
        "torch_rounds": [round(x, 4) for x in results["torch"]],
        # median over rounds of (ours / torch) in the same round: less sensitive to load swings
        "time_ratio_paired": round(_common.median(ratios), 5),
        "ours_peak_extra_bytes": memory.get("ours", {}).get("peak_extra"),
        "torch_peak_extra_bytes": memory.get("torch", {}).get("peak_extra"),
        "weight_bytes": weight_bytes,
        "weights": n_weights,
        "matrices": len(weights),
        "removed": n1,
        "zeros_ours": check["zeros_ours"],
        "zeros_torch": check["zeros_torch"],
        "zeros_match": check["zeros_ours"] == check["zeros_torch"] == n1,
        "masks_match_outside_ties": check["differing_outside_ties"] == 0,
        "tied_at_threshold": check["tied_at_threshold"],
        "memory_method": memory.get("ours", {}).get("method"),
        "aims": AIMS,
        "meets_aims": meets,
        "config": asdict(size),
    }, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
