"""Our gateway in the comparison: ``kakehashi gateway run`` with a ``[sources.modbus]`` section, and the cloud-side
subscriber that counts what it delivers.

The gateway runs exactly as on a site: mutual TLS with its own certificate, the broker's ACL, the durable outbox
(SQLite WAL, ``synchronous=FULL``), QoS 1 with PUBACK. Its Modbus source polls one TCP bus with one device per
unit, each poll one block read of the ``bench-seq`` profile's 20 holding registers, at a poll interval far below
what the bus can serve (so it polls as fast as the bus answers, round robin).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt

from bench.tb_support.procs import child_setup
from bench.tb_support.tally import SequenceTally
from kakehashi import wire
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity, make_client
from kakehashi.waiting import until_set

GATEWAY_ID = "gw-bench-vs-tb"
SEQ_POINT = "seq"
POLL_INTERVAL_S = 0.001


def device_id(unit: int) -> str:
    return f"bench-{unit:02d}"


def gateway_config(
    data_dir: Path, broker: BrokerEndpoint, ident: TlsIdentity, sim_host: str, sim_port: int, units: int
) -> str:
    """The gateway's TOML: uplink over mutual TLS, the outbox, and one Modbus TCP bus with ``units`` devices."""
    devices = ",\n".join(
        f'  {{ id = "{device_id(u)}", unit = {u}, profile = "bench-seq", poll_interval_s = {POLL_INTERVAL_S} }}'
        for u in range(1, units + 1)
    )
    return f"""
[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data_dir}"

[uplink]
host = "{broker.host}"
port = {broker.port}
ca_file = "{ident.ca_file}"
cert_file = "{ident.cert_file}"
key_file = "{ident.key_file}"
heartbeat_s = 30
window = 64

[outbox]
budget_mb = 1024
max_readings_per_message = 1000

[sources.modbus]

[[sources.modbus.buses]]
host = "{sim_host}"
port = {sim_port}
devices = [
{devices}
]
"""


def start_gateway(config: Path, log: Path, cpu: int | None) -> subprocess.Popen[bytes]:
    """Start ``kakehashi gateway run`` (this venv's interpreter), pinned to ``cpu`` from its first instruction."""
    with log.open("wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "kakehashi", "gateway", "run", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=child_setup(cpu),
        )


@dataclass
class ReadingsCounter:
    """A cloud-side subscriber (service identity, mutual TLS) that tallies every reading of every uplink readings
    message, deduplicated by (gateway, message sequence) like the agent does."""

    endpoint: BrokerEndpoint
    identity: TlsIdentity
    tally: SequenceTally = field(default_factory=SequenceTally)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    duplicate_messages: int = 0
    _seen: set[tuple[str, int]] = field(default_factory=set)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                client = make_client(self.endpoint, self.identity, client_id="bench-vs-tb-counter", timeout=5.0)
                async with client:
                    await client.subscribe(f"{wire.TOPIC_ROOT}/+/{wire.Channel.READINGS.value}", qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        if isinstance(message.payload, bytes | bytearray):
                            self._readings(str(message.topic), bytes(message.payload))
            except (aiomqtt.MqttError, OSError):
                self.subscribed.clear()
                await until_set(stop, within=0.3)

    def _readings(self, topic: str, payload: bytes) -> None:
        gateway, _channel = wire.parse_topic(topic)
        decoded = wire.decode_readings(payload)
        key = (gateway, decoded.seq)
        if key in self._seen:
            self.duplicate_messages += 1
            return
        self._seen.add(key)
        tally = self.tally
        tally.messages += 1
        tally.add_readings(len(decoded.readings))
        for reading in decoded.readings:
            if reading.quantity == SEQ_POINT and isinstance(reading.value, int | float):
                tally.poll(reading.device_id, int(reading.value), 0)
