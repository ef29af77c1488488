"""``python -m bert_ticket_cli`` (what torchrun and accelerate launch run)."""

# The stop-signal handler before anything else is imported (see cli.main, engine/signals.py).
from bert_ticket_cli.engine import signals as _signals

try:
    _signals.install()
except ValueError:
    pass  # cli.main reports a bad BERT_TICKET_STOP_SIGNALS

from bert_ticket_cli.cli import main  # noqa: E402

main()
