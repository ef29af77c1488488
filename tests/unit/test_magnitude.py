"""Magnitude pruning (exact counts, shrinking masks, ties, bf16) and random masks."""

from __future__ import annotations

import pytest
import torch

from bert_ticket_cli.errors import UserError
from bert_ticket_cli.methods import magnitude as M
from bert_ticket_cli.methods.magnitude import (
    global_magnitude_prune,
    layerwise_magnitude_prune,
    level_target,
    prune_to,
    round_half_up,
)
from bert_ticket_cli.methods.random_masks import random_at_sparsity, random_like, random_units_like
from bert_ticket_cli.sparsity.ticket import Ticket

# ------------------------------------------------------------------------------ helpers


def reference_prune(weights, masks, n_remove_total):
    """Brute force: concatenate everything, stable-sort by |w| (fp32), pruned ones first.

    Stable sort on the concatenation in dict order = ties broken by (matrix order, flat index).
    """
    scores = []
    for name, w in weights.items():
        s = w.detach().float().reshape(-1).abs().double()
        s[~masks[name].reshape(-1)] = -1.0
        scores.append(s)
    flat = torch.cat(scores)
    order = torch.sort(flat, stable=True).indices
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:n_remove_total]] = False
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = keep[start:start + w.numel()].view(w.shape)
        start += w.numel()
    return out


def make_weights(seed, shapes, kind="normal", dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i, shape in enumerate(shapes):
        if kind == "normal":
            w = torch.randn(shape, generator=gen)
        elif kind == "ties":  # few distinct magnitudes, both signs: ties everywhere
            w = torch.randint(-3, 4, shape, generator=gen).float() * 0.25
        else:
            raise ValueError(kind)
        out[f"encoder.layer.{i}.attention.self.query.weight"] = w.to(dtype)
    return out


def dense(weights):
    return {n: torch.ones(w.shape, dtype=torch.bool) for n, w in weights.items()}


def n_pruned(masks):
    return sum(int((~m).sum()) for m in masks.values())


SHAPES = [(16, 48), (48, 16), (7, 13), (1, 1), (33, 5)]


# --------------------------------------------------------------------------- level_target


def test_level_target_linear_and_geometric():
    total = 1000
    assert [level_target(lv, total=total) for lv in range(10)] == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
    geo = [level_target(lv, rate=0.1, schedule="geometric", total=total) for lv in range(4)]
    assert geo == [0, 100, 190, 271]  # 10 % of what remains each round
    assert level_target(1, total=85_524_480) == 8_552_448
    assert level_target(3, rate=0.2, schedule="geometric", total=85_524_480) == 85_524_480 - round(85_524_480 * 0.512)


@pytest.mark.parametrize("kwargs", [dict(level=10), dict(level=-1), dict(level=1, rate=1.0),
                                    dict(level=1, rate=0.0), dict(level=1, schedule="cubic")])
def test_level_target_rejects_bad_levels(kwargs):
    with pytest.raises(UserError):
        level_target(total=1000, **kwargs)


def test_round_half_up():
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.4999)] == [1, 2, 3, 2]


# ------------------------------------------------------------------------- global pruning


@pytest.mark.parametrize("schedule", ["linear", "geometric"])
@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_global_prune_is_exact_and_masks_only_shrink(schedule, kind, monkeypatch):
    fallbacks = []
    real = M._exact_threshold
    monkeypatch.setattr(M, "_exact_threshold", lambda *a: fallbacks.append(1) or real(*a))
    weights = make_weights(1, SHAPES, kind)
    total = sum(w.numel() for w in weights.values())
    masks = dense(weights)
    for level in range(1, 9):
        n = level_target(level, rate=0.1, schedule=schedule, total=total)
        new = global_magnitude_prune(weights, masks, n)
        assert list(new) == list(weights)
        assert n_pruned(new) == n  # to the element
        for name in weights:
            assert new[name].dtype == torch.bool and new[name].shape == weights[name].shape
            assert not bool((new[name] & ~masks[name]).any()), "a pruned weight came back"
        expected = reference_prune(weights, masks, n)
        for name in weights:
            assert torch.equal(new[name], expected[name]), (level, name)
        masks = new
    if kind == "normal":
        assert not fallbacks, "the sampled band should have held the threshold"


