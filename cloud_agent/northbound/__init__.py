"""The northbound side: registry data as FIWARE Smart Data Models entities for the City OS (NGSI-LD and NGSI v2),
pushed with a durable queue, and served to the City OS as a read-only NGSI-LD context source."""
