"""A gateway-like MQTT client in its own process, so a test can kill -9 it and watch its last will fire.

Usage: ``python -m tests.will_client HOST PORT CA CERT KEY GATEWAY_ID``; prints ``up`` once online.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiomqtt

from kakehashi.mqtt import BrokerEndpoint, TlsIdentity, make_client


async def main(argv: list[str]) -> None:
    host, port, ca, cert, key, gateway = argv
    identity = TlsIdentity(Path(ca), Path(cert), Path(key))
    status = f"kh/v1/{gateway}/status"
    will = aiomqtt.Will(status, b"offline", qos=1, retain=True)
    async with make_client(BrokerEndpoint(host, int(port)), identity, client_id=gateway, will=will, keepalive=5) as c:
        await c.publish(status, b"online", qos=1, retain=True)
        print("up", flush=True)
        await asyncio.sleep(60)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
