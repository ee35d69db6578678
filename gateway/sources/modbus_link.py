"""The link to one Modbus bus: a pymodbus async client (TCP or RTU) behind a small read/write API with typed faults.

Every failure comes out as a :class:`BusError` whose ``kind`` is what the source counts: ``timeout`` (no answer),
``exception`` (a Modbus exception response, with its code), ``crc`` (bytes arrived but no valid frame: bad CRC,
garbled or short answer) and ``connection`` (the link is down). pymodbus's own retries, reconnects and
disconnect-after-N-timeouts are switched off: the bus owner decides when to retry, back off and reconnect. On RTU
the link also keeps the 3.5-character silence the Modbus serial line needs between frames.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from gateway.sources.modbus_config import ModbusRtuBusConfig, ModbusTcpBusConfig
from hw.modbus.model import Function

T = TypeVar("T")

__all__ = ["BusError", "ModbusLink"]

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
_NEVER = 1 << 30  # "disconnect after this many unanswered requests": never; the bus owner decides


class BusError(Exception):
    """A failed request: ``kind`` is timeout | exception | crc | connection; ``code`` the Modbus exception code."""

    def __init__(self, kind: str, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class ModbusLink:
    """One client connection to a bus; not safe for concurrent use (the bus owner serialises requests)."""

    def __init__(self, bus: ModbusTcpBusConfig | ModbusRtuBusConfig) -> None:
        self._bus = bus
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._received = False  # bytes arrived since the last request went out (RTU)
        self._in_flight = False
        self._peer_closed = asyncio.Event()  # set when the connection drops while a request waits for its answer
        self._quiet_until = 0.0
        self._silence_s = 0.0
        if isinstance(bus, ModbusRtuBusConfig):
            bits_per_char = 1 + bus.bytesize + (0 if bus.parity == "N" else 1) + bus.stopbits
            # Modbus over serial line: 3.5 character times between frames, fixed at 1.75 ms above 19200 baud.
            self._silence_s = 0.00175 if bus.baudrate > 19200 else 3.5 * bits_per_char / bus.baudrate
        self.requests = 0

    @property
    def endpoint(self) -> str:
        return self._bus.endpoint

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open the connection (closing any previous one); :class:`BusError` ``connection`` if it cannot."""
        self.close()
        bus = self._bus
        client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if isinstance(bus, ModbusTcpBusConfig):
            client = AsyncModbusTcpClient(
                bus.host,
                port=bus.port,
                timeout=bus.timeout_s,
                retries=0,
                reconnect_delay=0,
                name=bus.endpoint,
                trace_connect=self._connection_changed,
            )
        else:
            client = AsyncModbusSerialClient(
                bus.port,
                baudrate=bus.baudrate,
                bytesize=bus.bytesize,
                parity=bus.parity,
                stopbits=bus.stopbits,
                timeout=bus.timeout_s,
                retries=0,
                reconnect_delay=0,
                name=bus.endpoint,
                trace_packet=self._trace_packet,
                trace_connect=self._connection_changed,
            )
        client.set_max_no_responses(_NEVER)
        try:
            connected = await client.connect()
        except (OSError, ModbusException) as exc:
            client.close()
            raise BusError("connection", f"cannot open {bus.endpoint}: {exc}") from None
        if not connected:
            client.close()
            raise BusError("connection", f"cannot connect to {bus.endpoint}")
        self._client = client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _connection_changed(self, connected: bool) -> None:
        # pymodbus leaves a request that is in flight when the peer closes waiting for its full timeout; end it now.
        if connected or not self._in_flight or self._client is None:
            return
        self._peer_closed.set()

    async def _unless_peer_closes(self, call: Awaitable[T]) -> T:
        """Await ``call``, but give up at once if the connection drops meanwhile (pymodbus would otherwise wait for
        the full timeout before noticing)."""
        task = asyncio.ensure_future(call)
        closed = asyncio.ensure_future(self._peer_closed.wait())
        try:
            done, _ = await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
        finally:
            closed.cancel()
            if not task.done():
                task.cancel()  # the peer closed, or we are being stopped: the request is abandoned either way
        # Let the abandoned request unwind. asyncio.wait never raises what the task raised, so a stop (our own
        # cancel) still propagates from here, where suppressing around ``await task`` would swallow it too.
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the peer closing is what this reports
        raise ConnectionException(f"{self._bus.endpoint}: the peer closed the connection")

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending and data:
            self._received = True
        return data

    async def read(self, function: Function, address: int, count: int, unit: int) -> Sequence[int]:
        """Read ``count`` registers (or bits, as bools) of ``function`` from ``address`` of device ``unit``."""
        client = self._require()
        match function:
            case Function.HOLDING:
                response = await self._call(lambda: client.read_holding_registers(address, count=count, device_id=unit))
            case Function.INPUT:
                response = await self._call(lambda: client.read_input_registers(address, count=count, device_id=unit))
            case Function.COIL:
                response = await self._call(lambda: client.read_coils(address, count=count, device_id=unit))
            case Function.DISCRETE:
                response = await self._call(lambda: client.read_discrete_inputs(address, count=count, device_id=unit))
        if function.is_bits:
            if len(response.bits) < count:
                raise BusError("crc", f"unit {unit} answered {len(response.bits)} bits for {count}")
            return response.bits[:count]
        if len(response.registers) != count:
            raise BusError("crc", f"unit {unit} answered {len(response.registers)} registers for {count}")
        return response.registers

    async def write(self, function: Function, address: int, words: Sequence[int], unit: int) -> None:
        """Write ``words`` (0/1 for a coil) to ``function`` at ``address`` of device ``unit``."""
        client = self._require()
        if function is Function.COIL:
            bits = [bool(w) for w in words]
            if len(bits) == 1:
                await self._call(lambda: client.write_coil(address, bits[0], device_id=unit))
            else:
                await self._call(lambda: client.write_coils(address, bits, device_id=unit))
        elif function is Function.HOLDING:
            if len(words) == 1:
                await self._call(lambda: client.write_register(address, words[0], device_id=unit))
            else:
                await self._call(lambda: client.write_registers(address, list(words), device_id=unit))
        else:
            raise BusError("exception", f"the {function.value} table cannot be written", code=1)

    def _require(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        client = self._client
        if client is None or not client.connected:
            raise BusError("connection", f"{self._bus.endpoint} is not connected")
        return client

    async def _call(self, request: Callable[[], Awaitable[ModbusPDU]]) -> ModbusPDU:
        delay = self._quiet_until - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self._received = False
        self.requests += 1
        self._in_flight = True
        self._peer_closed.clear()
        try:
            response = await self._unless_peer_closes(request())
        except ConnectionException as exc:
            self.close()
            raise BusError("connection", f"{self._bus.endpoint}: {exc}") from None
        except ModbusIOException:
            if not self.connected:
                self.close()
                raise BusError("connection", f"{self._bus.endpoint}: connection lost") from None
            if self._received:
                raise BusError("crc", "no valid answer: a garbled frame (bad CRC) arrived instead") from None
            raise BusError("timeout", f"no answer within {self._bus.timeout_s} s") from None
        except OSError as exc:
            self.close()
            raise BusError("connection", f"{self._bus.endpoint}: {exc}") from None
        except ModbusException as exc:
            raise BusError("exception", f"request refused by pymodbus: {exc}") from None
        finally:
            self._in_flight = False
            self._quiet_until = time.monotonic() + self._silence_s
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = _EXCEPTION_NAMES.get(code, "unknown")
            raise BusError("exception", f"exception 0x{code:02x} ({name})", code=code)
        return response
