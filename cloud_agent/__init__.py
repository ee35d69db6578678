"""The cloud agent: fleet PKI and enrollment, MQTT ingest and egress, device lifecycle, twin and actuation,
monitoring, the northbound City OS adapters (NGSI v2 / NGSI-LD), and the HTTPS API."""
