"""EarlyBERT (Chen et al., ACL 2021) as a search method: slimming coefficients on every head
and FFN neuron (:mod:`bert_ticket_cli.model.slimming`) trained with an L1 penalty, and a step
hook that draws a structured ticket from ``|c|`` every ``check_every`` steps, feeds the
early-bird detector and stops training once the ticket stopped changing (the pure parts:
:mod:`bert_ticket_cli.methods.earlybert`).  Used by fine-tuning (``prune method=earlybert``,
:mod:`bert_ticket_cli.workflows.earlybert`) and pre-training (``pretrain method=earlybert``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def save_checks(path: Path, checks: list[tuple[int, torch.Tensor, torch.Tensor]]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    save_file({"steps": torch.tensor([c[0] for c in checks], dtype=torch.int64),
               "heads": torch.stack([c[1] for c in checks]),
               "neurons": torch.stack([c[2] for c in checks])}, str(tmp))
    tmp.replace(path)


def load_checks(path: Path, up_to: int | None = None) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """The tickets drawn at the checks of a search, oldest first (those after ``up_to`` dropped:
    a resumed search repeats them)."""
    from safetensors.torch import load_file

    if not path.exists():
        return []
    t = load_file(str(path))
    out = [(int(s), h, n) for s, h, n in zip(t["steps"].tolist(), t["heads"], t["neurons"])]
    return [c for c in out if up_to is None or c[0] <= up_to]


class EarlyBirdSearch:
    """Step hook of the search: draws a ticket every ``check_every`` steps, feeds the detector,
    keeps every check (on disk too, for resume and the heatmap) and asks ``fit`` to stop at the
    early bird."""

    def __init__(self, slimming: Any, eb: Any, store: Path, *, start_step: int, main: bool,
                 stop_after: int | None = None):
        from bert_ticket_cli.methods.earlybert import EarlyBird

        self.slimming, self.eb, self.store, self.main = slimming, eb, store, main
        self.step = start_step
        self.detector = EarlyBird(window=eb.window, threshold=eb.threshold)
        self.checks = load_checks(store, up_to=start_step)
        self.found_at: int | None = None
        for step, heads, neurons in self.checks:  # replay: the detector's state at start_step
            if self.detector.push((heads, neurons)) and self.found_at is None:
                self.found_at = step
        # stop_after: the search's last step (method.search_epochs), on the full schedule
        self.stop_after = stop_after
        self.stop_training = (self.found_at is not None and eb.stop_at_early_bird) or self._out_of_steps()

    def _out_of_steps(self) -> bool:
        return self.stop_after is not None and self.step >= self.stop_after

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        from bert_ticket_cli.methods.earlybert import draw_ticket

        heads, neurons = self.slimming.scores()
        return draw_ticket(heads, neurons, head_fraction=self.eb.head_fraction,
                           neuron_fraction=self.eb.neuron_fraction, head_scope=self.eb.head_scope,
                           neuron_scope=self.eb.neuron_scope)

    def check(self) -> None:
        ticket = self.draw()
        self.checks.append((self.step, *ticket))
        if self.detector.push(ticket) and self.found_at is None:
            self.found_at = self.step
        if self.main:
            save_checks(self.store, self.checks)
        if self.found_at is not None and self.eb.stop_at_early_bird:
            self.stop_training = True

    def before_step(self, model) -> None:
        pass

    def after_step(self, model) -> None:
        self.step += 1
        if self.step % self.eb.check_every == 0:
            self.check()
        if self._out_of_steps():
            self.stop_training = True

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ticket of the search: the early bird, or (not found) a draw at the last step."""
        if self.found_at is not None:
            return next((h, n) for s, h, n in self.checks if s == self.found_at)
        if not self.checks or self.checks[-1][0] != self.step:
            self.check()
        return self.checks[-1][1], self.checks[-1][2]


class EarlyBert:
    name = "earlybert"
    workflow = "earlybert"

    def start_search(self, model: torch.nn.Module, eb: Any, store: Path, *, start_step: int,
                     main: bool, stop_after: int | None = None) -> tuple[EarlyBirdSearch, Any]:
        """Slimming coefficients on ``model`` (``eb``: ``cfg.method``, method=earlybert); the search hook
        (checks stored in ``store``) and the L1 penalty on the coefficients."""
        from bert_ticket_cli.model.slimming import Slimming

        slim = Slimming(model, l1_heads=eb.l1_heads, l1_neurons=eb.l1_neurons)
        return (EarlyBirdSearch(slim, eb, store, start_step=start_step, main=main, stop_after=stop_after),
                slim.penalty)


METHOD = EarlyBert()
