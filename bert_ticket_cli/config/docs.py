"""Each setting's one-line documentation, read from the schema's ``#:`` comments.

A ``#:`` comment documents the fields that follow it up to the next comment or blank line
(``#: Words per sentence (min, max).`` covers ``min_len`` and ``max_len``).  ``--help`` lists
a verb's settings from here, so the schema's comments are the one place they are written.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import typing
from functools import lru_cache
from typing import Any, Iterator

from bert_ticket_cli.config import schema as schema_module

#: The longest doc line shown (the first sentence, cut here).
MAX_DOC = 120


@lru_cache(maxsize=1)
def _comments() -> dict[tuple[str, str], str]:
    """(class name, field name) -> its ``#:`` comment, whitespace collapsed."""
    source = inspect.getsource(schema_module)
    lines = source.splitlines()
    out: dict[tuple[str, str], str] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        doc = ""
        previous_end = None
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                previous_end = getattr(item, "end_lineno", None)
                doc = ""
                continue
            above, i = [], item.lineno - 2  # 0-based index of the line above the field
            while i >= 0 and lines[i].strip().startswith("#:"):
                above.insert(0, lines[i].strip()[2:].strip())
                i -= 1
            if above:
                doc = " ".join(above)
            elif previous_end is None or previous_end != item.lineno - 1:
                doc = ""  # a blank line (or the class docstring) ends the previous comment's reach
            out[(node.name, item.target.id)] = doc
            previous_end = item.end_lineno
    return out


def one_line(text: str) -> str:
    """The first sentence of ``text``, without reST markup, at most :data:`MAX_DOC` characters."""
    text = re.sub(r"``([^`]*)``", r"\1", " ".join(text.split()))
    first = re.split(r"\.\s+(?=[A-Z])", text, maxsplit=1)[0]
    return first if len(first) <= MAX_DOC else first[: MAX_DOC - 3].rstrip() + "..."


def doc_of(cls: type, name: str) -> str:
    """The documentation of field ``name`` of schema class ``cls`` (searching its bases too)."""
    for klass in cls.__mro__:
        text = _comments().get((klass.__name__, name))
        if text:
            return text
    return ""


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value else "''"
    return str(value)


def settings(cls: type, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """(key, default, one-line doc) for every leaf setting of schema ``cls``."""
    hints = typing.get_type_hints(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(tp) or (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            yield from settings(type(value), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", _shown(value), one_line(doc_of(cls, f.name))


def sections(cls: type, top: str = "run") -> list[tuple[str, list[tuple[str, str, str]]]]:
    """A verb's settings grouped by section (``top`` for the top-level ones), schema order."""
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for key, default, doc in settings(cls):
        groups.setdefault(key.split(".")[0] if "." in key else top, []).append((key, default, doc))
    return list(groups.items())
