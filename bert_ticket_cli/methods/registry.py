"""Every ticket-finding method, by its ``method=`` name.

A method is a module under ``methods/`` with a ``METHOD`` object (see
:mod:`bert_ticket_cli.methods.base`); the module is imported only when the method is used.
A new method adds one line here (and, later, its settings).
"""

from __future__ import annotations

import importlib
from typing import Any

from bert_ticket_cli.errors import UserError

#: method= name -> the module holding its METHOD.
METHODS = {
    "imp": "bert_ticket_cli.methods.imp",
    "omp": "bert_ticket_cli.methods.omp",
    "random": "bert_ticket_cli.methods.random_pruning",
    "earlybert": "bert_ticket_cli.methods.earlybert_search",
    "super_tickets": "bert_ticket_cli.methods.super_tickets",
}
#: Methods that a later release adds: method= name -> that release.
LATER: dict[str, str] = {}


def names() -> list[str]:
    return list(METHODS)


def get(name: str) -> Any:
    """The method called ``name``; a method of a later release or an unknown name is a UserError."""
    available = "|".join(METHODS)
    if name in LATER:
        raise UserError(f"method={name} arrives with {LATER[name]}; available now: method={available}")
    if name not in METHODS:
        raise UserError(f"prune needs method={available} (got method={name})")
    return importlib.import_module(METHODS[name]).METHOD
