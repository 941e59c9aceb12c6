"""``bench doctor``: is this machine ready for every task?

Checks the pieces that fail late and obscurely otherwise: Java and
pycocoevalcap's jars (caption metrics), METEOR's paraphrase table, torch and
whether CUDA is visible.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    needed_for: str


def run_checks() -> list[Check]:
    return [
        _java(),
        *_pycocoevalcap(),
        _meteor_usable(),
        _torch(),
        _cuda(),
        _package("transformers", "reference models"),
    ]


def _java() -> Check:
    java = shutil.which("java")
    if java is None:
        return Check("java", False, "not on PATH; install a JRE (e.g. apt-get install default-jre)", "caption metrics")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as error:
        return Check("java", False, f"{java} does not run: {error}", "caption metrics")
    first = (out.stderr or out.stdout).strip().splitlines()
    return Check("java", out.returncode == 0, first[0] if first else java, "caption metrics")


def _pycocoevalcap() -> list[Check]:
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return [Check("pycocoevalcap", False, "not installed (pip install pycocoevalcap)", "caption metrics")]
    root = Path(next(iter(spec.submodule_search_locations)))
    files = {
        "PTB tokenizer jar": root / "tokenizer" / "stanford-corenlp-3.4.1.jar",
        "METEOR 1.5 jar": root / "meteor" / "meteor-1.5.jar",
        "METEOR paraphrase data": root / "meteor" / "data" / "paraphrase-en.gz",
    }
    checks = [Check("pycocoevalcap", True, str(root), "caption metrics")]
    for label, path in files.items():
        ok = path.is_file() and path.stat().st_size > 0
        checks.append(Check(label, ok, str(path) if ok else f"missing: {path}", "caption metrics"))
    return checks


def _meteor_usable() -> Check:
    """Score one pair through bench's METEOR wrapper: jars that exist can still fail
    (bad JVM, too little memory for -Xmx2G, corrupt paraphrase table), and only a
    real run shows that. Takes ~15-20 s: the JVM loads the paraphrase table."""
    import time

    from bench.metrics.meteor import MeteorScorer

    name, needed_for = "METEOR usable", "caption metrics"
    if shutil.which("java") is None:
        return Check(name, False, "skipped: java not on PATH", needed_for)
    started = time.monotonic()
    try:
        with MeteorScorer(timeout_s=180) as meteor:
            score = meteor.score(["a red circle"], [["a red circle"]]).corpus
    except (RuntimeError, OSError) as error:
        return Check(name, False, " | ".join(str(error).splitlines()[:6]), needed_for)
    detail = f"identical pair scores {score:g} (expected 1) in {time.monotonic() - started:.1f} s"
    return Check(name, score == 1.0, detail, needed_for)


def _package(name: str, needed_for: str) -> Check:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return Check(name, True, version(name), needed_for)
    except PackageNotFoundError:
        return Check(name, False, "not installed", needed_for)


def _torch() -> Check:
    return _package("torch", "reference models")


def _cuda() -> Check:
    try:
        import torch
    except ImportError:
        return Check("CUDA", False, "torch not installed", "GPU runs (optional)")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        return Check("CUDA", True, f"{torch.cuda.device_count()} device(s): {names}", "GPU runs (optional)")
    return Check("CUDA", False, "no CUDA device visible; models run on the CPU", "GPU runs (optional)")
