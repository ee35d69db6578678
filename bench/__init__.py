"""Benchmarks: each module has ``run(...) -> dict`` and is reached as ``kakehashi bench <name> --json``.

They run real components on loopback (Mosquitto, SQLite, the gateway as its own process), are bounded in time, and
stop by themselves. Results and the exact commands are recorded in docs/benchmarks.md.
"""
