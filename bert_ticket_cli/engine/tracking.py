"""Experiment trackers (``tracking.log_with=[tensorboard,wandb,...]``) through Accelerate's.

``metrics.jsonl`` stays the record; a tracker gets a copy of each of its lines, after the
reduction over processes (the records hold agreed values) and from the main process only
(Accelerate's trackers act on the main process).  Every folder that trains (a run, an IMP
level, an EarlyBERT stage) is one tracker run, its files under ``<folder>/tracking/`` and its
identity in ``tracking/tracker.json``: a resumed training continues the same tracker run (the
same W&B id, the same TensorBoard folder) at its checkpoint's step.  Sub-runs are grouped
under the run's name (W&B ``group``), and carry the run's flattened config as their
hyper-parameters.

On a resume, the lines logged after the checkpoint are logged again (the resumed run repeats
those steps exactly): TensorBoard is told to hide the stale ones (``purge_step``); W&B keeps
the first copy and ignores steps it has seen.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bert_ticket_cli.artifacts.paths import (
    TRACKER_FILE, RunDir, atomic_write_json, config_container, flatten, run_dir,
)


def hyperparameters(cfg: Any) -> dict[str, Any]:
    """The config, flattened (``train.lr``), with values every tracker takes (lists, dicts and
    None as text)."""
    out: dict[str, Any] = {}
    for key, value in flatten(config_container(cfg)).items():
        if value is None or isinstance(value, (list, dict)):
            value = json.dumps(value)
        out[key] = value
    return out


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record as tracker values: ``train/loss``, ``eval/accuracy`` (numbers only;
    the step is the tracker's step)."""
    prefix = str(record.get("event", "train"))
    return {f"{prefix}/{k}": float(v) for k, v in record.items()
            if k not in ("event", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}


@dataclass
class Tracking:
    """The trackers of one session (``log_with`` empty: nothing to do, nothing written)."""

    log_with: tuple[str, ...]
    project: str
    top: Path  # the run folder: sub-runs are named relative to it
    verb: str
    hparams: dict[str, Any] = field(default_factory=dict)
    active: bool = False

    @classmethod
    def from_config(cls, cfg: Any) -> "Tracking":
        tracking = getattr(cfg, "tracking", None)
        names = tuple(tracking.log_with) if tracking is not None else ()
        return cls(log_with=names, project=str(tracking.project) if tracking else "bert-ticket",
                   top=run_dir(cfg).root if names else Path("."), verb=str(cfg.verb),
                   hparams=hyperparameters(cfg) if names else {})

    def _display(self, run: RunDir) -> str:
        try:
            rel = run.root.relative_to(self.top)
        except ValueError:
            return run.root.name
        return "/".join([self.top.name, *rel.parts])

    def _identity(self, run: RunDir, step: int) -> dict[str, Any]:
        """The tracker run's id, kept in ``tracking/tracker.json``: reused by a resume (a
        checkpoint's step > 0), new for a training that starts from step 0."""
        path = run.tracking / TRACKER_FILE
        if step > 0 and path.is_file():
            try:
                return dict(json.loads(path.read_text()))
            except ValueError:
                pass  # unreadable: a new tracker run (metrics.jsonl stays the record)
        ident = {"id": uuid.uuid4().hex[:16], "name": self._display(run)}
        atomic_write_json(path, ident)
        return ident

    def start(self, accelerator, run: RunDir, step: int) -> None:
        """Open ``run``'s tracker run (continued when ``step`` > 0: a resume from a checkpoint)."""
        if not self.log_with:
            return
        self.finish(accelerator)
        folder = run.tracking
        existed = folder.is_dir()
        ident: dict[str, Any] = {}
        if accelerator.is_main_process:
            ident = self._identity(run, step)
        # The trackers that write files write them here (Accelerate reads its project config).
        accelerator.project_configuration.project_dir = str(folder)
        accelerator.project_configuration.logging_dir = str(folder)
        name, rid = ident.get("name", run.root.name), ident.get("id")
        kwargs: dict[str, dict[str, Any]] = {
            # Steps after the checkpoint were logged before the interruption and are logged
            # again: TensorBoard hides the old copies from this step on.
            "tensorboard": {"purge_step": step + 1} if existed else {},
            "wandb": {"id": rid, "resume": "allow", "dir": str(folder), "name": name,
                      "group": self.top.name, "job_type": self.verb},
            "mlflow": {"logging_dir": str(folder), "run_name": name, "run_id": ident.get("mlflow_run_id")},
            "aim": {"run_hash": ident.get("aim_run_hash"), "experiment": self.project},
            "trackio": {"name": name, "resume": "allow"},  # (Trackio keeps its own local store)
        }
        if "mlflow" in self.log_with and accelerator.is_main_process:
            _mlflow_store(folder)
        accelerator.init_trackers(self.project, config=self.hparams,
                                  init_kwargs={k: v for k, v in kwargs.items() if k in self.log_with})
        self.active = True
        if accelerator.is_main_process:
            self._keep_ids(accelerator, run, ident)

    def _keep_ids(self, accelerator, run: RunDir, ident: dict[str, Any]) -> None:
        """Trackers that pick their own run ids (MLflow, Aim): stored for the resume."""
        more = dict(ident)
        for tracker in accelerator.trackers:
            if tracker.name == "mlflow":
                more["mlflow_run_id"] = tracker.tracker.info.run_id
            elif tracker.name == "aim":
                more["aim_run_hash"] = tracker.tracker.hash
        if more != ident:
            atomic_write_json(run.tracking / TRACKER_FILE, more)

    def log(self, accelerator, record: dict[str, Any]) -> None:
        """One metrics.jsonl record, at its optimizer step."""
        if self.active:
            values = scalars(record)
            if values:
                accelerator.log(values, step=int(record.get("step") or 0))

    def finish(self, accelerator) -> None:
        """Close the open tracker runs (not ``end_training``: that also ends the process
        group, which the next IMP level or stage still needs)."""
        if not self.active:
            return
        self.active = False
        try:
            for tracker in accelerator.trackers:
                tracker.finish()
        finally:
            accelerator.trackers = []


def _mlflow_store(folder: Path) -> None:
    """MLflow writes to ``tracking/mlruns`` unless a tracking server is set (MLFLOW_TRACKING_URI)."""
    import os

    import mlflow

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri((folder / "mlruns").resolve().as_uri())
