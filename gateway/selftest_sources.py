"""Self-test of the configured sources' hardware: Modbus devices answering, serial ports, the Bluetooth adapter.

* **Modbus**: per bus, one connection (timeout at most 1 s) and one read of each device's first profile point (one
  register block) through the gateway's own :class:`~gateway.sources.modbus_link.ModbusLink`.
* **Serial ports** (LPWA modules, Modbus RTU): present, and openable (with the LPWA source's own exclusive opener).
  A port locked by another opener (the running gateway locks its LPWA ports) passes as in use. A Modbus RTU port
  that another process has open (read from ``/proc``) is not polled: two readers on one serial line steal each
  other's bytes (stop the service to test it).
* **Bluetooth**: a scanner started and stopped at once on the configured adapter, in the configured mode, through
  the BLE source's own opener (the same BlueZ calls the service makes; BlueZ lets several clients scan at once).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Final

from bleak.exc import BleakError

from gateway.config import GatewayConfig
from gateway.selftest_model import Check, Status
from gateway.sources.ble_config import BleSourceConfig
from gateway.sources.ble_scanner import ScannerOpener, resolve_backend
from gateway.sources.lpwa import open_serial
from gateway.sources.modbus_config import ModbusRtuBusConfig, ModbusTcpBusConfig
from gateway.sources.modbus_link import BusError, ModbusLink
from kakehashi.errors import KakehashiError

__all__ = ["ble_check", "modbus_checks", "port_holders", "serial_check", "source_checks"]

MODBUS_TIMEOUT_S: Final = 1.0
BLE_TIMEOUT_S: Final = 5.0
SERIAL_TIMEOUT_S: Final = 5.0


def _pty_master_of(pid_dir: Path, index: int) -> bool:
    """Whether the process holds the master side of ``/dev/pts/<index>``: it is the device end of that line."""
    for fd in (pid_dir / "fd").iterdir():
        if os.readlink(fd) == "/dev/ptmx":
            info = (pid_dir / "fdinfo" / fd.name).read_text()
            if f"tty-index:\t{index}\n" in info:
                return True
    return False


def port_holders(port: str) -> list[str]:
    """The other processes that have ``port`` open, as ``name (pid)``, read from ``/proc/<pid>/fd``.

    For a pseudo-terminal, the process holding its master side (a socat bridge, a simulator) is the other end of
    the line, not a second reader, and is not counted.
    """
    target = os.path.realpath(port)
    pts = target.removeprefix("/dev/pts/")
    holders = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
            if target not in links or (pts.isdigit() and _pty_master_of(entry, int(pts))):
                continue
            holders.append(f"{(entry / 'comm').read_text().strip()} ({entry.name})")
        except OSError:
            continue
    return holders


async def serial_check(name: str, port: str, baudrate: int) -> Check:
    """The serial ``port`` exists and opens; a port locked by another opener (the running gateway) passes too."""
    if not Path(port).exists():  # noqa: ASYNC240 - one stat of a device node
        return Check.failed(
            name,
            f"{port} does not exist",
            "plug the USB adapter in and check `ls /dev/serial/by-id/`; use that stable path in the config",
        )
    try:
        async with asyncio.timeout(SERIAL_TIMEOUT_S):
            _, writer = await open_serial(port, baudrate)
            writer.close()
            await writer.wait_closed()  # releases the port's lock before the check reports
    except (OSError, ValueError) as exc:  # serial.SerialException is an OSError
        text = str(exc)
        if "lock" in text.lower():
            return Check.ok(name, f"{port} present, locked by another process (the running gateway)")
        return Check.failed(
            name,
            f"cannot open {port}: {text}",
            "add the service user to the dialout group (`usermod -aG dialout kakehashi`) and check the adapter",
        )
    return Check.ok(name, f"{port} present and opens at {baudrate} baud")


def _tcp(bus: ModbusTcpBusConfig) -> ModbusTcpBusConfig:
    return bus.model_copy(update={"timeout_s": min(bus.timeout_s, MODBUS_TIMEOUT_S)})


def _rtu(bus: ModbusRtuBusConfig) -> ModbusRtuBusConfig:
    return bus.model_copy(update={"timeout_s": min(bus.timeout_s, MODBUS_TIMEOUT_S)})


async def _bus_checks(bus: ModbusTcpBusConfig | ModbusRtuBusConfig) -> list[Check]:
    label = bus.name or bus.endpoint
    if isinstance(bus, ModbusRtuBusConfig):
        port = await serial_check(f"modbus bus {label}", bus.port, bus.baudrate)
        if port.status is Status.FAIL:
            return [port]
        holders = port_holders(bus.port)
        if holders:
            return [
                Check(
                    f"modbus bus {label}",
                    Status.UNKNOWN,
                    f"{bus.port} is in use by {', '.join(holders)}: devices not polled",
                    "stop the gateway (`systemctl stop kakehashi-gateway`) to poll its RS-485 devices, then start it",
                )
            ]
        link = ModbusLink(_rtu(bus))
    else:
        link = ModbusLink(_tcp(bus))
    try:
        await link.connect()
    except BusError as exc:
        return [
            Check.failed(
                f"modbus bus {label}",
                exc.message,
                "check the address and port (Modbus TCP: 502), the cable and that the device is powered",
            )
        ]
    checks = []
    try:
        for device in bus.devices:
            name = f"modbus {device.id} (unit {device.unit} on {label})"
            profile = device.load_profile()
            wanted = device.points or profile.point_names
            point = next(p for p in profile.points if p.name in wanted)
            try:
                await link.read(point.function, point.address, point.count, device.unit)
            except BusError as exc:
                checks.append(
                    Check.failed(
                        name,
                        f"reading {point.name} ({point.function.value} {point.address}): {exc.kind}: {exc.message}",
                        _modbus_fix(exc.kind),
                    )
                )
            else:
                checks.append(Check.ok(name, f"answered: {point.name} ({point.function.value} {point.address})"))
    finally:
        link.close()
    return checks


def _modbus_fix(kind: str) -> str:
    return {
        "timeout": "check the unit id, the wiring (A/B swapped?), the line settings (baud rate, parity) and power",
        "exception": "the device refused the register: check the profile matches the device model",
        "crc": "garbled answers: check termination and biasing on the RS-485 line, and the baud rate",
    }.get(kind, "check the connection to the bus")


async def modbus_checks(config: GatewayConfig) -> list[Check]:
    source = config.sources.modbus
    if source is None:
        return []
    checks: list[Check] = []
    for bus in source.buses:
        checks.extend(await _bus_checks(bus))
    return checks


async def ble_check(config: BleSourceConfig) -> Check:
    """Start and stop a scanner on the configured adapter."""
    name = f"bluetooth adapter {config.adapter}"
    try:
        backend = resolve_backend(config.backend)
        opener = ScannerOpener(config.adapter, config.scanning_mode, backend, lambda device, data: None)
        async with asyncio.timeout(BLE_TIMEOUT_S):
            scanner, mode = await opener.start()
            await scanner.stop()
    except KakehashiError as exc:
        return Check.failed(name, exc.message, "fix [sources.ble] backend")
    except (BleakError, OSError) as exc:  # FileNotFoundError without BlueZ / D-Bus, TimeoutError
        return Check.failed(
            name,
            f"no Bluetooth adapter: {config.adapter} cannot scan ({type(exc).__name__}: {exc})",
            "check `bluetoothctl list` and that bluetoothd runs (`systemctl status bluetooth`); "
            "on a Pi, `rfkill unblock bluetooth`",
        )
    return Check.ok(name, f"{config.adapter} scans ({mode})")


async def source_checks(config: GatewayConfig) -> list[Check]:
    """Every configured source's hardware, in config order."""
    checks = await modbus_checks(config)
    for lpwa in config.sources.lpwa:
        checks.append(await serial_check(f"lpwa {lpwa.name} ({lpwa.module})", lpwa.port, lpwa.effective_baudrate))
    if config.sources.ble is not None:
        checks.append(await ble_check(config.sources.ble))
    return checks
