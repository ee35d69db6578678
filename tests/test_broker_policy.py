"""The broker's generated policy as text: the ACL per role and the Mosquitto configuration (table-driven)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kakehashi.broker.config import BrokerLayout, ListenerSettings, render_config, validate_listener
from kakehashi.broker.policy import AclEntry, permissions_for, render_acl
from kakehashi.errors import ConfigError
from kakehashi.identity import ID_PATTERN, Role

ids = st.from_regex(ID_PATTERN, fullmatch=True)


@pytest.mark.parametrize(
    ("role", "identity", "expected"),
    [
        (
            Role.GATEWAY,
            "gw-kakogawa-0012",
            [
                AclEntry("write", "kh/v1/gw-kakogawa-0012/up/#"),
                AclEntry("write", "kh/v1/gw-kakogawa-0012/status"),
                AclEntry("read", "kh/v1/gw-kakogawa-0012/down/#"),
            ],
        ),
        (
            Role.SERVICE,
            "agent-1",
            [
                AclEntry("read", "kh/v1/+/up/#"),
                AclEntry("read", "kh/v1/+/status"),
                AclEntry("write", "kh/v1/+/down/#"),
            ],
        ),
        (Role.NODE, "wl-0007", []),
    ],
)
def test_permissions_per_role(role: Role, identity: str, expected: list[AclEntry]) -> None:
    assert permissions_for(role, identity) == expected


def test_acl_has_one_block_per_identity_and_nothing_for_anonymous_or_nodes() -> None:
    text = render_acl([(Role.GATEWAY, "gw-b"), (Role.SERVICE, "agent-1"), (Role.NODE, "wl-1"), (Role.GATEWAY, "gw-a")])
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rules == [
        "user agent-1",
        "topic read kh/v1/+/up/#",
        "topic read kh/v1/+/status",
        "topic write kh/v1/+/down/#",
        "user gw-a",
        "topic write kh/v1/gw-a/up/#",
        "topic write kh/v1/gw-a/status",
        "topic read kh/v1/gw-a/down/#",
        "user gw-b",
        "topic write kh/v1/gw-b/up/#",
        "topic write kh/v1/gw-b/status",
        "topic read kh/v1/gw-b/down/#",
    ]
    assert not any(line.startswith("pattern") for line in text.splitlines())


@given(st.lists(st.tuples(st.sampled_from([Role.GATEWAY, Role.SERVICE]), ids), max_size=20))
def test_acl_never_grants_a_gateway_another_gateways_subtree(pairs: list[tuple[Role, str]]) -> None:
    blocks: dict[str, list[str]] = {}
    user = ""
    for line in render_acl(pairs).splitlines():
        if line.startswith("user "):
            user = line.split()[1]
            blocks[user] = []
        elif line.startswith("topic "):
            blocks[user].append(line.split(" ", 2)[2])
    services = {ident for role, ident in pairs if role is Role.SERVICE}
    assert set(blocks) == {ident for _, ident in pairs}
    for user, topics in blocks.items():
        levels = {topic.split("/")[2] for topic in topics}
        if levels == {"+"}:
            assert user in services, "wildcard access only for services"
        else:
            assert levels == {user}, "a gateway touches only its own subtree"


def test_config_is_tls_only_with_certificate_identity(tmp_path: Path) -> None:
    layout = BrokerLayout(tmp_path)
    text = render_config(layout, ListenerSettings("127.0.0.1", 18883, "mosquitto"))
    lines = set(text.splitlines())
    for expected in (
        "listener 18883 127.0.0.1",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        f"crlfile {tmp_path}/crl.pem",
        f"acl_file {tmp_path}/acl.conf",
        "persistence true",
        "tls_version tlsv1.2",
    ):
        assert expected in lines
    assert sum(1 for line in lines if line.startswith("listener ")) == 1, "no plain listener"


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [
        ("127.0.0.1", 0, "port 0 is out of range"),
        ("127.0.0.1", 70000, "port 70000 is out of range"),
        ("broker.example", 8883, "is not an IP address"),
    ],
)
def test_listener_settings_are_checked(host: str, port: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_listener(host, port)


def test_local_profile_isolates_nodes_and_gives_only_the_owner_the_relay() -> None:
    text = render_acl(
        [(Role.NODE, "wl-0007"), (Role.GATEWAY, "gw-a"), (Role.GATEWAY, "gw-b"), (Role.SERVICE, "agent-1")],
        profile="local",
        owner="gw-a",
    )
    rules = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rules == [
        "user gw-a",
        "topic readwrite kn/v1/#",
        "user wl-0007",
        "topic write kn/v1/wl-0007/up/#",
        "topic read kn/v1/wl-0007/down/#",
    ]


@pytest.mark.parametrize(("profile", "owner"), [("cloud", None), ("local", None)])
def test_bad_profiles_are_refused(profile: str, owner: str | None) -> None:
    with pytest.raises(ValueError, match=r"profile|owning gateway"):
        render_acl([], profile=profile, owner=owner)
