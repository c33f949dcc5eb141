"""The service's problems (RFC 9457 ``application/problem+json``) as typed exceptions.

Every error answer of the service is a problem with a stable ``code``; each code
the contract (``openapi.yaml``, its Errors section) documents has a class here,
so a caller catches ``InsufficientCredits`` instead of comparing strings. A code
the client does not know yet still arrives as the class of its HTTP status.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from decimal import Decimal
from email.utils import parsedate_to_datetime
from datetime import datetime, timezone
from typing import Any

import httpx

# The members RFC 9457 and the service's Problem schema define; anything else is an extension member.
_STANDARD_MEMBERS = frozenset({"type", "title", "status", "detail", "code", "instance", "errors"})


class TransactionsError(Exception):
    """Anything the client raises for a call that did not succeed."""

    # Set by ``Client.record_batch`` when a chunk failed: the index of the chunk's first item, and the
    # results of the chunks before it, which were applied.
    batch_offset: int | None = None
    batch_results: list[Any] | None = None


class ServiceUnreachable(TransactionsError):
    """No answer from the service (connection refused or dropped, a timeout), after the client's retries."""


class ProblemError(TransactionsError):
    """A problem the service answered: its ``code`` is what to branch on, ``detail`` is for humans."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str = "",
        type: str = "about:blank",
        instance: str | None = None,
        errors: Mapping[str, Any] | None = None,
        extensions: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title
        self.type = type
        self.instance = instance
        self.errors: dict[str, Any] | None = dict(errors) if errors is not None else None
        # Members beyond the standard ones (RFC 9457 section 3.2), e.g. ``remaining`` or ``transaction_id``.
        self.extensions: dict[str, Any] = dict(extensions or {})
        self.retry_after = retry_after

    @property
    def request_id(self) -> str | None:
        """The service's id for the request (quote it to support), from ``instance``."""
        prefix = "urn:request:"
        return self.instance[len(prefix):] if self.instance and self.instance.startswith(prefix) else None


class InvalidRequest(ProblemError):
    """The request is not one the service reads (bad JSON, a bad cursor, too large, ...): a bug in the caller."""


class ValidationFailed(InvalidRequest):
    """``validation_error``: ``errors`` maps each offending field to its messages."""


class AuthenticationFailed(ProblemError):
    """``missing_token`` or ``invalid_token``: the API key was not sent or was refused."""


class PermissionDenied(ProblemError):
    """``insufficient_scope`` (the API key lacks the scope) or ``forbidden``."""


class NotFound(ProblemError):
    """``not_found``: no such transaction (or route)."""


class RateLimited(ProblemError):
    """``rate_limited``: wait ``retry_after`` seconds. The client does not retry it on its own."""


class LedgerRefusal(ProblemError):
    """The ledger's rules refused the write; nothing was recorded."""


class InsufficientCredits(LedgerRefusal):
    """``insufficient_credits``: the usage needs more credits than the user has available."""


class RefundExceedsRemaining(LedgerRefusal):
    """``refund_exceeds_remaining``: more credits than are left on the purchase's lot (``remaining``)."""

    @property
    def remaining(self) -> int | None:
        return self.extensions.get("remaining")


class RefundExceedsAmount(LedgerRefusal):
    """``refund_exceeds_amount``: more dollars than the purchase has left to refund (``remaining_amount``)."""

    @property
    def remaining_amount(self) -> Decimal | None:
        value = self.extensions.get("remaining_amount")
        return None if value is None else Decimal(value)


class ReversalExceedsUsage(LedgerRefusal):
    """``reversal_exceeds_usage``: more credits than the usage has left to give back (``remaining``)."""

    @property
    def remaining(self) -> int | None:
        return self.extensions.get("remaining")


class DuplicateReference(LedgerRefusal):
    """``duplicate_reference``: the user has an entry of this type with this reference (``transaction_id``)."""

    @property
    def transaction_id(self) -> uuid.UUID | None:
        value = self.extensions.get("transaction_id")
        return None if value is None else uuid.UUID(value)


class UnknownUser(LedgerRefusal):
    """``unknown_user``: the user is not registered (``Client.register_user``)."""


class UnknownTransaction(LedgerRefusal):
    """``unknown_transaction``: the refund or reversal names no transaction of this user."""


class NotRefundable(LedgerRefusal):
    """``not_refundable``: the refund names a transaction that is not a completed purchase."""


class NotReversible(LedgerRefusal):
    """``not_reversible``: the reversal names a transaction that is not a completed usage."""


