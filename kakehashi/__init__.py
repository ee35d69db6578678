"""Kakehashi: the shared core of the distribution.

This package holds what every part uses: the command-line entry point, the wire contract between gateway and
cloud agent (:mod:`kakehashi.wire`), the identity rules (:mod:`kakehashi.identity`), TLS settings, structured
logging, and the Mosquitto broker runner. The parts themselves live in the top-level packages ``gateway``,
``cloud_agent``, ``device_registry`` and ``hw``.
"""

__version__ = "0.1.0"
