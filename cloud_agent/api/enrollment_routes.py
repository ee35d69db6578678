"""Gateway enrollment over HTTPS: ``POST /v1/enroll`` (one-time token + CSR) and ``POST /v1/enroll/renew``.

Neither route takes a bearer token: the enrollment token, or the current certificate with a proof of possession of
its key, is the authentication. The logic is :mod:`cloud_agent.enrollment`; refusals are its
:class:`~cloud_agent.enrollment.EnrollmentError` subclasses, each with its ``http_status``. An agent without a CA
answers 503 ``enrollment_disabled``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from cloud_agent import enrollment
from cloud_agent.runtime import AgentRuntime

MAX_PEM: Final = 16 * 1024
MAX_TOKEN: Final = 256
GatewayId = Annotated[str, Field(min_length=1, max_length=63, examples=["gw-kakogawa-0012"])]
Pem = Annotated[str, Field(min_length=1, max_length=MAX_PEM)]
LOCAL_BROKER_CSR: Final = (
    "optional PEM CSR for the local broker's TLS server certificate: a second ECDSA P-256 key made on the Pi, "
    "subject CN = gateway id; the certificate names <gateway id>.local"
)


class EnrollRequest(BaseModel):
    """A gateway's first certificate: its one-time enrollment token and the CSR its Pi made."""

    model_config = ConfigDict(extra="forbid")

    gateway_id: GatewayId
    token: Annotated[str, Field(min_length=1, max_length=MAX_TOKEN, description="the one-time enrollment token")]
    csr_pem: Annotated[Pem, Field(description="PEM CSR: ECDSA P-256 key made on the Pi, subject CN = gateway id")]
    local_broker_csr_pem: Annotated[Pem | None, Field(description=LOCAL_BROKER_CSR)] = None


class RenewRequest(BaseModel):
    """A new certificate over the current one, before it expires."""

    model_config = ConfigDict(extra="forbid")

    gateway_id: GatewayId
    csr_pem: Annotated[Pem, Field(description="PEM CSR for a NEW ECDSA P-256 key, subject CN = gateway id")]
    certificate_pem: Annotated[Pem, Field(description="the gateway's current certificate (PEM)")]
    signature: Annotated[
        str,
        Field(
            min_length=1,
            max_length=512,
            description="base64 of the DER ECDSA-SHA256 signature, by the current key, over the CSR's DER bytes",
        ),
    ]
    force: Annotated[bool, Field(description="renew even before the renewal window opens")] = False
    local_broker_csr_pem: Annotated[Pem | None, Field(description=LOCAL_BROKER_CSR)] = None


class CertificateBundle(BaseModel):
    """What the gateway installs next to its key."""

    gateway_id: str
    certificate_pem: str
    chain_pem: str = Field(description="the issuing intermediate CA that signed the certificate")
    trust_bundle_pem: str = Field(description="issuing + root CA: trust these for the cloud broker and the agent")
    serial: str = Field(description="certificate serial, lowercase hex")
    not_before: datetime
    not_after: datetime
    renewed: bool = Field(description="an earlier certificate stays valid beside this one until it expires")
    local_broker_certificate_pem: str | None = Field(
        default=None, description="the local broker's server certificate (when local_broker_csr_pem was sent)"
    )
    local_broker_serial: str | None = None

    @classmethod
    def of(cls, result: enrollment.EnrollmentResult) -> CertificateBundle:
        return cls(
            gateway_id=result.gateway_id,
            certificate_pem=result.certificate_pem,
            chain_pem=result.chain_pem,
            trust_bundle_pem=result.trust_bundle_pem,
            serial=result.serial,
            not_before=result.not_before,
            not_after=result.not_after,
            renewed=result.renewed,
            local_broker_certificate_pem=result.local_broker_certificate_pem,
            local_broker_serial=result.local_broker_serial,
        )


_REFUSALS: Final[dict[int | str, dict[str, Any]]] = {
    400: {"description": "malformed request or CSR (csr_invalid, csr_signature, csr_key_type, csr_subject, ...)"},
    409: {"description": "the gateway's state does not allow it (gateway_decommissioned, renewal_too_early, ...)"},
    503: {"description": "enrollment_disabled (no CA on this agent), or the CA cannot be used right now"},
}


def router(runtime: AgentRuntime) -> APIRouter:
    """The enrollment routes of ``runtime``'s agent."""
    routes = APIRouter(tags=["enrollment"])

    @routes.post(
        "/v1/enroll",
        response_model=CertificateBundle,
        summary="Enroll a gateway with its one-time token and CSR",
        responses={**_REFUSALS, 401: {"description": "token_unknown, token_wrong_gateway, token_used, token_expired"}},
    )
    async def enroll_gateway(body: EnrollRequest) -> CertificateBundle:
        result = await enrollment.enroll(
            runtime.registry,
            runtime.authority,
            gateway_id=body.gateway_id,
            token=body.token,
            csr_pem=body.csr_pem,
            local_broker_csr_pem=body.local_broker_csr_pem,
        )
        return CertificateBundle.of(result)

    @routes.post(
        "/v1/enroll/renew",
        response_model=CertificateBundle,
        summary="Renew a gateway's certificate over its current one (old and new overlap)",
        responses={
            **_REFUSALS,
            401: {"description": "certificate_expired, certificate_revoked, certificate_untrusted, signature_invalid"},
            403: {"description": "certificate_wrong_gateway, certificate_wrong_role"},
        },
    )
    async def renew_certificate(body: RenewRequest) -> CertificateBundle:
        result = await enrollment.renew(
            runtime.registry,
            runtime.authority,
            gateway_id=body.gateway_id,
            csr_pem=body.csr_pem,
            certificate_pem=body.certificate_pem,
            signature=body.signature,
            force=body.force,
            local_broker_csr_pem=body.local_broker_csr_pem,
        )
        return CertificateBundle.of(result)

    return routes
