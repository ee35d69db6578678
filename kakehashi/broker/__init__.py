"""The Mosquitto broker as the fleet runs it: generated TLS/ACL configuration, a supervised child process, and
live reload of the CRL and ACL when the PKI changes."""
