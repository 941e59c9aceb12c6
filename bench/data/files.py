"""Reading dataset files safely, with errors that name the file, the record and the fix."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.errors import DataError


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (annotation files run to gigabytes)."""
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_file(path: Path, what: str, key: str | None = None) -> Path:
    """Return ``path`` if it is a file, else raise a :class:`DataError` that says how to fix it."""
    if path.is_file():
        return path
    where = f" or set {key!r} in DATA_ROOT/paths.json" if key else ""
    raise DataError(f"{what} not found: {path} (pass --data-root DIR{where})")


def read_json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_number, object)`` from a JSON Lines file, or from a JSON array file.

    Many question files are JSON Lines despite a ``.json`` suffix; some copies are
    one JSON array. Both are accepted; a malformed line is reported by number.
    """
    with path.open("rb") as handle:
        head = handle.read(64).lstrip()
    if head.startswith(b"["):
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
        for index, item in enumerate(items):
            yield index + 1, _as_object(item, path, f"item {index + 1}")
        return
    # Parsed line by line (not with a JSON Lines reader) to keep exact line numbers
    # across blank lines for every later error about a record.
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{path}, line {line_number}: not valid JSON ({error.msg}); each line must be one JSON object"
                ) from None
            yield line_number, _as_object(item, path, f"line {line_number}")


def _as_object(item: Any, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise DataError(f"{path}, {where}: expected a JSON object, got {type(item).__name__}")
    return item


def resolve_inside(root: Path, relative: str, source: Path, where: str) -> Path:
    """Join a file name from an annotation file to ``root``; refuse paths that escape it."""
    if not isinstance(relative, str) or not relative:
        raise DataError(f"{source}, {where}: the image file name must be a non-empty string")
    root = root.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise DataError(
            f"{source}, {where}: image path {relative!r} leaves the image directory {root}; "
            "file names must be relative and stay inside it"
        )
    return candidate
