"""METEOR 1.5 through its Java ``-stdio`` protocol, with a wrapper that always cleans up.

Why not ``pycocoevalcap.meteor.meteor.Meteor``: it takes a ``threading.Lock`` in
``compute_score`` and releases it only on success. When the JVM dies or answers
with an error, ``float(readline())`` raises with the lock held, and its
``__del__`` (run at interpreter exit) blocks forever on ``lock.acquire()``. It
also has no timeouts and pipes stderr without ever reading it, so a chatty or
stuck JVM hangs the caller. This wrapper keeps the same command and protocol, so
the numbers are identical, but:

* one JVM per :class:`MeteorScorer` session (a context manager); ``close`` runs
  in ``finally``/``__exit__`` and kills the JVM if it does not exit promptly;
* no threads and no locks: pipes are driven with ``selectors`` (writes and reads
  interleaved, so a long batch cannot deadlock on full pipe buffers), and
  stderr goes to a temporary file, so it can never fill up and block Java;
* every exchange has an inactivity timeout; any failure raises
  :class:`MeteorError` (a ``RuntimeError``) quoting Java's stderr/stdout.

Protocol (as pycocoevalcap speaks it): for each segment send
``SCORE ||| ref 1 ||| ... ||| ref n ||| hypothesis`` and read one line of
sufficient statistics; then send ``EVAL ||| stats 1 ||| ... ||| stats N`` and
read N per-segment scores followed by one corpus score (the number reported).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import selectors
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn

#: Seconds without any progress (bytes written or read) before the JVM is
#: declared stuck. Loading the paraphrase table alone takes ~15-20 s on a small
#: machine, so this is deliberately generous; large splits keep making progress.
DEFAULT_TIMEOUT_S = 300.0
#: Seconds ``close`` waits for a clean exit before killing the JVM.
EXIT_GRACE_S = 5.0
_SEPARATOR = "|||"
_CHUNK = 1 << 16


class MeteorError(RuntimeError):
    """The METEOR JVM failed, timed out or answered something unparseable."""


@dataclass(frozen=True)
class MeteorResult:
    corpus: float
    segments: list[float]


def locate_meteor_jar() -> Path:
    """``meteor-1.5.jar`` inside the installed pycocoevalcap (pinned to 1.2 in pyproject).

    The jar looks for ``data/paraphrase-en.gz`` next to itself; without it METEOR
    would silently score without paraphrase matches, so its absence is an error.
    """
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise MeteorError("pycocoevalcap is not installed (pip install pycocoevalcap==1.2)")
    jar = Path(next(iter(spec.submodule_search_locations))) / "meteor" / "meteor-1.5.jar"
    for path in (jar, jar.parent / "data" / "paraphrase-en.gz"):
        if not path.is_file():
            raise MeteorError(f"METEOR file missing: {path} (reinstall pycocoevalcap==1.2)")
    return jar


def clean_segment(text: str) -> str:
    """One protocol field: no line breaks (one line per request), no ``|||``
    (the field separator), single spaces, stripped."""
    return " ".join(text.replace(_SEPARATOR, " ").split())


def score_line(hypothesis: str, references: Sequence[str]) -> str:
    """The ``SCORE`` request for one segment, in pycocoevalcap's field order."""
    fields = ["SCORE", *(clean_segment(r) for r in references), clean_segment(hypothesis)]
    return f" {_SEPARATOR} ".join(fields)


