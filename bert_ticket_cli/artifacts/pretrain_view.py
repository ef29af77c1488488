"""The pre-training view of the runs (``report view=pretrain``; Izsak et al., EMNLP 2021): per
``bert-ticket pretrain`` run, what the budget was, how much of it was used and how, why training
stopped, and where the validation MLM loss ended.

``build`` / ``display_row`` are pure functions over flattened summary rows
(``artifacts.index.query``).  ``curves`` is the one function here that reads files: a run's
``metrics.jsonl`` (and, for an EarlyBERT pre-training run, its stages' files) for the loss plot.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bert_ticket_cli.artifacts.paths import RunDir

#: The summary roles of a pre-training run (a dense run, or EarlyBERT's search -> compact run);
#: EarlyBERT's stage sub-runs (role ``stage``) are parts of a row, not rows.
ROLES = ("pretrain", "earlybert")

#: Columns of the machine-readable rows (``format=json|csv``), in order.
FIELDS = ["run_name", "model", "method", "seed", "role", "model_params", "params_m", "budget_s", "budget_h",
          "elapsed_s", "elapsed_h", "train_time_s", "steps", "tokens", "tokens_per_s", "stop_reason", "clock",
          "mlm_loss", "mlm_accuracy", "perplexity", "search_time_s", "search_h", "compact_time_s", "compact_h",
          "dense_time_s", "run_dir"]

#: Table headers, one per cell of ``display_row``.
TABLE_COLUMNS = ["run", "model", "method", "params (M)", "budget (h)", "elapsed (h)", "steps", "tokens/s",
                 "stop", "MLM loss", "accuracy", "perplexity", "search (h)", "compact (h)"]


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
        return None
    return float(v)


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 3600.0


def _stage_time(r: dict[str, Any], stage: str) -> float | None:
    """A stage's training time: ``<stage>_time_s`` (as EarlyBERT fine-tuning summaries write it),
    else from a ``stages`` record (``stages.<stage>.train_time_s`` or ``stages.<stage>`` itself)."""
    for key in (f"{stage}_time_s", f"stages.{stage}.train_time_s", f"stages.{stage}.time_s", f"stages.{stage}"):
        v = _num(r.get(key))
        if v is not None:
            return v
    return None


def _metric(r: dict[str, Any], name: str) -> float | None:
    v = _num(r.get(f"metrics.{name}"))
    if v is None and r.get("main_metric") == name:
        v = _num(r.get("main_value"))
    return v


def is_pretrain_run(r: dict[str, Any]) -> bool:
    """A whole pre-training run: verb ``pretrain`` and role ``pretrain`` or ``earlybert`` (a summary
    without a role is an older dense run)."""
    return r.get("verb") == "pretrain" and (r.get("role") or "pretrain") in ROLES


def build(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per pre-training run in ``rows`` (see ``FIELDS``), sorted by run name; times in
    seconds (``*_s``) and in hours (``*_h``), parameters also in millions.

    For an EarlyBERT run, ``elapsed`` is the search and compact stages together (its summary's
    ``search_elapsed_s`` + ``elapsed_s``, the compact stage's); the optional dense baseline stage
    is not part of the run's budget.  Steps, tokens/s and the final metrics are the compact
    stage's (the model the run produces).
    """
    out = []
    for r in rows:
        if not is_pretrain_run(r):
            continue
        loss = _metric(r, "mlm_loss")
        ppl = _metric(r, "perplexity")
        if ppl is None and loss is not None and loss < 700:  # exp() overflows beyond ~709
            ppl = math.exp(loss)
        params = r.get("model_params")
        budget, elapsed = _num(r.get("budget_s")), _num(r.get("elapsed_s"))
        earlybert = (r.get("role") or "pretrain") == "earlybert"
        search_elapsed = _num(r.get("search_elapsed_s")) if earlybert else None
        if elapsed is not None and search_elapsed is not None:  # elapsed_s is the compact stage's
            elapsed += search_elapsed
        search = _stage_time(r, "search") if earlybert else None
        compact = _stage_time(r, "compact") if earlybert else None
        model = r.get("model")
        if model is None:
            model = r.get("model.name")
        out.append({
            "run_name": r.get("run_name"),
            "model": model,
            "method": r.get("method"),
            "seed": r.get("seed"),
            "role": r.get("role") or "pretrain",
            "model_params": params,
            "params_m": None if _num(params) is None else _num(params) / 1e6,
            "budget_s": budget,
            "budget_h": _hours(budget),
            "elapsed_s": elapsed,
            "elapsed_h": _hours(elapsed),
            "train_time_s": _num(r.get("train_time_s")),
            "steps": r.get("steps"),
            "tokens": r.get("tokens"),
            "tokens_per_s": _num(r.get("tokens_per_s")),
            "stop_reason": r.get("stop_reason"),
            "clock": r.get("clock"),
            "mlm_loss": loss,
            "mlm_accuracy": _metric(r, "mlm_accuracy"),
            "perplexity": ppl,
            "search_time_s": search,
            "search_h": _hours(search),
            "compact_time_s": compact,
            "compact_h": _hours(compact),
            "dense_time_s": _stage_time(r, "dense") if earlybert else None,
            "run_dir": r.get("run_dir"),
        })
    out.sort(key=lambda x: (str(x["run_name"]), str(x["seed"])))
    return out


