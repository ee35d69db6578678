"""Waiting for a freshly flashed node's first report *through the gateway*.

The proof used is the gateway relay's answer to the node: the relay publishes ``kn/v1/<node>/down/ack`` only after
it has committed the node's message to its outbox (docs/gateway.md, "Edge nodes"). The flash tool holds the node's
own certificate (it just made it), and the local broker's ACL lets a node read its own downlinks, so the watcher
connects to the gateway's local broker *as the node*, with its own client id (``<node>-flash``: the node's
persistent session ``<node>`` is not touched) and a clean session, and subscribes to that one topic before the board
is reset. No gateway secret is needed on the technician's machine, and nothing is published.

A new certificate reaches the broker's ACL within about a second (the broker reloads on CA changes); until then the
subscription is refused or delivers nothing, so the watcher retries its connect and subscribe up to its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Final

from gateway.node_files import NodeIdentity
from kakehashi import keys, wire
from kakehashi.mqtt import BrokerEndpoint, TlsIdentity, client_tls_context
from kakehashi.mqtt_link import LinkError, MqttLink

__all__ = ["FirstReportWatch", "WatchError"]

RETRY_S: Final = 0.5


class WatchError(LinkError):
    reason = "watch"


class FirstReportWatch:
    """``async with FirstReportWatch(...) as watch: ...reset the board...; seq = await watch.first_ack(60)``."""

    def __init__(
        self, endpoint: BrokerEndpoint, identity: NodeIdentity, server_hostname: str | None, connect_s: float
    ) -> None:
        self.endpoint = endpoint
        self.identity = identity
        self.server_hostname = server_hostname
        self.connect_s = connect_s
        self.topic = wire.node_topic_for(identity.node_id, wire.NodeChannel.RELAY_ACK)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._link: MqttLink | None = None

    def _files(self) -> TlsIdentity:
        self._tmp = tempfile.TemporaryDirectory(prefix="kh-node-watch-")
        directory = Path(self._tmp.name)
        keys.write_secret_file(directory / "node.key", self.identity.key_pem())
        keys.write_public_file(directory / "node.crt", self.identity.certificate_pem())
        return TlsIdentity(self.identity.trust_bundle, directory / "node.crt", directory / "node.key")

    async def __aenter__(self) -> FirstReportWatch:
        files = self._files()
        tls = client_tls_context(files, self.server_hostname)
        deadline = time.monotonic() + self.connect_s
        last = ""
        while True:
            link = MqttLink(
                self.endpoint,
                files,
                client_id=f"{self.identity.node_id}-flash",
                connect_timeout_s=max(1.0, min(5.0, deadline - time.monotonic())),
                tls_context=tls,
            )
            try:
                await link.__aenter__()
            except LinkError as exc:
                last = exc.message
            else:
                try:
                    codes = await link.subscribe([self.topic], qos=1)
                except (LinkError, TimeoutError) as exc:
                    codes, last = [0x80], str(exc)
                if codes and codes[0] < 0x80:
                    self._link = link
                    return self
                last = last or f"the broker refused the subscription to {self.topic} (code {codes[0]:#x})"
                await link.__aexit__(None, None, None)
            if time.monotonic() >= deadline:
                self._cleanup()
                raise WatchError(
                    f"cannot watch the gateway's local broker {self.endpoint.host}:{self.endpoint.port} for the "
                    f"node's report: {last}"
                )
            await asyncio.sleep(RETRY_S)

    async def first_ack(self, timeout_s: float) -> int | None:
        """The sequence number of the first message the gateway committed for the node, or None on timeout."""
        link = self._link
        assert link is not None
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            getter = asyncio.ensure_future(link.messages.get())
            lost = asyncio.ensure_future(link.lost.wait())
            try:
                await asyncio.wait({getter, lost}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (getter, lost):
                    task.cancel()
                await asyncio.gather(getter, lost, return_exceptions=True)
            if getter.done() and not getter.cancelled():
                with contextlib.suppress(wire.WireError):
                    return wire.decode_relay_ack(getter.result().payload)
            elif link.lost.is_set():
                raise WatchError(f"lost the gateway's local broker while waiting: {link.lost_reason}")
        return None

    def _cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        link, self._link = self._link, None
        try:
            if link is not None:
                await link.__aexit__(exc_type, exc, tb)
        finally:
            self._cleanup()
