"""The ``bert-ticket`` command line: parse, compose, validate, dispatch.

Each verb takes Hydra-style overrides (``task=mrpc train.lr=2e-5 +model.config.x=1 ~key``)
and hands the typed config to ``commands/<verb>.py:run``.  Heavy imports (torch,
transformers) happen inside the commands so that ``--help`` and config errors are instant.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Optional

import typer
import typer.core

from bert_ticket_cli import __version__
from bert_ticket_cli.errors import EXIT_USAGE, UserError

VERBS = {
    "prune": "Find tickets: method=imp|omp|random|earlybert|super_tickets.",
    "rewind": "Train a ticket from its rewind point, or with no ticket fine-tune the dense model (the full-model baseline), then evaluate.",
    "transfer": "Train a ticket found on task A on task B; with transfer.tickets/transfer.tasks, the whole matrix.",
    "pretrain": "MLM pre-training on a wall-clock budget (academic-budget recipe), method=earlybert for "
                "EarlyBERT pre-training; 'pretrain prepare ...' only prepares the data.",
    "eval": "Evaluate a saved model on a task's dev splits; eval.predict_test=true writes GLUE leaderboard TSVs.",
    "cache": "On a machine that reaches the hub (a login node): download the model, tokenizer and task data "
             "a run with the same model= task= settings loads, then check each loads with HF_HUB_OFFLINE=1.",
    "report": "Index every run's summary.json under runs/ and print a table (or csv / json, and figures).",
}

EXAMPLES = {
    "prune": "bert-ticket prune method=imp task=mrpc",
    "rewind": "bert-ticket rewind task=mrpc model=bert-base-uncased train.lr=2e-5 seed=3",
    "transfer": "bert-ticket transfer ticket=runs/prune/mnli-bert-base-uncased-imp-s42/tickets/level-07 task=rte",
    "pretrain": "bert-ticket pretrain pretrain.data.corpus=[corpus/] pretrain.budget=24h engine=deepspeed_zero2_bf16",
    "eval": "bert-ticket eval task=sst2 eval.checkpoint=runs/rewind/sst2-tiny-s42/model",
    "cache": "bert-ticket cache model=bert-base-uncased task=mrpc",
    "report": "bert-ticket report task=mrpc method=dense columns=[metrics.f1] format=table",
}

app = typer.Typer(
    name="bert-ticket",
    help="Experiment runner for BERT lottery tickets (IMP, OMP, random pruning, EarlyBERT, super tickets) and "
    "budget pre-training. Every verb takes Hydra overrides: key=value, +key=value, ~key.",
    no_args_is_help=True,
    # Shell completion: bert-ticket --install-completion (or --show-completion SHELL).
    add_completion=True,
    # Plain click help: rich markup would eat the [..] of the examples and rewrap the settings.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _methods_line(verb: str) -> str | None:
    """What ``method=`` accepts for ``verb`` (None: the verb takes no method choice)."""
    if verb == "prune":
        from bert_ticket_cli.methods.registry import LATER, names

        later = ", ".join(f"{name}: not yet available" for name in LATER)
        return f"Methods: method={'|'.join(names())}" + (f" ({later})" if later else "")
    if verb == "pretrain":
        from bert_ticket_cli.config.rules import PRETRAIN_METHODS

        return f"Methods: method={'|'.join(PRETRAIN_METHODS)}"
    return None


def _settings_lines(verb: str) -> list[str]:
    """The verb's settings, one line per key (key=default and its doc), grouped by section."""
    from bert_ticket_cli.config import docs
    from bert_ticket_cli.config.schema import SCHEMAS, EarlyBertMethodConfig, SuperTicketsMethodConfig

    groups = docs.sections(SCHEMAS[verb], top="report" if verb == "report" else "run")
    # the settings of the methods that have some, each under its own heading in the method section
    method_settings = {"prune": [("earlybert", EarlyBertMethodConfig), ("super_tickets", SuperTicketsMethodConfig)],
                       "pretrain": [("earlybert", EarlyBertMethodConfig)]}.get(verb, [])
    lines = ["Settings (key=schema default  what it is; --cfg prints this verb's composed values):"]
    for section, items in groups:
        lines.append(f"  {section}:")
        for key, default, doc in items:
            if key == "verb":
                continue
            lines.append(f"    {key}={default}  {doc}".rstrip())
        if section == "method":
            for name, schema in method_settings:
                lines.append(f"   with method {name}:")
                lines += [f"    {key}={default}  {doc}".rstrip()
                          for key, default, doc in list(docs.settings(schema, "method."))[1:]]
    return lines


