"""``kakehashi node flash``: put the firmware, settings and a fresh identity on a node and see its first report arrive.

Order matters, so that a mistake costs nothing: the board is checked first (no board: one line, nothing issued),
then the PKI and ``node.json`` (checked by the firmware's own loader); only then is the node's certificate issued,
the firmware installed with ``mip``, the files copied. The watcher (:mod:`gateway.node_watch`) subscribes to the
gateway relay's acknowledgement for the node *before* the board is reset, so the first report cannot slip past; the
flash succeeds when the gateway has committed a message from the node, or reports after ``wait_s`` what to check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cloud_agent.pki.authority import CertificateAuthority
from gateway.node_boards import Board
from gateway.node_files import NodeIdentity, build_node_json, issue_node_identity, node_files
from gateway.node_watch import FirstReportWatch, WatchError
from hw.node.unixport import EDGE
from kakehashi.identity import validate_id
from kakehashi.log import get_logger
from kakehashi.mqtt import BrokerEndpoint

__all__ = ["DEFAULT_PACKAGE", "FlashRequest", "FlashResult", "flash_node"]

log = get_logger(__name__)

DEFAULT_PACKAGE: Final = str(EDGE / "package.json")
WATCH_CONNECT_S: Final = 20.0

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FlashRequest:
    """What ``kakehashi node flash`` was told (besides the board)."""

    node_id: str
    gateway: str
    pki: Path
    gateway_port: int = 8884
    server_hostname: str | None = None
    package: str = DEFAULT_PACKAGE
    index: str | None = None
    mpy: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    wifi: dict[str, str] | None = None
    ntp: str | None = None
    power: str | None = None
    renew: bool = False
    wait_s: float = 120.0

    def node_json_base(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "gateway": self.gateway,
            "port": self.gateway_port,
            "server_hostname": self.server_hostname,
            "wifi": self.wifi,
            "ntp": self.ntp,
            "power": self.power,
        }


@dataclass
class FlashResult:
    """What flashing did; ``reported`` is None when not waited for."""

    node_id: str
    board: str
    serial: str
    files: list[str]
    reported: bool | None
    seq: int | None = None
    waited_s: float = 0.0
    problem: str | None = None
    next_steps: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "board": self.board,
            "serial": self.serial,
            "files": self.files,
            "reported": self.reported,
            "seq": self.seq,
            "waited_s": round(self.waited_s, 1),
            "problem": self.problem,
            "next_steps": self.next_steps,
        }


def _next_steps(request: FlashRequest, result: FlashResult) -> list[str]:
    if result.reported:
        return [
            "mount the node and check its level against the staff gauge",
            f"watch its readings arrive: kakehashi device readings latest {request.node_id}",
        ]
    steps = [
        f'the gateway must bind the node: [sources.nodes] nodes = [{{ id = "{request.node_id}" }}] in its '
        "gateway.toml (messages from unbound nodes are dropped)",
        f"the gateway's local broker must run on {request.gateway}:{request.gateway_port} "
        "(kakehashi gateway selftest on the gateway)",
        "the node's Wi-Fi settings (--wifi-ssid / --wifi-key) and its distance to the access point",
        "its serial console (mpremote connect <port> repl) prints why a wake did not report",
    ]
    if result.reported is None:
        return ["the node reports at its first wake: check it arrives with `kakehashi gateway outbox` on the gateway"]
    return steps


async def flash_node(request: FlashRequest, board: Board, progress: Progress) -> FlashResult:
    """Flash ``board`` as ``request.node_id`` and wait for its first report (see the module docstring)."""
    validate_id(request.node_id)
    board.check()
    ca = CertificateAuthority.open(request.pki)
    node_json = build_node_json(request.node_json_base(), request.settings)
    progress(f"node.json checked; issuing a node certificate for {request.node_id}")
    identity = issue_node_identity(ca, request.node_id, renew=request.renew)
    files = node_files(identity, node_json)
    result = FlashResult(request.node_id, board.description, identity.serial, sorted(files), None)
    try:
        progress(f"installing the firmware with mip on the {board.description} (this takes a while)")
        await board.install(request.package, request.index, request.mpy)
        progress(f"copying {', '.join(sorted(files))}")
        await board.write(files)
        if request.wait_s <= 0:
            progress("resetting the board")
            await board.reset()
        else:
            await _reset_and_wait(request, board, identity, result, progress)
    finally:
        await board.close()
    result.next_steps = _next_steps(request, result)
    log.info("node_flashed", node=request.node_id, serial=identity.serial, reported=result.reported, seq=result.seq)
    return result


async def _reset_and_wait(
    request: FlashRequest, board: Board, identity: NodeIdentity, result: FlashResult, progress: Progress
) -> None:
    endpoint = BrokerEndpoint(request.gateway, request.gateway_port)
    progress(f"connecting to the gateway's local broker {endpoint.host}:{endpoint.port} to watch for the report")
    started = time.monotonic()
    reset = False
    try:
        async with FirstReportWatch(
            endpoint, identity, request.server_hostname, min(WATCH_CONNECT_S, request.wait_s)
        ) as watch:
            progress("resetting the board")
            reset = True
            await board.reset()
            progress(f"waiting up to {request.wait_s:g} s for the node's first report through the gateway")
            result.seq = await watch.first_ack(max(request.wait_s - (time.monotonic() - started), 1.0))
    except WatchError as exc:
        if not reset:
            progress("resetting the board")
            await board.reset()
        result.reported = False
        result.problem = exc.message
        return
    finally:
        result.waited_s = time.monotonic() - started
    result.reported = result.seq is not None
    if not result.reported:
        result.problem = f"no report from {request.node_id} reached the gateway within {request.wait_s:g} s"
