"""A process that appends to an outbox as fast as it can and prints each committed seq, so a test can kill -9 it.

Usage: ``python -m tests.outbox_writer DB_PATH``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.model import Priority
from gateway.outbox_store import OutboxStore, PendingMessage
from kakehashi import wire


def main(path: Path) -> None:
    store = OutboxStore(path, 512 * 1024 * 1024)
    while True:

        def encode(seq: int) -> bytes:
            reading = wire.Reading("sim-0001", "counter", float(seq), None, 1.8e9, wire.ClockQuality.SYNCED)
            return wire.encode_readings(wire.ReadingsMessage(seq=seq, sent_at=1.8e9, readings=(reading,) * 20))

        result = store.append([PendingMessage(wire.Channel.READINGS, Priority.TELEMETRY, 20, encode)])
        sys.stdout.write(f"{result.seqs[0]}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
