"""Modbus hardware catalogue: device profiles as TOML data (``profiles/``), their typed model and loader, the pure
register codec, and pymodbus-based simulators of the meters and gauges the profiles describe."""
