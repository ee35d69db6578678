"""The hardware catalogue: device profiles as data (Modbus register maps, BLE beacon formats, LPWA frame formats,
node pin maps) and host simulators of that hardware. Depends on nothing else in the project."""
