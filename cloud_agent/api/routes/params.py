"""Query parameters shared by the listings: keyset cursor, page size and ``key=value`` label filters."""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import Query

from device_registry.errors import InvalidInput

MAX_PAGE: Final = 1000

After = Annotated[str | None, Query(description="Cursor: the `next` of the previous page.")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")]
Labels = Annotated[
    list[str] | None,
    Query(alias="label", description="Label filter key=value; repeat for several (all must match)."),
]


def parse_labels(values: list[str] | None) -> dict[str, str] | None:
    """``["zone=north", "river=kako"]`` → ``{"zone": "north", "river": "kako"}``; None when no filter was given."""
    if not values:
        return None
    labels: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise InvalidInput(f"label filter {value!r} must be key=value, e.g. label=zone=north")
        if key in labels:
            raise InvalidInput(f"label filter {key!r} is given twice: an entity carries one value per label key")
        labels[key] = item
    return labels
