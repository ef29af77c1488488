"""MaskEnforcer: pruned weights stay exactly zero, in a plain AdamW loop and through ``fit``."""

from __future__ import annotations

import re
import signal

import pytest
import torch

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.sparsity.enforce import MaskEnforcer

PRUNABLE = re.compile(r"^encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
                      r"|intermediate\.dense|output\.dense)\.weight$")


def tiny_model(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=100, num_labels=2)
    return BertForSequenceClassification(config)


def random_masks(model, seed: int = 1, keep: float = 0.5) -> dict[str, torch.Tensor]:
    """~50 % of every prunable matrix pruned; names relative to the base model (``bert.`` stripped)."""
    g = torch.Generator().manual_seed(seed)
    return {name: (torch.rand(p.shape, generator=g) < keep).float()
            for name, p in model.bert.named_parameters() if PRUNABLE.match(name)}


def full(name: str) -> str:
    return "bert." + name


def batch(seed: int, n: int = 4, seq: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 100, (n, seq), generator=g),
            "attention_mask": torch.ones(n, seq, dtype=torch.long),
            "labels": torch.randint(0, 2, (n,), generator=g)}


def pruned_values(model, masks) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.cat([params[full(n)].detach()[m == 0] for n, m in masks.items()])


def kept_values(model, masks) -> torch.Tensor:
    params = dict(model.named_parameters())
    return torch.cat([params[full(n)].detach()[m != 0] for n, m in masks.items()])


@pytest.fixture
def restore_signals():
    """``fit`` installs SIGTERM/SIGUSR1 handlers; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one process-wide state and refuses a second Accelerator with another
    mixed precision: start from none, and leave none behind for the tests that follow."""
    from accelerate.state import AcceleratorState, GradientState

    def reset() -> None:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    reset()
    yield
    reset()


# ------------------------------------------------------------------------- plain AdamW loop

def test_plain_adamw_keeps_pruned_weights_and_moments_at_exactly_zero():
    model = tiny_model()
    masks = random_masks(model)
    enforcer = MaskEnforcer(model, masks)
    assert len(enforcer.names) == 12 and 0.4 < enforcer.sparsity < 0.6
    assert enforcer.check() > 0  # random init: pruned entries are not zero yet
    enforcer.apply_weights()
    assert enforcer.check() == 0
    start = kept_values(model, masks).clone()

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    params = dict(model.named_parameters())
    model.train()
    for step in range(6):
        loss = model(**batch(step)).loss
        loss.backward()
        # The backward hook alone masked the gradients: nothing left for before_step.
        for name, m in masks.items():
            assert torch.equal(params[full(name)].grad[m == 0], torch.zeros(int((m == 0).sum())))
        enforcer.before_step(model)
        optimizer.step()
        # ... and AdamW with weight decay did not move them, before any re-zeroing.
        assert enforcer.check() == 0, f"step {step}: pruned weights moved"
        enforcer.after_step(model)
        optimizer.zero_grad(set_to_none=True)
        assert enforcer.check() == 0
        assert bool((pruned_values(model, masks) == 0.0).all())

    for name, m in masks.items():
        state = optimizer.state[params[full(name)]]
        assert bool((state["exp_avg"][m == 0] == 0).all()) and bool((state["exp_avg_sq"][m == 0] == 0).all())
        assert bool((state["exp_avg_sq"][m != 0] > 0).any())
    moved = (kept_values(model, masks) != start).float().mean().item()
    assert moved > 0.9, f"only {moved:.0%} of the kept weights changed"


def test_without_the_enforcer_the_same_loop_moves_pruned_weights():
    """The control: weight decay and AdamW do change zeros when nothing masks gradients."""
    model = tiny_model()
    masks = random_masks(model)
    enforcer = MaskEnforcer(model, masks)
    enforcer.apply_weights()
    enforcer.remove()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model(**batch(0)).loss.backward()
    optimizer.step()
    assert enforcer.check() > 0


def test_gradient_accumulation_and_a_grad_the_hook_never_saw():
    model = tiny_model()
    masks = random_masks(model)
    enforcer = MaskEnforcer(model, masks)
    enforcer.apply_weights()
    params = dict(model.named_parameters())
    for micro in range(3):  # grads accumulate in .grad; the hook re-masks after each micro-batch
        (model(**batch(micro)).loss / 3).backward()
        assert all(bool((params[full(n)].grad[m == 0] == 0).all()) for n, m in masks.items())
    enforcer.before_step(model)

    # A gradient written directly (no autograd, so no hook): before_step masks it.
    name = next(iter(masks))
    params[full(name)].grad = torch.ones_like(params[full(name)])
    enforcer.before_step(model)
    assert torch.equal(params[full(name)].grad, masks[name])


def test_hook_runs_before_a_hook_registered_earlier():
    """DeepSpeed ZeRO-2 moves .grad away in its own post-accumulate-grad hook: ours goes first
    even when the enforcer is built after that hook exists."""
    model = tiny_model()
    masks = random_masks(model)
    name = next(iter(masks))
    param = dict(model.named_parameters())[full(name)]
    seen = []

    def take_grad(p):  # what ZeRO-2 does: copy .grad into its buffers, free it
        seen.append(p.grad.clone())
        p.grad = None

    other = param.register_post_accumulate_grad_hook(take_grad)
    enforcer = MaskEnforcer(model, masks)
    model(**batch(0)).loss.backward()
    assert len(seen) == 1 and bool((seen[0][masks[name] == 0] == 0).all()) and param.grad is None
    other.remove()
    enforcer.remove()


