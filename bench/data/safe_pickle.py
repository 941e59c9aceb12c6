"""Load dataset pickles (RefCOCOg's ``refs(umd).p``) without running code.

A pickle can call any importable function while it loads (``os.system`` is
one ``GLOBAL`` + ``REDUCE`` away), and refs files are downloaded from mirrors
and passed around. Those files only ever hold plain data: lists of dicts of
strings and numbers. :func:`load_pickle` therefore builds nothing but dict,
list, tuple, set, frozenset, str, bytes, int, float, bool and None; any other
global the stream asks for is refused with a :class:`~bench.errors.DataError`
before it is even imported.

The few globals that plain data itself needs under pickle protocol 2 are
replaced by harmless stand-ins: ``set``/``frozenset`` (protocol 2 has no set
opcode), ``bytes()`` for empty bytes, and ``_codecs.encode(text, "latin1")``,
which is how Python 3 writes ``bytes`` at protocols below 3.

The original refs files were written by Python 2; their ``str`` objects are
byte strings. They are decoded as ASCII first (Python 3's default) and, if that
fails, the whole file is read again as Latin-1, the decoding that maps every
byte to one character.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import DataError


def load_pickle(path: Path) -> object:
    """The plain data in the pickle at ``path``; a :class:`DataError` for anything else."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read the pickle ({error.strerror or error})") from None
    try:
        return _load(data, path, encoding="ASCII")
    except UnicodeDecodeError:
        # A Python 2 pickle whose byte strings are not ASCII.
        return _load(data, path, encoding="latin1")


def _load(data: bytes, path: Path, encoding: str) -> object:
    unpickler = _PlainDataUnpickler(io.BytesIO(data), path, encoding)
    try:
        return unpickler.load()
    except (DataError, UnicodeDecodeError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise DataError(f"{path}: not a readable pickle of plain data ({type(error).__name__}: {error})") from None
    except RecursionError:
        raise DataError(f"{path}: the pickle nests too deeply to be plain data") from None


class _PlainDataUnpickler(pickle.Unpickler):
    """An unpickler whose only reachable globals are stand-ins for plain types."""

    def __init__(self, file: io.BytesIO, path: Path, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._path = path

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        """Called for every GLOBAL/STACK_GLOBAL/INST/OBJ/EXT opcode; allow only plain types."""
        builder = _ALLOWED.get((module, name))
        if builder is None:
            raise DataError(f"{self._path}: refuses to build '{module}.{name}'; refs files contain only plain data")
        return builder

    def persistent_load(self, pid: object) -> object:
        """Persistent ids point outside the file: never plain data."""
        raise DataError(f"{self._path}: refuses a persistent reference; refs files contain only plain data")


def _empty_bytes(*args: object) -> bytes:
    # ``bytes(n)`` would allocate n bytes on the pickle's say-so; plain data
    # only ever pickles ``bytes()`` (an empty bytes object) this way.
    if args:
        raise pickle.UnpicklingError("bytes() with arguments is not plain data")
    return b""


def _latin1_bytes(text: object, encoding: str = "latin1", *rest: object) -> bytes:
    # Python 3 pickles bytes at protocol < 3 as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or rest:
        raise pickle.UnpicklingError("_codecs.encode is only allowed as encode(str, 'latin1')")
    return text.encode("latin-1")


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {}
for _module in ("builtins", "__builtin__"):  # Python 3 and Python 2 names
    _ALLOWED[(_module, "set")] = set
    _ALLOWED[(_module, "frozenset")] = frozenset
    _ALLOWED[(_module, "bytes")] = _empty_bytes
_ALLOWED[("_codecs", "encode")] = _latin1_bytes
