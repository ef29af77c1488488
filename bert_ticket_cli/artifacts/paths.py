"""Every file name a run writes, in one place.

::

    runs/<verb>/<run-name>/
        config.yaml          the resolved config (what ran)
        metrics.jsonl        one JSON object per log / eval event (rank 0 appends)
        summary.json         the run's record, written last: its presence means "finished"
        model/               the trained model (safetensors + config + tokenizer), HF format
        checkpoints/step-N/  resumable state (Accelerate save_state + trainer_state.json)
        predictions/         GLUE leaderboard TSVs (eval.predict_test=true)
        diverged.json        pretrain: what diverged, when, and the last good checkpoint
        tracking/            tracking.log_with=...: the trackers' files (TensorBoard events, wandb/, ...)
        tracking/tracker.json  the tracker run's stable id (a resumed run continues it)

    a multi-run procedure adds (each sub-run is a run folder of its own):
        rewind/weights.safetensors   prune: the rewind point (all weights, task head included)
        tickets/level-NN/            prune: ticket.safetensors + ticket.json (sparsity/ticket.py)
        tickets/earlybird/           EarlyBERT: the structured ticket
        levels/level-NN/             prune: one sub-run per level
        trajectory.json              prune: sparsity -> metric, one row per level
        stages/<stage>/              EarlyBERT: one sub-run per stage (search, compact, dense)
        stages/search/checks.safetensors   EarlyBERT: the ticket drawn at every check
        earlybird.json               EarlyBERT: check steps and mask-distance matrices
        tickets/<kind>-<level>/      super tickets: one structured ticket per kind and level
        levels/dense/, levels/<kind>-<level>/   super tickets: the full model, each ticket's training
        importance.safetensors, importance.json   super tickets: head / FFN importance scores
        importance.partial.safetensors            super tickets: an interrupted importance pass
        matrix.json                  transfer: source ticket x target task table

    and under the runs root, the report's index: .index/runs.sqlite
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_PREFIX = "step-"
TRAINER_STATE = "trainer_state.json"
SUMMARY_FILE = "summary.json"
#: A run moved aside by overwrite=true is renamed <name><REPLACED_MARK><time>.
REPLACED_MARK = ".replaced-"
#: The folder of a ticket (two files, written by sparsity/ticket.py).
TICKET_TENSORS = "ticket.safetensors"
TICKET_JSON = "ticket.json"
TICKETS_DIR = "tickets"
STAGES_DIR = "stages"
REWIND_WEIGHTS = ("rewind", "weights.safetensors")
#: How a ticket's meta names its rewind weights: relative to tickets/<ticket>/, so a prune
#: run folder can be moved or copied as a whole.
REWIND_FROM_TICKET = "/".join(("..", "..", *REWIND_WEIGHTS))
DIVERGED_FILE = "diverged.json"
MATRIX_FILE = "matrix.json"
#: The trackers' folder in every run / sub-run folder that trains, and the file keeping its
#: tracker run's id (engine/tracking.py).
TRACKING_DIR = "tracking"
TRACKER_FILE = "tracker.json"
INDEX_DIR = ".index"
INDEX_FILE = "runs.sqlite"


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY_FILE

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    @property
    def diverged(self) -> Path:
        return self.root / DIVERGED_FILE

    @property
    def tracking(self) -> Path:
        return self.root / TRACKING_DIR

    # ---- what the multi-run workflows add (see the module docstring) ----

    @property
    def rewind_weights(self) -> Path:
        return self.root.joinpath(*REWIND_WEIGHTS)

    def level(self, level: int) -> "RunDir":
        """The sub-run of one prune level."""
        return RunDir(self.root / "levels" / f"level-{level:02d}")

    def ticket(self, level: int) -> Path:
        """The ticket folder of one prune level."""
        return self.root / TICKETS_DIR / f"level-{level:02d}"

    @staticmethod
    def super_name(kind: str, level: float) -> str:
        """``winning-0.30``: a super-ticket kind at a level (ticket and sub-run folder name)."""
        return f"{kind}-{level:.2f}"

    def super_level(self, name: str) -> "RunDir":
        """The sub-run of one super ticket (``super_name``) or of the full model (``dense``)."""
        return RunDir(self.root / "levels" / name)

    def super_ticket(self, name: str) -> Path:
        return self.root / TICKETS_DIR / name

    @property
    def importance(self) -> Path:
        return self.root / "importance.safetensors"

    @property
    def importance_json(self) -> Path:
        return self.root / "importance.json"

    @property
    def importance_partial(self) -> Path:
        return self.root / "importance.partial.safetensors"

    @property
    def earlybird_ticket(self) -> Path:
        return self.root / TICKETS_DIR / "earlybird"

    def stage(self, stage: str) -> "RunDir":
        """The sub-run of one EarlyBERT stage."""
        return RunDir(self.root / STAGES_DIR / stage)

    @property
    def checks(self) -> Path:
        """The tickets drawn at every early-bird check (in the search stage's folder)."""
        return self.root / "checks.safetensors"

    @property
    def earlybird(self) -> Path:
        return self.root / "earlybird.json"

    @property
    def trajectory(self) -> Path:
        return self.root / "trajectory.json"

    @property
    def matrix(self) -> Path:
        return self.root / MATRIX_FILE

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step:08d}"

    def list_checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (temporary ``.tmp-*`` folders are ignored)."""
        if not self.checkpoints.is_dir():
            return []
        done = [
            p for p in self.checkpoints.iterdir()
            if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and (p / TRAINER_STATE).exists()
        ]
        return sorted(done, key=lambda p: p.name)

    def latest_checkpoint(self) -> Path | None:
        found = self.list_checkpoints()
        return found[-1] if found else None


#: Settings that cannot change a run's result: where and how it is stored, resumed and logged,
#: and where it runs (the global batch is the unit, so processes, devices, DeepSpeed's memory plan
#: and loader workers give the same training; ``engine.mixed_precision`` does not and counts).
#: The one list both uses of run identity read: the hash in a default run name
#: (:func:`run_name`) and the refusal of a run folder whose stored config differs
#: (``records.config_differences``).  A dotted key covers everything below it.
NON_IDENTITY_KEYS = (
    "verb", "output_dir", "run_name", "resume", "overwrite", "cache_dir",
    "engine.name", "engine.cpu", "engine.deepspeed", "engine.num_workers",
    "train.log_every", "train.save_every", "train.keep_checkpoints", "tracking", "launcher",
)
#: Hex digits of the config hash in a default run name.
IDENTITY_HASH_LEN = 8


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a dotted config key is one of ``prefixes`` or inside one (``train`` holds ``train.lr``)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def is_identity_key(key: str) -> bool:
    """Whether a dotted config key is part of a run's identity (see :data:`NON_IDENTITY_KEYS`)."""
    return not under(key, NON_IDENTITY_KEYS)


