"""Simulated Modbus meters and gauges on pymodbus: an async API for tests and a command for demos.

Several devices (unit ids) share one server, as on an RS-485 bus, over Modbus TCP or Modbus RTU on a serial port
(a socat PTY pair in tests). Values move realistically per profile; writes are stored and read back; faults are
injected per unit at run time::

    async with ModbusSimulator({1: "sdm120", 2: "water-level"}) as sim:   # TCP on 127.0.0.1, OS-chosen port
        sim.port
        sim.inject(2, Fault.no_answer())          # or Fault.exception(0x02), Fault.slow(0.5), Fault.bad_crc() (RTU)
        sim.inject(2, None)                       # healthy again
        sim.request_count(1, 4)                   # input-register reads unit 1 has answered

    python -m hw.modbus.simulator --tcp 127.0.0.1:5020 --device 1:sdm120 --device 2:water-level [--speed 60]
    python -m hw.modbus.simulator --rtu /dev/pts/7 --baudrate 9600 --device 1:sdm630 --fault 1:slow:0.2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from types import TracebackType

from hw.modbus.model import DeviceProfile, PointValue
from hw.modbus.profile import ProfileError, list_profiles, load_profile
from hw.modbus.sim_device import SimulatedDevice
from hw.modbus.sim_server import Fault, FaultKind, SimBus, SimSerialServer, SimTcpServer

__all__ = ["Fault", "FaultKind", "ModbusSimulator", "main"]


class ModbusSimulator:
    """Devices on one simulated bus, served over TCP (default) or RTU (``serial`` = a serial port path)."""

    def __init__(
        self,
        devices: Mapping[int, str | DeviceProfile],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        serial: str | None = None,
        baudrate: int = 19200,
        parity: str = "N",
        stopbits: int = 1,
        seed: int = 0,
        speed: float = 1.0,
    ) -> None:
        if not devices:
            raise ValueError("a simulator needs at least one device")
        if speed <= 0:
            raise ValueError("speed must be above 0")
        self.host = host
        self._port = port
        self.serial = serial
        self._serial_settings = (baudrate, parity, stopbits)
        self._speed = speed
        self._t0 = time.monotonic()
        rng = random.Random(seed)
        built = {
            unit: SimulatedDevice(unit, p if isinstance(p, DeviceProfile) else load_profile(p), rng, self._clock)
            for unit, p in devices.items()
        }
        self._bus = SimBus(devices=built, rtu=serial is not None)
        self._server: SimTcpServer | SimSerialServer | None = None

    def _clock(self) -> float:
        return (time.monotonic() - self._t0) * self._speed

    @property
    def port(self) -> int:
        """The TCP port (the OS-chosen one after start when constructed with port 0)."""
        return self._port

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def devices(self) -> Mapping[int, SimulatedDevice]:
        return self._bus.devices

    async def start(self) -> None:
        """Start serving (again, on the same port, after :meth:`stop`); device state is kept across restarts."""
        if self._server is not None:
            return
        if self.serial is not None:
            baudrate, parity, stopbits = self._serial_settings
            server: SimTcpServer | SimSerialServer = SimSerialServer(self._bus, self.serial, baudrate, parity, stopbits)
        else:
            server = SimTcpServer(self._bus, self.host, self._port)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            where = self.serial or f"{self.host}:{self._port}"
            raise OSError(f"the Modbus simulator cannot listen on {where}: {exc}") from None
        if isinstance(server, SimTcpServer):
            self._port = server.bound_port
        self._server = server

    async def stop(self) -> None:
        """Stop serving and drop every connection."""
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> ModbusSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def inject(self, unit: int, fault: Fault | None) -> None:
        """Make ``unit`` misbehave as ``fault`` from its next request on (``None``: answer normally again)."""
        if unit not in self._bus.devices:
            raise KeyError(f"no simulated device with unit id {unit}")
        if fault is None:
            self._bus.faults.pop(unit, None)
            return
        if fault.kind is FaultKind.BAD_CRC and not self._bus.rtu:
            raise ValueError("a bad CRC exists only on Modbus RTU; Modbus TCP has no CRC")
        self._bus.faults[unit] = fault

    @property
    def requests(self) -> Counter[tuple[int, int]]:
        """Requests seen per (unit id, function code), answered or not."""
        return self._bus.requests

    def request_count(self, unit: int, function_code: int | None = None) -> int:
        """Requests ``unit`` has seen, of one function code or of all."""
        return sum(n for (u, code), n in self._bus.requests.items() if u == unit and function_code in (None, code))

    def value(self, unit: int, point: str) -> PointValue:
        """What ``unit`` shows for ``point`` now (stored for writable points, animated for the others)."""
        return self._bus.devices[unit].value(point)

    def pin(self, unit: int, point: str, value: PointValue | None) -> None:
        """Hold ``point`` of ``unit`` at ``value`` (``None`` resumes its animation), e.g. to raise an alarm."""
        self._bus.devices[unit].pin(point, value)


def _device_arg(text: str) -> tuple[int, str]:
    unit, sep, profile = text.partition(":")
    if not sep or not unit.isdigit() or not profile:
        raise argparse.ArgumentTypeError(f"{text!r}: use <unit id>:<profile>, e.g. 1:sdm120")
    return int(unit), profile


def _endpoint_arg(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: use HOST:PORT, e.g. 127.0.0.1:5020 (port 0: any free port)")
    return host or "127.0.0.1", int(port)


def _fault_arg(text: str) -> tuple[int, Fault]:
    unit, sep, rest = text.partition(":")
    if not sep or not unit.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: use <unit id>:<fault>, e.g. 2:no_answer or 2:exception:2")
    try:
        return int(unit), Fault.parse(rest)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hw.modbus.simulator",
        description="Simulated Modbus meters and gauges (profiles from hw/modbus/profiles) on Modbus TCP or RTU.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--tcp",
        type=_endpoint_arg,
        metavar="HOST:PORT",
        help="serve Modbus TCP here (default 127.0.0.1:5020; port 0: any free port)",
    )
    where.add_argument("--rtu", metavar="SERIAL_PORT", help="serve Modbus RTU on this serial port")
    parser.add_argument("--baudrate", type=int, default=19200)
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N")
    parser.add_argument("--stopbits", type=int, choices=(1, 2), default=1)
    parser.add_argument("--device", type=_device_arg, action="append", default=[], metavar="UNIT:PROFILE")
    parser.add_argument("--fault", type=_fault_arg, action="append", default=[], metavar="UNIT:FAULT")
    parser.add_argument("--speed", type=float, default=1.0, help="simulation time speed-up (tides, totalisers)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--list", action="store_true", help="list the shipped profiles and exit")
    return parser


async def _serve(args: argparse.Namespace) -> None:
    host, port = args.tcp or ("127.0.0.1", 5020)
    sim = ModbusSimulator(
        dict(args.device),
        host=host,
        port=port,
        serial=args.rtu,
        baudrate=args.baudrate,
        parity=args.parity,
        stopbits=args.stopbits,
        seed=args.seed,
        speed=args.speed,
    )
    for unit, fault in args.fault:
        sim.inject(unit, fault)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        where = f"rtu {args.rtu}" if args.rtu else f"tcp {sim.host}:{sim.port}"
        units = ", ".join(f"{unit} ({device.profile.name})" for unit, device in sorted(sim.devices.items()))
        print(f"modbus simulator listening on {where} with units {units}", flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.duration):
                await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """The command: serve until interrupted (or ``--duration``); 2 on a usage or profile error."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        for name in list_profiles():
            profile = load_profile(name)
            print(f"{name:14} {profile.manufacturer} {profile.model}: {profile.description}")
        return 0
    if not args.device:
        parser.error("give at least one --device UNIT:PROFILE (see --list)")
    try:
        asyncio.run(_serve(args))
    except (ProfileError, ValueError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
