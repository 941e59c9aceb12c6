"""Cache keys: when may a saved prediction be reused?

A prediction is reused only when everything that could change it is the same:
the model (its fingerprint covers name, adapter version, arguments and weights),
the task and its version, and the exact requests (prompt, regions, image,
candidates, generation settings such as ``max_new_tokens`` and stop strings).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from bench.types import Request


def cache_key(model_fingerprint: str, task_name: str, task_version: str, requests: Sequence[Request]) -> str:
    payload = {
        "model": model_fingerprint,
        "task": task_name,
        "task_version": task_version,
        "requests": [request.content() for request in requests],
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()