class InvalidTransition(LedgerRefusal):
    """``invalid_transition``: the transaction is settled already, with another status."""


class HoldExpired(LedgerRefusal):
    """``hold_expired``: the hold lapsed and its credits were released; charge with a new usage."""


class IdempotencyKeyInUse(ProblemError):
    """``idempotency_key_in_use``: a request with the same key is still running (retried by the client)."""


class IdempotencyKeyReused(ProblemError):
    """``idempotency_key_reused``: the key was used before for a different request."""


class ExportTooLarge(ProblemError):
    """``export_too_large``: the export would hold more than ``limit`` rows."""

    @property
    def limit(self) -> int | None:
        return self.extensions.get("limit")


class ServerError(ProblemError):
    """``internal_error`` and any other 5xx: a fault in the service, logged there."""


class ServiceUnavailable(ServerError):
    """``database_unavailable``, ``balance_busy``, ``identity_provider_unavailable``: nothing was written.

    Retried by the client; raised once its retries are spent.
    """


_BY_CODE: dict[str, type[ProblemError]] = {
    "malformed_json": InvalidRequest,
    "invalid_cursor": InvalidRequest,
    "bad_request": InvalidRequest,
    "method_not_allowed": InvalidRequest,
    "payload_too_large": InvalidRequest,
    "unsupported_media_type": InvalidRequest,
    "uri_too_long": InvalidRequest,
    "request_header_fields_too_large": InvalidRequest,
    "validation_error": ValidationFailed,
    "missing_token": AuthenticationFailed,
    "invalid_token": AuthenticationFailed,
    "unauthorized": AuthenticationFailed,
    "insufficient_scope": PermissionDenied,
    "forbidden": PermissionDenied,
    "not_found": NotFound,
    "rate_limited": RateLimited,
    "too_many_requests": RateLimited,
    "insufficient_credits": InsufficientCredits,
    "refund_exceeds_remaining": RefundExceedsRemaining,
    "refund_exceeds_amount": RefundExceedsAmount,
    "reversal_exceeds_usage": ReversalExceedsUsage,
    "duplicate_reference": DuplicateReference,
    "unknown_user": UnknownUser,
    "unknown_transaction": UnknownTransaction,
    "not_refundable": NotRefundable,
    "not_reversible": NotReversible,
    "invalid_transition": InvalidTransition,
    "hold_expired": HoldExpired,
    "idempotency_key_in_use": IdempotencyKeyInUse,
    "idempotency_key_reused": IdempotencyKeyReused,
    "export_too_large": ExportTooLarge,
    "internal_error": ServerError,
    "database_unavailable": ServiceUnavailable,
    "balance_busy": ServiceUnavailable,
    "identity_provider_unavailable": ServiceUnavailable,
    "service_unavailable": ServiceUnavailable,
}

_BY_STATUS: dict[int, type[ProblemError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def problem_class(status: int, code: str) -> type[ProblemError]:
    """The exception class for a problem: by its code, else by its HTTP status."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else ProblemError


def problem_from_body(body: Mapping[str, Any], *, status: int | None = None,
                      retry_after: float | None = None) -> ProblemError:
    """A problem object (a response's body, or one batch item's ``problem``) as its exception."""
    status = int(body.get("status") or status or 500)
    code = str(body.get("code") or "http_error")
    extensions = {name: value for name, value in body.items() if name not in _STANDARD_MEMBERS}
    return problem_class(status, code)(
        status,
        code,
        str(body.get("detail") or ""),
        title=str(body.get("title") or ""),
        type=str(body.get("type") or "about:blank"),
        instance=body.get("instance"),
        errors=body.get("errors"),
        extensions=extensions,
        retry_after=retry_after,
    )


def problem_from_response(response: httpx.Response) -> ProblemError:
    """An error response as its exception; one that is not a problem (a proxy's page) by its status alone."""
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    body: Any = None
    if "json" in response.headers.get("Content-Type", ""):
        try:
            body = response.json()
        except ValueError:
            body = None
    if isinstance(body, dict) and "code" in body:
        return problem_from_body(body, status=response.status_code, retry_after=retry_after)
    status = response.status_code
    detail = response.text[:200] if response.text else response.reason_phrase
    return problem_class(status, "http_error")(status, "http_error", detail, title=response.reason_phrase,
                                               retry_after=retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delay-seconds or an HTTP-date (RFC 9110 section 10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