def _epilog(verb: str) -> str:
    from bert_ticket_cli.config.compose import config_groups
    from bert_ticket_cli.config.schema import SCHEMAS

    lines = [f"Example: {EXAMPLES[verb]}", ""]
    methods = _methods_line(verb)
    if methods:
        lines += [methods, ""]
    if verb == "report":
        from bert_ticket_cli.config.rules import REPORT_VIEWS

        lines += [f"Views: view={'|'.join(REPORT_VIEWS)}", "Filters: any other key=value on a summary field "
                  "(task=mrpc method=imp).", ""]
    else:
        from bert_ticket_cli.config.compose import CONF_DIR, search_path

        own = {f.name for f in dataclasses.fields(SCHEMAS[verb])} | {"experiment"}
        lines.append("Config groups (choose with group=option):")
        for group, options in config_groups().items():
            if group in own:
                lines.append(f"  {group}: {', '.join(options)}")
        extra = [str(f) for f in search_path(strict=False) if f != CONF_DIR]
        if extra:  # $BERT_TICKET_CONFIG_PATH, ./conf: searched ahead of the packaged configs
            lines.append(f"  (options from {', '.join(extra)} and the packaged configs)")
        lines.append("")
    lines += _settings_lines(verb)
    lines += ["", "Every field is documented in bert_ticket_cli/config/schema.py and the README."]
    # click rewraps epilogs; a \b line keeps the line breaks of the paragraph it opens.
    paragraphs = "\n".join(lines).split("\n\n")
    return "\n\n".join("\b\n" + p for p in paragraphs)


