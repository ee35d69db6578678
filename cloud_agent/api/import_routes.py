"""Bulk device registration over HTTPS: ``POST /v1/devices/import`` takes a CSV body and answers a per-row report.

Admins and asset managers may import; every created device is audited with the token's name as actor. The body is
read up to :data:`~cloud_agent.bulk_import.MAX_BYTES` (more is refused before it is parsed). ``?dry_run=true``
validates every row without creating anything. The CSV format is in :mod:`cloud_agent.bulk_import`.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Final

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from cloud_agent.api.auth import require_role
from cloud_agent.bulk_import import MAX_BYTES, CsvRefused, ImportReport, RowStatus, import_devices
from cloud_agent.runtime import AgentRuntime
from device_registry.models import ApiPrincipal, ApiRole
from kakehashi.errors import KakehashiError

CSV_TYPES: Final = ("text/csv", "application/csv")


class UnsupportedCsvType(KakehashiError):
    """The body was not sent as CSV."""

    reason = "csv_content_type"
    http_status: ClassVar[int] = 415


class RowResultOut(BaseModel):
    row: int = Field(description="line number in the file; the header is line 1")
    id: str | None
    status: RowStatus = Field(description="created, valid (dry run: would be created) or failed")
    reason: str | None = Field(description="why the row failed, as a code (invalid_labels, not_found, ...)")
    message: str | None = Field(description="why the row failed, in one sentence")


class ImportReportOut(BaseModel):
    dry_run: bool
    total: int
    created: int
    valid: int
    failed: int
    rows: list[RowResultOut]

    @classmethod
    def of(cls, report: ImportReport) -> ImportReportOut:
        return cls.model_validate(report.to_json())


async def _body(request: Request) -> bytes:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in CSV_TYPES:
        raise UnsupportedCsvType(
            f"the body is {media_type or 'untyped'}, not CSV: send the file with 'Content-Type: text/csv'"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BYTES:
            raise CsvRefused(
                f"the CSV is larger than {MAX_BYTES} bytes: split it into several files", reason="csv_too_large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


_OPENAPI_BODY: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {
                "schema": {"type": "string"},
                "example": "id,organisation,kind\nwl-0007,kakogawa,water_level\n",
            }
        },
    }
}


def router(runtime: AgentRuntime) -> APIRouter:
    """The CSV import route of ``runtime``'s agent."""
    routes = APIRouter(tags=["devices"])

    @routes.post(
        "/v1/devices/import",
        response_model=ImportReportOut,
        summary="Register devices from a CSV file, with a per-row report",
        openapi_extra=_OPENAPI_BODY,
        responses={
            400: {"description": "the file as a whole is unusable (csv_header, csv_encoding, csv_too_many_rows, ...)"},
            415: {"description": "the body is not text/csv"},
        },
    )
    async def import_csv(
        request: Request,
        principal: Annotated[ApiPrincipal, Depends(require_role(ApiRole.ADMIN, ApiRole.ASSET_MANAGER))],
        dry_run: Annotated[bool, Query(description="validate every row, create nothing")] = False,
    ) -> ImportReportOut:
        data = await _body(request)
        report = await import_devices(runtime.registry, data, actor=principal.name, dry_run=dry_run)
        return ImportReportOut.of(report)

    return routes
