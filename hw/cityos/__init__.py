"""Stand-ins for the City OS side we cannot run here: an NGSI-LD context broker, a FIWARE Orion (NGSI v2) broker and
an OAuth 2.0 token endpoint, served over real HTTP(S) on loopback with faults injected from tests.

They check what a real broker would refuse (entity shapes, headers, tenants, tokens) and answer with the status codes
and error bodies of the specifications, so the agent's transport is tested against those shapes. They are not
brokers: no JSON-LD expansion, no subscriptions, no persistence, no query language beyond "by id" and "by type"
(see docs/northbound-transport.md).
"""

from hw.cityos.faults import Faults, RequestRecord
from hw.cityos.ngsi_ld import NgsiLdBroker
from hw.cityos.ngsi_v2 import OrionBroker
from hw.cityos.oauth import TokenAuthority
from hw.cityos.server import StandInServer

__all__ = ["Faults", "NgsiLdBroker", "OrionBroker", "RequestRecord", "StandInServer", "TokenAuthority"]
