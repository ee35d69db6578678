"""Configuration files: read a TOML file, and turn a pydantic validation failure into one line that names the key,
what is wrong, and how to fix it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

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


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The TOML document in ``path`` (``what`` names the file for people, e.g. ``gateway.toml``); raises
    :class:`ConfigError` with one line when the file is missing, unreadable or not valid TOML."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}: pass --config with the path of {what}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text: save {what} as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}): fix the syntax at that line") from None
