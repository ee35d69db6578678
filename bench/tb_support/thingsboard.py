"""thingsboard-gateway as the benchmark peer: its own venv, its configuration, a stand-in for its server, a run.

- **Venv.** thingsboard-gateway pins pymodbus 3.9.2 and force-reinstalls it at start when it finds another version,
  so it lives in its own venv (``.bench/tb-venv``), made on first use and reused while it holds the right versions.
  Its run-time dependencies (pymodbus 3.9.2, pyserial, pyserial-asyncio) are installed up front: at run time it may
  not reach any package index.
- **No internet.** At start and hourly it POSTs to its vendor's update service; ``HTTP(S)_PROXY`` point at a closed
  loopback port, so that request fails on this machine.
- **Server stand-in.** It sends no telemetry until its server answers the ``getSessionLimits`` RPC; a small client
  on the same Mosquitto answers it as a self-hosted server without rate limits does, and counts the telemetry that
  arrives on ``v1/gateway/telemetry`` (``{"<device>": [{"ts": ..., "values": {...}}]}``).
- **Its fastest Modbus configuration.** Each device is one key over the address range ``0-19`` with
  ``maxRegistersPerRequest`` 20, i.e. one read of 20 holding registers per poll; all devices share one TCP
  connection; memory storage; statistics, remote configuration and remote shell off; QoS 1 like ours.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from bench.harness import free_port
from bench.tb_support.procs import child_setup
from bench.tb_support.tally import SequenceTally
from kakehashi.mqtt import BrokerEndpoint
from kakehashi.waiting import until_set

TB_VERSION = "3.8.5"
TB_PYMODBUS = "3.9.2"
TB_RUNTIME_DEPS = (f"pymodbus=={TB_PYMODBUS}", "pyserial", "pyserial-asyncio")
TB_ACCESS_TOKEN = "bench-tb-gateway"
TELEMETRY_TOPIC = "v1/gateway/telemetry"
RPC_REQUEST_PREFIX = "v1/devices/me/rpc/request/"
RPC_RESPONSE_PREFIX = "v1/devices/me/rpc/response/"
INSTALL_TIMEOUT_S = 900.0

NO_LIMITS = "0:0,"
SESSION_LIMITS: dict[str, Any] = {
    # What a self-hosted server without rate limits answers: every limit "0:0," (none), a large in-flight window.
    "rateLimits": {"messages": NO_LIMITS, "telemetryMessages": NO_LIMITS, "telemetryDataPoints": NO_LIMITS},
    "gatewayRateLimits": {"messages": NO_LIMITS, "telemetryMessages": NO_LIMITS, "telemetryDataPoints": NO_LIMITS},
    "maxInflightMessages": 10_000,
    "maxPayloadSize": 65_536,
}

Progress = Callable[[str], None]


class TbInstallError(RuntimeError):
    """The thingsboard-gateway venv could not be made."""


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def installed_versions(venv: Path) -> dict[str, str] | None:
    """The versions of thingsboard-gateway and pymodbus in ``venv``, or None when it is missing or broken."""
    python = _venv_python(venv)
    if not python.exists():
        return None
    probe = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({n: m.version(n) for n in ('thingsboard-gateway', 'pymodbus', 'pyserial-asyncio')}))"
    )
    try:
        out = subprocess.run([str(python), "-c", probe], capture_output=True, timeout=60, check=True).stdout
        versions: dict[str, str] = json.loads(out)
    except (subprocess.SubprocessError, OSError, ValueError):
        return None
    return versions


def ensure_venv(venv: Path, progress: Progress) -> dict[str, str]:
    """Make (or reuse) the venv holding thingsboard-gateway ``TB_VERSION``; returns the installed versions."""
    versions = installed_versions(venv)
    if versions and versions.get("thingsboard-gateway") == TB_VERSION and versions.get("pymodbus") == TB_PYMODBUS:
        return versions
    venv.parent.mkdir(parents=True, exist_ok=True)
    log = venv.parent / "tb-venv-install.log"
    progress(f"thingsboard-gateway: creating its own venv in {venv} (first run only; log: {log})")
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [str(_venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "-q",
         f"thingsboard-gateway=={TB_VERSION}", *TB_RUNTIME_DEPS],
    ]  # fmt: skip
    with log.open("ab") as sink:
        for step in steps:
            if "pip" in step:
                progress(
                    f"thingsboard-gateway: pip install thingsboard-gateway=={TB_VERSION} {' '.join(TB_RUNTIME_DEPS)}"
                )
            try:
                subprocess.run(step, stdout=sink, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S, check=True)
            except subprocess.TimeoutExpired:
                raise TbInstallError(
                    f"`{' '.join(step[:4])} ...` took over {INSTALL_TIMEOUT_S:.0f} s (log: {log})"
                ) from None
            except (subprocess.CalledProcessError, OSError) as exc:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise TbInstallError(f"`{' '.join(step[:4])} ...` failed ({exc}): {' | '.join(tail)}") from None
    versions = installed_versions(venv)
    if not versions or versions.get("thingsboard-gateway") != TB_VERSION:
        raise TbInstallError(f"the venv {venv} does not hold thingsboard-gateway {TB_VERSION} after installing")
    progress(f"thingsboard-gateway: installed {versions}")
    return versions


def device_name(unit: int) -> str:
    return f"tb-bench-{unit:02d}"


def gateway_config(port: int, storage_records: int = 100_000) -> dict[str, Any]:
    """``tb_gateway.json``: the plain listener as its server, memory storage, every optional service off."""
    return {
        "thingsboard": {
            "host": "127.0.0.1",
            "port": port,
            "remoteShell": False,
            "remoteConfiguration": False,
            "latencyDebugMode": False,
            "statistics": {"enable": False, "statsSendPeriodInSeconds": 3600, "customStatsSendPeriodInSeconds": 3600},
            "deviceFiltering": {"enable": False, "filterFile": "list.json"},
            "maxPayloadSizeBytes": 65_536,
            "minPackSendDelayMS": 50,
            "minPackSizeToSend": 500,
            "checkConnectorsConfigurationInSeconds": 3600,
            "handleDeviceRenaming": False,
            "security": {"type": "accessToken", "accessToken": TB_ACCESS_TOKEN},
            "qos": 1,
            "reportStrategy": {"type": "ON_RECEIVED"},
            "checkingDeviceActivity": {"checkDeviceInactivity": False},
        },
        "storage": {"type": "memory", "read_records_count": 100, "max_records_count": storage_records},
        "grpc": {"enabled": False},
        "connectors": [{"type": "modbus", "name": "bench-modbus", "configuration": "modbus.json"}],
    }


def modbus_config(host: str, port: int, units: int, registers: int, poll_period_ms: int) -> dict[str, Any]:
    """The Modbus connector: one slave per unit, each polled with a single read of registers 0..registers-1."""
    slaves = [
        {
            "host": host,
            "port": port,
            "type": "tcp",
            "method": "socket",
            "unitId": unit,
            "deviceName": device_name(unit),
            "deviceType": "bench-seq",
            "timeout": 5,
            "byteOrder": "BIG",
            "wordOrder": "BIG",
            "retries": 3,
            "retryOnEmpty": True,
            "retryOnInvalid": True,
            "pollPeriod": poll_period_ms,
            "connectAttemptTimeMs": 5000,
            "connectAttemptCount": 5,
            "waitAfterFailedAttemptsMs": 300_000,
            "attributes": [],
            "timeseries": [
                {
                    "tag": "r${address}",
                    "type": "16uint",
                    "functionCode": 3,
                    "objectsCount": 1,
                    "address": f"0-{registers - 1}",
                    "maxRegistersPerRequest": registers,
                }
            ],
            "attributeUpdates": [],
            "rpc": [],
        }
        for unit in range(1, units + 1)
    ]
    return {"name": "bench-modbus", "logLevel": "WARNING", "enableRemoteLogging": False, "master": {"slaves": slaves}}


def logs_config(level: str) -> dict[str, Any]:
    """``logs.json``: everything to stdout (the run's log file) at ``level``, pymodbus at ERROR; no log files."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stdout"}},
        "root": {"level": level, "handlers": ["console"]},
        # pymodbus 3.9.2 warns that BinaryPayloadDecoder is deprecated on every decoded value (3 lines each):
        # silenced, so that thingsboard-gateway does not pay for writing them.
        "loggers": {"pymodbus": {"level": "ERROR"}},
    }