def test_masks_follow_the_parameters_dtype_and_tied_or_full_names():
    model = tiny_model()
    masks = random_masks(model)
    # full names work too; bool masks too
    masks = {full(n) if i % 2 else n: (m.bool() if i % 3 == 0 else m) for i, (n, m) in enumerate(masks.items())}
    enforcer = MaskEnforcer(model, masks)
    model.to(torch.float64)  # a move after construction (as Accelerate's prepare does): masks follow lazily
    enforcer.apply_weights()
    assert enforcer.check() == 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model(**batch(0)).loss.backward()
    enforcer.before_step(model)
    optimizer.step()
    enforcer.after_step(model)
    assert enforcer.check() == 0
    assert all(m.dtype == torch.float64 for m in enforcer._masks)


def test_check_counts_nan_and_masks_that_keep_everything_cost_nothing():
    model = tiny_model()
    masks = random_masks(model)
    name = next(iter(masks))
    masks["pooler.dense.weight"] = torch.ones_like(model.bert.pooler.dense.weight)
    enforcer = MaskEnforcer(model, masks)
    assert "pooler.dense.weight" not in enforcer.names
    enforcer.apply_weights()
    w = dict(model.named_parameters())[full(name)]
    idx = (masks[name] == 0).nonzero()[0]
    with torch.no_grad():
        w[tuple(idx)] = float("nan")
    assert enforcer.check() == 1
    enforcer.after_step(model)
    assert enforcer.check() == 1  # 0 * NaN is NaN: check() does not let it pass


@pytest.mark.parametrize("bad, message", [
    ({"encoder.layer.9.output.dense.weight": torch.ones(32, 64)}, "does not have"),
    ({"encoder.layer.0.output.dense.weight": torch.ones(64, 32)}, "shape"),
    ({"encoder.layer.0.output.dense.weight": torch.full((32, 64), 0.5)}, "other than 0 and 1"),
])
def test_bad_masks_are_one_line_user_errors(bad, message):
    with pytest.raises(UserError, match=message) as err:
        MaskEnforcer(tiny_model(), bad)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------- through the real fit loop

class Probe:
    """Runs before the enforcer's own hooks in ``fit``: sees the gradients as the backward hooks
    left them, and the weights as the optimizer left them (before the re-zeroing)."""

    def __init__(self, enforcer: MaskEnforcer, model, masks):
        self.enforcer, self.masks = enforcer, masks
        self.params = dict(model.named_parameters())
        self.grad_violations: list[int] = []
        self.weight_violations: list[int] = []

    def before_step(self, model) -> None:
        self.grad_violations.append(sum(int((self.params[full(n)].grad[m == 0] != 0).sum())
                                        for n, m in self.masks.items()))

    def after_step(self, model) -> None:
        self.weight_violations.append(self.enforcer.check())


def test_fit_with_gradient_accumulation_bf16_and_clipping(tmp_path, restore_signals, fresh_accelerate_state):
    from datasets import Dataset

    from bert_ticket_cli.artifacts.paths import RunDir
    from bert_ticket_cli.config.schema import EngineConfig, TrainConfig
    from bert_ticket_cli.engine.loop import fit
    from bert_ticket_cli.engine.setup import make_accelerator, plan_batches

    steps, global_batch, seq = 4, 8, 8
    g = torch.Generator().manual_seed(3)
    n = steps * global_batch
    dataset = Dataset.from_dict({
        "input_ids": torch.randint(5, 100, (n, seq), generator=g).tolist(),
        "attention_mask": torch.ones(n, seq, dtype=torch.long).tolist(),
        "labels": torch.randint(0, 2, (n,), generator=g).tolist(),
    })

    def collate(rows):
        return {k: torch.tensor([r[k] for r in rows]) for k in ("input_ids", "attention_mask", "labels")}

    model = tiny_model()
    masks = random_masks(model)
    enforcer = MaskEnforcer(model, masks)
    enforcer.apply_weights()
    start = kept_values(model, masks).clone()
    probe = Probe(enforcer, model, masks)

    train = TrainConfig(max_steps=steps, batch_size=global_batch, micro_batch_size=2, lr=1e-2, weight_decay=0.1,
                        warmup_ratio=0.0, schedule="constant", max_grad_norm=1.0, log_every=1, eval_every=0)
    plan = plan_batches(train, world_size=1)
    assert plan.accumulation == 4
    accelerator = make_accelerator(EngineConfig(cpu=True, mixed_precision="bf16"), train, plan)
    result = fit(accelerator=accelerator, model=model, train_dataset=dataset, collate=collate, train=train,
                 plan=plan, seed=0, run=RunDir(tmp_path / "run"), evaluate=None, hooks=[probe, enforcer])

    assert result.state.step == steps
    assert probe.grad_violations == [0] * steps
    assert probe.weight_violations == [0] * steps
    assert enforcer.check() == 0 and bool((pruned_values(model, masks) == 0.0).all())
    moved = (kept_values(model, masks) != start).float().mean().item()
    assert moved > 0.9, f"only {moved:.0%} of the kept weights changed"

    optimizer = accelerator._optimizers[0].optimizer  # fit's fused AdamW
    params = dict(model.named_parameters())
    for name, m in masks.items():
        state = optimizer.state[params[full(name)]]
        assert bool((state["exp_avg"][m == 0] == 0).all()) and bool((state["exp_avg_sq"][m == 0] == 0).all())
    enforcer.remove()