class MeteorScorer:
    """One METEOR JVM; use as ``with MeteorScorer() as meteor: meteor.score(...)``.

    The JVM starts in ``__enter__`` (or :meth:`start`) and loads its paraphrase
    table in the background, so callers can do other work (tokenizing) meanwhile.
    Several :meth:`score` calls may share one session; results do not depend on
    earlier calls (``EVAL`` aggregates only the statistics it is given).
    """

    def __init__(
        self,
        jar: Path | str | None = None,
        *,
        java: str = "java",
        max_heap: str = "2G",
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.jar = Path(jar) if jar is not None else None
        self.java = java
        self.max_heap = max_heap
        self.timeout_s = timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._unread = b""
        self._idle = False  # True between completed requests: safe to ask for a clean exit
        self._requested = False  # a request was sent to this JVM

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> MeteorScorer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Whether this session holds a JVM (started and not yet closed)."""
        return self._process is not None

    def command(self) -> list[str]:
        """The same command line pycocoevalcap runs (run from the jar's folder)."""
        jar = self.jar or locate_meteor_jar()
        return [self.java, "-jar", f"-Xmx{self.max_heap}", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]

    def start(self) -> None:
        if self._process is not None:
            return
        jar = self.jar or locate_meteor_jar()
        command = self.command()
        # A file, not a pipe: Java can never block on it, and no reader thread is needed.
        # It lives as long as the JVM, so no `with`: close() closes it.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                command,
                cwd=str(jar.resolve().parent),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                bufsize=0,
            )
        except OSError as error:
            self.close()
            raise MeteorError(f"cannot start METEOR ({' '.join(command)}): {error}") from error
        assert self._process.stdin is not None and self._process.stdout is not None
        os.set_blocking(self._process.stdin.fileno(), False)
        os.set_blocking(self._process.stdout.fileno(), False)

    def close(self) -> None:
        """Stop the JVM: an idle one gets EOF and a moment to exit, a busy one
        (still loading, or mid-request after an error) is killed. Idempotent."""
        process, self._process = self._process, None
        try:
            if process is not None:
                _stop(process, EXIT_GRACE_S if self._idle else 0.0)
        finally:
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None
            self._unread = b""
            self._idle = False
            self._requested = False

    # -- scoring -------------------------------------------------------------------

    def score(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> MeteorResult:
        """Corpus METEOR (what pycocoevalcap's ``compute_score`` returns first) and per-segment scores."""
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
        if not hypotheses:
            raise ValueError("METEOR needs at least one segment")
        if any(len(refs) == 0 for refs in references):
            raise ValueError("every hypothesis needs at least one reference")
        if self._process is not None and not self._idle and self._requested:
            self.close()  # a previous request was interrupted: its answers would be read as ours
        self.start()
        self._idle = False
        self._requested = True
        requests = "".join(score_line(h, refs) + "\n" for h, refs in zip(hypotheses, references, strict=True))
        stats = self._exchange(requests, len(hypotheses))
        for line in stats:
            self._parse_floats(line, "SCORE")
        evaluate = f" {_SEPARATOR} ".join(["EVAL", *stats]) + "\n"
        scores = [self._parse_floats(line, "EVAL")[0] for line in self._exchange(evaluate, len(hypotheses) + 1)]
        self._idle = True
        return MeteorResult(corpus=scores[-1], segments=scores[:-1])

    def _exchange(self, request: str, n_lines: int) -> list[str]:
        """Send ``request`` and read ``n_lines`` answer lines, interleaving both so
        neither side can block on a full pipe; fail after ``timeout_s`` of silence."""
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        pending = memoryview(request.encode("utf-8"))
        received = bytearray(self._unread)
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            if pending:
                selector.register(process.stdin, selectors.EVENT_WRITE)
            last_progress = time.monotonic()
            while received.count(b"\n") < n_lines:
                waited = time.monotonic() - last_progress
                if waited >= self.timeout_s:
                    self._fail(f"no answer from METEOR for {self.timeout_s:g} s", received)
                for key, _ in selector.select(self.timeout_s - waited):
                    if key.fileobj is process.stdin:
                        pending = self._write_some(pending, received)
                        if not pending:
                            selector.unregister(process.stdin)
                    else:
                        chunk = os.read(process.stdout.fileno(), _CHUNK)
                        if not chunk:
                            self._fail("METEOR exited before answering", received)
                        received += chunk
                    last_progress = time.monotonic()
        *lines, rest = bytes(received).split(b"\n", n_lines)
        self._unread = rest
        return [line.decode("utf-8", errors="replace").strip() for line in lines]

    def _write_some(self, pending: memoryview, received: bytearray) -> memoryview:
        assert self._process is not None and self._process.stdin is not None
        try:
            written = os.write(self._process.stdin.fileno(), pending[:_CHUNK])
        except BrokenPipeError:
            self._fail("METEOR closed its input", received)
        except BlockingIOError:
            return pending
        return pending[written:]

    def _parse_floats(self, line: str, request: str) -> list[float]:
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            values = []
        if not values:
            self._fail(f"unexpected answer to {request}: {line!r}", b"")
        return values

    def _fail(self, what: str, stdout: bytes | bytearray) -> NoReturn:
        """Raise with everything Java said, after stopping the JVM (so stderr is complete)."""
        process, self._process = self._process, None
        code = None
        if process is not None:
            _stop(process, 0.0)
            code = process.returncode
        parts = [what + (f" (exit code {code})" if code is not None else "")]
        stderr = self._read_stderr()
        if stderr:
            parts.append(f"Java stderr:\n{stderr}")
        out = bytes(stdout).decode("utf-8", errors="replace").strip()
        if out:
            parts.append(f"Java stdout:\n{out[-2000:]}")
        self.close()
        raise MeteorError("\n".join(parts))

    def _read_stderr(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", errors="replace").strip()[-4000:]


_SHARED: MeteorScorer | None = None


def shared_scorer() -> MeteorScorer:
    """The process's METEOR session: one JVM per ``bench run``, however many caption tasks it has.

    Loading METEOR's paraphrase table is the slow part (15-20 s on 2 cores), so
    tasks share one JVM. It starts on first use and is stopped at interpreter
    exit; after a Java error the session is closed and the next call starts a
    fresh JVM (see :meth:`MeteorScorer.score`).
    """
    global _SHARED
    if _SHARED is None:
        _SHARED = MeteorScorer()
        atexit.register(_SHARED.close)
    return _SHARED


def _stop(process: subprocess.Popen[bytes], grace_s: float) -> None:
    """Close stdin (METEOR exits at EOF), wait up to ``grace_s``, then kill; always reap."""
    try:
        if process.stdin is not None:
            process.stdin.close()
    except OSError:
        pass  # broken pipe on a dead JVM: nothing left to flush
    try:
        if grace_s > 0:
            process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