def write_config_dir(
    directory: Path, broker: BrokerEndpoint, sim_host: str, sim_port: int, units: int, registers: int,
    poll_period_ms: int, log_level: str,
) -> Path:  # fmt: skip
    """Write ``tb_gateway.json``, ``modbus.json`` and ``logs.json`` into ``directory`` (``TB_GW_CONFIG_DIR``)."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "tb_gateway.json": gateway_config(broker.port),
        "modbus.json": modbus_config(sim_host, sim_port, units, registers, poll_period_ms),
        "logs.json": logs_config(log_level),
    }
    for name, doc in files.items():
        (directory / name).write_text(json.dumps(doc, indent=2))
    return directory


def tb_environment(config_dir: Path) -> dict[str, str]:
    """The child's environment: its config directory, and every HTTP(S) request sent to a closed loopback port."""
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the update check fails locally
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("TB_", "NO_PROXY", "PIP_"))}
    env.update(
        TB_GW_CONFIG_DIR=str(config_dir),
        HTTP_PROXY=closed,
        HTTPS_PROXY=closed,
        http_proxy=closed,
        https_proxy=closed,
        ALL_PROXY=closed,
        PIP_NO_INDEX="1",  # should it try to install anything at run time, it fails here instead of downloading
        PYTHONUNBUFFERED="1",
    )
    return env


