"""``bert-ticket cache``: fill the caches a run reads, then prove an offline run will find them.

For compute nodes without the internet: on a login node, the same model / task overrides a run
takes (``model=... task=...``, or ``experiment=...``) load the tokenizer, the model and the
task's data the way a run loads them, which downloads them into the Hugging Face caches
(``HF_HOME``) and writes the tokenized splits to ``cache_dir``.  Then each is loaded again
with the hub forced offline (what ``HF_HUB_OFFLINE=1`` does), so "ok" means an offline run
loads it.  Under ``HF_HUB_OFFLINE=1`` (or with the hub unreachable) only the check runs.

Reads top to bottom: fetch (online only) -> check offline -> table -> the offline commands,
or one error line naming what is missing (exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from bert_ticket_cli.data.common import default_cache_dir, forced_offline, offline_variable
from bert_ticket_cli.errors import UserError
from bert_ticket_cli.model.build import build_model, load_tokenizer
from bert_ticket_cli.tasks.registry import load_task_data, task_info
from bert_ticket_cli.workflows.context import command, model_args, task_args

#: The commands printed when everything is cached (transfer / eval take the same model and
#: task settings; pre-training's corpus is ``pretrain prepare``'s).
OFFLINE_VERBS = ("rewind", "prune")


@dataclass
class Item:
    what: str  # tokenizer, model, data
    source: str
    ok: bool
    detail: str


def _sources(cfg: Any) -> dict[str, str | None]:
    """What each item is loaded from (None: nothing to fetch)."""
    info = task_info(cfg.task.name)
    tok = cfg.model.tokenizer or cfg.model.name_or_path
    synthetic_tok = tok == "synthetic" or (tok is None and cfg.task.name == "synthetic")
    if cfg.task.data_dir or cfg.task.data_files:
        data = str(cfg.task.data_dir or dict(cfg.task.data_files))
    elif info.name in ("synthetic", "mlm"):
        data = None if info.name == "synthetic" else "task.data_files"
    else:
        data = f"hub {cfg.task.hub_dataset or info.hub_dataset}"
    return {"tokenizer": None if synthetic_tok else tok, "model": cfg.model.name_or_path, "data": data}


def _steps(cfg: Any) -> list[tuple[str, Callable[[dict[str, Any]], str]]]:
    """(item, load it) in a run's order; each returns its detail line and keeps what the next needs."""
    info = task_info(cfg.task.name)

    def tokenizer(got: dict[str, Any]) -> str:
        got["tokenizer"] = load_tokenizer(cfg.model, cfg.task)
        return f"{type(got['tokenizer']).__name__}, {len(got['tokenizer'])} tokens"

    def model(got: dict[str, Any]) -> str:
        if cfg.model.name_or_path is None:
            return "built from model.config: nothing to fetch"
        m = build_model(cfg.model, kind=info.kind, num_labels=info.num_labels)
        return f"{sum(p.numel() for p in m.parameters()) / 1e6:.1f}M parameters"

    def data(got: dict[str, Any]) -> str:
        needed = ["train", *info.eval_splits, *(info.test_splits if cfg.eval.predict_test else ())]
        raw = info.load_raw(cfg, needed)  # the raw splits load without a tokenizer
        sizes = ", ".join(f"{len(raw[split])} {split}" for split in needed if split in raw)
        if "tokenizer" not in got:
            return f"{sizes}; not tokenized (no tokenizer)"
        load_task_data(cfg, got["tokenizer"], train=True, test=cfg.eval.predict_test)
        return f"{sizes}; tokenized into {default_cache_dir(cfg)}"

    return [("tokenizer", tokenizer), ("model", model), ("data", data)]


def _load_all(cfg: Any) -> dict[str, tuple[bool, str]]:
    got: dict[str, Any] = {}
    out: dict[str, tuple[bool, str]] = {}
    for name, step in _steps(cfg):
        try:
            out[name] = (True, step(got))
        except UserError as exc:
            text = str(exc)
            out[name] = (False, "not in the cache" if "not available offline" in text else text)
        except (OSError, ValueError) as exc:  # a library's own failure: one line of it
            out[name] = (False, (str(exc).strip().splitlines() or [type(exc).__name__])[0])
    return out


def cache(cfg: Any) -> int:
    from huggingface_hub import constants as hub
    import datasets

    offline = offline_variable()
    fetched: dict[str, tuple[bool, str]] = {}
    if offline is None:
        print("fetching into the caches (the hub is reachable: HF_HUB_OFFLINE is not set) ...", flush=True)
        fetched = _load_all(cfg)
    else:
        print(f"{offline}=1: nothing is downloaded; checking what an offline run finds", flush=True)
    with forced_offline(True):
        checked = _load_all(cfg)

    sources = _sources(cfg)
    items = []
    for name, (ok, detail) in checked.items():
        if not ok and name in fetched and not fetched[name][0]:
            detail = f"{detail} (download failed: {fetched[name][1]})"
        items.append(Item(name, sources[name] or "-", ok, detail))
    _print_table(items, hub.HF_HUB_CACHE, datasets.config.HF_DATASETS_CACHE, default_cache_dir(cfg))

    missing = [i for i in items if not i.ok]
    if missing:
        where = "" if offline is None else f"; run the same command where the hub is reachable, without {offline}=1"
        raise UserError("not ready for offline runs: " + "; ".join(f"{i.what} {i.source}: {i.detail}"
                                                                   for i in missing) + where)
    args = model_args(cfg) + task_args(cfg) + ([f"cache_dir={cfg.cache_dir}"] if cfg.cache_dir else [])
    print("\nOffline runs with these settings will find their model, tokenizer and data, e.g.:")
    for verb in OFFLINE_VERBS:
        print("  HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 " + command(verb, *args))
    print("  (and transfer / eval with the same model and task settings)")
    return 0


def _print_table(items: list[Item], hub_cache: str, datasets_cache: str, tokenized: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="offline check (each item loaded with the hub forced offline)", show_lines=False)
    for column in ("item", "source", "offline", "detail"):
        table.add_column(column, overflow="fold")
    for i in items:
        table.add_row(i.what, i.source, "ok" if i.ok else "MISSING", i.detail)
    console = Console(width=max(100, Console().width))
    console.print(table)
    console.print(f"caches: models/tokenizers {hub_cache}, datasets {datasets_cache}, tokenized {tokenized}")
