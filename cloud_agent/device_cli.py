"""``kakehashi device``: gateways, devices, lifecycle, twins, commands, readings, audit and tokens through the API.

Every command is one or a few API calls (:class:`~cloud_agent.api_client.ApiClient`); the agent checks the token's
role and records the token's name in the audit log. Output is a table or ``key value`` lines for people, the API's
JSON with ``--json``. Failures are one line ``error: ...`` (exit status 2). Connection settings come from options or
the environment: ``--agent`` / ``KAKEHASHI_AGENT_URL``, ``--token`` / ``KAKEHASHI_API_TOKEN``, ``--ca`` /
``KAKEHASHI_CA`` (the fleet's ``chain.pem``, to trust the agent's certificate).
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote

import click
import orjson

from cloud_agent.api_client import ApiClient, ApiClientError
from device_registry.lifecycle import State
from device_registry.models import ApiRole, CommandState
from kakehashi import ui

DEFAULT_AGENT: Final = "https://127.0.0.1:8443"
_DURATION: Final = re.compile(r"(\d+)([smhd]?)")
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Connection:
    """Where the agent is and how to talk to it; the client is made on first use."""

    agent: str
    token: str | None
    ca: Path | None
    _client: ApiClient | None = None

    def client(self) -> ApiClient:
        if self._client is None:
            if not self.token:
                raise ApiClientError(
                    "no API token: pass --token or set KAKEHASHI_API_TOKEN "
                    "(an admin makes one with `kakehashi agent token create`)",
                    reason="no_token",
                )
            self._client = ApiClient(self.agent, self.token, ca=self.ca)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _api(ctx: click.Context) -> ApiClient:
    connection = ctx.find_object(Connection)
    assert connection is not None
    return connection.client()


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer instead of a table.")(
        command
    )


def reason_option(command: F) -> F:
    return click.option("--reason", required=True, help="Why (kept in the audit log).")(command)


def _segment(value: str) -> str:
    return quote(value, safe="")


def _when(epoch: Any) -> str:
    if not isinstance(epoch, int | float):
        return "-"
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _short_time(iso: Any) -> Any:
    """An ISO 8601 time from the API, to the second, in UTC with Z."""
    if not isinstance(iso, str):
        return iso
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _labels_text(labels: Mapping[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "-"


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} must be key=value", param_hint=what)
        found[key] = item
    return found


def _duration_s(text: str, what: str) -> int:
    match = _DURATION.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise click.BadParameter(f"{text!r} must be a duration like 600, 30m, 24h or 7d", param_hint=what)
    return int(match.group(1)) * _UNITS[match.group(2)]


def _instant(text: str | None, what: str) -> datetime | None:
    """An ISO 8601 time (UTC when it has no zone) or epoch seconds."""
    if text is None:
        return None
    try:
        return datetime.fromtimestamp(float(text), UTC)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither ISO 8601 (2026-04-01T09:00Z) nor epoch seconds", param_hint=what
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _collection(api: ApiClient, entity_id: str) -> str:
    """``devices`` or ``gateways``: which one ``entity_id`` is (they share one id namespace)."""
    found = api.get(f"/v1/entities/{_segment(entity_id)}")
    return str(found["collection"])


def _page(api: ApiClient, path: str, params: dict[str, Any], *, every: bool) -> dict[str, Any]:
    """One page of a listing, or with ``every`` all pages followed through their cursors."""
    page: dict[str, Any] = api.get(path, **params)
    if not every:
        return page
    items = list(page["items"])
    while page["next"] is not None:
        page = api.get(path, **{**params, "after": page["next"]})
        items += page["items"]
    return {"items": items, "total": page["total"], "next": None}


def _emit(doc: Any, as_json: bool, show: Callable[[Any], None]) -> None:
    """The API's JSON with ``--json``, else the human view ``show`` makes of it."""
    if as_json:
        ui.print_json(doc)
    else:
        show(doc)


