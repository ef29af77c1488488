"""``python -m bert_ticket_cli`` (what torchrun and accelerate launch run)."""

from bert_ticket_cli.cli import main

main()
