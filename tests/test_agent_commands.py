"""The agent's command dispatch against a real Mosquitto: a gateway stand-in that acknowledges like the gateway.

Commands wait while the gateway is offline and go out when it comes online; a device runs one command at a time;
a command whose deadline passes while the gateway is offline expires unsent; a publish the gateway never
acknowledged is sent again; acknowledgements move the registry's lifecycle to succeeded or failed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from device_registry import Registry
from device_registry.models import CommandState
from kakehashi import wire
from kakehashi.mqtt_link import MqttLink
from tests.agent_support import ORG, agent_config, gateway_link, register_gateway, running_agent, status, wait_for
from tests.conftest import Fleet
from tests.fleet import RunningBroker

GW = "gw-test-0001"
VALVE, GAUGE = "wm-0001", "wl-0101"


@pytest.fixture(name="registry")
async def registry_fixture(fleet: Fleet, tmp_path: Path) -> AsyncIterator[Registry]:
    registry = await Registry.open(f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}")
    try:
        await register_gateway(registry, fleet, GW)
        await registry.create_device(VALVE, ORG, "water_meter", actor="admin", gateway_id=GW, profile="water-meter")
        await registry.create_device(GAUGE, ORG, "water_level", actor="admin", gateway_id=GW, profile="water-level")
        yield registry
    finally:
        await registry.close()


async def _online(gw: MqttLink) -> None:
    await gw.publish(
        wire.topic_for(GW, wire.Channel.STATUS), status(wire.StatusState.ONLINE, wire.StatusReason.CONNECTED)
    )


async def _next_command(gw: MqttLink, within: float = 10.0) -> wire.CommandMessage:
    async def one() -> wire.CommandMessage:
        while True:
            message = await gw.messages.get()
            if message.topic.endswith("/down/commands"):
                return wire.decode_command(message.payload)

    async with asyncio.timeout(within):
        return await one()


class Acks:
    """The gateway's acks channel with its own sequence numbers."""

    def __init__(self, gw: MqttLink, first_seq: int = 1) -> None:
        self.gw = gw
        self.seq = first_seq - 1

    async def send(self, command_id: str, status: wire.AckStatus, reason: str | None = None, **result: object) -> None:
        self.seq += 1
        ack = wire.CommandAck(command_id, status, time.time(), reason, dict(result) if result else None)
        message = wire.AcksMessage(seq=self.seq, sent_at=time.time(), acks=(ack,))
        await self.gw.publish(wire.topic_for(GW, wire.Channel.ACKS), wire.encode_acks(message))


def _state(registry: Registry, command_id: str, state: CommandState):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return (await registry.get_command(command_id)).state is state

    return check


async def test_commands_wait_for_the_gateway_run_one_at_a_time_per_device_and_finish_on_its_acks(
    fleet: Fleet, broker: RunningBroker, registry: Registry, tmp_path: Path
) -> None:
    config = agent_config(fleet, broker.endpoint, f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", tmp_path / "a")
    first = await registry.create_command(VALVE, "open", {}, actor="tanaka", ttl=timedelta(minutes=5),
                                          idempotency_key="k1")  # fmt: skip
    second = await registry.create_command(VALVE, "close", {}, actor="tanaka", ttl=timedelta(minutes=5),
                                           idempotency_key="k2")  # fmt: skip
    other = await registry.create_command(GAUGE, "set_mode", {"value": "flood"}, actor="tanaka",
                                          ttl=timedelta(minutes=5), idempotency_key="k3")  # fmt: skip
    async with running_agent(config) as agent:
        await asyncio.sleep(0.5)
        assert (await registry.get_command(first.id)).state is CommandState.QUEUED, "offline gateway: it waits"
        async with gateway_link(broker.endpoint, fleet.gw1, GW, manual_ack=False) as gw:
            await gw.subscribe(wire.gateway_subscriptions(GW))
            await _online(gw)
            got = {(await _next_command(gw)).command_id, (await _next_command(gw)).command_id}
            assert got == {first.id, other.id}, "one command per device at a time"
            acks = Acks(gw)
            await acks.send(first.id, wire.AckStatus.DELIVERED)
            await acks.send(first.id, wire.AckStatus.SUCCEEDED, valve_open=True)
            await wait_for(_state(registry, first.id, CommandState.SUCCEEDED), what="the first command succeeded")
            nxt = await _next_command(gw)
            assert (nxt.command_id, nxt.name, nxt.device_id) == (second.id, "close", VALVE)
            await acks.send(second.id, wire.AckStatus.FAILED, "modbus exception 2 (illegal data address)")
            await acks.send(other.id, wire.AckStatus.SUCCEEDED)
            await wait_for(_state(registry, second.id, CommandState.FAILED), what="the second command failed")
            await wait_for(_state(registry, other.id, CommandState.SUCCEEDED), what="the gauge command succeeded")
        assert agent.metrics.commands_sent == 3
    done = await registry.get_command(first.id)
    assert done.result == {"valve_open": True}
    assert [step.state for step in await registry.command_history(first.id)] == [
        CommandState.QUEUED, CommandState.SENT, CommandState.DELIVERED, CommandState.SUCCEEDED,
    ]  # fmt: skip
    failed = await registry.get_command(second.id)
    assert failed.reason == "modbus exception 2 (illegal data address)"


async def test_a_command_expires_unsent_while_the_gateway_is_offline(
    fleet: Fleet, broker: RunningBroker, registry: Registry, tmp_path: Path
) -> None:
    config = agent_config(fleet, broker.endpoint, f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", tmp_path / "a",
                          commands={"sweep_s": 0.2})  # fmt: skip
    command = await registry.create_command(VALVE, "open", {}, actor="tanaka", ttl=timedelta(seconds=1),
                                            idempotency_key="k1")  # fmt: skip
    async with running_agent(config) as agent:
        await wait_for(_state(registry, command.id, CommandState.EXPIRED), what="expiry while offline")
        async with gateway_link(broker.endpoint, fleet.gw1, GW, manual_ack=False) as gw:
            await gw.subscribe(wire.gateway_subscriptions(GW))
            await _online(gw)
            with pytest.raises(TimeoutError):
                await _next_command(gw, within=1.5)
        assert agent.metrics.commands_sent == 0
        assert agent.metrics.commands_expired == 1


async def test_an_unacknowledged_command_is_sent_again_with_the_same_id(
    fleet: Fleet, broker: RunningBroker, registry: Registry, tmp_path: Path
) -> None:
    config = agent_config(fleet, broker.endpoint, f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}", tmp_path / "a",
                          commands={"sweep_s": 0.2, "resend_after_s": 0.5})  # fmt: skip
    command = await registry.create_command(VALVE, "open", {}, actor="tanaka", ttl=timedelta(minutes=5),
                                            idempotency_key="k1")  # fmt: skip
    async with running_agent(config) as agent, gateway_link(broker.endpoint, fleet.gw1, GW, manual_ack=False) as gw:
        await gw.subscribe(wire.gateway_subscriptions(GW))
        await _online(gw)
        first = await _next_command(gw)
        again = await _next_command(gw)  # the gateway "lost" it: no ack
        assert first.command_id == again.command_id == command.id
        assert first.deadline == again.deadline
        await Acks(gw).send(command.id, wire.AckStatus.SUCCEEDED)
        await wait_for(_state(registry, command.id, CommandState.SUCCEEDED), what="success after the resend")
        assert agent.metrics.commands_resent >= 1