def experiment_settings(flat: dict[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings of a flattened stored config that make its experiment: the identity keys
    (:func:`is_identity_key`) but those ``under`` ``ignore`` (e.g. the seed, for pooling seeds)."""
    return {k: v for k, v in flat.items() if is_identity_key(k) and not under(k, ignore)}


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): d}


def config_container(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain dicts (what ``config.yaml`` stores)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def config_hash(cfg: Any) -> str:
    """A short hash of the settings that define the experiment (everything but
    :data:`NON_IDENTITY_KEYS`): two configs with the same hash train the same model."""
    import hashlib

    flat = {k: v for k, v in flatten(config_container(cfg)).items() if is_identity_key(k)}
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:IDENTITY_HASH_LEN]


def run_name(cfg: Any) -> str:
    """``<task>-<model>[-<method>]-s<seed>-<hash>`` unless ``run_name`` is set (kept as given);
    the hash (:func:`config_hash`) makes runs of different settings different folders."""
    if cfg.run_name:
        return str(cfg.run_name)
    method = cfg.method.name if hasattr(cfg, "method") else "dense"  # eval has no method
    tag = f"-{method}" if method and method != "dense" else ""
    return f"{cfg.task.name}-{cfg.model.name}{tag}-s{cfg.seed}-{config_hash(cfg)}"


def run_dir(cfg: Any) -> RunDir:
    return RunDir(Path(cfg.output_dir).expanduser() / cfg.verb / run_name(cfg))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(record, default=float) + "\n")
