"""An LPWA radio module on a serial port, simulated on a socat PTY pair.

The simulator starts ``socat pty,link=<its end> pty,link=<link_path>`` and owns one end; the gateway opens
``link_path`` as if it were ``/dev/ttyUSB0``. It prints real receive frames in the chosen module's format (IM920,
ES920LR, RAK3172 in either firmware's format) for a population of watch tags and water-level gauges, answers the
gateway's init commands (OK, an error, or nothing), and can inject malformed frames, go silent, and be unplugged
(socat stops, the port disappears) and plugged in again at the same path.

Tests use ``async with LpwaModuleSimulator("im920", link_path=tmp / "lpwa0") as sim: ...``; the demo runs
``python -m hw.lpwa.simulator --module im920 --link /tmp/lpwa0``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Literal

from hw.lpwa.build import MALFORMED_KINDS, build_lines, encode_payload, malformed_lines
from hw.lpwa.frames import RadioFrame
from hw.lpwa.modules import MODULES, ModuleSpec
from hw.lpwa.payload import Value
from hw.lpwa.population import SimDevice, SimWatchTag, SimWaterLevel
from hw.lpwa.profile import Profile, builtin_profiles

__all__ = [
    "InitReply",
    "LpwaModuleSimulator",
    "SimulatorError",
    "default_population",
    "gateway_toml",
    "main",
]

InitReply = Literal["ok", "error", "none"]

_READY_MARK: Final = b"starting data transfer loop"
_START_TIMEOUT_S: Final = 5.0
_START_ATTEMPTS: Final = 3
_STOP_TIMEOUT_S: Final = 5.0
_LINE_SPLIT: Final = re.compile(rb"\r\n|\r|\n")


class SimulatorError(RuntimeError):
    """The simulator could not start its serial port (socat missing or failing, link path taken)."""


class LpwaModuleSimulator:
    """A simulated 920 MHz module behind a PTY at ``link_path``."""

    def __init__(
        self,
        module: str,
        *,
        link_path: str | Path,
        devices: Sequence[SimDevice] = (),
        interval_s: float | None = None,
        malformed_every: int = 0,
        seed: int = 0,
        init_reply: InitReply = "ok",
        legacy: bool = False,
        profiles: dict[str, Profile] | None = None,
        socat: str = "socat",
    ) -> None:
        if module not in MODULES:
            raise ValueError(f"unknown module {module!r}: use one of {', '.join(MODULES)}")
        self.spec: ModuleSpec = MODULES[module]
        self.link_path = Path(link_path)
        self.devices = list(devices)
        self.interval_s = interval_s
        self.malformed_every = malformed_every
        self.init_reply: InitReply = init_reply
        self.legacy = legacy
        self.silent = False
        self.commands: list[str] = []
        self.frames_sent = 0
        self.frames_lost = 0
        self._profiles = profiles if profiles is not None else builtin_profiles()
        self._socat_cmd = socat
        self._rng = random.Random(seed)
        self._workdir: Path | None = None
        self._socat: asyncio.subprocess.Process | None = None
        self._stderr_task: asyncio.Task[None] | None = None
        self._emitter: asyncio.Task[None] | None = None
        self._fd: int | None = None
        self._rx = bytearray()
        self._command_seen = asyncio.Event()

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def __aenter__(self) -> LpwaModuleSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def plugged(self) -> bool:
        """Whether the port exists (socat running and the simulator's end open)."""
        return self._fd is not None

    async def start(self) -> None:
        """Create the PTY pair and, with ``interval_s``, start sending frames for the population."""
        self._workdir = Path(tempfile.mkdtemp(prefix="lpwa-sim-"))
        await self._plug()
        if self.interval_s:
            self._emitter = asyncio.create_task(self._emit_loop(self.interval_s))

    async def stop(self) -> None:
        """Stop sending, remove the port and clean up."""
        if self._emitter is not None:
            self._emitter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._emitter
            self._emitter = None
        await self._unplug()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    async def unplug(self) -> None:
        """Pull the USB cable: socat stops, the port and its symlink disappear; frames sent meanwhile are lost."""
        await self._unplug()

    async def replug(self) -> None:
        """Plug the cable back in: the port reappears at the same ``link_path``."""
        if not self.plugged:
            await self._plug()

    def go_silent(self) -> None:
        """The module stops printing anything (frames and command replies) while the port stays open."""
        self.silent = True

    def resume(self) -> None:
        self.silent = False

    # --- what the module prints ---------------------------------------------------------------------------------

    async def send_frame(
        self, sender: str | None, payload: bytes, *, rssi_dbm: int | None = None, snr_db: int | None = None
    ) -> list[str]:
        """Print a receive frame for ``payload`` from ``sender``; returns the line(s) (printed or lost)."""
        rssi = rssi_dbm if rssi_dbm is not None else self._rng.randint(-115, -60)
        snr = snr_db if snr_db is not None else self._rng.randint(-8, 12)
        frame = RadioFrame(
            self.spec.name,
            (sender or "0000") if self.spec.has_sender else None,
            payload,
            rssi,
            float(snr) if self.spec.name == "rak3172" else None,
        )
        lines = build_lines(frame, legacy=self.legacy)
        if not self.silent and self._write(lines):
            self.frames_sent += 1
        else:
            self.frames_lost += 1
        return lines

    async def send_device(
        self, device: SimDevice, *, rssi_dbm: int | None = None, snr_db: int | None = None, **overrides: Value
    ) -> list[str]:
        """Print the next frame of ``device``; ``overrides`` replace payload values (``sos=True``)."""
        values = device.next_values(self._rng)
        values.update(overrides)
        payload = encode_payload(self._profiles[device.profile], values)
        return await self.send_frame(device.sender, payload, rssi_dbm=rssi_dbm, snr_db=snr_db)

    async def inject_malformed(self, kind: str = "bad_hex") -> str:
        """Print one damaged receive line (a kind from ``MALFORMED_KINDS``); returns it."""
        line = malformed_lines(self.spec.name)[kind]
        if not self.silent:
            self._write([line])
        return line

    async def write_line(self, line: str) -> bool:
        """Print any raw line (banners, stray replies); ``False`` if the port is unplugged."""
        return self._write([line])

    async def wait_for_command(self, command: str, timeout_s: float = 5.0) -> None:
        """Wait until the gateway has sent ``command`` (at any time since start)."""
        async with asyncio.timeout(timeout_s):
            while command not in self.commands:
                self._command_seen.clear()
                await self._command_seen.wait()

    # --- internals ----------------------------------------------------------------------------------------------

    async def _plug(self) -> None:
        if self._workdir is None:
            raise SimulatorError("simulator not started: use `async with LpwaModuleSimulator(...)` or start()")
        if self.link_path.is_symlink():
            self.link_path.unlink()  # a stale link left by a killed socat
        elif self.link_path.exists():
            raise SimulatorError(f"{self.link_path} exists and is not a symlink: choose another --link path")
        own_end = self._workdir / "module"
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                async with asyncio.timeout(_START_TIMEOUT_S):
                    self._socat = await asyncio.create_subprocess_exec(
                        self._socat_cmd,
                        "-d",
                        "-d",
                        f"pty,raw,echo=0,link={own_end}",
                        f"pty,raw,echo=0,link={self.link_path}",
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.PIPE,
                    )
                    await self._wait_ready(self._socat)
                break
            except FileNotFoundError:
                raise SimulatorError("socat is not installed: run `sudo apt-get install -y socat`") from None
            except (TimeoutError, SimulatorError):
                # a busy machine can leave socat (or the child watcher) unanswered: start it afresh, a few times
                await self._discard_socat()
                if attempt == _START_ATTEMPTS:
                    raise SimulatorError(
                        f"socat did not start a PTY pair at {self.link_path} in {_START_ATTEMPTS} attempts"
                    ) from None
        self._fd = os.open(own_end, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        asyncio.get_running_loop().add_reader(self._fd, self._on_readable)

    async def _wait_ready(self, proc: asyncio.subprocess.Process) -> None:
        """Until socat says its PTY pair is up (the caller bounds the wait); SimulatorError if it exits first."""
        assert proc.stderr is not None
        seen = bytearray()
        while _READY_MARK not in seen:
            chunk = await proc.stderr.readline()
            if not chunk:
                text = seen.decode(errors="replace").strip() or "no output"
                raise SimulatorError(f"socat did not start a PTY pair at {self.link_path}: {text}")
            seen += chunk
        self._stderr_task = asyncio.create_task(self._drain(proc.stderr))

    async def _discard_socat(self) -> None:
        proc, self._socat = self._socat, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await proc.wait()

    @staticmethod
    async def _drain(stream: asyncio.StreamReader) -> None:
        while await stream.read(4096):
            pass

    async def _unplug(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        proc, self._socat = self._socat, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(_STOP_TIMEOUT_S):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_STOP_TIMEOUT_S):
                        await proc.wait()
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_task
            self._stderr_task = None
        self._rx.clear()

    def _on_readable(self) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            asyncio.get_running_loop().remove_reader(self._fd)
            return
        self._rx += data
        *complete, tail = _LINE_SPLIT.split(bytes(self._rx))
        self._rx = bytearray(tail)
        for raw in complete:
            if raw:
                self._on_command(raw.decode("ascii", errors="replace"))

    def _on_command(self, command: str) -> None:
        self.commands.append(command)
        self._command_seen.set()
        if self.silent or self.init_reply == "none":
            return
        self._write([self.spec.ok_reply if self.init_reply == "ok" else self.spec.error_example])

    def _write(self, lines: Sequence[str]) -> bool:
        if self._fd is None:
            return False
        data = "".join(f"{line}\r\n" for line in lines).encode("ascii")
        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except OSError:  # buffer full (nobody reading) or the port went away: the module's UART output is lost
            return False
        return True

    async def _emit_loop(self, interval_s: float) -> None:
        count = 0
        while True:
            if not self.devices:
                await asyncio.sleep(interval_s)
            for device in self.devices:
                await asyncio.sleep(interval_s / len(self.devices))
                await self.send_device(device)
                count += 1
                if self.malformed_every and count % self.malformed_every == 0:
                    await self.inject_malformed(self._rng.choice(MALFORMED_KINDS))


def default_population(module: str, tags: int, gauges: int, sos_probability: float) -> list[SimDevice]:
    """``tags`` watch tags and ``gauges`` water-level gauges with ids ``tag-0001``… and ``wl-0001``…."""
    keyed_by_payload = not MODULES[module].has_sender
    devices: list[SimDevice] = [
        SimWatchTag(f"tag-{n:04d}", f"{0x0100 + n:04X}", 0xA1B20000 + n, sos_probability=sos_probability)
        for n in range(1, tags + 1)
    ]
    devices += [
        SimWaterLevel(
            f"wl-{n:04d}",
            f"{0x0200 + n:04X}",
            level_cm=100.0 + 20 * n,
            node_id=0x0200 + n if keyed_by_payload else None,
        )
        for n in range(1, gauges + 1)
    ]
    return devices


def gateway_toml(port: str, module: str, devices: Sequence[SimDevice]) -> str:
    """The ``[[sources.lpwa]]`` section of ``gateway.toml`` that registers ``devices`` behind this simulator."""
    lines = ["[[sources.lpwa]]", f"port = {json.dumps(port)}", f"module = {json.dumps(module)}"]
    for device in devices:
        lines += ["", "[[sources.lpwa.devices]]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in device.gateway_device().items()]
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hw.lpwa.simulator",
        description="Simulate a 920 MHz LPWA module (IM920, ES920LR, RAK3172) on a socat PTY for the gateway.",
    )
    parser.add_argument("--module", choices=sorted(MODULES), default="im920", help="module type (default im920)")
    parser.add_argument("--link", required=True, type=Path, help="serial port path the gateway opens (a symlink)")
    parser.add_argument("--tags", type=int, default=2, help="number of watch tags (default 2)")
    parser.add_argument("--gauges", type=int, default=2, help="number of water-level gauges (default 2)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds per round of frames (default 2)")
    parser.add_argument("--sos-probability", type=float, default=0.05, help="chance a tag beacon is SOS")
    parser.add_argument("--malformed-every", type=int, default=0, help="a malformed frame every N frames (0 = none)")
    parser.add_argument("--init-reply", choices=["ok", "error", "none"], default="ok", help="answer to commands")
    parser.add_argument("--legacy", action="store_true", help="RAK3172: old two-line receive format")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0 = Ctrl-C)")
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    devices = default_population(args.module, args.tags, args.gauges, args.sos_probability)
    sim = LpwaModuleSimulator(
        args.module,
        link_path=args.link,
        devices=devices,
        interval_s=args.interval,
        malformed_every=args.malformed_every,
        seed=args.seed,
        init_reply=args.init_reply,
        legacy=args.legacy,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        style = " (old two-line receive format)" if args.legacy and args.module == "rak3172" else ""
        print(f"{sim.spec.title}{style} simulated on {args.link}: {len(devices)} devices, every {args.interval} s")
        print("add this to gateway.toml:\n")
        print(gateway_toml(str(args.link), args.module, devices), flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.duration or None):
                await stop.wait()
        print(f"stopped: {sim.frames_sent} frames sent, {sim.frames_lost} lost, {len(sim.commands)} commands answered")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        asyncio.run(_run(args))
    except SimulatorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
