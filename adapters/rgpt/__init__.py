"""RegionGPT (RGPT) reference implementation: config, model, processor and the ``rgpt`` adapter.

Importing :mod:`adapters.rgpt.adapter` registers the adapter (without importing torch
or transformers: they load when the adapter is built). The building blocks are
re-exported here lazily, for training code::

    from adapters.rgpt import RGPTConfig, RGPTForCausalLM, RGPTProcessor, build_word_tokenizer
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RGPTConfig": "configuration_rgpt",
    "RGPTForCausalLM": "modeling_rgpt",
    "mask_pool": "modeling_rgpt",
    "RGPTProcessor": "processing_rgpt",
    "build_word_tokenizer": "processing_rgpt",
    "config_token_ids": "processing_rgpt",
    "load_tokenizer": "processing_rgpt",
    "load_vicuna_tokenizer": "processing_rgpt",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"adapters.rgpt.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'adapters.rgpt' has no attribute {name!r}")
