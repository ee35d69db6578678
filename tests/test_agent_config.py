"""agent.toml: the example parses; mistakes are one line naming the key and the fix; the token CLI bootstraps."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cloud_agent.config import load_config
from kakehashi.errors import ConfigError
from tests.fleet import KAKEHASHI

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = """
[agent]
id = "agent-1"
[broker]
host = "127.0.0.1"
ca_file = "chain.pem"
cert_file = "agent.crt"
key_file = "agent.key"
[api]
enabled = false
"""


def test_the_example_parses_and_relative_paths_follow_the_file() -> None:
    config = load_config(ROOT / "deploy" / "agent.example.toml")
    assert config.broker.cert_file == ROOT / "deploy" / "agent-1.crt"
    assert config.agent.share_group is None
    assert config.api.port == 8443


def test_defaults_put_the_registry_beside_the_file(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(MINIMAL)
    config = load_config(tmp_path / "agent.toml")
    assert config.database.url == f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    assert (config.ingest.batch_messages, config.presence.heartbeat_timeout_s) == (32, 95.0)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ('id = "agent-1"', 'id = "Agent 1"'),
        ("[api]\nenabled = false", "[api]\nenabled = true"),
        ("[api]", '[database]\nurl = "mysql://x"\n[api]'),
        ("[api]", "[ingest]\nbatch_messages = 0\n[api]"),
        ("[api]", "[presence]\nheartbeat_timeout = 5\n[api]"),
        ('host = "127.0.0.1"', "host = "),
    ],
)
def test_mistakes_are_one_line_naming_the_key(tmp_path: Path, change: str, expected: str) -> None:
    (tmp_path / "agent.toml").write_text(MINIMAL.replace(change, expected))
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path / "agent.toml")
    message = refused.value.message
    assert "\n" not in message
    assert str(tmp_path / "agent.toml") in message


def test_token_create_list_revoke_from_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text(MINIMAL)
    config = str(tmp_path / "agent.toml")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*KAKEHASHI, "agent", "token", *args], capture_output=True, text=True, timeout=60)

    created = run("create", "--config", config, "--name", "admin@city", "--role", "admin", "--json")
    assert created.returncode == 0, created.stderr
    assert '"token": "kh_' in created.stdout
    again = run("create", "--config", config, "--name", "admin@city", "--role", "viewer")
    assert again.returncode == 2
    assert again.stderr.startswith("error: an API token named 'admin@city' already exists")
    assert run("revoke", "--config", config, "--name", "admin@city", "--reason", "rotated").returncode == 0
    listed = run("list", "--config", config)
    assert "admin@city" in listed.stdout
    assert "admin" in listed.stdout
    missing = run("list", "--config", str(tmp_path / "nothing.toml"))
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith("error: no config file at")
