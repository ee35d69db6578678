"""The fleet PKI: an offline-capable root CA, an online issuing intermediate, certificates issued from CSRs
for gateways, nodes and services, revocation with CRLs, and chain verification with revocation checking."""
