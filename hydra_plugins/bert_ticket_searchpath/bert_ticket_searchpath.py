"""Hydra's search-path plugin for bert-ticket: the lab's config folders ahead of the packaged ones.

Hydra finds plugins in the ``hydra_plugins`` namespace package.  When the primary config folder
is bert-ticket's packaged ``conf/`` (what ``config/compose.py`` initialises), this puts the
folders of ``$BERT_TICKET_CONFIG_PATH`` and ``./conf`` in front of it, in that order, so their
options, and their files of a packaged option's name, win.  (``hydra.searchpath`` would append
them after the primary folder instead.)  Any other Hydra application is left untouched.
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.plugins.search_path_plugin import SearchPathPlugin


class BertTicketSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        try:
            from bert_ticket_cli.config.compose import CONF_DIR, search_path as bert_ticket_folders
        except ImportError:  # bert-ticket is not importable here: not its application
            return
        main = [e.path for e in search_path.get_path() if e.provider == "main" and e.path]
        if not main or Path(main[0].removeprefix("file://")).resolve() != CONF_DIR:
            return
        for folder in bert_ticket_folders(strict=False):
            if folder != CONF_DIR:
                # before "main", after the ones added so far: the search order is the list's
                search_path.prepend("bert-ticket", f"file://{folder}", anchor=SearchPathQuery(provider="main"))
