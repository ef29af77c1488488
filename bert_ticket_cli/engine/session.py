"""The engine as the workflows see it: one :class:`Session` per run (processes, devices, batch
geometry) with everything they do with it.

Workflows and verbs never touch Accelerate or DeepSpeed: they ask the session whether this is
the main process, to wait for the others, to train (``fit`` / ``fit_budget``), evaluate or save,
and the session hands its accelerator and batch plan to the engine functions.  Only ``engine/``
imports accelerate / deepspeed.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator

from bert_ticket_cli.engine.setup import BatchPlan


def signal_default() -> int:
    import signal

    return int(signal.SIGTERM)  # another rank got the signal; this one reports TERM


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) in this process."""
    from accelerate.utils import set_seed as _set_seed

    _set_seed(seed)


@dataclass
class Session:
    accelerator: Any
    plan: BatchPlan
    #: The experiment trackers (engine/tracking.py; none unless tracking.log_with names some).
    tracking: Any = None
    #: engine.compile / engine.compile_backend: torch.compile backend for training, None = eager.
    compile_backend: Any = None

    # ---- processes ----

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def distributed_type(self) -> str:
        """``no``, ``multi_cpu``, ``multi_gpu``, ``deepspeed``, ... (what records carry)."""
        return self.accelerator.distributed_type.value.lower()

    @property
    def device(self) -> Any:
        return self.accelerator.device

    @property
    def mixed_precision(self) -> str:
        """The precision the accelerator actually uses (``no``, ``bf16``, ``fp16``): what records carry."""
        return str(getattr(self.accelerator, "mixed_precision", "no") or "no")

    def facts(self) -> dict[str, Any]:
        """What actually ran, for the records: device type, mixed precision, distributed type, processes."""
        return {"device": self.device.type, "mixed_precision": self.mixed_precision,
                "distributed_type": self.distributed_type, "world_size": self.num_processes}

    def stop_requested(self) -> bool:
        """A stop signal is pending on any process (a collective: every rank calls it at the
        same point; one process asks its own flag)."""
        from bert_ticket_cli.engine import signals

        flag = signals.requested() is not None
        if self.num_processes > 1:
            import torch

            t = torch.tensor([1.0 if flag else 0.0], device=self.device)
            flag = bool(self.accelerator.reduce(t, reduction="sum").item() > 0)
        return flag

    def check_stop(self, where: str) -> None:
        """Raise ``signals.StopRequested`` (the run exits 75) if a stop signal is pending on any
        process; called where nothing is half-written (see ``workflows/stages.py``)."""
        from bert_ticket_cli.engine import signals

        if self.stop_requested():
            raise signals.StopRequested(signals.requested() or signal_default(), where)

    def wait_for_everyone(self) -> None:
        self.accelerator.wait_for_everyone()

    @contextmanager
    def main_process_first(self) -> Iterator[None]:
        """The main process runs the block first (e.g. prepares a cache), then the others."""
        with self.accelerator.main_process_first():
            yield

    def unwrap_model(self, model: Any) -> Any:
        return self.accelerator.unwrap_model(model)

    set_seed = staticmethod(set_seed)

    def describe(self) -> str:
        """``N process(es) [type, device], batch G = m x w x a``."""
        p = self.plan
        mixed = "" if self.mixed_precision == "no" else f", {self.mixed_precision}"
        return (f"{self.num_processes} process(es) [{self.distributed_type}, {self.device.type}{mixed}], "
                f"batch {p.global_batch} = {p.micro_batch} x {p.world_size} x {p.accumulation}")

    def shutdown(self) -> None:
        from bert_ticket_cli.engine.setup import shutdown

        try:
            if self.tracking is not None:
                self.tracking.finish(self.accelerator)  # a training that raised left its tracker run open
        finally:
            shutdown(self.accelerator)

    # ---- the engine's work, on this session's processes ----

    def fit(self, *, label: str | None = None, **kwargs: Any) -> Any:
        """:func:`bert_ticket_cli.engine.loop.fit` (the epoch schedule); ``label`` is the
        training's place in a multi-stage run (``level 2/9``, ``stage compact``), shown on
        its log lines and bar."""
        from bert_ticket_cli.engine.loop import fit

        return fit(accelerator=self.accelerator, plan=self.plan, label=label, tracking=self.tracking,
                   compile_backend=self.compile_backend, **kwargs)

    def fit_budget(self, **kwargs: Any) -> Any:
        """:func:`bert_ticket_cli.engine.budget.fit_budget` (the clock schedule)."""
        from bert_ticket_cli.engine.budget import fit_budget

        return fit_budget(accelerator=self.accelerator, plan=self.plan, tracking=self.tracking,
                          compile_backend=self.compile_backend, **kwargs)

    def evaluator(self, data: Any, batch_size: int, max_answer_length: int = 30) -> Callable[[Any], dict[str, float]]:
        from bert_ticket_cli.engine.evaluate import make_evaluator

        return make_evaluator(self.accelerator, data, batch_size, max_answer_length)

    def mlm_validation(self, model: Any, dataset: Any, collate: Callable, batch_size: int,
                       max_samples: int | None) -> dict[str, float]:
        from bert_ticket_cli.engine.budget import mlm_validation

        return mlm_validation(self.accelerator, model, dataset, collate, batch_size, max_samples)

    def predict(self, model: Any, dataset: Any, collate: Callable, batch_size: int, split: str = "test") -> dict[str, Any]:
        from bert_ticket_cli.engine.evaluate import predict

        return predict(self.accelerator, model, dataset, collate, batch_size, split=split)

    def gradient_pass(self, model: Any, dataset: Any, collate: Callable, batch_size: int, **kwargs: Any) -> tuple[int, bool]:
        """:func:`bert_ticket_cli.engine.scoring.gradient_pass` (forward + backward in a fixed
        order, nothing updated) on this session's processes."""
        from bert_ticket_cli.engine.scoring import gradient_pass

        return gradient_pass(self.accelerator, model, dataset, collate, batch_size, **kwargs)

    def reduce_sum(self, tensor: Any) -> Any:
        """The sum of ``tensor`` over the processes (a collective), as a CPU tensor."""
        if self.num_processes == 1:
            return tensor.cpu()
        return self.accelerator.reduce(tensor.to(self.device), reduction="sum").cpu()

    def log_record(self, run: Any, record: dict[str, Any]) -> None:
        """A record outside training (``eval``'s metrics): to ``metrics.jsonl`` (main process)
        and to the trackers, as one tracker run of ``run`` at ``record['step']`` (0 if none)."""
        from bert_ticket_cli.artifacts.paths import append_jsonl

        if self.is_main:
            append_jsonl(run.metrics, record)
        if self.tracking is not None and self.tracking.log_with:
            self.tracking.start(self.accelerator, run, 0)
            try:
                self.tracking.log(self.accelerator, record)
            finally:
                self.tracking.finish(self.accelerator)

    def prepare(self, model: Any) -> Any:
        """Place ``model`` on this session's device(s) (evaluation: no optimizer)."""
        return self.accelerator.prepare(model)

    def save_model(self, model: Any, tokenizer: Any, dest: Any) -> None:
        from bert_ticket_cli.engine.loop import save_model

        save_model(self.accelerator, model, tokenizer, dest)


def start_session(cfg: Any, *, deepspeed: bool = True, find_unused_parameters: bool = False) -> Session:
    """Start the processes' engine for ``cfg.engine`` / ``cfg.train``.  ``deepspeed=False``
    uses plain DDP whatever the engine says: evaluation needs no optimizer, which DeepSpeed's
    ZeRO engine insists on.  ``find_unused_parameters``: a model with parameters that a step may
    not use (a multi-task model's other task heads)."""
    from bert_ticket_cli.engine.setup import make_accelerator, plan_batches, world_size_from_env
    from bert_ticket_cli.engine.tracking import Tracking

    plan = plan_batches(cfg.train, world_size_from_env())
    engine = cfg.engine if deepspeed else replace(cfg.engine, deepspeed=None)
    tracking = Tracking.from_config(cfg)
    accelerator = make_accelerator(engine, cfg.train, plan, log_with=tracking.log_with,
                                   project_dir=str(tracking.top / "tracking") if tracking.log_with else None,
                                   find_unused_parameters=find_unused_parameters)
    return Session(accelerator, plan, tracking,
                   compile_backend=engine.compile_backend if getattr(engine, "compile", False) else None)
