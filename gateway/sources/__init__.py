"""Source plug-ins: each reads one kind of hardware (Modbus, BLE, LPWA, edge nodes) and submits normalised
readings to the gateway's sink. They share the small interface in :mod:`gateway.sources.base`."""
