"""The command executor: every command from the cloud runs at most once, in order per device, before its deadline.

For each command (``kh/v1/<gw>/down/commands``), :meth:`CommandExecutor.submit`:

1. claims it in the :class:`~gateway.commands.journal.CommandJournal` — a duplicate is answered from the journal (or
   ignored while the first delivery still runs) and goes no further;
2. acknowledges ``expired`` if its deadline has passed, ``failed`` with ``precondition_failed: reported version X,
   command wants Y`` if it has a precondition the gateway's reported twin version does not meet, or ``failed`` if no
   actuator owns the device or its actuator refuses it on sight (unknown command, unusable parameters, LPWA);
3. otherwise starts a task that waits for the device's lock, checks the deadline and the precondition again, and
   hands the command to the actuator that owns the device (Modbus, node, LPWA), and acknowledges ``delivered``: if
   the task finishes within :data:`DELIVERED_GRACE_S` (a Modbus write does), ``delivered`` and the outcome travel
   in one acks message (one trip through outbox, broker and agent instead of two); otherwise ``delivered`` goes at
   once, and :meth:`submit` returns (so the downlink is PUBACKed and the next one read);
4. records the final acknowledgement (``succeeded`` with a result, ``failed`` with a reason, ``expired``) in the
   journal, then commits it to the outbox.

Per-device serialisation: one :class:`asyncio.Lock` per device id, so two commands never interleave on one device,
while commands for different devices run concurrently. A command that waited behind another past its deadline is
acknowledged ``expired`` and never runs. At start-up (:meth:`start`) commands the journal finds cut off by a crash
are acknowledged ``failed`` / ``interrupted`` (never re-run), and final acknowledgements that did not reach the outbox
before a crash are sent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from gateway.commands.acks import send_acks
from gateway.commands.actuator import REFUSALS, Actuator, CommandFailed, Outcome
from gateway.commands.journal import INTERRUPTED, CommandJournal, JournalEntry
from gateway.commands.stats import CommandStats
from gateway.outbox import Outbox
from kakehashi import wire
from kakehashi.log import get_logger

__all__ = ["CommandExecutor"]

log = get_logger(__name__)

RETENTION_S = 7 * 24 * 3600.0
"""Journal entries are kept this long past their command's deadline (for re-acknowledging late redeliveries)."""
PRUNE_EVERY_S = 3600.0
DELIVERED_GRACE_S = 0.025
"""How long ``delivered`` waits to travel together with the outcome of a quick command."""


