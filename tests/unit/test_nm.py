"""N:M (2:4) tickets: exact per-group magnitude / random masks, the pattern recorded in and
checked from ticket.json, the config rules, and the semi-structured kernels' CPU refusal."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.sparsity.nm import (
    check_nm, nm_magnitude_masks, nm_random_masks, nm_violations, parse_pattern,
)
from bert_ticket_cli.sparsity.ticket import Ticket


def test_parse_pattern():
    assert parse_pattern("2:4") == (2, 4) and parse_pattern(" 1 : 8 ") == (1, 8)
    assert parse_pattern(None) is None and parse_pattern("none") is None
    for bad in ("4:2", "2:2", "0:4", "2-4", "a:b"):
        with pytest.raises(UserError, match="N:M"):
            parse_pattern(bad)


@pytest.mark.parametrize("nm", [(2, 4), (1, 4), (3, 8)])
def test_magnitude_keeps_exactly_n_largest_per_group(nm):
    n, m = nm
    g = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(16, 32, generator=g), "b": torch.randn(8, 64, generator=g).to(torch.bfloat16)}
    masks = {k: torch.ones(w.shape, dtype=torch.bool) for k, w in weights.items()}
    out = nm_magnitude_masks(weights, masks, nm)
    assert nm_violations(out, nm) == {}
    for k, w in weights.items():
        groups = w.float().abs().reshape(-1, m)
        kept = out[k].reshape(-1, m)
        assert torch.equal(kept.sum(-1), torch.full((groups.shape[0],), n))
        # every kept magnitude >= every pruned magnitude of its group
        assert bool((torch.where(kept, groups, torch.inf).min(-1).values
                     >= torch.where(~kept, groups, -torch.inf).max(-1).values).all())


def test_ties_are_exact_and_deterministic_and_pruned_stay_pruned():
    w = {"a": torch.ones(2, 8)}  # all tied: the later entries of each group are kept
    out = nm_magnitude_masks(w, {"a": torch.ones(2, 8, dtype=torch.bool)}, (2, 4))
    assert out["a"].tolist() == [[False, False, True, True] * 2] * 2
    mask = torch.tensor([[True, False, True, True] * 2] * 2)  # pruned weights stay pruned, even the largest
    big = torch.tensor([[1.0, 100.0, 2.0, 3.0] * 2] * 2)
    out = nm_magnitude_masks({"a": big}, {"a": mask}, (2, 4))
    assert out["a"].tolist() == [[False, False, True, True] * 2] * 2
    with pytest.raises(UserError, match="fewer than 2"):
        nm_magnitude_masks({"a": big}, {"a": torch.tensor([[True, False, False, False] * 2] * 2)}, (2, 4))


def test_input_dimension_must_be_a_multiple_of_m():
    with pytest.raises(UserError, match="not a multiple of M=4"):
        nm_magnitude_masks({"a": torch.randn(4, 6)}, {"a": torch.ones(4, 6, dtype=torch.bool)}, (2, 4))


def test_random_masks_are_exact_and_reproducible():
    shapes = {"a": (16, 32), "b": (4, 64)}
    one = nm_random_masks(shapes, (2, 4), seed=3)
    assert nm_violations(one, (2, 4)) == {}
    assert all(torch.equal(one[k], nm_random_masks(shapes, (2, 4), seed=3)[k]) for k in shapes)
    assert not torch.equal(one["a"], nm_random_masks(shapes, (2, 4), seed=4)["a"])
    assert torch.equal(one["a"], nm_random_masks({"a": (16, 32)}, (2, 4), seed=3)["a"])  # independent of the others


def _nm_ticket(masks, pattern="2:4"):
    return Ticket(masks, meta={"method": "omp", "pattern": pattern})


def test_ticket_records_and_checks_its_pattern(tmp_path):
    masks = nm_random_masks({"encoder.w": (8, 16)}, (2, 4), seed=0)
    _nm_ticket(masks).save(tmp_path / "ok")
    record = json.loads((tmp_path / "ok" / "ticket.json").read_text())
    assert record["pattern"] == "2:4" and record["sparsity"]["prunable"] == 0.5
    assert Ticket.load(tmp_path / "ok").pattern == (2, 4)

    broken = {"encoder.w": masks["encoder.w"].clone()}
    broken["encoder.w"][0, :4] = True  # one group keeps 4
    _nm_ticket(broken).save(tmp_path / "bad")
    with pytest.raises(UserError, match="claims the 2:4 pattern"):
        Ticket.load(tmp_path / "bad")
    with pytest.raises(UserError, match="claims the 2:4 pattern"):
        check_nm(broken, (2, 4), "t")
    Ticket(broken, meta={"method": "omp"}).save(tmp_path / "plain")  # no claim: an ordinary unstructured ticket
    assert Ticket.load(tmp_path / "plain").pattern is None


def test_check_fits_refuses_a_ticket_that_breaks_its_claim():
    model = nn.Module()
    model.w = nn.Parameter(torch.zeros(8, 16))
    masks = {"w": torch.ones(8, 16, dtype=torch.bool)}
    with pytest.raises(UserError, match="claims the 2:4 pattern"):
        _nm_ticket(masks).check_fits(model)


def test_config_rules_for_patterns():
    from bert_ticket_cli.config.compose import compose, validate

    cfg = validate(compose("prune", ["method=omp", "prune.pattern=2:4"]))
    assert cfg.prune.pattern == "2:4"
    validate(compose("prune", ["method=imp", "prune.pattern=2:4", "prune.levels=1"]))
    for overrides, text in ((["method=imp", "prune.pattern=2:4"], "add prune.levels=1"),
                            (["method=omp", "prune.pattern=4:2"], "1 <= N < M"),
                            (["method=omp", "prune.pattern=2:4", "prune.target_sparsity=0.3"], "drop prune.target"),
                            (["method=random", "prune.pattern=2:4", "prune.scope=layer"], "scope does not apply")):
        with pytest.raises(UserError, match=text):
            validate(compose("prune", overrides))


def test_semi_structured_refuses_the_cpu_and_finds_the_pattern():
    from bert_ticket_cli.model.semi_structured import is_two_four, support, to_semi_structured, two_four_linears

    model = nn.Sequential(nn.Linear(16, 8), nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight.mul_(nm_random_masks({"w": (8, 16)}, (2, 4), seed=0)["w"])
    assert is_two_four(model[0].weight) and not is_two_four(model[1].weight)
    assert list(two_four_linears(model)) == ["0"]
    assert "CUDA" in support("cpu")
    with pytest.raises(UserError, match="compute capability >= 8.0"):
        to_semi_structured(model, "bf16")
    with pytest.raises(UserError, match="fp16 or bf16"):
        to_semi_structured(model, torch.float32)
    assert model[0].weight.dtype == torch.float32  # nothing changed


@pytest.mark.parametrize("name", ["imp", "omp", "random"])
def test_methods_with_a_pattern_give_one_exact_ticket(name):
    from types import SimpleNamespace

    from bert_ticket_cli.methods.registry import get as get_method

    method = get_method(name)
    shapes = {"a": (8, 16), "b": (4, 32)}
    total = 8 * 16 + 4 * 32
    cfg = SimpleNamespace(seed=1, prune=SimpleNamespace(pattern="2:4", levels=1, rate=0.1, schedule="linear",
                                                        target_sparsity=None, scope="global", sparsities=[0.1, 0.9]))
    targets = method.targets(cfg, total)
    assert targets == [0, total // 2]
    g = torch.Generator().manual_seed(0)
    trained = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    current = {k: torch.ones(s, dtype=torch.bool) for k, s in shapes.items()}
    out = list(method.next_tickets(0, trained=trained, current=current, targets=targets, shapes=shapes,
                                   total=total, cfg=cfg))
    assert [k for k, _ in out] == [1]
    masks = out[0][1]
    assert nm_violations(masks, (2, 4)) == {} and sum(int(m.sum()) for m in masks.values()) == total // 2
    if name != "random":
        assert torch.equal(masks["a"], nm_magnitude_masks(trained, current, (2, 4))["a"])
