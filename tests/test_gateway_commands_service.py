"""Commands through the whole gateway service: the cloud broker in, a Modbus write, the acks out on ``up/acks``.

The gateway runs in-process (``run_gateway``) against a real Mosquitto with mutual TLS and a pymodbus simulator;
a stand-in agent publishes on ``kh/v1/<gw>/down/commands`` and reads ``kh/v1/<gw>/up/acks`` with a persistent
session, so acks published while it is away (or the broker restarts) still reach it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from gateway.config import parse_config
from gateway.service import Gateway, run_gateway
from hw.modbus.simulator import Fault, ModbusSimulator
from kakehashi import wire
from kakehashi.mqtt_link import MqttLink
from tests.conftest import Fleet
from tests.fleet import RunningBroker, start_broker
from tests.test_gateway_commands import command, writes

GW = "gw-test-0001"
DOWN = wire.topic_for(GW, wire.Channel.COMMANDS)
ACKS = wire.topic_for(GW, wire.Channel.ACKS)


def agent_link(fleet: Fleet, broker: RunningBroker) -> MqttLink:
    return MqttLink(broker.endpoint, fleet.agent, client_id="agent-cmd", clean_start=False, session_expiry_s=3600)


@asynccontextmanager
async def gateway(fleet: Fleet, broker: RunningBroker, sim: ModbusSimulator, tmp_path: Path) -> AsyncIterator[Gateway]:
    doc = {
        "gateway": {"id": GW, "data_dir": str(tmp_path / "data")},
        "uplink": {
            "host": "127.0.0.1",
            "port": broker.endpoint.port,
            "ca_file": str(fleet.gw1.ca_file),
            "cert_file": str(fleet.gw1.cert_file),
            "key_file": str(fleet.gw1.key_file),
        },
        "sources": {
            "modbus": {
                "buses": [
                    {
                        "transport": "tcp",
                        "host": "127.0.0.1",
                        "port": sim.port,
                        "timeout_s": 5,
                        "devices": [{"id": "wm-0001", "unit": 1, "profile": "water-meter", "poll_interval_s": 3600}],
                    }
                ]
            },
            "lpwa": [  # a module whose port is missing: the source only counts that; commands are refused anyway
                {
                    "port": str(tmp_path / "no-such-tty"),
                    "module": "im920",
                    "reconnect_min_s": 5,
                    "reconnect_max_s": 5,
                    "devices": [{"id": "wl-0100", "sender": "0100", "profile": "water-level-v1"}],
                }
            ],
        },
    }
    config = parse_config(doc, tmp_path / "gateway.toml")
    stop = asyncio.Event()
    started: asyncio.Future[Gateway] = asyncio.get_running_loop().create_future()
    task = asyncio.get_running_loop().create_task(run_gateway(config, stop=stop, on_started=started.set_result))
    try:
        async with asyncio.timeout(20):
            gw = await asyncio.shield(started)
        async with asyncio.timeout(20):
            await gw.uplink.connected.wait()
        yield gw
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await asyncio.gather(task, return_exceptions=True)


_unread: dict[int, list[wire.CommandAck]] = {}
"""Acks received but not yet asked for, per link (a quick command's delivered and final acks share a message)."""


async def next_ack(link: MqttLink, cid: str, within_s: float = 10) -> wire.CommandAck:
    end = time.monotonic() + within_s
    unread = _unread.setdefault(id(link), [])
    while True:
        for index, ack in enumerate(unread):
            if ack.command_id == cid:
                return unread.pop(index)
        async with asyncio.timeout(max(0.01, end - time.monotonic())):
            message = await link.messages.get()
        link.ack(message)
        unread.extend(wire.decode_acks(message.payload).acks)


async def until(check: Callable[[], bool | Awaitable[bool]], seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while True:
        outcome = check()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_valve_command_through_the_broker_runs_once_and_is_acknowledged(
    fleet: Fleet, broker: RunningBroker, tmp_path: Path
) -> None:
    async with (
        ModbusSimulator({1: "water-meter"}) as sim,
        agent_link(fleet, broker) as agent,
        gateway(fleet, broker, sim, tmp_path) as gw,
    ):
        await agent.subscribe([ACKS])
        cmd = command("s-close", "wm-0001", "close")
        await agent.publish(DOWN, wire.encode_command(cmd))
        assert (await next_ack(agent, "s-close")).status is wire.AckStatus.DELIVERED
        done = await next_ack(agent, "s-close")
        assert done.status is wire.AckStatus.SUCCEEDED
        assert done.result == {"point": "valve_open", "written": False, "read_back": False}
        await agent.publish(DOWN, wire.encode_command(cmd))  # the agent's sweep republishes it
        assert await next_ack(agent, "s-close") == done
        await agent.publish(DOWN, wire.encode_command(command("s-gone", "wm-0001", "open", deadline_in=-1)))
        assert (await next_ack(agent, "s-gone")).status is wire.AckStatus.EXPIRED
        await agent.publish(DOWN, wire.encode_command(command("s-radio", "wl-0100", "set_mode", {"value": "flood"})))
        radio = await next_ack(agent, "s-radio")
        assert radio.status is wire.AckStatus.FAILED
        assert radio.reason is not None
        assert radio.reason.startswith("lpwa_downlink_unsupported:")
        assert writes(sim, 1) == 1
        assert sim.value(1, "valve_open") is False
        health = (await gw.health_document())["commands"]
        assert health["succeeded"] == 1
        assert health["duplicates"] == 1
        assert health["expired"] == 1
        assert health["reasons"] == {"deadline_passed": 1, "lpwa_downlink_unsupported": 1}
        assert gw.commands_rejected == 2


async def test_a_broker_restart_mid_command_delivers_the_final_ack_afterwards(
    fleet: Fleet, broker: RunningBroker, tmp_path: Path
) -> None:
    async with ModbusSimulator({1: "water-meter"}) as sim, gateway(fleet, broker, sim, tmp_path) as gw:
        async with agent_link(fleet, broker) as agent:
            await agent.subscribe([ACKS])
            sim.inject(1, Fault.slow(0.6))  # the write and its read-back take 1.2 s
            await agent.publish(DOWN, wire.encode_command(command("s-slow", "wm-0001", "close", deadline_in=30)))
            assert (await next_ack(agent, "s-slow")).status is wire.AckStatus.DELIVERED
        port = broker.endpoint.port
        assert broker.stop() == 0  # mid-write
        await until(lambda: gw.commands.stats.succeeded == 1, 10, "the write to finish while the broker is down")
        assert sim.value(1, "valve_open") is False
        restarted = start_broker(broker.pki_dir, broker.rundir, port=port)
        try:
            async with agent_link(fleet, restarted) as agent:  # the persistent session kept the subscription
                done = await next_ack(agent, "s-slow", within_s=20)
                if done.status is wire.AckStatus.DELIVERED:  # replayed: its PUBACK was lost with the broker
                    done = await next_ack(agent, "s-slow", within_s=20)
                assert done.status is wire.AckStatus.SUCCEEDED
                assert done.result == {"point": "valve_open", "written": False, "read_back": False}
            assert writes(sim, 1) == 1
        finally:
            restarted.stop()
