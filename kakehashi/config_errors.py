"""Turn a pydantic validation failure into one line that names the key, what is wrong, and how to fix it."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from kakehashi.errors import ConfigError


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def config_error(path: Path, exc: ValidationError, hints: dict[str, str] | None = None) -> ConfigError:
    """One :class:`ConfigError` for the first problem in ``exc``, with a fix hint when one is known."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    key = _location(tuple(first["loc"]))
    message = str(first["msg"])
    if first["type"] == "extra_forbidden":
        message = "unknown key: check its spelling against the documented keys, or remove it"
    elif first["type"] == "missing":
        message = "required key is missing: add it"
    hint = ""
    if hints:
        for suffix, text in hints.items():
            if key == suffix or key.endswith("." + suffix):
                hint = f" ({text})"
                break
    more = f" [and {len(errors) - 1} more problem(s)]" if len(errors) > 1 else ""
    return ConfigError(f"{path}: {key}: {message}{hint}{more}")
