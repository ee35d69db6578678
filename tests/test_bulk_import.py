"""Bulk device registration from CSV: the route with real bearer tokens on both databases (mixed rows, dry run,
refused files), and property tests of the row parser."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_agent import bulk_import
from cloud_agent.api import import_routes
from cloud_agent.api.auth import Authenticator, install_authenticator
from cloud_agent.api.errors import ErrorCounts, install_error_handlers
from cloud_agent.bulk_import import COLUMNS, DeviceRow, ImportReport, RowError, format_report, parse_csv, parse_row
from cloud_agent.runtime import AgentRuntime
from device_registry import ApiRole, Location, NotFound, Registry, State
from kakehashi.identity import ID_PATTERN
from tests.postgres import clock_fixture as clock_fixture
from tests.postgres import organisation
from tests.postgres import registry_fixture as registry_fixture

HEADER = ",".join(COLUMNS)


class NoActions:
    async def desired_changed(self, gateway_id: str) -> None:
        raise AssertionError("an import changes no desired state")

    async def commands_changed(self, gateway_id: str) -> None:
        raise AssertionError("an import sends no command")

    async def identity_revoked(self, entity_id: str, reason: str) -> None:
        raise AssertionError("an import revokes nothing")


@pytest.fixture
async def http(registry: Registry) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    install_authenticator(app, Authenticator(registry, cache_s=0))
    install_error_handlers(app, ErrorCounts())
    app.include_router(import_routes.router(AgentRuntime(registry, NoActions())))
    await organisation(registry)
    await registry.create_gateway("gw-0001", "kakogawa", actor="admin")
    secret, _ = await registry.create_api_token("field-team", ApiRole.ASSET_MANAGER, actor="admin")
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "text/csv"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://agent.test", headers=headers) as client:
        yield client


async def post_csv(http: httpx.AsyncClient, text: str | bytes, **params: Any) -> httpx.Response:
    content = text.encode() if isinstance(text, str) else text
    return await http.post("/v1/devices/import", content=content, params=params)


MIXED = """\
id,organisation,kind,gateway,latitude,longitude,place,labels,consent,retention_days,owner
wl-0001,kakogawa,water_level,gw-0001,34.7567,134.8414,Kakogawa bridge,zone=north;river=kakogawa,,,city
wl-0002,kakogawa,water_level,,,,,,,,
tag-0001,kakogawa,watch_tag,,,,,,yes,30,
tag-0002,kakogawa,watch_tag,,,,,,,,
wl-0003,nowhere,water_level,,,,,,,,
wl-0004,kakogawa,water_level,gw-0404,,,,,,,
wl-0005,kakogawa,water_level,,91,10,,,,,
wl-0006,kakogawa,water_level,,,,,zone,,,
wl-0001,kakogawa,water_level,,,,,,,,
WL-BAD,kakogawa,water_level,,,,,,,,
wl-0007,kakogawa,water_level,,,,,,,,,
"""
EXPECTED = [
    (2, "wl-0001", "created", None),
    (3, "wl-0002", "created", None),
    (4, "tag-0001", "created", None),
    (5, "tag-0002", "failed", "invalid_watch_tag"),
    (6, "wl-0003", "failed", "not_found"),
    (7, "wl-0004", "failed", "not_found"),
    (8, "wl-0005", "failed", "invalid_location"),
    (9, "wl-0006", "failed", "invalid_labels"),
    (10, "wl-0001", "failed", "duplicate_in_file"),
    (11, "WL-BAD", "failed", "invalid_id"),
    (12, "wl-0007", "failed", "wrong_column_count"),
]


def outcome(body: dict[str, Any]) -> list[tuple[int, str | None, str, str | None]]:
    return [(row["row"], row["id"], row["status"], row["reason"]) for row in body["rows"]]


async def test_mixed_rows_are_reported_row_by_row(registry: Registry, http: httpx.AsyncClient) -> None:
    response = await post_csv(http, MIXED)
    assert response.status_code == 200, response.text
    body = response.json()
    assert outcome(body) == EXPECTED
    assert (body["total"], body["created"], body["failed"], body["valid"]) == (11, 3, 8, 0)
    assert all(row["message"] for row in body["rows"] if row["status"] == "failed")

    bound = await registry.get_device("wl-0001")
    assert bound.gateway_id == "gw-0001"
    assert bound.state is State.PROVISIONED
    assert bound.location == Location(34.7567, 134.8414, "Kakogawa bridge")
    assert dict(bound.labels) == {"zone": "north", "river": "kakogawa"}
    assert bound.owner == "city"
    tag = await registry.get_device("tag-0001")
    assert (tag.consent, tag.retention) == (True, timedelta(days=30))
    created = await registry.audit(action="device.created")
    assert {entry.actor for entry in created} == {"field-team"}
    summary = await registry.audit(action="device.imported")
    assert summary[0].detail["created"] == 3

    text = format_report(ImportReport.from_json(body))
    assert text.splitlines()[0].split() == ["ROW", "ID", "STATUS", "REASON", "MESSAGE"]
    assert text.splitlines()[-1] == "3 of 11 rows created, 8 failed"


async def test_dry_run_validates_without_creating(registry: Registry, http: httpx.AsyncClient) -> None:
    response = await post_csv(http, MIXED, dry_run="true")
    assert response.status_code == 200, response.text
    expected = [(row, ident, "valid" if done == "created" else done, why) for row, ident, done, why in EXPECTED]
    assert outcome(response.json()) == expected
    with pytest.raises(NotFound):
        await registry.get_device("wl-0001")
    assert await registry.audit(action="device.created") == []
    # an id already taken (here: the gateway's) is caught by the dry run too
    taken = await post_csv(http, "id,organisation,kind\ngw-0001,kakogawa,water_level\n", dry_run="true")
    assert outcome(taken.json()) == [(2, "gw-0001", "failed", "already_exists")]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"id,organisation,colour\nwl-1,kakogawa,red\n", "csv_header"),
        (b"id,organisation\nwl-1,kakogawa\n", "csv_header"),
        (b"wl-1,kakogawa,water_level\n", "csv_header"),
        (b"id,id,organisation,kind\n", "csv_header"),
        (b"", "csv_empty"),
        ("id,organisation,kind\nwl-1,kakogawa,水位計\n".encode("shift_jis"), "csv_encoding"),
        (b'id,organisation,kind\n"wl-1,kakogawa,water_level\n', "csv_malformed"),
    ],
)
async def test_an_unusable_file_is_one_clear_error(http: httpx.AsyncClient, content: bytes, reason: str) -> None:
    response = await post_csv(http, content)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == reason
    assert "\n" not in response.json()["detail"]


async def test_too_many_rows_and_oversize_files_are_refused(registry: Registry, http: httpx.AsyncClient) -> None:
    rows = "".join(f"wl-{n},kakogawa,water_level\n" for n in range(bulk_import.MAX_ROWS + 1))
    response = await post_csv(http, "id,organisation,kind\n" + rows)
    assert (response.status_code, response.json()["error"]) == (400, "csv_too_many_rows")
    big = b"id,organisation,kind,place\n" + b"wl-1,kakogawa,water_level," + b"x" * bulk_import.MAX_BYTES + b"\n"
    response = await post_csv(http, big)
    assert (response.status_code, response.json()["error"]) == (400, "csv_too_large")
    assert (await registry.list_devices()).total == 0


async def test_only_csv_from_managers_is_accepted(registry: Registry, http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/devices/import", content=b'{"id": "wl-1"}', headers={"Content-Type": "application/json"}
    )
    assert (response.status_code, response.json()["error"]) == (415, "csv_content_type")
    secret, _ = await registry.create_api_token("city-screen", ApiRole.VIEWER, actor="admin")
    response = await http.post(
        "/v1/devices/import",
        content=b"id,organisation,kind\nwl-1,kakogawa,water_level\n",
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert response.status_code == 403
    response = await http.post("/v1/devices/import", content=b"x", headers={"Authorization": ""})
    assert response.status_code == 401


async def test_a_byte_order_mark_and_blank_lines_are_fine(http: httpx.AsyncClient) -> None:
    text = "\ufeffID, Organisation ,Kind\r\n\r\nwl-0001,kakogawa,water_level\r\n,,\r\n"
    response = await post_csv(http, text)
    assert outcome(response.json()) == [(3, "wl-0001", "created", None)]


# ------------------------------------------------------------------------------------------ row parser properties

ids = st.from_regex(ID_PATTERN, fullmatch=True)
label_keys = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,20}", fullmatch=True)
label_values = st.text(
    st.characters(blacklist_characters=";=", blacklist_categories=("Cc", "Cs", "Z")), min_size=1, max_size=50
)
coordinates = st.tuples(st.floats(-90, 90), st.floats(-180, 180))
kinds = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True).filter(lambda kind: kind != "watch_tag")
days = st.integers(1, 36_500).map(lambda count: timedelta(days=count))
plain_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Z")), min_size=1, max_size=60)


@st.composite
def device_rows(draw: st.DrawFn) -> DeviceRow:
    tag = draw(st.booleans())
    where = draw(st.none() | coordinates)
    latitude, longitude = (None, None) if where is None else where
    place = draw(st.none() | plain_text)
    return DeviceRow(
        row=2,
        id=draw(ids),
        organisation=draw(ids),
        kind="watch_tag" if tag else draw(kinds),
        profile=draw(st.none() | plain_text),
        gateway=draw(st.none() | ids),
        hardware_serial=draw(st.none() | plain_text),
        owner=draw(st.none() | plain_text),
        location=None if where is None and place is None else Location(latitude, longitude, place),
        labels=draw(st.dictionaries(label_keys, label_values, max_size=5)),
        consent=draw(st.booleans()) if tag else None,
        retention=draw(days) if tag else draw(st.none() | days),
    )


def _cell(value: object) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def as_csv(row: DeviceRow) -> bytes:
    cells = {
        "id": row.id,
        "organisation": row.organisation,
        "kind": row.kind,
        "profile": row.profile,
        "gateway": row.gateway,
        "hardware_serial": row.hardware_serial,
        "owner": row.owner,
        "latitude": None if row.location is None else row.location.latitude,
        "longitude": None if row.location is None else row.location.longitude,
        "place": None if row.location is None else row.location.place,
        "labels": ";".join(f"{k}={v}" for k, v in row.labels.items()),
        "consent": None if row.consent is None else ("yes" if row.consent else "no"),
        "retention_days": None if row.retention is None else row.retention.days,
    }
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    writer.writerow([_cell(cells[column]) for column in COLUMNS])
    return out.getvalue().encode()


@settings(max_examples=150, deadline=None)
@given(device_rows())
def test_a_valid_row_survives_the_csv_round_trip(row: DeviceRow) -> None:
    assert parse_csv(as_csv(row)) == [row]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(COLUMNS), st.text(max_size=40)))
def test_any_cells_give_a_row_or_a_row_error(cells: dict[str, str]) -> None:
    parsed = parse_row(7, cells)
    assert isinstance(parsed, DeviceRow | RowError)
    assert parsed.row == 7
    if isinstance(parsed, RowError):
        assert parsed.reason
        assert parsed.message
