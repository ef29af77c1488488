"""Expand a sweep's overrides into jobs, and check every job's config before any starts."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from bert_ticket_cli.artifacts.paths import run_dir, run_name
from bert_ticket_cli.config.compose import compose, config_groups, validate
from bert_ticket_cli.config.rules import RUN_NAME_MAX
from bert_ticket_cli.errors import UserError


@dataclass
class Job:
    """One job of a sweep: its overrides (no sweep left in them) and its config."""

    index: int
    #: The overrides as the job's command line gets them (run_name and resume added).
    overrides: list[str]
    #: Swept key -> this job's value (as written in the override), in command-line order.
    swept: dict[str, str] = field(default_factory=dict)
    cfg: Any = None

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.swept.items()) or "(no swept key)"


class _GroupOptions:
    """What Hydra's parser asks to expand ``glob()``: the options of a config group."""

    def get_group_options(self, group: str, results_filter: Any = None, config_name: Any = None,
                          overrides: Any = None) -> list[str]:
        return list(config_groups().get(group, []))


def _parse(text: str) -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create(config_loader=_GroupOptions()).parse_overrides([text])[0]  # type: ignore[arg-type]
    except Exception as exc:  # hydra's grammar errors are long multi-line messages
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot parse override '{text}': {first}") from None


def expand(overrides: Sequence[str]) -> list[Job]:
    """The cartesian product of the swept values, in command-line order (the last key varies
    fastest, as Hydra's BasicSweeper does); the other overrides go to every job unchanged."""
    axes: list[list[tuple[str, str | None, str]]] = []  # per override: (key, swept value or None, text)
    seen: dict[str, str] = {}
    for text in overrides:
        if not text:
            continue
        if text.startswith("-"):
            raise UserError(f"unknown option '{text}' (options go before the overrides)")
        if "=" not in text and not text.startswith("~"):
            raise UserError(f"'{text}' is not an override: write key=value (e.g. seed=1,2,3)")
        ov = _parse(text)
        key = ov.key_or_group
        if key in seen:
            earlier = next(k for k, axis in enumerate(axes) if axis[0][0] == key)
            if ov.is_sweep_override() or axes[earlier][0][1] is not None:
                raise UserError(f"'{key}' is given twice ({seen[key]!r} and {text!r}): sweep it in one override, "
                                f"e.g. {key}=a,b")
            del axes[earlier]  # as in a single run, the later value wins
        seen[key] = text
        if ov.is_sweep_override():
            if not ov.is_discrete_sweep():
                raise UserError(f"'{text}': interval() sweeps need an optimising sweeper; use a list, range() "
                                f"or choice()")
            element = ov.get_key_element()
            values = [str(v) for v in ov.sweep_string_iterator()]
            if not values:
                raise UserError(f"'{text}' sweeps over nothing (glob() matches no option of '{key}'?)")
            axes.append([(key, v, f"{element}={v}") for v in values])
        else:
            axes.append([(key, None, text)])
    jobs = []
    for i, combo in enumerate(itertools.product(*axes)):
        jobs.append(Job(index=i, overrides=[t for _, _, t in combo],
                        swept={k: v for k, v, _ in combo if v is not None}))
    return jobs


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def _suffix(job: Job) -> str:
    """The swept keys as a run-name part: ``lr=0.001-seed=2`` (the last part of a dotted key,
    unless two swept keys share it)."""
    keys = [k for k in job.swept if k not in ("run_name", "output_dir")]
    lasts = [k.rsplit(".", 1)[-1] for k in keys]
    parts = []
    for k, last in zip(keys, lasts):
        short = last if lasts.count(last) == 1 else k
        parts.append(_UNSAFE.sub("_", f"{short}={job.swept[k]}").strip("._"))
    return "-".join(parts)


def _has(overrides: Sequence[str], key: str) -> bool:
    return any(o.lstrip("+~").split("=", 1)[0] == key for o in overrides)


def plan(verb: str, overrides: Sequence[str]) -> list[Job]:
    """The jobs of ``verb -m overrides``: each composed and validated (every job's problems
    reported at once: one line, exit 2), run-named after its swept keys, with ``resume=auto``
    unless ``resume`` or ``overwrite`` is given.  Two jobs never share a run folder."""
    jobs = expand(overrides)
    swept_launcher = [k for k in jobs[0].swept if k == "launcher" or k.startswith("launcher.")] if jobs else []
    if swept_launcher:
        raise UserError(f"{', '.join(swept_launcher)} cannot be swept: one sweep runs on one launcher")
    problems: dict[str, list[int]] = {}
    for job in jobs:
        try:
            job.cfg = validate(compose(verb, job.overrides), verb)
        except UserError as exc:
            problems.setdefault(str(exc), []).append(job.index)
    if problems:
        shown = []
        for message, idx in problems.items():
            who = "every job" if len(idx) == len(jobs) > 1 else (
                "job " + ", ".join(f"{i} ({jobs[i].label})" for i in idx[:4]) + (f" and {len(idx) - 4} more" if len(idx) > 4 else ""))
            shown.append(f"{who}: {message}")
        raise UserError(f"invalid sweep of {len(jobs)} job(s), nothing started: " + " | ".join(shown))
    auto_resume = not _has(overrides, "resume") and not _has(overrides, "overwrite")
    # run_name='${task.name}-s${seed}': the user names each job (an interpolation of its own
    # values); used as it resolves, still checked below to differ between jobs.
    templated = any(o.lstrip("+").split("=", 1)[0] == "run_name" and "${" in o for o in overrides)
    for job in jobs:
        cfg = job.cfg
        if "run_name" not in job.swept and not templated:
            base = run_name(cfg)
            suffix = _suffix(job)
            name = f"{base}-{suffix}" if suffix else base
            if len(name) > RUN_NAME_MAX:
                import hashlib

                name = f"{base[:RUN_NAME_MAX - 20]}-sweep{hashlib.sha256(suffix.encode()).hexdigest()[:8]}"
            cfg.run_name = name
            job.overrides.append(f"run_name='{name}'")  # quoted: '=' is not bare-value grammar
        if templated:
            job.overrides.append(f"run_name='{cfg.run_name}'")  # as resolved for this job
        if auto_resume:
            cfg.resume = "auto"
            job.overrides.append("resume=auto")
    where: dict[str, int] = {}
    for job in jobs:
        folder = str(run_dir(job.cfg).root)
        if folder in where:
            raise UserError(f"jobs {where[folder]} ({jobs[where[folder]].label}) and {job.index} ({job.label}) would "
                            f"share the run folder {folder}: give each a distinct run_name")
        where[folder] = job.index
    return jobs