def _quiet_libraries() -> None:
    """Library progress bars and advisories drown the run's own log lines in batch logs."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights" bars
    if not sys.stdout.isatty():
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("DISABLE_TQDM", "1")
    try:
        import torch  # noqa: F401  (cheap once the command imports it anyway)

        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
    except ImportError:
        pass


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def run_verb(verb: str, overrides: list[str], show_cfg: bool, debug: bool, multirun: bool = False) -> int:
    """Compose, validate and run one verb (or, with ``multirun``, a sweep of it: sweeps/);
    returns the process exit status."""
    from bert_ticket_cli.config.compose import compose, to_yaml, validate

    _quiet_libraries()
    try:
        overrides = list(overrides or [])
        if multirun:
            if show_cfg:
                raise UserError("--cfg prints one config: drop -m (or print one job's with its values)")
            from bert_ticket_cli.sweeps import run_sweep

            return run_sweep(verb, overrides)
        prepare_only = verb == "pretrain" and overrides[:1] == ["prepare"]  # bert-ticket pretrain prepare ...
        if prepare_only:
            overrides = overrides[1:]
        filters: list[str] = []
        if verb == "report":  # report: key=value on anything but its own settings is a filter
            from bert_ticket_cli.config.schema import ReportConfig

            own = {f.name for f in dataclasses.fields(ReportConfig)} - {"verb"}
            filters = [o for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") not in own]
            overrides = [o for o in overrides if o not in filters]
        cfg = validate(compose(verb, overrides), verb)
        from bert_ticket_cli.artifacts.records import note_command

        note_command(verb, (["prepare"] if prepare_only else []) + overrides + filters)
        if filters:
            cfg.where = list(cfg.where) + filters
        if show_cfg:
            typer.echo(to_yaml(cfg), nl=False)
            return 0
        import importlib

        module = importlib.import_module(f"bert_ticket_cli.commands.{verb.replace('eval', 'evaluate')}")
        status = module.run(cfg, prepare_only_=True) if prepare_only else module.run(cfg)
        return int(status or 0)
    except UserError as exc:
        if debug:
            raise
        _fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    return 0


def _completions(verb: str, incomplete: str) -> list[str]:
    """Shell completion of an override: group=option choices and setting keys (``train.lr=``)."""
    from bert_ticket_cli.config import docs
    from bert_ticket_cli.config.compose import config_groups
    from bert_ticket_cli.config.schema import SCHEMAS

    own = {f.name for f in dataclasses.fields(SCHEMAS[verb])} | {"experiment"}
    words = [f"{g}={o}" for g, options in config_groups().items() if g in own and verb != "report" for o in options]
    words += [f"{key}=" for key, _, _ in docs.settings(SCHEMAS[verb]) if key != "verb"]
    return [w for w in words if w.startswith(incomplete)]


def _make_verb(verb: str) -> None:
    def command(
        overrides: Optional[list[str]] = typer.Argument(None, metavar="[KEY=VALUE]...", help="Config overrides.",
                                                        autocompletion=lambda incomplete: _completions(verb, incomplete)),
        cfg: bool = typer.Option(False, "--cfg", help="Print the composed config and exit."),
        multirun: bool = typer.Option(False, "-m", "--multirun",
                                      help="A sweep: expand key=a,b / range() / choice() / glob() overrides into "
                                           "jobs, run them on launcher=local|slurm (README: Sweeps and clusters)."),
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
        local_rank: Optional[int] = typer.Option(
            None, "--local_rank", "--local-rank", hidden=True, help="Set by the deepspeed launcher."
        ),
    ) -> None:
        if local_rank is not None:
            os.environ.setdefault("LOCAL_RANK", str(local_rank))
        raise typer.Exit(run_verb(verb, list(overrides or []), cfg, debug, multirun))

    app.command(
        verb,
        cls=_VerbCommand,
        help=VERBS[verb],
        context_settings={"ignore_unknown_options": False},
    )(command)


class _VerbCommand(typer.core.TyperCommand):
    """A verb whose ``--help`` epilog is built when it is shown: the group options come from the
    config folders searched now (``./conf`` depends on the current directory)."""

    def format_epilog(self, ctx, formatter) -> None:
        self.epilog = _epilog(self.name)
        super().format_epilog(ctx, formatter)


for _verb in VERBS:
    _make_verb(_verb)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bert-ticket {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    local_rank: Optional[int] = typer.Option(
        None, "--local_rank", "--local-rank", hidden=True, help="Set by the deepspeed launcher (before the verb)."
    ),
) -> None:
    """bert-ticket."""
    if local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(local_rank))


def main() -> None:
    # Stop signals first, before the heavy imports: a requeue signal (Slurm's USR1 before the
    # time limit, a pre-emption's TERM) that arrives while Python imports torch must not kill
    # the process (it died of the signal, exit 138, and the job was not requeued).  The flag
    # it sets is honoured by the run (exit 75, nothing half-written): engine/signals.py.
    from bert_ticket_cli.engine import signals
    from bert_ticket_cli.errors import EXIT_PREEMPTED

    try:
        signals.install()
    except ValueError as exc:  # a bad BERT_TICKET_STOP_SIGNALS
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    # Idle OpenMP threads sleep instead of spinning: on a loaded or shared CPU node, spinning
    # threads starve the one doing the work (measured: 2 threads 4-20x slower than 1 under
    # load).  libgomp reads this once, so it is set before torch is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Click reports its own usage errors with exit 2 already; keep that contract.
    try:
        app(prog_name="bert-ticket")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    if code == 0 and signals.requested() is not None:
        # The work ended after a stop signal arrived (e.g. during the last evaluation or while
        # the record was written): still "requeue me", so a signal always means exit 75; the
        # requeued run (resume=true) reports the run finished.
        print(f"stop signal {signals.name(signals.requested())} received: exit {EXIT_PREEMPTED} "
              f"(the run's work is done; resume=true reports it finished)", file=sys.stderr, flush=True)
        code = EXIT_PREEMPTED
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, a DDP reducer destroyed at interpreter exit after its gloo process
        # group can hang (seen 2 runs in 12).  Everything is written and closed by now (records
        # are atomic renames): flush and leave without running destructors.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