def test_global_prune_removes_the_smallest_survivors_not_the_smallest_weights():
    # An already-pruned weight keeps counting as pruned however large it is, and a small
    # weight that is already pruned is not "spent" twice.
    w = {"a": torch.tensor([[0.1, 5.0, 0.2, 3.0]]), "b": torch.tensor([[0.05, 4.0, 0.3, 2.0]])}
    m = {"a": torch.tensor([[True, False, True, True]]), "b": torch.tensor([[False, True, True, True]])}
    new = global_magnitude_prune(w, m, 4)  # 2 already pruned + the 2 smallest survivors (0.1, 0.2)
    assert new["a"].tolist() == [[False, False, False, True]]
    assert new["b"].tolist() == [[False, True, True, True]]


def test_ties_are_broken_by_matrix_order_then_flat_index():
    w = {"first": torch.full((3, 4), -2.0), "second": torch.full((2, 5), 2.0)}  # 22 equal magnitudes
    for n in (1, 5, 12, 13, 21):
        new = global_magnitude_prune(w, dense(w), n)
        flat = torch.cat([new["first"].reshape(-1), new["second"].reshape(-1)])
        assert flat.tolist() == [False] * n + [True] * (22 - n)


def test_many_equal_weights_with_a_few_distinct(monkeypatch):
    # Half the weights are exactly 0.5: the threshold lands inside that block.
    gen = torch.Generator().manual_seed(3)
    w = {f"m{i}": torch.where(torch.rand(40, 30, generator=gen) < 0.5, torch.tensor(0.5),
                              torch.randn(40, 30, generator=gen)) for i in range(3)}
    for n in (1000, 1500, 2000, 3599):
        new = global_magnitude_prune(w, dense(w), n)
        assert n_pruned(new) == n
        expected = reference_prune(w, dense(w), n)
        assert all(torch.equal(new[k], expected[k]) for k in w)


def test_bf16_weights_are_compared_in_fp32():
    w32 = make_weights(5, SHAPES)
    w16 = {n: w.bfloat16() for n, w in w32.items()}  # many ties after rounding to bf16
    total = sum(w.numel() for w in w16.values())
    masks = dense(w16)
    for level in (1, 3, 6):
        n = level_target(level, total=total)
        new = global_magnitude_prune(w16, masks, n)
        assert n_pruned(new) == n
        expected = reference_prune(w16, masks, n)
        assert all(torch.equal(new[k], expected[k]) for k in w16)
        # the same values held in fp32 give the same masks
        again = global_magnitude_prune({k: v.float() for k, v in w16.items()}, masks, n)
        assert all(torch.equal(new[k], again[k]) for k in w16)
        masks = new


def test_signed_zero_and_parameters_with_grad():
    w = {"a": torch.nn.Parameter(torch.tensor([[-0.0, 0.0, 1.0, -0.0, 2.0]]))}
    new = global_magnitude_prune(w, dense(w), 2)  # -0.0 and 0.0 tie: first two removed
    assert new["a"].tolist() == [[False, False, True, True, True]]
    assert not new["a"].requires_grad


@pytest.mark.parametrize("miss", ["band_below", "band_above", "band_too_big", "no_sample"])
def test_exact_when_the_estimate_misses(monkeypatch, miss):
    """The counting selection (fallback) gives the same exact answer as the band."""
    weights = make_weights(7, SHAPES + [(64, 64)], "normal")
    weights["pooler.dense.weight"] = make_weights(8, [(20, 20)], "ties")["encoder.layer.0.attention.self.query.weight"]
    total = sum(w.numel() for w in weights.values())
    monkeypatch.setattr(M, "CHUNK", 100)  # several chunks per matrix, ties across chunk borders
    if miss == "band_below":
        monkeypatch.setattr(M, "_estimate_band", lambda sample, k, s: (0, 1))
    elif miss == "band_above":
        monkeypatch.setattr(M, "_estimate_band", lambda sample, k, s: (M.KEY_MAX - 1, M.KEY_MAX))
    elif miss == "band_too_big":
        monkeypatch.setattr(M, "BAND_CAP", 5)
    else:
        monkeypatch.setattr(M, "_sample_keys", lambda mats, survivors: torch.empty(0, dtype=torch.int32))
    calls = []
    real = M._exact_threshold
    monkeypatch.setattr(M, "_exact_threshold", lambda *a: calls.append(1) or real(*a))
    masks = dense(weights)
    for level in (1, 4, 9):
        n = level_target(level, total=total)
        new = global_magnitude_prune(weights, masks, n)
        expected = reference_prune(weights, masks, n)
        assert n_pruned(new) == n
        assert all(torch.equal(new[k], expected[k]) for k in weights)
        masks = new
    # the counting selection ran where the band missed; with no sample the band is everything
    assert len(calls) == (0 if miss == "no_sample" else 3)


