"""The papers' figures as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bert_ticket_cli.artifacts.tickets_view import ORDER, TaskView

COLORS = {"imp": "tab:blue", "omp": "tab:green", "random_pruning": "tab:orange", "random_reinit": "tab:red"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sparsity_curves(view: TaskView, path: Path) -> Path:
    """Sparsity -> metric per method (mean +- std over seeds), with the full model's band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    if view.full.values:
        m, s = view.full.mean, view.full.std
        ax.axhline(m, color="black", lw=1, label=f"full model ({len(view.full.values)} seeds)")
        ax.axhspan(m - s, m + s, color="gray", alpha=0.25, lw=0)
    for method in sorted(view.curves, key=lambda k: (ORDER.index(k) if k in ORDER else 99, k)):
        pts = sorted(view.curves[method].items())
        xs = [100 * sp for sp, _ in pts]
        ys = [c.mean for _, c in pts]
        es = [c.std for _, c in pts]
        ax.errorbar(xs, ys, yerr=es, marker="o", ms=3, capsize=2, label=method, color=COLORS.get(method))
    ax.set_xlabel("sparsity of the prunable weights (%)")
    ax.set_ylabel(view.metric)
    ax.set_title(f"{view.task}: {view.metric} vs sparsity")
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
