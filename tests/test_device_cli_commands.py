"""``kakehashi device command ...`` against the real API over HTTPS: send, list, show, confirm, cancel, --wait."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from device_registry import ApiRole, CommandState
from kakehashi import wire
from tests.test_device_cli import Agent
from tests.test_device_cli import agent_fixture as agent_fixture

GW = "gw-0001"


async def _fleet(agent: Agent) -> None:
    registry = agent.registry
    await registry.create_organisation("kakogawa", "Kakogawa City", actor="admin")
    await registry.create_gateway(GW, "kakogawa", actor="admin")
    await registry.record_certificate(GW, "a1", datetime.now(UTC) + timedelta(days=30), actor="pki")
    for device, kind, profile in (("valve-0001", "water_meter", "water-meter"), ("wl-0001", "water_level", "khnode")):
        await registry.create_device(device, "kakogawa", kind, actor="admin", profile=profile, gateway_id=GW)


async def _answer(agent: Agent, device: str, status: wire.AckStatus, reason: str | None = None) -> None:
    """Play the gateway: wait for the device's queued command, send it, acknowledge it."""
    for _ in range(200):
        page = await agent.registry.list_commands(device=device, state=CommandState.QUEUED)
        if page.items:
            command = page.items[0]
            await agent.registry.mark_sent(command.id)
            ack = wire.CommandAck(command.id, status, datetime.now(UTC).timestamp(), reason=reason)
            await agent.registry.apply_acks(GW, int(datetime.now(UTC).timestamp() * 1e6), [ack])
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no command for {device} was queued")


async def test_send_list_show_and_repeat_a_command(agent: Agent) -> None:
    await _fleet(agent)
    sent = await agent.run("command", "wl-0001", "flood_mode", "minutes=30", "--ttl", "10m")
    assert sent.code == 0, sent.err
    assert "state            queued" in sent.out
    assert "status           queued for gateway gw-0001: pending until " in sent.out
    assert '{"minutes":30,"on":true}' in sent.out
    key = sent.err.split()[2]  # "idempotency key: cli-... (retry with --key ...)"
    assert key.startswith("cli-")
    again = json.loads((await agent.run("command", "wl-0001", "flood_mode", "minutes=30", "--key", key, "--json")).out)
    assert again["idempotency_key"] == key
    assert again["deadline"] - datetime.now(UTC).timestamp() > 590
    assert again["history"][0]["state"] == "queued"
    listed = await agent.run("commands", "--device", "wl-0001")
    lines = listed.out.splitlines()
    assert lines[0].split() == ["ID", "DEVICE", "NAME", "STATE", "REQUESTED_BY", "CREATED", "STATUS"]
    assert len(lines) == 2
    assert lines[1].split()[:5] == [again["id"], "wl-0001", "flood_mode", "queued", "root@city"]
    shown = await agent.run("command-show", again["id"])
    assert shown.out.splitlines()[-2].split() == ["SEQ", "AT", "STATE", "ACTOR", "REASON"]
    assert shown.out.splitlines()[-1].split()[2:4] == ["queued", "root@city"]
    bad = await agent.run("command", "wl-0001", "flood_mode", "minutes=0")
    assert bad.error_line == "error: parameter 'minutes' is 0, outside 1..10080 (400 out_of_range)"
    unknown = await agent.run("command", "valve-0001", "explode")
    assert unknown.error_line.endswith("it has: close, open (400 unknown_command)")
    assert (await agent.run("command", "valve-0001", "open", "--ttl", "8d")).error_line.endswith("(400 bad_ttl)")


async def test_confirm_by_a_second_person_and_cancel(agent: Agent) -> None:
    await _fleet(agent)
    manager, _ = await agent.registry.create_api_token("tanaka@city", ApiRole.ASSET_MANAGER, actor="bootstrap")
    close = json.loads((await agent.run("command", "valve-0001", "close", "--json")).out)
    assert close["state"] == "awaiting_confirmation"
    own = await agent.run("command-confirm", close["id"])
    assert own.error_line.endswith("another person must confirm it (403 confirmation_by_requester)")
    confirmed = await agent.run("command-confirm", close["id"], token=manager)
    assert confirmed.out.strip().startswith(f"command {close['id']} confirmed by tanaka@city: queued for gateway")
    cancelled = await agent.run("command-cancel", close["id"], "--reason", "wrong valve")
    assert cancelled.out.strip() == f"command {close['id']} cancelled"
    assert agent.actions.commands == [GW, GW]
    listed = json.loads((await agent.run("commands", "--state", "cancelled", "--json")).out)
    assert [c["id"] for c in listed["items"]] == [close["id"]]


async def test_wait_until_final_and_exit_status(agent: Agent) -> None:
    await _fleet(agent)
    gateway = asyncio.create_task(_answer(agent, "valve-0001", wire.AckStatus.SUCCEEDED))
    succeeded = await agent.run("command", "valve-0001", "open", "--wait", "--timeout", "20")
    await gateway
    assert succeeded.code == 0, succeeded.err
    assert "state            succeeded" in succeeded.out
    gateway = asyncio.create_task(_answer(agent, "valve-0001", wire.AckStatus.FAILED, "Modbus exception 4"))
    failed = await agent.run("command", "valve-0001", "open", "--wait", "--timeout", "20")
    await gateway
    assert failed.code == 1
    assert failed.err.strip().splitlines()[-1].endswith("failed: Modbus exception 4")
    waiting = await agent.run("command", "wl-0001", "report_now", "--wait", "--timeout", "0.3")
    assert waiting.code == 1
    assert "pending until" in waiting.err
