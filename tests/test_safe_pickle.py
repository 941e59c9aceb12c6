"""The restricted unpickler: plain data loads, code never runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from bench.data.safe_pickle import load_pickle
from bench.errors import DataError

PLAIN = {
    "ref_id": 0,
    "sentences": [{"tokens": ["the", "red", "circle"], "raw": "The red circle", "sent_id": 7, "sent": "x"}],
    "score": 0.5,
    "flags": (True, False, None),
    "ids": {1, 2, 3},
    "frozen": frozenset({"a"}),
    "blob": b"\x00\xff",
    "empty": b"",
    "text": "café",
}


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_round_trips_at_every_protocol(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "refs.p"
    path.write_bytes(pickle.dumps([PLAIN, PLAIN], protocol=protocol))
    assert load_pickle(path) == [PLAIN, PLAIN]


def test_os_system_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    # GLOBAL os.system, then REDUCE with one string argument: `touch marker`.
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    path = tmp_path / "evil.p"
    path.write_bytes(payload)
    with pytest.raises(DataError) as error:
        load_pickle(path)
    message = str(error.value)
    assert str(path) in message
    assert "refuses to build 'os.system'" in message
    assert "plain data" in message
    assert not marker.exists()


class Custom:
    """Any class instance is refused, not only dangerous callables."""

    def __init__(self) -> None:
        self.value = 1


def test_class_instances_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "object.p"
    path.write_bytes(pickle.dumps({"x": Custom()}, protocol=2))
    with pytest.raises(DataError, match=r"refuses to build 'tests\.test_safe_pickle\.Custom'"):
        load_pickle(path)


def test_stack_global_with_protocol_4_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "eval.p"
    path.write_bytes(pickle.dumps(eval, protocol=4))  # a STACK_GLOBAL for builtins.eval
    with pytest.raises(DataError, match=r"refuses to build 'builtins\.eval'"):
        load_pickle(path)


def test_codecs_encode_only_builds_latin1_bytes(tmp_path: Path) -> None:
    path = tmp_path / "codec.p"
    # _codecs.encode("abc", "rot13") is not how plain bytes are pickled.
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(DataError, match="not a readable pickle"):
        load_pickle(path)


def test_python2_pickle_with_latin1_bytes_loads(tmp_path: Path) -> None:
    # What Python 2 writes for {'raw': 'caf\xe9', 'ids': set([1])} at protocol 2:
    # a non-ASCII byte string (SHORT_BINSTRING) and __builtin__.set.
    payload = (
        b"\x80\x02}q\x00(U\x03rawq\x01U\x04caf\xe9q\x02U\x03idsq\x03c__builtin__\nset\nq\x04]q\x05K\x01a\x85Rq\x06u."
    )
    path = tmp_path / "py2.p"
    path.write_bytes(payload)
    assert load_pickle(path) == {"raw": "café", "ids": {1}}


def test_python2_ascii_pickle_loads_with_default_encoding(tmp_path: Path) -> None:
    path = tmp_path / "py2_ascii.p"
    path.write_bytes(b"\x80\x02]q\x00(U\x03abcq\x01K\x07e.")
    assert load_pickle(path) == ["abc", 7]


def test_truncated_and_missing_files_are_data_errors(tmp_path: Path) -> None:
    path = tmp_path / "cut.p"
    path.write_bytes(pickle.dumps(PLAIN, protocol=2)[:20])
    with pytest.raises(DataError, match="cut.p"):
        load_pickle(path)
    with pytest.raises(DataError, match="cannot read"):
        load_pickle(tmp_path / "absent.p")
