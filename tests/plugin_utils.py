"""Install a throwaway plugin distribution (module + dist-info with entry points) in a directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def install_plugin(site: Path, module: str, source: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """Write ``module.py`` and a ``.dist-info`` whose entry points importlib.metadata will find."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    lines = []
    for group, points in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return site


def bench_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench", *args]


def run_bench(*args: str, site: Path | None = None, cwd: Path | None = None, timeout: float = 300,
              script: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a subprocess (``python bench.py`` when ``script``), with ``site`` on the path."""
    env = dict(os.environ)
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    command = [sys.executable, str(REPO / "bench.py"), *args] if script else bench_command(*args)
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd or REPO, env=env, timeout=timeout)