def display_row(row: dict[str, Any]) -> list[str]:
    """The table cells of one row (see ``TABLE_COLUMNS``)."""

    def f(v: Any, fmt: str) -> str:
        return "-" if v is None else fmt.format(v)

    return [str(row["run_name"]), str(row["model"] or "-"), str(row["method"] or "-"),
            f(row["params_m"], "{:.1f}" if (row["params_m"] or 0) >= 1 else "{:.3f}"),  # small test models
            f(row["budget_h"], "{:.2f}"), f(row["elapsed_h"], "{:.2f}"),
            f(row["steps"], "{:,}"), f(row["tokens_per_s"], "{:,.0f}"), str(row["stop_reason"] or "-"),
            f(row["mlm_loss"], "{:.4f}"), f(row["mlm_accuracy"], "{:.4f}"), f(row["perplexity"], "{:.2f}"),
            f(row["search_h"], "{:.2f}"), f(row["compact_h"], "{:.2f}")]


def read_metrics(path: Path) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """``(train, eval)`` points ``(elapsed_s, loss)`` of one ``metrics.jsonl``.  Lines that are not
    JSON (the last one while a run is writing it) and events without a time or loss are skipped;
    a missing file gives no points."""
    train: list[tuple[float, float]] = []
    evals: list[tuple[float, float]] = []
    try:
        fh = path.open()
    except OSError:
        return train, evals
    with fh:
        for line in fh:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if not isinstance(e, dict):
                continue
            t = _num(e.get("elapsed_s"))
            if e.get("event") == "train":
                loss, into = _num(e.get("loss")), train
            elif e.get("event") == "eval":
                loss, into = _num(e.get("mlm_loss", e.get("loss"))), evals
            else:
                continue
            if t is not None and loss is not None and math.isfinite(loss):
                into.append((t, loss))
    train.sort()
    evals.sort()
    return train, evals


def _find_run_dir(row: dict[str, Any], root: Path | None) -> Path | None:
    """The run folder: its summary's ``run_dir`` when it still exists, else ``<root>/pretrain/<run>``
    (runs copied or moved since, or written with a relative output_dir from another folder)."""
    candidates = []
    if row.get("run_dir"):
        candidates.append(Path(str(row["run_dir"])).expanduser())
    if root is not None:
        if row.get("run_dir"):
            candidates.append(root / "pretrain" / Path(str(row["run_dir"])).name)
        if row.get("run_name"):
            candidates.append(root / "pretrain" / str(row["run_name"]))
    for c in candidates:
        if c.is_dir():
            return c
    return None


def _shift(points: list[tuple[float, float]], by: float) -> list[tuple[float, float]]:
    return [(t + by, v) for t, v in points]


def curves(rows: list[dict[str, Any]], root: Path | None = None) -> list[dict[str, Any]]:
    """The loss curves of the rows of ``build``: one entry per curve, ``{"run", "label", "stage",
    "train", "eval"}`` (``stage`` None for a dense run; points ``(elapsed_s, loss)``).

    An EarlyBERT run gives its compact stage's curve and, when present, its search stage's and
    its dense baseline's (``<run>/stages/<stage>/metrics.jsonl``).  When the compact stage's clock starts again from
    zero, its points are shifted by the search stage's last time, so the x axis is the time the
    whole run has spent.  Runs without any point are left out.
    """
    out = []
    for row in rows:
        rd = _find_run_dir(row, root)
        if rd is None:
            continue
        name = str(row["run_name"])
        if row.get("role") == "earlybert":
            run = RunDir(rd)
            s_train, s_eval = read_metrics(run.stage("search").metrics)
            c_train, c_eval = read_metrics(run.stage("compact").metrics)
            if not (c_train or c_eval):  # older layout: the compact stage logs in the run folder
                c_train, c_eval = read_metrics(run.metrics)
            search_end = max((t for t, _ in s_train + s_eval), default=None)
            compact_start = min((t for t, _ in c_train + c_eval), default=None)
            if search_end is not None and compact_start is not None and compact_start < search_end:
                c_train, c_eval = _shift(c_train, search_end), _shift(c_eval, search_end)
            if s_train or s_eval:
                out.append({"run": name, "label": f"{name} (search)", "stage": "search",
                            "train": s_train, "eval": s_eval})
            if c_train or c_eval:
                out.append({"run": name, "label": f"{name} (compact)", "stage": "compact",
                            "train": c_train, "eval": c_eval})
            d_train, d_eval = read_metrics(run.stage("dense").metrics)
            if d_train or d_eval:  # the dense baseline, from time 0 like the search
                out.append({"run": name, "label": f"{name} (dense baseline)", "stage": "dense",
                            "train": d_train, "eval": d_eval})
        else:
            train, evals = read_metrics(RunDir(rd).metrics)
            if train or evals:
                out.append({"run": name, "label": name, "stage": None, "train": train, "eval": evals})
    return out
