"""bert-ticket: experiment runner for BERT lottery tickets and efficient pre-training."""

__version__ = "0.1.0"
