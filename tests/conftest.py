"""Shared test set-up: offline hub, a helper that runs the real CLI (in this process or a fresh
one), a free-port helper for launchers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: see cli.main
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# datasets reads this once, at import: in-process CLI runs (which set it only when stdout is not a
# terminal) would otherwise inherit the bars of whichever test imported datasets first.
os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: int = 300,
        launcher: list[str] | None = None, process: bool = False) -> subprocess.CompletedProcess:
    """Run ``bert-ticket ARGS`` and capture its exit status, stdout and stderr.

    By default the CLI runs in this process (``main()`` with ``sys.argv`` set, its output captured
    at the file descriptors, the process state it touches restored afterwards): a fresh Python
    with torch and transformers costs seconds per call.  ``process=True`` runs it as a user would,
    in a fresh process: needed for fault injection (it signals its own pid), launchers (torchrun,
    DeepSpeed), and anything that needs a clean process.  ``timeout`` applies to ``process=True``.
    """
    if launcher is not None and not process:
        raise ValueError("a launcher starts processes: pass process=True")
    if not process:
        fault = (env or {}).get("BERT_TICKET_FAULT_AT_STEP", "")
        if fault and fault.upper().split(":")[1:2] != ["NAN"]:
            raise ValueError(f"BERT_TICKET_FAULT_AT_STEP={fault} signals its own pid: pass process=True")
        return _cli_in_process(list(args), env or {}, cwd)
    full_env = {k: v for k, v in os.environ.items() if k != "BERT_TICKET_FAULT_AT_STEP"}
    full_env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})})
    cmd = (launcher or [sys.executable, "-m", "bert_ticket_cli"]) + list(args)
    return subprocess.run(cmd, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for torchrun's --master_port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_in_process(args: list[str], env: dict[str, str], cwd: Path | None) -> subprocess.CompletedProcess:
    from bert_ticket_cli.cli import main

    if int(env.get("WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))) > 1:
        raise ValueError("WORLD_SIZE > 1 makes main() leave with os._exit: pass process=True")
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    saved_signals = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)}
    saved_logging = _logging_state()
    saved_torch = _torch_state()
    os.environ.pop("BERT_TICKET_FAULT_AT_STEP", None)
    os.environ.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env})
    sys.argv = ["bert-ticket", *args]
    try:
        if cwd is not None:
            os.chdir(cwd)
        with _captured_output() as (out, err), _fresh_process_warnings():
            try:
                main()
                code = 0
            except SystemExit as exc:  # what the interpreter makes of sys.exit(code)
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:
                    print(exc.code, file=sys.stderr)
                    code = 1
            except KeyboardInterrupt:
                raise
            except BaseException:  # an uncaught exception: the interpreter prints it and exits 1
                traceback.print_exc()
                code = 1
    finally:
        _reset_process_state(saved_env, saved_argv, saved_cwd, saved_signals, saved_logging, saved_torch)
    return subprocess.CompletedProcess(["bert-ticket", *args], code, out.text, err.text)


class _Captured:
    text = ""


@contextlib.contextmanager
def _captured_output():
    """Point fds 1 and 2 (and sys.stdout/err, and log handlers writing to them) at temporary files,
    so prints, logging and C-level writes all land where a subprocess's pipes would have."""
    out, err = _Captured(), _Captured()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    old_out, old_err = sys.stdout, sys.stderr
    saved_fds = (os.dup(1), os.dup(2))
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        os.dup2(out_file.fileno(), 1)
        os.dup2(err_file.fileno(), 2)
        new_out = open(1, "w", encoding="utf-8", buffering=1, closefd=False)
        new_err = open(2, "w", encoding="utf-8", buffering=1, closefd=False)
        sys.stdout, sys.stderr = new_out, new_err
        moved = {old_out: new_out, old_err: new_err}
        was = {h: h.stream for h in _stream_handlers() if h.stream in moved}
        for h, stream in was.items():
            h.setStream(moved[stream])
        try:
            yield out, err
        finally:
            for stream in (new_out, new_err, sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(Exception):
                    stream.flush()
            # Handlers created during the run (a library's first import) go on writing to the
            # process's own streams afterwards, as they would in a fresh process.
            home = {new_out: sys.__stdout__, new_err: sys.__stderr__}
            for h in _stream_handlers():
                if h.stream in home:
                    h.setStream(was.get(h, home[h.stream]))
            sys.stdout, sys.stderr = old_out, old_err
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            for fd in saved_fds:
                os.close(fd)
            for captured, f in ((out, out_file), (err, err_file)):
                f.seek(0)
                captured.text = f.read().decode("utf-8", errors="replace")


def _stream_handlers() -> list:
    import logging

    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            and not isinstance(getattr(type(h), "stream", None), property)]  # logging.lastResort: follows sys.stderr


@contextlib.contextmanager
def _fresh_process_warnings():
    """Warnings as a fresh interpreter shows them (Python's default filters, printed to stderr),
    not recorded by pytest: a warning line on stderr is part of what the tests check."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
        warnings.simplefilter("default", append=True)

        def show(message, category, filename, lineno, file=None, line=None):
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        yield


def _logging_state() -> dict:
    import logging

    return {name: (lg.level, lg.propagate, lg.disabled)
            for name, lg in [("", logging.getLogger()), *logging.Logger.manager.loggerDict.items()]
            if isinstance(lg, logging.Logger)}


def _torch_state() -> dict:
    import random

    import numpy
    import torch

    state = {"dtype": torch.get_default_dtype(), "threads": torch.get_num_threads(),
             "rng": torch.get_rng_state(), "py_rng": random.getstate(),
             "deterministic": torch.are_deterministic_algorithms_enabled(),
             "matmul": torch.get_float32_matmul_precision(), "grad": torch.is_grad_enabled()}
    state["np_rng"] = numpy.random.get_state()
    return state


def _reset_process_state(env, argv, cwd, signals, logging_state, torch_state) -> None:
    """Undo what one CLI run did to this process, so the next test starts as a new process would."""
    import gc
    import logging

    os.chdir(cwd)
    sys.argv = argv
    os.environ.clear()
    os.environ.update(env)  # LOCAL_RANK, RANK, DS_ACCELERATOR, DISABLE_TQDM, ... set by the run
    for sig, handler in signals.items():
        signal.signal(sig, handler)
    if "bert_ticket_cli.engine.signals" in sys.modules:  # a process's stop flag lives as long as it does
        from bert_ticket_cli.engine import signals as stop

        stop.clear()
        stop._FAULT["seen"] = 0
    for name, lg in [("", logging.getLogger()), *logging.Logger.manager.loggerDict.items()]:
        if isinstance(lg, logging.Logger) and name in logging_state:
            lg.level, lg.propagate, lg.disabled = logging_state[name]
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    if "hydra" in sys.modules:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
    if "torch" in sys.modules:
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if torch_state is not None:
        import random

        import numpy
        import torch

        torch.set_default_dtype(torch_state["dtype"])
        torch.set_num_threads(torch_state["threads"])
        torch.set_rng_state(torch_state["rng"])
        random.setstate(torch_state["py_rng"])
        torch.use_deterministic_algorithms(torch_state["deterministic"])
        torch.set_float32_matmul_precision(torch_state["matmul"])
        torch.set_grad_enabled(torch_state["grad"])
        numpy.random.set_state(torch_state["np_rng"])
    gc.collect()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run / "metrics.jsonl") if r["event"] == "train"}


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (only the project's CI machines have it)")
    return SHARED_DATA
