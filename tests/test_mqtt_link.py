"""The paho-based link against the real broker: refused publishes are errors, manual acks allow redelivery."""

from __future__ import annotations

import asyncio

import pytest

from kakehashi.mqtt import BrokerEndpoint
from kakehashi.mqtt_link import LinkError, MqttLink, PublishRefusedError, Received
from tests.conftest import Fleet
from tests.fleet import RunningBroker, free_port


async def next_message(link: MqttLink, seconds: float = 3.0) -> Received:
    async with asyncio.timeout(seconds):
        return await link.messages.get()


async def test_accepted_publish_returns_and_is_delivered(fleet: Fleet, broker: RunningBroker) -> None:
    async with (
        MqttLink(broker.endpoint, fleet.agent, client_id="agent-1-a") as agent,
        MqttLink(broker.endpoint, fleet.gw1, client_id="gw-test-0001") as gw,
    ):
        assert await agent.subscribe(["kh/v1/+/up/#"]) == [1]
        await gw.publish("kh/v1/gw-test-0001/up/readings", b"r1", content_type="application/json")
        message = await next_message(agent)
    assert (message.topic, message.payload) == ("kh/v1/gw-test-0001/up/readings", b"r1")


async def test_publish_the_acl_refuses_raises_instead_of_succeeding(fleet: Fleet, broker: RunningBroker) -> None:
    async with MqttLink(broker.endpoint, fleet.gw1, client_id="gw-test-0001") as gw:
        with pytest.raises(PublishRefusedError) as refused:
            await gw.publish("kh/v1/gw-test-0002/up/readings", b"spoof")
        assert refused.value.code == 0x87
        await gw.publish("kh/v1/gw-test-0001/up/readings", b"still fine")  # the link stays usable


async def test_unacknowledged_message_is_redelivered_to_a_persistent_session(
    fleet: Fleet, broker: RunningBroker
) -> None:
    def consumer() -> MqttLink:
        return MqttLink(broker.endpoint, fleet.agent, client_id="agent-1-a", clean_start=False,
                        session_expiry_s=600, manual_ack=True)  # fmt: skip

    async with consumer() as agent:
        await agent.subscribe(["kh/v1/+/up/#"])
    async with MqttLink(broker.endpoint, fleet.gw1, client_id="gw-test-0001") as gw:
        await gw.publish("kh/v1/gw-test-0001/up/readings", b"must-not-be-lost")
    async with consumer() as agent:
        first = await next_message(agent)
        assert first.payload == b"must-not-be-lost"
        # crash before handling it: no ack, connection dropped
    async with consumer() as agent:
        again = await next_message(agent)
        assert again.payload == b"must-not-be-lost", "redelivered because it was never acknowledged"
        agent.ack(again)
        await asyncio.sleep(0.2)
    async with consumer() as agent:
        with pytest.raises(TimeoutError):
            await next_message(agent, 0.8)


async def test_closed_port_fails_fast_with_a_clear_error(fleet: Fleet) -> None:
    with pytest.raises(LinkError, match=r"cannot reach 127\.0\.0\.1"):
        async with MqttLink(BrokerEndpoint("127.0.0.1", free_port()), fleet.gw1, client_id="gw-test-0001"):
            pass


async def test_revoked_certificate_is_named_in_the_error(fleet: Fleet, broker: RunningBroker) -> None:
    fleet.ca.revoke("gw-test-0002")
    broker.reload()
    with pytest.raises(LinkError, match=r"(?i)revoked"):
        async with MqttLink(broker.endpoint, fleet.gw2, client_id="gw-test-0002"):
            pass


async def test_lost_connection_fails_pending_and_future_publishes(fleet: Fleet, broker: RunningBroker) -> None:
    async with MqttLink(broker.endpoint, fleet.gw1, client_id="gw-test-0001", keepalive_s=5) as gw:
        broker.stop()
        async with asyncio.timeout(10):
            await gw.lost.wait()
        with pytest.raises(LinkError, match="not connected"):
            await gw.publish("kh/v1/gw-test-0001/up/readings", b"x")
