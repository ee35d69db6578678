"""Fakes of MicroPython's ``machine`` and ``network`` modules for the node firmware on the unix port.

Put this folder first on ``MICROPYPATH``; the fakes read a scenario (``KH_SCENARIO``, JSON) that scripts the sensors
wake by wake. See :mod:`hw.node.machine`.
"""

from pathlib import Path

FAKES_DIR = Path(__file__).resolve().parent
"""The folder to put on MICROPYPATH."""
