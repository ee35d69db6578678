"""Human-facing CLI output: aligned tables, JSON on request, progress lines, and one-line errors."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click
import orjson


def print_json(doc: Any) -> None:
    """Print ``doc`` as indented JSON on stdout."""
    click.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str).decode())


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Render ``rows`` as a left-aligned text table with a header line; missing values print as ``-``."""
    cells = [[str(c).upper() for c in columns]]
    for row in rows:
        cells.append(["-" if row.get(c) is None else str(row.get(c)) for c in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def print_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    click.echo(format_table(rows, columns))


def print_kv(pairs: Iterable[tuple[str, Any]]) -> None:
    """Print ``key: value`` lines with aligned values."""
    items = list(pairs)
    width = max((len(k) for k, _ in items), default=0)
    for key, value in items:
        click.echo(f"{key.ljust(width)}  {value}")


def progress(message: str) -> None:
    """A progress line for long work, on stderr so that ``--json`` output stays clean."""
    click.echo(f"... {message}", err=True)


def fail(message: str, code: int = 2) -> None:
    """Print one line ``error: <message>`` on stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
