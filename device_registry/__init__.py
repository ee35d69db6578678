"""The device registry: the device model (gateways, devices, certificates, lifecycle, twin, commands, readings,
audit) and its storage, SQLite by default and PostgreSQL for scale, with one schema and migrations."""
