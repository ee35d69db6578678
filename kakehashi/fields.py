"""Pydantic field types shared by every configuration model, so each rule is written once.

``Identifier`` is a string that must follow the identity rules (:func:`kakehashi.identity.validate_id`); a bad value
becomes a normal validation error, reported with the file and key like any other.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from kakehashi.identity import IdentityError, validate_id


def _identifier(value: str) -> str:
    try:
        return validate_id(value)
    except IdentityError as exc:  # pydantic reports ValueError as a validation error; other exceptions escape it
        raise ValueError(exc.message) from None


Identifier = Annotated[str, AfterValidator(_identifier)]