class CommandExecutor:
    """Runs the commands addressed to this gateway's devices, at most once each."""

    def __init__(
        self,
        journal: CommandJournal,
        outbox: Outbox,
        actuators: Sequence[Actuator],
        reported_version: Callable[[], int],
        *,
        retention_s: float = RETENTION_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._journal = journal
        self._outbox = outbox
        self._actuators = tuple(actuators)
        self._reported_version = reported_version
        self._retention_s = retention_s
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._delivered: dict[str, wire.CommandAck] = {}  # delivered acks not yet in the outbox, by command id
        self._tasks: set[asyncio.Task[None]] = set()
        self._pruned_at = 0.0
        self._stopping = False
        self._closed = False
        self.stats = CommandStats()

    # --- life cycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Finish commands cut off by a crash as ``interrupted``, send final acks a crash kept from the outbox,
        and prune old entries. Call once, before the first :meth:`submit`."""
        now = self._clock()
        interrupted = await self._journal.interrupt(now)
        if interrupted:
            self.stats.interrupted += interrupted
            self.stats.failed += interrupted
            self.stats.reasons[INTERRUPTED] += interrupted
            log.warning("commands_interrupted", count=interrupted)
        for entry in await self._journal.unacked():
            assert entry.ack is not None
            await send_acks(self._outbox, (entry.ack,))
            await self._journal.mark_acked(entry.command_id)
            log.info("command_ack_resent", command=entry.command_id, status=entry.ack.status.value)
        await self._prune(now)

    async def stop(self) -> None:
        """Stop taking commands on, stop running ones (each is acknowledged ``failed`` / ``interrupted``) and wait
        for their tasks. A command that arrives afterwards is never journalled nor acknowledged to the broker: its
        handler waits until the uplink is cancelled, so the broker delivers it again after the restart."""
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """:meth:`stop`, then close the journal. The outbox must still be open."""
        if self._closed:
            return
        await self.stop()
        self._closed = True
        await self._journal.close()

    async def idle(self) -> None:
        """Wait until no command is running (for tests and orderly shutdowns)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- intake ----------------------------------------------------------------------------------------------

    async def handle(self, payload: bytes) -> None:
        """Decode and :meth:`submit` one ``down/commands`` payload (``WireError`` for a malformed one)."""
        await self.submit(wire.decode_command(payload))

    async def submit(self, command: wire.CommandMessage) -> None:
        """Take ``command`` on; returns once it is journalled and its first acknowledgement is in the outbox."""
        if self._stopping:
            await asyncio.get_running_loop().create_future()  # until cancelled: the broker keeps the command
        stats = self.stats
        stats.received += 1
        now = self._clock()
        claim = await self._journal.claim(command, now)
        if claim.earlier is not None:
            stats.duplicates += 1
            await self._duplicate(command, claim.earlier)
            return
        log.info("command_received", command=command.command_id, device=command.device_id, name=command.name)
        refusal = self._refusal(command, now, queued=False) or self._check(command)
        if refusal is not None:
            stats.refused += 1
            await self._finish(command, refusal)
            return
        self._delivered[command.command_id] = wire.CommandAck(command.command_id, wire.AckStatus.DELIVERED, now)
        task = asyncio.get_running_loop().create_task(self._run(command), name=f"command {command.command_id}")
        self._tasks.add(task)
        stats.running = len(self._tasks)
        task.add_done_callback(self._done)
        # a quick command (a Modbus write) goes up with its delivered ack in one message; a slow one (a node that
        # answers on its next wake) gets its delivered ack now and its outcome later
        await asyncio.wait({task}, timeout=DELIVERED_GRACE_S)
        delivered = self._delivered.pop(command.command_id, None)
        if delivered is not None:
            await send_acks(self._outbox, (delivered,))
        if now - self._pruned_at >= PRUNE_EVERY_S:
            await self._prune(now)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.stats.running = len(self._tasks)
        if not task.cancelled() and task.exception() is not None:
            log.error("command_task_failed", task=task.get_name(), error=repr(task.exception()))

    async def _duplicate(self, command: wire.CommandMessage, earlier: JournalEntry) -> None:
        same = earlier.command_id == command.command_id
        if earlier.ack is None:
            if same:
                log.info("command_duplicate_running", command=command.command_id)
                return
            reason = f"duplicate: idempotency key already taken by command {earlier.command_id}, still executing"
            ack = wire.CommandAck(command.command_id, wire.AckStatus.FAILED, self._clock(), reason)
        elif same:
            ack = earlier.ack
        else:
            result: wire.JSONObject = {**(earlier.ack.result or {}), "duplicate_of": earlier.command_id}
            ack = wire.CommandAck(command.command_id, earlier.ack.status, earlier.ack.at, earlier.ack.reason, result)
        log.info("command_duplicate", command=command.command_id, of=earlier.command_id, status=ack.status.value)
        await send_acks(self._outbox, (ack,))

    def _refusal(self, command: wire.CommandMessage, now: float, *, queued: bool) -> Outcome | None:
        """Why ``command`` must not run now (deadline, precondition), or ``None``."""
        if now >= command.deadline:
            where = "while queued behind another command on this device" if queued else "before the gateway got it"
            return Outcome(wire.AckStatus.EXPIRED, f"deadline_passed: the deadline passed {where}; not executed")
        if command.precondition is not None:
            reported = self._reported_version()
            wanted = command.precondition.reported_version
            if reported != wanted:
                return Outcome(
                    wire.AckStatus.FAILED, f"precondition_failed: reported version {reported}, command wants {wanted}"
                )
        return None

    def _check(self, command: wire.CommandMessage) -> Outcome | None:
        """Refuse a command for a device no actuator owns, or one its actuator can tell is unusable."""
        actuator = self._actuator(command.device_id)
        if actuator is None:
            return Outcome(
                wire.AckStatus.FAILED,
                f"unknown_device: no Modbus bus, bound node or LPWA module of this gateway has a device "
                f"{command.device_id!r}",
            )
        try:
            actuator.check(command)
        except CommandFailed as exc:
            return Outcome(wire.AckStatus.FAILED, exc.ack_reason)
        return None

    # --- execution -------------------------------------------------------------------------------------------

    def _actuator(self, device_id: str) -> Actuator | None:
        for actuator in self._actuators:
            if actuator.owns(device_id):
                return actuator
        return None

    async def _run(self, command: wire.CommandMessage) -> None:
        lock = self._locks.setdefault(command.device_id, asyncio.Lock())
        outcome: Outcome
        finishing = False
        try:
            async with lock:
                refusal = self._refusal(command, self._clock(), queued=True)
                actuator = self._actuator(command.device_id)
                if refusal is not None or actuator is None:  # the actuator was there on arrival (_check)
                    self.stats.refused += 1
                    outcome = refusal or Outcome(wire.AckStatus.FAILED, "unknown_device: no longer on this gateway")
                else:
                    outcome = await self._execute(actuator, command)
                finishing = True
                await asyncio.shield(self._finish(command, outcome))
        except asyncio.CancelledError:
            if finishing:  # the outcome is being recorded already; let it be
                raise
            stopped = Outcome(
                wire.AckStatus.FAILED,
                f"{INTERRUPTED}: the gateway stopped while this command was queued or executing; it was not run "
                "again (check the device's state)",
            )
            await asyncio.shield(self._finish(command, stopped))
            raise

    async def _execute(self, actuator: Actuator, command: wire.CommandMessage) -> Outcome:
        try:
            outcome = await actuator.execute(command)
        except CommandFailed as exc:
            if exc.reason in REFUSALS:
                self.stats.refused += 1
            else:
                self.stats.executed += 1
            return Outcome(wire.AckStatus.FAILED, exc.ack_reason)
        except (OSError, RuntimeError, ValueError) as exc:  # an actuator bug must fail the command, not hang it
            self.stats.executed += 1
            log.exception("command_actuator_error", command=command.command_id, actuator=actuator.kind)
            return Outcome(wire.AckStatus.FAILED, f"gateway_error: {exc!r}")
        self.stats.executed += 1
        return outcome

    async def _finish(self, command: wire.CommandMessage, outcome: Outcome) -> None:
        """Journal the final acknowledgement, then commit it to the outbox."""
        ack = wire.CommandAck(command.command_id, outcome.status, self._clock(), outcome.reason, outcome.result)
        await self._journal.finish(ack)
        stats = self.stats
        if ack.status is wire.AckStatus.SUCCEEDED:
            stats.succeeded += 1
        elif ack.status is wire.AckStatus.EXPIRED:
            stats.expired += 1
        else:
            stats.failed += 1
        if outcome.reason is not None:
            stats.reasons[outcome.reason.partition(":")[0]] += 1
        log.info(
            "command_finished",
            command=command.command_id,
            device=command.device_id,
            name=command.name,
            status=ack.status.value,
            reason=ack.reason,
        )
        delivered = self._delivered.pop(command.command_id, None)
        await send_acks(self._outbox, (ack,) if delivered is None else (delivered, ack))
        await self._journal.mark_acked(command.command_id)

    async def _prune(self, now: float) -> None:
        self._pruned_at = now
        pruned = await self._journal.prune(now - self._retention_s)
        if pruned:
            log.info("command_journal_pruned", entries=pruned)