def start_gateway(venv: Path, config_dir: Path, workdir: Path, cpu: int | None) -> subprocess.Popen[bytes]:
    """Start ``thingsboard-gateway`` (its console script) with ``config_dir``; its log goes to ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    with (workdir / "thingsboard-gateway.log").open("wb") as sink:
        return subprocess.Popen(
            [str(venv / "bin" / "thingsboard-gateway")],
            cwd=workdir,
            env=tb_environment(config_dir),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            preexec_fn=child_setup(cpu),
        )


@dataclass
class ServerStandIn:
    """ThingsBoard's side of the conversation on the plain listener: answers ``getSessionLimits`` (and counts any
    other RPC it leaves unanswered) and tallies the telemetry that arrives."""

    endpoint: BrokerEndpoint
    tally: SequenceTally = field(default_factory=SequenceTally)
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    session_limits_answered: int = 0
    other_rpcs: list[str] = field(default_factory=list)
    bad_payloads: int = 0
    seq_key: str = "r0"

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                async with aiomqtt.Client(
                    self.endpoint.host, self.endpoint.port, identifier="bench-tb-server", keepalive=30, timeout=10
                ) as client:
                    await client.subscribe(TELEMETRY_TOPIC, qos=1)
                    await client.subscribe(RPC_REQUEST_PREFIX + "+", qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        await self._handle(client, str(message.topic), message.payload)
            except (aiomqtt.MqttError, OSError):
                self.subscribed.clear()
                await until_set(stop, within=0.3)

    async def _handle(self, client: aiomqtt.Client, topic: str, payload: Any) -> None:
        try:
            doc = json.loads(payload)
        except (TypeError, ValueError):
            self.bad_payloads += 1
            return
        if topic == TELEMETRY_TOPIC:
            self._telemetry(doc)
        elif topic.startswith(RPC_REQUEST_PREFIX):
            request_id = topic[len(RPC_REQUEST_PREFIX) :]
            method = doc.get("method") if isinstance(doc, dict) else None
            if method == "getSessionLimits":
                await client.publish(RPC_RESPONSE_PREFIX + request_id, json.dumps(SESSION_LIMITS), qos=1)
                self.session_limits_answered += 1
            else:
                self.other_rpcs.append(str(method))

    def _telemetry(self, doc: Any) -> None:
        if not isinstance(doc, dict):
            self.bad_payloads += 1
            return
        tally = self.tally
        tally.messages += 1
        for device, entries in doc.items():
            for entry in entries if isinstance(entries, list) else [entries]:
                values = entry.get("values") if isinstance(entry, dict) else None
                if not isinstance(values, dict):
                    self.bad_payloads += 1
                    continue
                seq = values.get(self.seq_key)
                if isinstance(seq, int | float):
                    tally.poll(str(device), int(seq), len(values))
                else:
                    tally.add_readings(len(values))
