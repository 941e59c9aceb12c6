"""Append-only samples files: nothing finished is lost, and runs resume.

Every finished sample is one JSON line in ``OUTPUT/samples_<task>.jsonl``,
written and flushed before the next batch starts, so a crash or a SIGKILL
loses at most the batch in flight. On the next run the file is read back:
records whose cache key still matches are reused, a torn last line (the
write the kill interrupted) is dropped, and the file is rewritten atomically
with just the reusable records before new ones are appended.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from bench.errors import DataError


def samples_path(output_dir: Path, task_name: str) -> Path:
    return output_dir / f"samples_{task_name}.jsonl"


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a samples file; a torn (unterminated, unparsable) last line is skipped."""
    with path.open("rb") as handle:
        data = handle.read()
    lines = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # no trailing newline: the write was interrupted
                continue
            raise DataError(
                f"{path}, line {number}: not valid JSON ({error.msg}); delete that line "
                "(its sample will be recomputed) or the whole file"
            ) from None
        if not isinstance(record, dict) or "id" not in record:
            raise DataError(f"{path}, line {number}: a sample record must be an object with an 'id'")
        yield record


class SampleStore:
    """The samples file of one task in one output directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[str] | None = None

    def reusable(self, expected_keys: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """Load finished records whose ``cache_key`` matches ``expected_keys[id]``.

        Rewrites the file to hold exactly those records, so stale predictions
        (another model, task version or prompt) and duplicates never mix with new ones.
        """
        kept: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for record in read_records(self.path):
                sample_id = str(record["id"])
                if expected_keys.get(sample_id) == record.get("cache_key"):
                    kept[sample_id] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".jsonl.tmp")
        with temporary.open("w", encoding="utf-8") as handle:
            for record in kept.values():
                handle.write(_line(record))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        return kept

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one finished record and flush it to the OS (survives the process being killed)."""
        if self._handle is None:
            self._handle = self.path.open("a", encoding="utf-8")
        self._handle.write(_line(record))
        self._handle.flush()

    def close(self) -> None:
        if self._handle is not None:
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, sort_keys=False) + "\n"
