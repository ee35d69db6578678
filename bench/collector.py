"""A cloud-side subscriber for benchmarks and tests: receives every uplink with a persistent session, reconnects
across broker restarts, and deduplicates by (gateway, seq) the way the agent does."""

from __future__ import annotations

import asyncio

import aiomqtt

from kakehashi import wire
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity, make_client
from kakehashi.waiting import until_set


class Collector:
    """The cloud side of a test: a service identity subscribed to all uplinks with a persistent session, which
    reconnects across broker restarts and deduplicates readings messages by (gateway, seq) like the agent will."""

    def __init__(
        self,
        endpoint: BrokerEndpoint,
        identity: TlsIdentity,
        client_id: str = "collector",
        *,
        keep_payloads: bool = True,
    ) -> None:
        self.keep_payloads = keep_payloads
        self.endpoint = endpoint
        self.identity = identity
        self.client_id = client_id
        self.first_arrivals: list[tuple[str, int]] = []
        self.seen: set[tuple[str, int]] = set()
        self.duplicates = 0
        self.readings = 0
        self.by_channel: dict[str, int] = {}
        self.payloads: dict[tuple[str, int], bytes] = {}
        self.statuses: list[bytes] = []
        self.subscribed = asyncio.Event()
        self.last_arrival = 0.0

    def seqs(self, gateway: str) -> list[int]:
        return [seq for gw, seq in self.first_arrivals if gw == gateway]

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                client = make_client(
                    self.endpoint, self.identity, client_id=self.client_id, clean_start=False,
                    session_expiry_s=3600, timeout=5.0,
                )  # fmt: skip
                async with client:
                    for topic in wire.uplink_subscriptions(None):
                        await client.subscribe(topic, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        if not isinstance(message.payload, bytes | bytearray):
                            continue
                        payload = bytes(message.payload)
                        gateway, channel = wire.parse_topic(str(message.topic))
                        if channel is wire.Channel.STATUS:
                            self.statuses.append(payload)
                            continue
                        decoded = wire.decode_uplink(channel, payload)
                        key = (gateway, decoded.seq)
                        if key in self.seen:
                            self.duplicates += 1
                            continue
                        self.seen.add(key)
                        self.first_arrivals.append(key)
                        if self.keep_payloads:
                            self.payloads[key] = payload
                        self.last_arrival = asyncio.get_running_loop().time()
                        self.by_channel[channel.value] = self.by_channel.get(channel.value, 0) + 1
                        if isinstance(decoded, wire.ReadingsMessage):
                            self.readings += len(decoded.readings)
            except (aiomqtt.MqttError, OSError):  # broker restarting: try again shortly
                self.subscribed.clear()
                await until_set(stop, within=0.3)
