"""The gateway: the Raspberry Pi service that reads meters, gauges, watch tags and nodes, buffers every reading
durably in its outbox, and forwards it over mutual-TLS MQTT to the cloud broker; plus the field technician's commands
(provision, self-test, node flash)."""
