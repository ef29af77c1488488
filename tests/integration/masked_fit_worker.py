"""One rank of a masked ``fit`` under torchrun (used by test_mask_invariants.py).

Every rank builds the same tiny BERT and the same random masks (same seeds), wraps them in a
MaskEnforcer, and trains with the project's ``fit`` under Accelerate (gloo DDP on CPU).  After
each optimizer step a probe records how many gradients / weights at pruned positions are not
exactly zero (before the enforcer's own ``before_step`` / ``after_step`` run, so the backward
hooks and the optimizer arithmetic are what is tested, not the re-zeroing).  Rank 0 gathers
every rank's figures and writes them as JSON to ``--out``.

    python -m torch.distributed.run --nproc_per_node 2 tests/integration/masked_fit_worker.py --out r.json
"""

from __future__ import annotations

import argparse
import faulthandler
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
    p.add_argument("--watchdog-s", type=float, default=150.0,
                   help="print every thread's stack and exit 70 if the run takes longer than this")
    args = p.parse_args()
    # A hang (e.g. in the process-group teardown) ends with a traceback on stderr instead of a
    # silent timeout of the test; SIGTERM cannot serve, fit traps it for graceful stops.
    faulthandler.dump_traceback_later(args.watchdog_s, exit=True)

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
            self.grads.append(sum(int((params["bert." + k].grad[pruned[k]] != 0).sum()) for k in masks))

        def after_step(self, m) -> None:
            self.weights.append(enforcer.check())

    # ---- train: gloo DDP on CPU, accumulation micro x world x accum = batch ----
    train = TrainConfig(max_steps=args.steps, batch_size=args.batch, micro_batch_size=args.micro_batch, lr=1e-2,
                        weight_decay=0.1, warmup_ratio=0.0, schedule="constant", max_grad_norm=1.0,
                        log_every=1, eval_every=0)
    plan = plan_batches(train, world_size_from_env())
    accelerator = make_accelerator(EngineConfig(name="cpu", cpu=True), train, plan)
    probe = Probe()
    result = fit(accelerator=accelerator, model=model, train_dataset=dataset, collate=collate, train=train,
                 plan=plan, seed=0, run=RunDir(Path(args.run_dir)), evaluate=None, hooks=[probe, enforcer])

    optimizer = accelerator._optimizers[0].optimizer
    moments_nonzero = 0
    for k in masks:
        state = optimizer.state[params["bert." + k]]
        moments_nonzero += int((state["exp_avg"][pruned[k]] != 0).sum() + (state["exp_avg_sq"][pruned[k]] != 0).sum())
    digest = hashlib.sha256()
    weight_sum = 0.0
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        weight_sum += float(tensor.double().sum()) if tensor.is_floating_point() else 0.0
    kept_end = torch.cat([params["bert." + n].detach()[~pruned[n]] for n in masks])
    mine = {
        "rank": accelerator.process_index,
        "steps": result.state.step,
        "wrapper": type(result.model).__name__,
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
    shutdown(accelerator)
    faulthandler.cancel_dump_traceback_later()
    return 0


if __name__ == "__main__":
    sys.exit(main())
