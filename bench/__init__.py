"""region-bench: an evaluation harness for region-level vision-language models."""

__version__ = "0.1.0"