def test_does_not_concatenate_the_weights(monkeypatch):
    """Peak memory stays about one matrix: no torch.cat anywhere near the size of all weights."""
    monkeypatch.setattr(M, "SAMPLE", 1 << 12)  # scaled down with the weights (1M instead of 85M)
    monkeypatch.setattr(M, "CHUNK", 1 << 14)  # serial kernels: steady on a busy machine
    weights = {f"m{i}": torch.randn(512, 512) for i in range(4)}
    total = 4 * 512 * 512
    biggest = []
    real_cat = torch.cat

    def spying_cat(tensors, *args, **kwargs):
        out = real_cat(tensors, *args, **kwargs)
        biggest.append(out.numel())
        return out

    monkeypatch.setattr(torch, "cat", spying_cat)
    masks = global_magnitude_prune(weights, dense(weights), total // 10)
    masks = global_magnitude_prune(weights, masks, total // 5)
    assert n_pruned(masks) == total // 5
    assert biggest and max(biggest) < total // 8


def test_global_prune_rejects_bad_counts():
    w = make_weights(2, SHAPES)
    total = sum(x.numel() for x in w.values())
    half = global_magnitude_prune(w, dense(w), total // 2)
    with pytest.raises(ValueError, match="already pruned"):
        global_magnitude_prune(w, half, total // 4)
    with pytest.raises(ValueError):
        global_magnitude_prune(w, dense(w), total)
    with pytest.raises(ValueError):
        global_magnitude_prune(w, {k: v.float() for k, v in dense(w).items()}, 1)
    same = global_magnitude_prune(w, half, total // 2)  # nothing more to remove: a copy
    assert all(torch.equal(same[k], half[k]) and same[k] is not half[k] for k in w)


# ---------------------------------------------------------------------- layer-wise pruning


@pytest.mark.parametrize("kind", ["normal", "ties"])
def test_layerwise_prune_is_exact_per_matrix(kind):
    weights = make_weights(4, SHAPES, kind)
    masks = dense(weights)
    for fraction in (0.1, 0.35, 0.5, 0.9):
        new = layerwise_magnitude_prune(weights, masks, fraction)
        for name, w in weights.items():
            assert int((~new[name]).sum()) == round_half_up(fraction * w.numel()), (fraction, name)
            assert not bool((new[name] & ~masks[name]).any())
            one = {name: w}
            expected = reference_prune(one, {name: masks[name]}, round_half_up(fraction * w.numel()))
            assert torch.equal(new[name], expected[name])
        masks = new


def test_prune_to_global_and_layer_and_bad_sparsity():
    weights = make_weights(9, SHAPES)
    total = sum(w.numel() for w in weights.values())
    g = prune_to(weights, dense(weights), target_sparsity=0.3)
    assert n_pruned(g) == round_half_up(0.3 * total)
    lw = prune_to(weights, dense(weights), target_sparsity=0.3, scope="layer")
    assert all(int((~lw[n]).sum()) == round_half_up(0.3 * w.numel()) for n, w in weights.items())
    for bad in (1.0, -0.1, 1.5, "abc", None):
        with pytest.raises(UserError, match=r"sparsity must be in \[0, 1\)"):
            prune_to(weights, dense(weights), target_sparsity=bad)
    with pytest.raises(UserError, match="masks only shrink"):
        prune_to(weights, g, target_sparsity=0.1)
    with pytest.raises(UserError, match="scope"):
        prune_to(weights, dense(weights), target_sparsity=0.1, scope="per-head")


# ------------------------------------------------------------------------------- random


def test_random_like_keeps_per_matrix_counts():
    weights = make_weights(11, SHAPES + [(40, 40)])
    masks = prune_to(weights, dense(weights), target_sparsity=0.6)
    a = random_like(masks, seed=1)
    b = random_like(Ticket(masks), seed=1)
    c = random_like(masks, seed=2)
    assert list(a) == list(masks)
    for name, mask in masks.items():
        assert a[name].dtype == torch.bool and a[name].shape == mask.shape
        assert int(a[name].sum()) == int(mask.sum()) == int(c[name].sum())
        assert torch.equal(a[name], b[name])  # same seed, same masks
    big = "encoder.layer.5.attention.self.query.weight"
    assert not torch.equal(a[big], c[big])  # another seed, other positions
    assert not torch.equal(a[big], masks[big])  # not the magnitude ticket


def test_random_like_accepts_0_1_masks_and_structured_units():
    masks = {"x": torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.uint8)}
    assert int(random_like(masks, seed=0)["x"].sum()) == 4
    heads = torch.tensor([[True, False, True, True], [False, False, True, False]])
    r = random_units_like(heads, seed=3, name="heads")
    assert r.sum(dim=1).tolist() == [3, 1]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_random_at_sparsity_counts_and_seeds(scope):
    shapes = {f"m{i}": s for i, s in enumerate([(30, 40), (10, 10), (64, 8), (3, 3)])}
    total = sum(a * b for a, b in shapes.values())
    a = random_at_sparsity(shapes, 0.37, seed=5, scope=scope)
    b = random_at_sparsity(shapes, 0.37, seed=5, scope=scope)
    c = random_at_sparsity(shapes, 0.37, seed=6, scope=scope)
    assert list(a) == list(shapes)
    assert all(torch.equal(a[n], b[n]) for n in shapes)
    assert not torch.equal(a["m0"], c["m0"])
    if scope == "global":
        assert n_pruned(a) == n_pruned(c) == round_half_up(0.37 * total)
    else:
        for n, (r, k) in shapes.items():
            assert int((~a[n]).sum()) == round_half_up(0.37 * r * k)
        # a matrix's mask does not depend on the other matrices
        alone = random_at_sparsity({"m0": shapes["m0"]}, 0.37, seed=5, scope=scope)
        assert torch.equal(alone["m0"], a["m0"])


def test_random_at_sparsity_global_is_spread_over_matrices():
    shapes = {"big": (200, 200), "small": (100, 100)}
    masks = random_at_sparsity(shapes, 0.5, seed=0)
    frac_big = float((~masks["big"]).float().mean())
    frac_small = float((~masks["small"]).float().mean())
    assert 0.45 < frac_big < 0.55 and 0.45 < frac_small < 0.55


def test_random_at_sparsity_rejects_bad_sparsity():
    for bad in (1.0, -0.01, "x"):
        with pytest.raises(UserError, match=r"sparsity must be in \[0, 1\)"):
            random_at_sparsity({"a": (2, 2)}, bad, seed=0)


@pytest.mark.parametrize("density", [0.0, 0.003, 0.05, 0.9])
@pytest.mark.parametrize("n", [8, 13, 4096, 4099])
def test_band_positions_match_nonzero(density, n):
    """The word-wise search for band entries finds exactly what nonzero finds (both branches)."""
    gen = torch.Generator().manual_seed(n)
    flag = torch.zeros(M._round8(n), dtype=torch.bool)
    flag[:n] = torch.rand(n, generator=gen) < density
    assert torch.equal(M._positions(flag, n), flag[:n].nonzero().squeeze(1))


def test_a_larger_set_matches_the_reference(monkeypatch):
    """Big enough for a sparse band and several chunks per matrix, at levels 1 and 2."""
    monkeypatch.setattr(M, "CHUNK", 1 << 14)
    gen = torch.Generator().manual_seed(12)
    weights = {"a": torch.randn(256, 512, generator=gen), "b": torch.randn(512, 256, generator=gen).bfloat16(),
               "c": torch.randn(300, 77, generator=gen)}
    total = sum(w.numel() for w in weights.values())
    masks = dense(weights)
    for level in (1, 2):
        n = level_target(level, total=total)
        new = global_magnitude_prune(weights, masks, n)
        expected = reference_prune(weights, masks, n)
        assert all(torch.equal(new[k], expected[k]) for k in weights)
        masks = new