def _show_page(page: Mapping[str, Any], rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    ui.print_table(rows, columns)
    shown, total = len(page["items"]), page["total"]
    if page.get("next") is not None:
        click.echo(f"{shown} of {total} shown; next page: --after {page['next']}", err=True)


def _show_kv(doc: Mapping[str, Any], fields: Iterable[str]) -> None:
    ui.print_kv((field, "-" if doc.get(field) is None else doc.get(field)) for field in fields)


def _location_text(location: Mapping[str, Any] | None) -> str:
    if not location:
        return "-"
    parts = []
    if location.get("latitude") is not None:
        parts.append(f"{location['latitude']},{location['longitude']}")
    if location.get("place"):
        parts.append(str(location["place"]))
    return " ".join(parts) or "-"


def _location(latitude: float | None, longitude: float | None, place: str | None) -> dict[str, Any] | None:
    if latitude is None and longitude is None and place is None:
        return None
    return {"latitude": latitude, "longitude": longitude, "place": place}


# --------------------------------------------------------------------------------------------------------------------
# The group


@click.group("device")
@click.option(
    "--agent",
    envvar="KAKEHASHI_AGENT_URL",
    default=DEFAULT_AGENT,
    show_default=True,
    help="The agent's API URL (env KAKEHASHI_AGENT_URL).",
)
@click.option("--token", envvar="KAKEHASHI_API_TOKEN", help="API token kh_... (env KAKEHASHI_API_TOKEN).")
@click.option(
    "--ca",
    envvar="KAKEHASHI_CA",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CA bundle that signed the agent's certificate, e.g. the fleet's chain.pem (env KAKEHASHI_CA).",
)
@click.pass_context
def device(ctx: click.Context, agent: str, token: str | None, ca: Path | None) -> None:
    """Gateways and devices through the agent's HTTPS API (tables by default, --json on request)."""
    connection = Connection(agent=agent, token=token, ca=ca)
    ctx.obj = connection
    ctx.call_on_close(connection.close)


# --------------------------------------------------------------------------------------------------------------------
# Devices

DEVICE_COLUMNS: Final = ("id", "kind", "state", "gateway", "organisation", "profile", "labels")


def _device_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {**doc, "labels": _labels_text(doc.get("labels"))}


@device.command("list")
@click.option("--organisation", help="Only this organisation's devices.")
@click.option("--kind", help="Only this kind (water_level, energy_meter, watch_tag, ...).")
@click.option("--state", type=click.Choice([s.value for s in State]), help="Only devices in this state.")
@click.option("--gateway", help="Only devices bound to this gateway.")
@click.option("--label", "labels", multiple=True, help="key=value; repeat for several (all must match).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="Page size.")
@click.option("--after", help="Cursor: start after this id (the 'next page' hint).")
@click.option("--all", "every", is_flag=True, help="Follow the cursors to the last page.")
@json_option
@click.pass_context
def list_devices(
    ctx: click.Context,
    organisation: str | None,
    kind: str | None,
    state: str | None,
    gateway: str | None,
    labels: tuple[str, ...],
    limit: int,
    after: str | None,
    every: bool,
    as_json: bool,
) -> None:
    """List devices, in id order."""
    _pairs(labels, "--label")
    params = {
        "organisation": organisation,
        "kind": kind,
        "state": state,
        "gateway": gateway,
        "label": list(labels),
        "limit": limit,
        "after": after,
    }
    page = _page(_api(ctx), "/v1/devices", params, every=every)
    if as_json:
        ui.print_json(page)
        return
    _show_page(page, [_device_row(d) for d in page["items"]], DEVICE_COLUMNS)


def _show_device(doc: Mapping[str, Any]) -> None:
    _show_kv(
        {
            **doc,
            "labels": _labels_text(doc.get("labels")),
            "location": _location_text(doc.get("location")),
            "state_changed_at": _short_time(doc.get("state_changed_at")),
            "created_at": _short_time(doc.get("created_at")),
        },
        (
            "id",
            "kind",
            "profile",
            "state",
            "state_changed_at",
            "organisation",
            "gateway",
            "hardware_serial",
            "owner",
            "location",
            "labels",
            "consent",
            "retention_s",
            "refused_readings",
            "created_at",
        ),
    )


@device.command("show")
@click.argument("device_id")
@json_option
@click.pass_context
def show_device(ctx: click.Context, device_id: str, as_json: bool) -> None:
    """Show one device."""
    doc = _api(ctx).get(f"/v1/devices/{_segment(device_id)}")
    _emit(doc, as_json, _show_device)


@device.command("create")
@click.argument("device_id")
@click.option("--organisation", required=True)
@click.option("--kind", required=True, help="water_level, energy_meter, valve, node, watch_tag, ...")
@click.option("--profile", help="Hardware catalogue entry, e.g. sdm120.")
@click.option("--serial", "hardware_serial", help="Hardware serial number.")
@click.option("--owner")
@click.option("--gateway", help="Bind to this gateway at once (the device becomes provisioned).")
@click.option("--label", "labels", multiple=True, help="key=value; repeat for several.")
@click.option("--latitude", type=float)
@click.option("--longitude", type=float)
@click.option("--place", help="Where it is, in words.")
@click.option("--consent/--no-consent", default=None, help="Watch tags: whether consent is recorded.")
@click.option("--retention", help="History retention, e.g. 30d (required for watch tags).")
@json_option
@click.pass_context
def create_device(
    ctx: click.Context,
    device_id: str,
    organisation: str,
    kind: str,
    profile: str | None,
    hardware_serial: str | None,
    owner: str | None,
    gateway: str | None,
    labels: tuple[str, ...],
    latitude: float | None,
    longitude: float | None,
    place: str | None,
    consent: bool | None,
    retention: str | None,
    as_json: bool,
) -> None:
    """Register a device."""
    body = {
        "id": device_id,
        "organisation": organisation,
        "kind": kind,
        "profile": profile,
        "hardware_serial": hardware_serial,
        "owner": owner,
        "gateway": gateway,
        "labels": _pairs(labels, "--label"),
        "location": _location(latitude, longitude, place),
        "consent": consent,
        "retention_s": None if retention is None else _duration_s(retention, "--retention"),
    }
    doc = _api(ctx).post("/v1/devices", body)
    _emit(doc, as_json, _show_device)


@device.command("import")
@click.argument("csv_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Check every row without registering anything.")
@json_option
@click.pass_context
def import_devices(ctx: click.Context, csv_file: Path, dry_run: bool, as_json: bool) -> None:
    """Register the devices of a CSV roll-out sheet (columns in docs/enrollment.md); a report row by row."""
    from cloud_agent.bulk_import import ImportReport, format_report

    try:
        data = csv_file.read_bytes()
    except OSError as exc:
        raise ApiClientError(f"cannot read {csv_file}: {exc.strerror}: check the path", reason="file") from None
    doc = _api(ctx).import_devices(data, dry_run=dry_run)
    _emit(doc, as_json, lambda doc: click.echo(format_report(ImportReport.from_json(doc))))
    if doc.get("failed"):
        raise SystemExit(1)


@device.command("bind")
@click.argument("device_id")
@click.argument("gateway_id")
@reason_option
@json_option
@click.pass_context
def bind_device(ctx: click.Context, device_id: str, gateway_id: str, reason: str, as_json: bool) -> None:
    """Bind a device to the gateway that may report for it."""
    doc = _api(ctx).put(f"/v1/devices/{_segment(device_id)}/gateway", {"gateway": gateway_id, "reason": reason})
    _emit(doc, as_json, lambda doc: click.echo(f"device {doc['id']} bound to {doc['gateway']} ({doc['state']})"))


@device.command("consent")
@click.argument("device_id")
@click.option("--given/--withdrawn", "consent", required=True, help="Consent was given, or withdrawn.")
@reason_option
@json_option
@click.pass_context
def set_consent(ctx: click.Context, device_id: str, consent: bool, reason: str, as_json: bool) -> None:
    """Record a watch tag's consent (without it nothing of the tag is stored)."""
    doc = _api(ctx).put(f"/v1/devices/{_segment(device_id)}/consent", {"consent": consent, "reason": reason})
    given = "given" if doc["consent"] else "withdrawn"
    _emit(doc, as_json, lambda doc: click.echo(f"watch tag {doc['id']}: consent {given}"))


@device.command("replace-hardware")
@click.argument("device_id")
@click.argument("new_serial")
@reason_option
@json_option
@click.pass_context
def replace_hardware(ctx: click.Context, device_id: str, new_serial: str, reason: str, as_json: bool) -> None:
    """Replace broken hardware: same device and history; the old hardware's certificates are revoked."""
    body = {"hardware_serial": new_serial, "reason": reason}
    doc = _api(ctx).post(f"/v1/devices/{_segment(device_id)}/hardware-replacements", body)
    if as_json:
        ui.print_json(doc)
        return
    click.echo(f"{doc['entity']}: hardware {doc['old_serial'] or '-'} → {doc['new_serial']}")
    if doc["revoked_serials"]:
        click.echo(f"revoked certificates: {', '.join(doc['revoked_serials'])} (enroll the new hardware)")


# --------------------------------------------------------------------------------------------------------------------
# Lifecycle (devices and gateways: the id says which)


def _transition(ctx: click.Context, entity_id: str, to: str, reason: str, as_json: bool) -> None:
    api = _api(ctx)
    collection = _collection(api, entity_id)
    doc = api.post(f"/v1/{collection}/{_segment(entity_id)}/lifecycle", {"to": to, "reason": reason})
    if as_json:
        ui.print_json(doc)
        return
    click.echo(f"{doc['role']} {doc['entity']}: {doc['from_state']} → {doc['to_state']}")
    if doc["revoked_serials"]:
        click.echo(f"revoked certificates: {', '.join(doc['revoked_serials'])}")


def _state_command(name: str, to: State, summary: str) -> click.Command:
    @click.argument("entity_id")
    @reason_option
    @json_option
    @click.pass_context
    def command(ctx: click.Context, entity_id: str, reason: str, as_json: bool) -> None:
        _transition(ctx, entity_id, to.value, reason, as_json)

    command.__doc__ = summary
    return click.command(name)(command)


device.add_command(_state_command("suspend", State.SUSPENDED, "Suspend a device or gateway (traffic refused)."))
device.add_command(_state_command("resume", State.ACTIVE, "Resume a suspended device or gateway."))
device.add_command(
    _state_command("decommission", State.DECOMMISSIONED, "Retire a device or gateway for good (certificates revoked).")
)


@device.command("transition")
@click.argument("entity_id")
@click.argument("state", type=click.Choice([s.value for s in State]))
@reason_option
@json_option
@click.pass_context
def transition(ctx: click.Context, entity_id: str, state: str, reason: str, as_json: bool) -> None:
    """Move a device or gateway to STATE."""
    _transition(ctx, entity_id, state, reason, as_json)


# --------------------------------------------------------------------------------------------------------------------
# Twin


@device.group("twin")
def twin() -> None:
    """Desired and reported state of a device or gateway."""


@twin.command("show")
@click.argument("entity_id")
@json_option
@click.pass_context
def show_twin(ctx: click.Context, entity_id: str, as_json: bool) -> None:
    """Show the twin of a device or gateway."""
    api = _api(ctx)
    doc = api.get(f"/v1/{_collection(api, entity_id)}/{_segment(entity_id)}/twin")
    if as_json:
        ui.print_json(doc)
        return
    ui.print_kv(
        [
            ("entity", doc["entity"]),
            ("desired_version", doc["desired_version"]),
            ("desired", orjson.dumps(doc["desired"], option=orjson.OPT_SORT_KEYS).decode()),
            ("reported_version", doc["reported_version"]),
            ("reported", orjson.dumps(doc["reported"], option=orjson.OPT_SORT_KEYS).decode()),
        ]
    )


def _json_value(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


@device.group("desired")
def desired() -> None:
    """Change desired state."""


@desired.command("set")
@click.argument("entity_id")
@click.argument("settings", nargs=-1)
@click.option("--doc", "document", help="A JSON merge patch, e.g. '{\"poll_interval_s\": 30}'.")
@json_option
@click.pass_context
def set_desired(
    ctx: click.Context, entity_id: str, settings: tuple[str, ...], document: str | None, as_json: bool
) -> None:
    """Change a device's or gateway's desired state: KEY=VALUE... (VALUE read as JSON if it is, null removes)."""
    delta: dict[str, Any] = {}
    if document is not None:
        try:
            parsed = orjson.loads(document)
        except orjson.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--doc") from None
        if not isinstance(parsed, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--doc")
        delta.update(parsed)
    delta.update({key: _json_value(value) for key, value in _pairs(settings, "KEY=VALUE").items()})
    if not delta:
        raise click.UsageError("say what to change: KEY=VALUE arguments or --doc JSON")
    api = _api(ctx)
    doc = api.patch(f"/v1/{_collection(api, entity_id)}/{_segment(entity_id)}/twin/desired", {"delta": delta})
    if as_json:
        ui.print_json(doc)
        return
    click.echo(f"{doc['entity']}: desired state version {doc['version']} queued for gateway {doc['gateway']}")


# --------------------------------------------------------------------------------------------------------------------
# Commands

COMMAND_COLUMNS: Final = ("id", "device", "name", "state", "requested_by", "created", "status")
STEP_COLUMNS: Final = ("seq", "at", "state", "actor", "reason")
_WAIT_GRACE_S: Final = 10.0
"""How long ``--wait`` keeps polling after the deadline (the agent expires overdue commands periodically)."""


def _command_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {**doc, "created": _short_time(doc.get("created_at"))}


def _show_command(doc: Mapping[str, Any]) -> None:
    precondition = doc.get("precondition")
    _show_kv(
        {
            **doc,
            "params": orjson.dumps(doc.get("params") or {}, option=orjson.OPT_SORT_KEYS).decode(),
            "deadline": _when(doc.get("deadline")),
            "precondition": None if not precondition else f"reported version {precondition['reported_version']}",
            "created_at": _short_time(doc.get("created_at")),
            "result": None if doc.get("result") is None else orjson.dumps(doc["result"]).decode(),
        },
        (
            "id",
            "device",
            "gateway",
            "name",
            "params",
            "state",
            "status",
            "deadline",
            "precondition",
            "idempotency_key",
            "requested_by",
            "confirmed_by",
            "created_at",
            "reason",
            "result",
        ),
    )
    steps = [{**step, "at": _short_time(step["at"])} for step in doc.get("history") or []]
    if steps:
        click.echo("")
        ui.print_table(steps, STEP_COLUMNS)


def _wait_final(api: ApiClient, doc: dict[str, Any], timeout: float | None) -> dict[str, Any]:
    """Poll the command until it is final, its deadline (and a grace) has passed, or ``timeout`` seconds."""
    limit = float(doc["deadline"]) + _WAIT_GRACE_S - time.time() if timeout is None else timeout
    until = time.monotonic() + max(limit, 0.0)
    pause = 0.1
    while not doc["final"] and time.monotonic() < until:
        time.sleep(min(pause, max(until - time.monotonic(), 0.0)))
        pause = min(pause * 1.5, 1.0)
        doc = api.get(f"/v1/commands/{_segment(doc['id'])}")
    return doc


def _command_params(values: Sequence[str]) -> dict[str, Any]:
    return {key: _json_value(value) for key, value in _pairs(values, "KEY=VALUE").items()}


@device.command("command")
@click.argument("device_id")
@click.argument("name")
@click.argument("params", nargs=-1)
@click.option("--ttl", default="5m", show_default=True, help="Time to live: 90, 30s, 5m, 2h, 7d (at most 7d).")
@click.option("--key", "idempotency_key", help="Idempotency key (made up and printed when not given).")
@click.option("--precondition-version", type=click.IntRange(min=0), help="Run only at this reported twin version.")
@click.option("--wait", is_flag=True, help="Wait until it is final; exit 1 unless it succeeded.")
@click.option("--timeout", type=click.FloatRange(min=0), help="With --wait: give up after this many seconds.")
@json_option
@click.pass_context
def send_command(
    ctx: click.Context,
    device_id: str,
    name: str,
    params: tuple[str, ...],
    ttl: str,
    idempotency_key: str | None,
    precondition_version: int | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
) -> None:
    """Send command NAME to a device: KEY=VALUE parameters (VALUE read as JSON if it is), e.g. value=flood."""
    key = idempotency_key or f"cli-{secrets.token_hex(8)}"
    body: dict[str, Any] = {
        "name": name,
        "params": _command_params(params),
        "ttl_s": _duration_s(ttl, "--ttl"),
        "idempotency_key": key,
        "precondition": None if precondition_version is None else {"reported_version": precondition_version},
    }
    api = _api(ctx)
    doc: dict[str, Any] = api.post(f"/v1/devices/{_segment(device_id)}/commands", body)
    if idempotency_key is None:
        click.echo(f"idempotency key: {key} (retry with --key {key} to get this command, not a second one)", err=True)
    if wait:
        doc = _wait_final(api, doc, timeout)
    _emit(doc, as_json, _show_command)
    if wait and doc["state"] != "succeeded":
        click.echo(f"command {doc['id']}: {doc['status']}", err=True)
        raise SystemExit(1)


@device.command("commands")
@click.option("--device", "device_id", help="Only this device's commands.")
@click.option("--gateway", help="Only commands carried by this gateway.")
@click.option("--state", type=click.Choice([s.value for s in CommandState]), help="Only commands in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="Page size.")
@click.option("--after", help="Cursor: start after this command id.")
@click.option("--all", "every", is_flag=True, help="Follow the cursors to the last page.")
@json_option
@click.pass_context
def list_commands(
    ctx: click.Context,
    device_id: str | None,
    gateway: str | None,
    state: str | None,
    limit: int,
    after: str | None,
    every: bool,
    as_json: bool,
) -> None:
    """List commands, oldest first."""
    params = {"device": device_id, "gateway": gateway, "state": state, "limit": limit, "after": after}
    page = _page(_api(ctx), "/v1/commands", params, every=every)
    if as_json:
        ui.print_json(page)
        return
    _show_page(page, [_command_row(c) for c in page["items"]], COMMAND_COLUMNS)


@device.command("command-show")
@click.argument("command_id")
@json_option
@click.pass_context
def show_command(ctx: click.Context, command_id: str, as_json: bool) -> None:
    """Show a command and its whole history."""
    _emit(_api(ctx).get(f"/v1/commands/{_segment(command_id)}"), as_json, _show_command)


@device.command("command-confirm")
@click.argument("command_id")
@json_option
@click.pass_context
def confirm_command(ctx: click.Context, command_id: str, as_json: bool) -> None:
    """Confirm a command as the second person (it is then queued for its gateway)."""
    doc = _api(ctx).post(f"/v1/commands/{_segment(command_id)}/confirm")
    _emit(
        doc, as_json, lambda doc: click.echo(f"command {doc['id']} confirmed by {doc['confirmed_by']}: {doc['status']}")
    )


@device.command("command-cancel")
@click.argument("command_id")
@reason_option
@json_option
@click.pass_context
def cancel_command(ctx: click.Context, command_id: str, reason: str, as_json: bool) -> None:
    """Cancel a command that is not yet delivered."""
    doc = _api(ctx).post(f"/v1/commands/{_segment(command_id)}/cancel", {"reason": reason})
    _emit(doc, as_json, lambda doc: click.echo(f"command {doc['id']} cancelled"))


# --------------------------------------------------------------------------------------------------------------------
# Readings

READING_COLUMNS: Final = ("quantity", "value", "unit", "observed", "clock", "gateway", "seq")


def _reading_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    value = doc["value"] if doc.get("data") is None else f"base64:{doc['data']}"
    return {**doc, "value": value, "observed": _when(doc.get("observed_at"))}


@device.group("readings")
def readings() -> None:
    """Latest values and history of a device."""


@readings.command("latest")
@click.argument("entity_id")
@json_option
@click.pass_context
def latest(ctx: click.Context, entity_id: str, as_json: bool) -> None:
    """The newest reading of each quantity."""
    api = _api(ctx)
    doc = api.get(f"/v1/{_collection(api, entity_id)}/{_segment(entity_id)}/latest")
    _emit(doc, as_json, lambda doc: ui.print_table([_reading_row(r) for r in doc["items"]], READING_COLUMNS))


@readings.command("history")
@click.argument("entity_id")
@click.option("--quantity", help="Only this quantity (level, power, ...).")
@click.option("--since", help="Observed at or after: ISO 8601 (UTC if no zone) or epoch seconds.")
@click.option("--until", help="Observed before: ISO 8601 or epoch seconds.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@json_option
@click.pass_context
def history(
    ctx: click.Context,
    entity_id: str,
    quantity: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Readings of a device, oldest first."""
    start, end = _instant(since, "--since"), _instant(until, "--until")
    api = _api(ctx)
    doc = api.get(
        f"/v1/{_collection(api, entity_id)}/{_segment(entity_id)}/history",
        quantity=quantity,
        since=None if start is None else start.timestamp(),
        until=None if end is None else end.timestamp(),
        limit=limit,
    )
    if as_json:
        ui.print_json(doc)
        return
    ui.print_table([_reading_row(r) for r in doc["items"]], READING_COLUMNS)
    if doc["more"]:
        click.echo(f"limited to {limit}: continue with --since {doc['items'][-1]['observed_at']}", err=True)


# --------------------------------------------------------------------------------------------------------------------
# Gateways

GATEWAY_COLUMNS: Final = ("id", "state", "organisation", "hardware_serial", "owner", "labels")


@device.group("gateways")
def gateways() -> None:
    """Gateways: list, show, register, completeness."""


@gateways.command("list")
@click.option("--organisation")
@click.option("--state", type=click.Choice([s.value for s in State]))
@click.option("--label", "labels", multiple=True, help="key=value; repeat for several (all must match).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--after", help="Cursor: start after this id.")
@click.option("--all", "every", is_flag=True, help="Follow the cursors to the last page.")
@json_option
@click.pass_context
def list_gateways(
    ctx: click.Context,
    organisation: str | None,
    state: str | None,
    labels: tuple[str, ...],
    limit: int,
    after: str | None,
    every: bool,
    as_json: bool,
) -> None:
    """List gateways, in id order."""
    _pairs(labels, "--label")
    params = {"organisation": organisation, "state": state, "label": list(labels), "limit": limit, "after": after}
    page = _page(_api(ctx), "/v1/gateways", params, every=every)
    if as_json:
        ui.print_json(page)
        return
    rows = [{**g, "labels": _labels_text(g.get("labels"))} for g in page["items"]]
    _show_page(page, rows, GATEWAY_COLUMNS)


def _show_gateway(doc: Mapping[str, Any]) -> None:
    presence = doc.get("presence")
    if presence is None:
        online = "never heard from"
    else:
        status = "online" if presence["online"] else "offline"
        online = f"{status} ({presence['reason']}, last seen {_when(presence['last_seen'])})"
    certificates = [
        f"{c['serial']} {c['status']} until {_short_time(c['not_after'])}" for c in doc.get("certificates", [])
    ]
    _show_kv(
        {
            **doc,
            "labels": _labels_text(doc.get("labels")),
            "location": _location_text(doc.get("location")),
            "state_changed_at": _short_time(doc.get("state_changed_at")),
            "presence": online,
            "certificates": "; ".join(certificates) or None,
        },
        (
            "id",
            "state",
            "state_changed_at",
            "organisation",
            "hardware_serial",
            "owner",
            "location",
            "labels",
            "presence",
            "certificates",
            "refused_readings",
        ),
    )


@gateways.command("show")
@click.argument("gateway_id")
@json_option
@click.pass_context
def show_gateway(ctx: click.Context, gateway_id: str, as_json: bool) -> None:
    """Show one gateway with its presence and certificates."""
    doc = _api(ctx).get(f"/v1/gateways/{_segment(gateway_id)}")
    _emit(doc, as_json, _show_gateway)


@gateways.command("create")
@click.argument("gateway_id")
@click.option("--organisation", required=True)
@click.option("--serial", "hardware_serial", help="Hardware serial number of the Pi.")
@click.option("--owner")
@click.option("--label", "labels", multiple=True, help="key=value; repeat for several.")
@click.option("--latitude", type=float)
@click.option("--longitude", type=float)
@click.option("--place")
@json_option
@click.pass_context
def create_gateway(
    ctx: click.Context,
    gateway_id: str,
    organisation: str,
    hardware_serial: str | None,
    owner: str | None,
    labels: tuple[str, ...],
    latitude: float | None,
    longitude: float | None,
    place: str | None,
    as_json: bool,
) -> None:
    """Register a gateway (then create an enrollment token for its technician)."""
    body = {
        "id": gateway_id,
        "organisation": organisation,
        "hardware_serial": hardware_serial,
        "owner": owner,
        "labels": _pairs(labels, "--label"),
        "location": _location(latitude, longitude, place),
    }
    doc = _api(ctx).post("/v1/gateways", body)
    _emit(doc, as_json, _show_gateway)


@gateways.command("completeness")
@click.argument("gateway_id")
@json_option
@click.pass_context
def completeness(ctx: click.Context, gateway_id: str, as_json: bool) -> None:
    """What arrived from a gateway and what is missing."""
    doc = _api(ctx).get(f"/v1/gateways/{_segment(gateway_id)}/completeness")
    if as_json:
        ui.print_json(doc)
        return
    missing = ", ".join(f"{r['first']}-{r['last']}" for r in doc["missing"]) or "none"
    ui.print_kv(
        [
            ("gateway", doc["gateway"]),
            ("highest_seq", doc["highest_seq"]),
            ("received", doc["received"]),
            ("reported_gaps", len(doc["reported_gaps"])),
            ("reported_lost_readings", doc["reported_lost_readings"]),
            ("missing", f"{doc['missing_count']} ({missing})"),
            ("complete", "yes" if doc["complete"] else "no"),
        ]
    )


# --------------------------------------------------------------------------------------------------------------------
# Organisations, audit, enrollment tokens, API tokens


@device.group("organisations")
def organisations() -> None:
    """Organisations: list, create (admin)."""


@organisations.command("list")
@click.option("--all", "every", is_flag=True, help="Follow the cursors to the last page.")
@json_option
@click.pass_context
def list_organisations(ctx: click.Context, every: bool, as_json: bool) -> None:
    """List organisations."""
    page = _page(_api(ctx), "/v1/organisations", {"limit": 1000}, every=every)
    if as_json:
        ui.print_json(page)
        return
    _show_page(
        page, [{**o, "created_at": _short_time(o["created_at"])} for o in page["items"]], ("id", "name", "created_at")
    )


@organisations.command("create")
@click.argument("organisation_id")
@click.argument("name")
@json_option
@click.pass_context
def create_organisation(ctx: click.Context, organisation_id: str, name: str, as_json: bool) -> None:
    """Create an organisation (a city, utility or operator)."""
    doc = _api(ctx).post("/v1/organisations", {"id": organisation_id, "name": name})
    _emit(doc, as_json, lambda doc: click.echo(f"organisation {doc['id']} ({doc['name']}) created"))


AUDIT_COLUMNS: Final = ("id", "at", "actor", "action", "entity", "reason")


@device.command("audit")
@click.option("--entity", help="Gateway or device id.")
@click.option("--actor", help="Who: a token name, a gateway id or system.")
@click.option("--action", help="e.g. lifecycle.transition, twin.desired.")
@click.option("--since", help="ISO 8601 (UTC if no zone) or epoch seconds.")
@click.option("--after", type=int, help="Cursor: the id of the last entry seen.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@json_option
@click.pass_context
def audit(
    ctx: click.Context,
    entity: str | None,
    actor: str | None,
    action: str | None,
    since: str | None,
    after: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """Who did what, when and why (oldest first)."""
    start = _instant(since, "--since")
    doc = _api(ctx).get(
        "/v1/audit",
        entity=entity,
        actor=actor,
        action=action,
        since=None if start is None else start.isoformat(),
        after=after,
        limit=limit,
    )
    if as_json:
        ui.print_json(doc)
        return
    ui.print_table([{**e, "at": _short_time(e["at"])} for e in doc["items"]], AUDIT_COLUMNS)
    if doc["next"] is not None:
        click.echo(f"more entries: --after {doc['next']}", err=True)


@device.group("enrollment-token")
def enrollment_token() -> None:
    """One-time tokens with which a gateway enrolls."""


@enrollment_token.command("create")
@click.argument("gateway_id")
@click.option("--ttl", default="24h", show_default=True, help="Lifetime: 600, 30m, 24h, 7d (at most 30d).")
@json_option
@click.pass_context
def create_enrollment_token(ctx: click.Context, gateway_id: str, ttl: str, as_json: bool) -> None:
    """Create a one-time enrollment token for a gateway (shown once)."""
    body = {"ttl_s": _duration_s(ttl, "--ttl")}
    doc = _api(ctx).post(f"/v1/gateways/{_segment(gateway_id)}/enrollment-tokens", body)
    if as_json:
        ui.print_json(doc)
        return
    click.echo(doc["token"])
    click.echo(f"one-time enrollment token for {doc['gateway']}, valid {doc['ttl_s']} s: shown once", err=True)


TOKEN_COLUMNS: Final = ("name", "role", "created_by", "created_at", "expires_at", "revoked_at")


@device.group("api-token")
def api_token() -> None:
    """API tokens (admin only)."""


@api_token.command("list")
@json_option
@click.pass_context
def list_api_tokens(ctx: click.Context, as_json: bool) -> None:
    """List API tokens (never their secrets)."""
    doc = _api(ctx).get("/v1/api-tokens")
    if as_json:
        ui.print_json(doc)
        return
    rows = [{k: _short_time(v) for k, v in t.items()} for t in doc["items"]]
    ui.print_table(rows, TOKEN_COLUMNS)


@api_token.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice([r.value for r in ApiRole]))
@click.option("--ttl", help="Lifetime, e.g. 90d; without it the token lasts until revoked.")
@json_option
@click.pass_context
def create_api_token(ctx: click.Context, name: str, role: str, ttl: str | None, as_json: bool) -> None:
    """Create an API token for NAME (a person or system); the secret is printed once."""
    body = {"name": name, "role": role, "ttl_s": None if ttl is None else _duration_s(ttl, "--ttl")}
    doc = _api(ctx).post("/v1/api-tokens", body)
    if as_json:
        ui.print_json(doc)
        return
    click.echo(doc["token"])
    click.echo(f"API token {doc['name']} ({doc['role']}): shown once, keep it secret", err=True)


@api_token.command("revoke")
@click.argument("name")
@reason_option
@json_option
@click.pass_context
def revoke_api_token(ctx: click.Context, name: str, reason: str, as_json: bool) -> None:
    """Revoke an API token."""
    doc = _api(ctx).post(f"/v1/api-tokens/{_segment(name)}/revoke", {"reason": reason})
    _emit(doc, as_json, lambda doc: click.echo(f"API token {doc['name']} revoked"))
