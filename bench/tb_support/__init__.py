"""Helpers of ``bench/vs_thingsboard.py``: the shared Mosquitto, the Modbus simulator process, per-poll sequence
accounting, and one runner per gateway (ours and thingsboard-gateway in its own venv)."""
