"""The simulator's pymodbus servers (TCP and RTU) with a request handler that counts requests and injects faults.

pymodbus answers requests through a per-connection handler. This one handles each request as its own task with
the request captured up front, so a slow answer still carries its own transaction and unit id; it stays silent for
unit ids nobody simulates (as an RS-485 bus does), refuses tables a device has no points in, and applies the
fault set for the unit: no answer, an exception code, a slow answer, or (RTU) a corrupted CRC.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerRTU
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from hw.modbus.sim_device import FUNCTION_OF_CODE, SimulatedDevice

__all__ = ["Fault", "FaultKind", "SimBus", "SimSerialServer", "SimTcpServer"]


class FaultKind(enum.StrEnum):
    NO_ANSWER = "no_answer"  # the master times out
    EXCEPTION = "exception"  # a Modbus exception response with ``code``
    SLOW = "slow"  # the right answer, ``delay_s`` late
    BAD_CRC = "bad_crc"  # the right answer with a broken CRC (RTU only)


@dataclass(frozen=True, slots=True)
class Fault:
    """A misbehaviour of one simulated device, set with ``ModbusSimulator.inject``."""

    kind: FaultKind
    code: int = ExcCodes.DEVICE_FAILURE
    delay_s: float = 0.0

    @classmethod
    def no_answer(cls) -> Fault:
        return cls(FaultKind.NO_ANSWER)

    @classmethod
    def exception(cls, code: int = ExcCodes.DEVICE_FAILURE) -> Fault:
        if not 1 <= code <= 255:
            raise ValueError(f"exception code {code} is outside 1..255")
        return cls(FaultKind.EXCEPTION, code=code)

    @classmethod
    def slow(cls, delay_s: float) -> Fault:
        if delay_s <= 0:
            raise ValueError("a slow answer needs delay_s above 0")
        return cls(FaultKind.SLOW, delay_s=delay_s)

    @classmethod
    def bad_crc(cls) -> Fault:
        return cls(FaultKind.BAD_CRC)

    @classmethod
    def parse(cls, text: str) -> Fault:
        """``no_answer``, ``exception[:<code>]``, ``slow:<seconds>`` or ``bad_crc`` (the CLI's ``--fault`` form)."""
        kind, _, arg = text.partition(":")
        try:
            if kind == FaultKind.NO_ANSWER:
                return cls.no_answer()
            if kind == FaultKind.EXCEPTION:
                return cls.exception(int(arg, 0) if arg else ExcCodes.DEVICE_FAILURE)
            if kind == FaultKind.SLOW:
                return cls.slow(float(arg))
            if kind == FaultKind.BAD_CRC:
                return cls.bad_crc()
        except ValueError as exc:
            raise ValueError(f"bad fault {text!r}: {exc}") from None
        raise ValueError(f"unknown fault {text!r}; use no_answer, exception[:<code>], slow:<seconds> or bad_crc")


@dataclass
class SimBus:
    """What the servers share with the simulator: the devices, their faults and the request counts."""

    devices: dict[int, SimulatedDevice]
    rtu: bool
    faults: dict[int, Fault] = field(default_factory=dict)
    requests: Counter[tuple[int, int]] = field(default_factory=Counter)  # (unit, function code) -> count


class _SimRequestHandler(ServerRequestHandler):
    """Serves one connection: each request in its own task, with faults applied."""

    def __init__(self, server: Any, bus: SimBus) -> None:
        super().__init__(server, server.trace_packet, server.trace_pdu, server.trace_connect)  # type: ignore[no-untyped-call]
        self._bus = bus
        self._tasks: set[asyncio.Task[None]] = set()

    def handle_later(self) -> None:
        request, addr = self.last_pdu, self.last_addr
        if request is None:
            return
        task = self.loop.create_task(self._serve(request, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def callback_disconnected(self, exc: Exception | None) -> None:
        super().callback_disconnected(exc)
        for task in self._tasks:
            task.cancel()

    async def _serve(self, request: ModbusPDU, addr: tuple[Any, ...] | None) -> None:
        unit = request.dev_id
        device = self._bus.devices.get(unit)
        if device is None:
            return  # nobody with this unit id on the bus: silence
        code = request.function_code
        self._bus.requests[(unit, code)] += 1
        fault = self._bus.faults.get(unit)
        if fault is not None and fault.kind is FaultKind.NO_ANSWER:
            return
        if fault is not None and fault.kind is FaultKind.SLOW:
            await asyncio.sleep(fault.delay_s)
        response: ModbusPDU
        function = FUNCTION_OF_CODE.get(code)
        if fault is not None and fault.kind is FaultKind.EXCEPTION:
            response = ExceptionResponse(code, fault.code)
        elif function is not None and function not in device.functions:
            response = ExceptionResponse(code, ExcCodes.ILLEGAL_ADDRESS)
        else:
            response = await request.datastore_update(self.server.context, unit)
        response.transaction_id = request.transaction_id
        response.dev_id = unit
        if fault is not None and fault.kind is FaultKind.BAD_CRC and isinstance(self.framer, FramerRTU):
            frame = self.framer.buildFrame(response)
            self.send(frame[:-2] + bytes([frame[-2] ^ 0xFF, frame[-1] ^ 0xFF]), addr)
            return
        self.server_send(response, addr)  # type: ignore[no-untyped-call]


class SimTcpServer(ModbusTcpServer):
    """A Modbus TCP server whose connections are served by the simulator's handler."""

    def __init__(self, bus: SimBus, host: str, port: int) -> None:
        super().__init__([d.sim_device() for d in bus.devices.values()], address=(host, port))
        self.sim_bus = bus

    def callback_new_connection(self) -> _SimRequestHandler:
        return _SimRequestHandler(self, self.sim_bus)

    @property
    def bound_port(self) -> int:
        """The TCP port the server listens on (the one the OS chose when started with port 0)."""
        sockets = getattr(self.transport, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else 0


class SimSerialServer(ModbusSerialServer):
    """A Modbus RTU server on a serial port (a real adapter or one end of a socat PTY pair)."""

    def __init__(self, bus: SimBus, port: str, baudrate: int, parity: str, stopbits: int) -> None:
        super().__init__(
            [d.sim_device() for d in bus.devices.values()],
            port=port,
            baudrate=baudrate,
            parity=parity,
            stopbits=stopbits,
            reconnect_delay=0.5,
        )
        self.sim_bus = bus

    def callback_new_connection(self) -> _SimRequestHandler:
        return _SimRequestHandler(self, self.sim_bus)
