"""Leaderboards: results.json files aggregated into the papers' tables (models are never re-run).

``runs`` reads the files, ``tables`` builds the tables (rows by model and data, sections by
data, each ranked on its own, the papers' rows beside), ``reported`` holds the papers' rows,
``render`` writes Markdown, CSV and one HTML page. :func:`write_leaderboards` is ``bench
leaderboard``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from bench.leaderboard.render import csv_text, html_page, markdown
from bench.leaderboard.runs import read_run
from bench.leaderboard.tables import TABLES, Table, build_table
from bench.results import find_results

HTML_FILE = "index.html"


def write_leaderboards(paths: Iterable[Path], out_dir: Path) -> list[Path]:
    """Build every table from the results.json files under ``paths`` and write, into ``out_dir``,
    ``{table}.md`` and ``{table}.csv`` for each table and ``index.html``. Returns the files written."""
    files = find_results(list(paths))
    runs = [read_run(path) for path in files]
    tables: list[Table] = [build_table(spec, runs) for spec in TABLES]
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        for suffix, text in ((".md", markdown(table, len(files))), (".csv", csv_text(table))):
            path = out_dir / f"{table.spec.name}{suffix}"
            path.write_text(text, encoding="utf-8")
            written.append(path)
    page = out_dir / HTML_FILE
    page.write_text(html_page(tables, len(files)), encoding="utf-8")
    written.append(page)
    return written
