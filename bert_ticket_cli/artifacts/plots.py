"""The papers' figures as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bert_ticket_cli.artifacts.tickets_view import TaskView, method_order

COLORS = {"imp": "tab:blue", "omp": "tab:green", "random_pruning": "tab:orange", "random_reinit": "tab:red"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sparsity_curves(view: TaskView, path: Path) -> Path:
    """Sparsity -> metric per method (mean +- std over seeds), with the full model's band.

    Raises ``ValueError`` unless one method has >= 2 sparsity points (no empty or one-dot
    figures: ``report`` skips such a view with one line)."""
    if not view.plottable():
        raise ValueError(f"{view.task}: no method with >= 2 sparsity points")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if view.full.values:
        m, s = view.full.mean, view.full.std
        ax.axhline(m, color="black", lw=1, label=f"full model ({view.full.n} seed{'s' if view.full.n > 1 else ''})")
        if s is not None:  # one seed has no std: no band
            ax.axhspan(m - s, m + s, color="gray", alpha=0.25, lw=0)
    for method in sorted(view.curves, key=method_order):
        pts = sorted(view.curves[method].items())
        xs = [100 * sp for sp, _ in pts]
        ys = [c.mean for _, c in pts]
        es = [c.std or 0.0 for _, c in pts]
        ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, capsize=2, label=method, color=COLORS.get(method))
    ax.set_xlabel("sparsity of the prunable weights (%)")
    ax.set_ylabel(view.metric)
    ax.set_title(f"{view.title}: {view.metric} vs sparsity", fontsize=9 if view.label else None)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def transfer_heatmap(matrix: dict[str, Any], path: Path) -> Path:
    """Rows: tickets (source), columns: target tasks; cells: the target's main metric."""
    import numpy as np

    plt = _pyplot()
    rows = list(matrix["main_value"])
    tasks = list(matrix["tasks"])
    grid = np.array([[matrix["main_value"][r].get(t, np.nan) if matrix["main_value"][r].get(t) is not None
                      else np.nan for t in tasks] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(tasks) + 3, 0.5 * len(rows) + 2), dpi=120)
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for i in range(len(rows)):
        for j in range(len(tasks)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", color="white", fontsize=7)
    fig.colorbar(im, ax=ax)
    ax.set_title("ticket transfer (main metric of the target task)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def earlybird_heatmap(data: dict[str, Any], path: Path, title: str) -> Path:
    """EarlyBERT's Figure 2: the normalised Hamming distance between the structured masks drawn
    at every early-bird check (x and y: the check steps), with the step the ticket was taken.

    ``data`` is a run's ``earlybird.json``; a malformed one raises ``ValueError``.
    """
    import numpy as np

    steps = [int(s) for s in data["steps"]]
    grid = np.array(data["distance"], dtype=float)
    n = len(steps)
    if n == 0 or grid.shape != (n, n):
        raise ValueError(f"distance is {grid.shape}, expected {n} x {n} for {n} check steps")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    im = ax.imshow(grid, cmap="viridis", origin="lower", vmin=0.0, vmax=max(float(np.nanmax(grid)), 1e-9))
    every = max(1, n // 10)
    ticks = list(range(0, n, every))
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(ticks, [str(steps[i]) for i in ticks], fontsize=7)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if grid[i, j] > 0.6 * np.nanmax(grid) else "white")
    found = data.get("found_at")
    if found is not None and int(found) in steps:
        k = steps.index(int(found))
        ax.axvline(k, color="red", lw=1, ls="--")
        ax.axhline(k, color="red", lw=1, ls="--")
        ax.plot([k], [k], marker="*", ms=12, color="red", label=f"early bird at step {found}")
        ax.legend(fontsize=7, loc="upper left")
    ax.set_xlabel("training step of the mask")
    ax.set_ylabel("training step of the mask")
    sub = f"window {data.get('window')}, threshold {data.get('threshold')}"
    ax.set_title(f"{title}\nmask distance ({sub})" if found is not None else f"{title}\nmask distance ({sub}); no early bird",
                 fontsize=9)
    fig.colorbar(im, ax=ax, label="normalised Hamming distance")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


#: Line style per EarlyBERT stage in the pre-training loss plot (a dense run: solid).
_STAGE_STYLE = {"search": "--", "dense": ":"}


def pretrain_loss(curves: list[dict[str, Any]], path: Path, log_y: bool | None = None) -> Path:
    """Pre-training loss against elapsed wall time, one colour per run: training loss as a thin
    line, validation MLM loss as markers joined by a line; an EarlyBERT run's search stage dashed,
    its dense baseline (when trained) dotted.

    ``curves`` comes from ``pretrain_view.curves`` (points ``(elapsed_s, loss)``).  The x axis is
    in hours, in minutes when every curve ends within 2 h; ``log_y`` None = a log y axis when the
    losses span more than a factor of 4 (a run from scratch starts near ln(vocab) ~ 10).
    """
    from matplotlib.lines import Line2D

    if not curves:
        raise ValueError("no loss curves to plot")
    points = [p for c in curves for p in c["train"] + c["eval"]]
    end = max(t for t, _ in points)
    scale, unit = (60.0, "min") if end < 2 * 3600 else (3600.0, "h")
    losses = [v for _, v in points]
    if log_y is None:
        log_y = min(losses) > 0 and max(losses) / min(losses) > 4
    plt = _pyplot()
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    runs = list(dict.fromkeys(c["run"] for c in curves))
    color = {r: palette[i % len(palette)] for i, r in enumerate(runs)}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for c in curves:
        ls = _STAGE_STYLE.get(c.get("stage"), "-")
        col = color[c["run"]]
        if c["train"]:
            ax.plot([t / scale for t, _ in c["train"]], [v for _, v in c["train"]], color=col, lw=0.7,
                    alpha=0.6, ls=ls)
        if c["eval"]:
            ax.plot([t / scale for t, _ in c["eval"]], [v for _, v in c["eval"]], color=col, lw=1.5, ls=ls,
                    marker="o", ms=4)
    # One entry per curve (run, or run (search) / run (compact)), then what the two styles mean.
    handles = [Line2D([], [], color=color[c["run"]], lw=2, ls=_STAGE_STYLE.get(c.get("stage"), "-"),
                      label=c["label"]) for c in curves]
    handles.append(Line2D([], [], color="gray", lw=0.7, alpha=0.6, label="training loss"))
    handles.append(Line2D([], [], color="gray", lw=1.5, marker="o", ms=4, label="validation MLM loss"))
    if log_y:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 2, 3, 4 ... rather than 2 x 10^0
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.set_xlabel(f"elapsed ({unit})")
    ax.set_ylabel("MLM loss")
    ax.set_title("pre-training: loss vs elapsed time")
    ax.grid(alpha=0.3, which="both" if log_y else "major")
    ax.legend(handles=handles, fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


#: Colour per super-ticket kind (Liang et al.'s phase-transition figure).
TICKET_COLORS = {"winning": "tab:green", "random": "tab:blue", "losing": "tab:red"}


def phase_transition(exp: Any, path: Path) -> Path:
    """Super tickets' phase transition: the dev metric against the fraction of encoder weights
    kept, one line per ticket kind (mean over seeds, a +- std band), the full model as a
    horizontal band (mean +- std), the super ticket starred.

    ``exp`` is a ``super_tickets_view.Experiment``; raises ``ValueError`` unless one kind has
    >= 2 levels (``report`` skips such an experiment with one line)."""
    if not exp.plottable():
        raise ValueError(f"{exp.task}: no ticket kind with >= 2 levels")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    full = exp.full
    if full is not None:
        m, s = full.mean, full.std
        ax.axhline(m, color="black", lw=1.2, ls="--",
                   label=f"full model {m:.3f}" + (f" ± {s:.3f}" if s is not None else "") + f" (n={full.n})")
        if s is not None:  # one seed has no std: no band
            ax.axhspan(m - s, m + s, color="gray", alpha=0.2, lw=0)
    for kind in ("winning", "random", "losing"):
        cells = exp.cells.get(kind, {})
        if not cells:
            continue
        pts = []
        for level in sorted(cells):
            c = cells[level]
            x = c.field_mean("kept_fraction")
            pts.append((100 * (x if x is not None else 1.0 - level), c.mean, c.std or 0.0))
        pts.sort()
        xs, ys, es = ([p[i] for p in pts] for i in range(3))
        color = TICKET_COLORS[kind]
        ax.plot(xs, ys, marker="o", ms=4, lw=1.6, color=color, label=f"{kind} tickets")
        ax.fill_between(xs, [y - e for y, e in zip(ys, es)], [y + e for y, e in zip(ys, es)], color=color,
                        alpha=0.18, lw=0)
    best = exp.super_ticket()
    if best is not None:
        level, cell = best
        x = cell.field_mean("kept_fraction")
        x = 100 * (x if x is not None else 1.0 - level)
        word = {True: "beats full", False: "does not beat full", None: ""}[exp.beats_full()]
        ax.plot([x], [cell.mean], marker="*", ms=16, color="gold", markeredgecolor="black", ls="none", zorder=5,
                label=f"super ticket: level {level:.2f}, {cell.mean:.3f}" + (f" ({word})" if word else ""))
    ax.invert_xaxis()  # left: the full model; right: smaller tickets (the phase transition reads left to right)
    ax.set_xlabel("encoder weights kept (%)")
    ax.set_ylabel(f"dev {exp.metric}")
    ns = sorted({c.n for cells in exp.cells.values() for c in cells.values()})
    seeds = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"
    ax.set_title(f"super tickets: {exp.title}\n{exp.metric}: mean ± std over {seeds} seed{'s' if ns[-1] > 1 else ''}",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
