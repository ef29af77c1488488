"""One rank of a masked ``fit`` under torchrun (used by test_mask_invariants.py).

Every rank builds the same tiny BERT and the same random masks (same seeds), wraps them in a
MaskEnforcer, and trains with the project's ``fit`` under Accelerate (gloo DDP on CPU).  After
each optimizer step a probe records how many gradients / weights at pruned positions are not
exactly zero (before the enforcer's own ``before_step`` / ``after_step`` run, so the backward
hooks and the optimizer arithmetic are what is tested, not the re-zeroing).  Rank 0 gathers
every rank's figures and writes them as JSON to ``--out``.

    python -m torch.distributed.run --nproc_per_node 2 tests/integration/masked_fit_worker.py \
        --out r.json --run-dir /tmp/run [--deepspeed-stage 2 --mixed-precision bf16]

(``--deepspeed-stage`` needs DeepSpeed working on CPU: a check by hand, not part of the suite.)
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import hashlib
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

import torch  # noqa: E402

PRUNABLE = re.compile(r"^encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
                      r"|intermediate\.dense|output\.dense)\.weight$")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--mixed-precision", default="no", choices=("no", "bf16"))
    p.add_argument("--deepspeed-stage", type=int, default=0,
                   help="1 or 2: a DeepSpeed ZeRO engine instead of DDP (needs DeepSpeed on CPU; not in the "
                        "test suite, for checking by hand); 0 = DDP")
    p.add_argument("--pid-dir", help="write this process's id there (the test kills leftovers by id)")
    p.add_argument("--watchdog-s", type=float, default=150.0,
                   help="print every thread's stack and exit 1 if the run takes longer than this")
    args = p.parse_args()
    # A hang ends with a traceback on stderr instead of a silent timeout of the test; SIGTERM
    # cannot serve (fit traps it for graceful stops), and torchrun starts each worker in its
    # own session, out of reach of a kill of the launcher's process group.
    faulthandler.dump_traceback_later(args.watchdog_s, exit=True)
    if args.pid_dir:
        Path(args.pid_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.pid_dir) / f"rank{os.environ.get('RANK', '0')}.pid").write_text(str(os.getpid()))

    import torch.distributed as dist
    from datasets import Dataset
    from transformers import BertConfig, BertForSequenceClassification

    from bert_ticket_cli.artifacts.paths import RunDir
    from bert_ticket_cli.config.schema import EngineConfig, TrainConfig
    from bert_ticket_cli.engine.loop import fit
    from bert_ticket_cli.engine.setup import make_accelerator, plan_batches, shutdown, world_size_from_env
    from bert_ticket_cli.sparsity.enforce import MaskEnforcer

    # ---- the same model, masks and data on every rank ----
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100,
        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    g = torch.Generator().manual_seed(1)
    masks = {name: (torch.rand(prm.shape, generator=g) < 0.5).float()
             for name, prm in model.bert.named_parameters() if PRUNABLE.match(name)}
    enforcer = MaskEnforcer(model, masks)
    enforcer.apply_weights()
    params = dict(model.named_parameters())
    pruned = {n: masks[n] == 0 for n in masks}
    kept_start = torch.cat([params["bert." + n].detach()[~pruned[n]] for n in masks]).clone()

    n = args.steps * args.batch
    g = torch.Generator().manual_seed(2)
    seq = 8
    dataset = Dataset.from_dict({
        "input_ids": torch.randint(5, 100, (n, seq), generator=g).tolist(),
        "attention_mask": torch.ones(n, seq, dtype=torch.long).tolist(),
        "labels": torch.randint(0, 2, (n,), generator=g).tolist(),
    })

    def collate(rows):
        return {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "labels")}

    class Probe:
        def __init__(self) -> None:
            self.grads: list[int] = []
            self.weights: list[int] = []

        def before_step(self, m) -> None:
            # (under DeepSpeed the optimizer has stepped inside backward and .grad is gone)
            self.grads.append(sum(int((params["bert." + k].grad[pruned[k]] != 0).sum()) for k in masks
                                  if params["bert." + k].grad is not None))

        def after_step(self, m) -> None:
            self.weights.append(enforcer.check())

    # ---- train: gloo DDP on CPU, accumulation micro x world x accum = batch ----
    train = TrainConfig(max_steps=args.steps, batch_size=args.batch, micro_batch_size=args.micro_batch, lr=1e-2,
                        weight_decay=0.1, warmup_ratio=0.0, schedule="constant", max_grad_norm=1.0,
                        log_every=1, eval_every=0)
    plan = plan_batches(train, world_size_from_env())
    engine = EngineConfig(name="cpu", cpu=True, mixed_precision=args.mixed_precision)
    if args.deepspeed_stage:
        engine.name, engine.deepspeed = "deepspeed", {"zero_optimization": {
            "stage": args.deepspeed_stage, "overlap_comm": True, "contiguous_gradients": True}}
    accelerator = make_accelerator(engine, train, plan)
    probe = Probe()
    result = fit(accelerator=accelerator, model=model, train_dataset=dataset, collate=collate, train=train,
                 plan=plan, seed=0, run=RunDir(Path(args.run_dir)), evaluate=None, hooks=[probe, enforcer])

    optimizer = accelerator._optimizers[0].optimizer
    moments_nonzero = 0
    for k in masks if not args.deepspeed_stage else ():  # DeepSpeed keeps them in flat partitions
        state = optimizer.state[params["bert." + k]]
        moments_nonzero += int((state["exp_avg"][pruned[k]] != 0).sum() + (state["exp_avg_sq"][pruned[k]] != 0).sum())
    digest = hashlib.sha256()
    weight_sum = 0.0
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        weight_sum += float(tensor.double().sum()) if tensor.is_floating_point() else 0.0
    kept_end = torch.cat([params["bert." + n].detach()[~pruned[n]] for n in masks])
    mine = {
        "rank": accelerator.process_index,
        "steps": result.state.step,
        "wrapper": type(result.model).__name__,
        "dtype": str(params["bert." + next(iter(masks))].dtype),
        "accumulation": plan.accumulation,
        "grad_nonzero_per_step": probe.grads,
        "weight_nonzero_per_step": probe.weights,
        "nonzero": enforcer.check(),
        "moments_nonzero": moments_nonzero,
        "kept_changed_fraction": float((kept_end != kept_start).float().mean()),
        "weights_sha256": digest.hexdigest(),
        "weights_sum": weight_sum,
    }
    everyone = [None] * accelerator.num_processes
    if dist.is_available() and dist.is_initialized():
        dist.all_gather_object(everyone, mine)
    else:
        everyone = [mine]
    if accelerator.is_main_process:
        Path(args.out).write_text(json.dumps({"world_size": accelerator.num_processes,
                                              "distributed_type": accelerator.distributed_type.value.lower(),
                                              "ranks": everyone}, indent=1))
    # Teardown.  Seen here (2 runs in ~12): when the DDP wrapper outlived
    # destroy_process_group, its Reducer held the last reference to the gloo process group and
    # freeing it at exit hung in ~ProcessGroupGloo joining a gloo thread.  So the wrapper goes
    # first, while the group is alive, and the process ends with os._exit once the group is
    # down (nothing is left to flush but stdio); the watchdog stays armed until then.
    del result
    accelerator.free_memory()  # drops Accelerate's references to the DDP model and optimizer
    gc.collect()
    shutdown(accelerator)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
