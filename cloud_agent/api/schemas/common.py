"""Shapes shared by every area: the error body, a page of a listing, a location, and request-body strictness."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from device_registry.models import Location

T = TypeVar("T")


class Request(BaseModel):
    """A request body: unknown fields are refused (422 naming them) rather than silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """Every error answer: a short reason code and one sentence saying what is wrong and how to fix it."""

    error: str = Field(description="Reason code, e.g. not_found, illegal_transition, forbidden, invalid_request.")
    detail: str = Field(description="What is wrong and how to fix it, in one sentence.")


class Page(BaseModel, Generic[T]):
    """One page of a listing ordered by id; pass ``next`` as ``after`` to get the following page."""

    items: list[T]
    total: int = Field(description="How many items match the filters, over all pages.")
    next: str | None = Field(description="Cursor of the next page (the ``after`` parameter); null on the last page.")


class LocationModel(BaseModel):
    """Where a gateway or device is: WGS 84 coordinates and/or a place description."""

    model_config = ConfigDict(extra="forbid")

    latitude: float | None = None
    longitude: float | None = None
    place: str | None = None

    @classmethod
    def of(cls, location: Location) -> LocationModel:
        return cls(latitude=location.latitude, longitude=location.longitude, place=location.place)

    def to_location(self) -> Location:
        return Location(latitude=self.latitude, longitude=self.longitude, place=self.place)


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "Invalid input"),
        (401, "Missing, unknown, expired or revoked API token"),
        (403, "The token's role may not do this"),
        (404, "Unknown id"),
        (409, "Conflict with the current state (already exists, illegal transition, stale version)"),
        (422, "The request does not match the schema"),
    )
}
"""The error answers every authenticated route may give, for the OpenAPI document."""
