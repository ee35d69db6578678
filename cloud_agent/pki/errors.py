"""The one error type of the fleet PKI: what went wrong with a CA operation or a certificate check."""

from __future__ import annotations

from kakehashi.errors import KakehashiError


class PkiError(KakehashiError):
    """A CA operation was refused or a certificate failed verification.

    ``reason`` says which check failed (``pki`` by default; verification uses ``chain``, ``expired``,
    ``revoked``, ``crl``, ``crl_stale`` and ``identity``); the message says what is wrong and how to fix it,
    in one line.
    """

    reason = "pki"
