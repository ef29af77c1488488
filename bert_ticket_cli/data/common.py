"""What every loader in ``data/`` shares: content fingerprints, in-memory datasets with a chosen
fingerprint, one-line error text, the task-folder lookup, the offline checks and the hub loader
of the GLUE and SQuAD tasks, and the cache folder.

This is the lowest module of ``data/``: it imports nothing from the package but ``errors``, so
``glue.py``, ``squad.py``, ``mlm.py`` and ``pretraining/`` all import it and never each other in
a circle.  A *task* here is any object with the facts a loader reads (``name``, ``kind``,
``splits``, ``hub_dataset``, ...): the task objects of :mod:`bert_ticket_cli.tasks`, which sit
above ``data/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import datasets
from datasets import Dataset, DatasetDict, Features, Value

from bert_ticket_cli.errors import UserError



class TaskFacts(Protocol):
    """What the loaders read of a task; every :mod:`bert_ticket_cli.tasks` task object has it.

    ``label_names`` follow the label-id order of the ``nyu-mll/glue`` hub dataset, so that a
    model fine-tuned on hub data and one fine-tuned on the GLUE TSV files agree on class ids.
    """

    name: str
    kind: str
    num_labels: int
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]
    eval_splits: tuple[str, ...]
    test_splits: tuple[str, ...]
    hub_dataset: str

    @property
    def splits(self) -> tuple[str, ...]: ...


_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def default_cache_dir(cfg: Any) -> str:
    """The cache folder of a run: ``cache_dir``, else $BERT_TICKET_CACHE, else ~/.cache/bert_ticket."""
    if cfg.cache_dir:
        return str(Path(cfg.cache_dir).expanduser())
    base = os.environ.get("BERT_TICKET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "bert_ticket"
    )
    return base


def check_splits(task: TaskFacts, splits: Sequence[str]) -> None:
    """Reject split names the task does not have, before touching any file."""
    if isinstance(splits, str):
        raise TypeError("splits must be a sequence of split names, not a string")
    for split in splits:
        if split not in task.splits:
            raise UserError(
                f"task {task.name} has no split {split!r}; its splits are {', '.join(task.splits)}"
            )


def one_line(exc: BaseException) -> str:
    """An exception as a short single line, for embedding in a UserError message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes: the identity of local data for fingerprints."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_fingerprint(*parts: str) -> str:
    """A datasets-style 16-hex-digit fingerprint from strings, stable across processes."""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def make_dataset(
    columns: Mapping[str, list], features: Features, split: str, fingerprint: str
) -> Dataset:
    """An in-memory Dataset whose fingerprint we choose (from_dict would pick a random one)."""
    built = Dataset.from_dict(dict(columns), features=features, split=split)
    return Dataset(built.data, info=built.info, split=built.split, fingerprint=fingerprint)


def resolve_task_dir(data_dir: str | os.PathLike, folder_name: str, file_names: Sequence[str]) -> Path:
    """Accept either the task folder itself or its parent (task folder matched in any case)."""
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise UserError(f"data_dir {root} does not exist; point task.data_dir at the {folder_name} folder")
    if not root.is_dir():
        raise UserError(f"data_dir {root} is not a folder; point task.data_dir at the {folder_name} folder")
    if any((root / name).is_file() for name in file_names):
        return root
    wanted = folder_key(folder_name)
    for child in sorted(root.iterdir()):
        if child.is_dir() and folder_key(child.name) == wanted:
            return child
    return root


def folder_key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(".", "")


def offline_variable() -> str | None:
    """The variable that puts us offline, read now (the libraries read it only at import)."""
    for var in _OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in _TRUE_VALUES:
            return var
    if datasets.config.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE"
    return None


@contextlib.contextmanager
def forced_offline(enabled: bool) -> Iterator[None]:
    """Make datasets/huggingface_hub honour an offline variable set after they were imported.

    Without this, setting HF_HUB_OFFLINE after import would still let ``load_dataset`` try
    the network and hang on timeouts instead of failing at once.
    """
    if not enabled:
        yield
        return
    import huggingface_hub.constants as hub_constants

    saved = (
        datasets.config.HF_HUB_OFFLINE,
        datasets.config.HF_DATASETS_OFFLINE,
        hub_constants.HF_HUB_OFFLINE,
    )
    datasets.config.HF_HUB_OFFLINE = True
    datasets.config.HF_DATASETS_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        (
            datasets.config.HF_HUB_OFFLINE,
            datasets.config.HF_DATASETS_OFFLINE,
            hub_constants.HF_HUB_OFFLINE,
        ) = saved


def load_from_hub(task: TaskFacts, hub: str, splits: Sequence[str]) -> DatasetDict:
    """``load_dataset`` of a GLUE or SQuAD task, failures turned into one-line UserErrors that name the fix."""
    args: tuple[str, ...] = (hub,) if task.kind == "qa" else (hub, task.name)
    label = hub if task.kind == "qa" else f"{hub} ({task.name})"
    local_hint = (
        "a folder with train-v1.1.json/dev-v1.1.json"
        if task.kind == "qa"
        else "a local GLUE folder"
    )
    offline = offline_variable()
    try:
        with forced_offline(offline is not None):
            loaded = datasets.load_dataset(*args)
    except Exception as exc:  # noqa: BLE001 - any failure here is about the data source
        if offline is not None:
            raise UserError(
                f"dataset {label} is not available offline ({offline}=1): pass "
                f"task.data_dir=PATH to {local_hint}, or unset {offline}"
            ) from exc
        raise UserError(
            f"could not load dataset {label} from the Hugging Face hub ({one_line(exc)}); "
            f"pass task.data_dir=PATH to {local_hint}"
        ) from exc
    if not isinstance(loaded, DatasetDict):
        raise UserError(f"dataset {label} did not load as a dataset with splits; pass task.data_dir=PATH")
    for split in splits:
        if split not in loaded:
            raise UserError(
                f"dataset {label} has no split {split!r} (it has {', '.join(loaded)}); "
                f"pass task.data_dir=PATH to {local_hint}"
            )
    chosen = DatasetDict({s: loaded[s] for s in (splits or list(loaded))})
    if task.kind != "qa":
        for split, ds in chosen.items():
            if "idx" in ds.column_names and ds.features["idx"] != Value("int64"):
                chosen[split] = ds.cast_column("idx", Value("int64"))
    return chosen
