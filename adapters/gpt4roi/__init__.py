"""GPT4RoI reference implementation: config, model, processor, delta conversion and the ``gpt4roi`` adapter.

Importing :mod:`adapters.gpt4roi.adapter` registers the adapter (without importing torch
or transformers: they load when the adapter is built). The building blocks are
re-exported here lazily::

    from adapters.gpt4roi import GPT4RoIConfig, GPT4RoIForCausalLM, GPT4RoIProcessor
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GPT4RoIConfig": "configuration_gpt4roi",
    "GPT4RoIForCausalLM": "modeling_gpt4roi",
    "GPT4RoIProcessor": "processing_gpt4roi",
    "build_word_tokenizer": "processing_gpt4roi",
    "config_token_ids": "processing_gpt4roi",
    "roi_align": "roi_align",
    "apply_delta": "convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"adapters.gpt4roi.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'adapters.gpt4roi' has no attribute {name!r}")
