"""Create the Accelerator and the batch geometry (the only place that picks devices).

The global batch ``train.batch_size`` is what one optimizer step sees, over all processes
and accumulation steps: ``batch_size = micro_batch_size x processes x accumulation``.  Fixing
the global batch (not the per-device one) is what makes a 1-process and an N-process run of
the same config follow the same trajectory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from bert_ticket_cli.config.schema import EngineConfig, TrainConfig
from bert_ticket_cli.errors import UserError


#: Engines that name GPUs: refused on a machine without CUDA (``make_accelerator``).
GPU_ENGINES = ("gpu", "ddp")


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int
    micro_batch: int
    world_size: int
    accumulation: int


def plan_batches(train: TrainConfig, world_size: int) -> BatchPlan:
    micro = train.micro_batch_size or max(1, train.batch_size // world_size)
    per_step = micro * world_size
    if train.batch_size % per_step:
        raise UserError(
            f"train.batch_size={train.batch_size} is not a multiple of micro_batch_size x processes "
            f"= {micro} x {world_size}: pick a batch_size divisible by {per_step}"
        )
    return BatchPlan(train.batch_size, micro, world_size, train.batch_size // per_step)


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def deepspeed_config(engine: EngineConfig, train: TrainConfig, plan: BatchPlan) -> dict[str, Any]:
    """Fill the batch, accumulation, clipping and precision fields from our config."""
    ds = dict(engine.deepspeed or {})
    ds["train_batch_size"] = plan.global_batch
    ds["train_micro_batch_size_per_gpu"] = plan.micro_batch
    ds["gradient_accumulation_steps"] = plan.accumulation
    ds["gradient_clipping"] = train.max_grad_norm
    ds["bf16"] = {"enabled": engine.mixed_precision == "bf16"}
    ds["fp16"] = {"enabled": engine.mixed_precision == "fp16", "initial_scale_power": 16}
    ds.setdefault("zero_optimization", {"stage": 2})
    ds.setdefault("steps_per_print", 10**9)
    return ds


def make_accelerator(engine: EngineConfig, train: TrainConfig, plan: BatchPlan, *, find_unused_parameters: bool = False):
    """The Accelerator for ``engine``; ``find_unused_parameters``: DDP tolerates parameters that a
    step does not use (a multi-task model's idle task heads)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    cuda = torch.cuda.is_available()
    use_cpu = engine.cpu or not cuda
    mixed = engine.mixed_precision
    if not cuda and not engine.cpu and engine.deepspeed is None and (engine.name in GPU_ENGINES or mixed != "no"):
        # Accelerate would quietly run on the CPU (and the record would say gpu / bf16): a GPU
        # engine without a GPU is a mistake (a CPU node, a hidden device), not a fallback.
        # DeepSpeed engines are valid on CPU (gloo, below); fp16 there is refused below.
        what = f"engine={engine.name}" if engine.name in GPU_ENGINES else \
            f"engine={engine.name} with engine.cpu=false and mixed_precision={mixed}"
        raise UserError(f"{what} needs a CUDA device, none found: use engine=cpu")
    if mixed == "fp16" and use_cpu:
        raise UserError("engine.mixed_precision=fp16 needs a CUDA GPU: use bf16 (or no) on CPU")
    kwargs: dict[str, Any] = {}
    accelerate_cpu = use_cpu
    if engine.deepspeed is not None:
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise UserError("engine uses DeepSpeed but it is not installed: pip install 'bert-ticket[deepspeed]'") from None
        if use_cpu:
            _deepspeed_on_cpu(kwargs)
            # Accelerator(cpu=True) drops the DeepSpeed plugin (plain MULTI_CPU DDP): ask for the
            # non-CPU path, where the plugin is honoured; the gloo backend and the device are set above.
            accelerate_cpu = False
        if world_size_from_env() == 1 and "RANK" not in os.environ:
            # DeepSpeed needs a process group even for one process; make the launcher's env.
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("LOCAL_RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=deepspeed_config(engine, train, plan))
    if find_unused_parameters:
        from accelerate.utils import DistributedDataParallelKwargs

        kwargs.setdefault("kwargs_handlers", []).append(DistributedDataParallelKwargs(find_unused_parameters=True))
    accelerator = Accelerator(
        cpu=accelerate_cpu,
        mixed_precision=mixed,
        gradient_accumulation_steps=plan.accumulation,
        step_scheduler_with_optimizer=False,
        **kwargs,
    )
    if engine.deepspeed is not None and use_cpu:
        _check_deepspeed_cpu_state(accelerator)
    return accelerator


def _deepspeed_on_cpu(kwargs: dict[str, Any]) -> None:
    """Make Accelerate start DeepSpeed on CPU processes talking over gloo.

    Without a GPU, Accelerate's backend detection finds no backend for a non-CPU run: DeepSpeed
    still opens its process group, but Accelerate then records 1 process (its world size comes
    from the backend it detected), so every rank would train alone.  Naming the backend
    (``InitProcessGroupKwargs`` reaches ``PartialState``) gives Accelerate the real world size
    and rank, and DeepSpeed's comm is initialised over gloo with it.
    """
    import torch
    from accelerate.utils import InitProcessGroupKwargs
    from deepspeed.accelerator import get_accelerator

    if torch.cuda.is_available():
        # DeepSpeed would pick the GPUs anyway (its own device detection), so CPU cannot be honoured.
        raise UserError(
            "engine.cpu=true with a DeepSpeed engine on a machine with GPUs: drop engine.cpu to use the GPUs, "
            "or hide them (CUDA_VISIBLE_DEVICES=) to run DeepSpeed on CPU"
        )
    ds_device = get_accelerator().device_name()
    if ds_device != "cpu":
        raise UserError(f"DeepSpeed picked the '{ds_device}' accelerator, not the CPU: set DS_ACCELERATOR=cpu")
    # `accelerate launch --cpu` sets this, and it would make Accelerate drop the plugin; the
    # device is the CPU either way (no GPU here).
    os.environ.pop("ACCELERATE_USE_CPU", None)
    kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]


def _check_deepspeed_cpu_state(accelerator) -> None:
    """Fail loudly if Accelerate's view of the processes disagrees with the launcher's."""
    import torch.distributed as dist
    from accelerate.utils import DistributedType

    expected = world_size_from_env()
    problems = []
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        problems.append(f"distributed type {accelerator.distributed_type}")
    if accelerator.num_processes != expected:
        problems.append(f"{accelerator.num_processes} process(es) but WORLD_SIZE={expected}")
    if not dist.is_initialized() or dist.get_world_size() != expected:
        problems.append("no process group of the launcher's size")
    elif dist.get_backend() != "gloo":
        problems.append(f"backend {dist.get_backend()}")
    if accelerator.device.type != "cpu":
        problems.append(f"device {accelerator.device}")
    if problems:
        raise RuntimeError("DeepSpeed on CPU: Accelerate state is wrong: " + "; ".join(problems))


def shutdown(accelerator) -> None:
    """Tear the process group down explicitly (DeepSpeed runs abort at exit otherwise)."""
    import torch.distributed as dist

    try:
        accelerator.wait_for_everyone()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
