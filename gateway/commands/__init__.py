"""Commands from the cloud, executed on the gateway at most once: journal, executor, actuators, acknowledgements.

See ``docs/gateway.md``, "Commands".
"""

from gateway.commands.actuator import Actuator, CommandFailed, Outcome
from gateway.commands.executor import CommandExecutor
from gateway.commands.journal import CommandJournal, JournalStore

__all__ = ["Actuator", "CommandExecutor", "CommandFailed", "CommandJournal", "JournalStore", "Outcome"]
