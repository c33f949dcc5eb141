"""``Client``: the service's calls for the payment and generation services, with safe retries.

Every call is safe to repeat: a write carries an idempotency key (made here when the
caller gives none) that stays the same on every retry of the call, a settlement is
idempotent by nature, and reads change nothing. So the client retries, with
exponential backoff and full jitter, what may pass on a second try: no answer at all
(a refused or dropped connection, a timeout), a ``503`` (``database_unavailable``,
``balance_busy``, ...) or a gateway's ``502``/``504``, and ``409
idempotency_key_in_use``; it waits at least the ``Retry-After`` the service asks
for. It never retries any other ``4xx``: those are answers, raised as the typed
exceptions of ``errors``.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import httpx

from . import writes
from ._version import __version__
from .errors import ProblemError, ServiceUnreachable, TransactionsError, problem_from_response
from .models import Balance, BatchResult, Settlement, Transaction, TransactionStatus, TransactionType, User
from .writes import Amount, UserId, Write

__all__ = ["Client", "MAX_BATCH_ITEMS"]

MAX_BATCH_ITEMS = 100  # the service's bound on one batch (openapi.yaml, Batch)
MAX_PAGE_SIZE = 100
_RETRIED_STATUSES = frozenset({502, 503, 504})
_RETRIED_CODES = frozenset({"idempotency_key_in_use"})
# No answer, so perhaps not applied: safe to send again with the same key. A malformed URL or request is not.
_RETRIED_FAILURES = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, httpx.ProxyError)

# How the client waits between attempts; a test replaces it to wait no time.
_sleep: Callable[[float], None] = time.sleep


def _segment(identifier: UserId) -> str:
    """An id as one path segment, whatever it holds."""
    return quote(str(identifier), safe="")


class Client:
    """The transactions service, reached at ``base_url`` with a service's API key (``tsk_...``).

    ``timeout``: seconds per attempt (or an ``httpx.Timeout``). ``retries``: attempts after
    the first, for what may pass on a second try. ``backoff``: the first retry's delay
    ceiling in seconds, doubled each retry up to ``max_backoff``; a ``Retry-After`` longer
    than ``max_backoff`` is not waited for (the problem is raised). ``transport`` or
    ``http_client``: an ``httpx`` transport or client of the caller's (a client passed in
    is not closed by this one).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = 10.0,
        retries: int = 3,
        backoff: float = 0.25,
        max_backoff: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        if transport is not None and http_client is not None:
            raise TypeError("give a transport or an http_client, not both")
        if retries < 0:
            raise ValueError("retries is a number of retries, at least 0")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json, application/problem+json",
            "User-Agent": f"transactions-client/{__version__}",
        }
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(transport=transport,
                                                                                timeout=self._timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # Writes

    def record_purchase(self, user_id: UserId, credits: int, amount: Amount, description: str, *,
                        status: TransactionStatus = "completed", idempotency_key: str | None = None,
                        metadata: Mapping[str, str] | None = None, reference: str | None = None,
                        **lot_terms: Any) -> Transaction:
        """A purchase of ``credits`` for ``amount`` dollars; ``status="pending"`` until the payment settles.

        ``lot_terms``: ``expires_at`` (an aware datetime), ``expires_in`` (seconds), ``priority`` (0-100).
        Give the payment provider's event id as ``idempotency_key`` so that a redelivered webhook replays.
        """
        return self.create(writes.purchase(user_id, credits, amount, description, status=status,
                                            idempotency_key=idempotency_key, metadata=metadata,
                                            reference=reference, **lot_terms))

    def grant(self, user_id: UserId, credits: int, description: str, *,
              category: Literal["promotional", "paid"] = "promotional", idempotency_key: str | None = None,
              metadata: Mapping[str, str] | None = None, reference: str | None = None,
              **lot_terms: Any) -> Transaction:
        """Give ``credits`` free (needs ``credits:grant``): a welcome bonus, a goodwill gesture.

        ``lot_terms`` as ``record_purchase``'s; a promotional lot is spent before paid ones.
        """
        return self.create(writes.grant(user_id, credits, description, category=category,
                                         idempotency_key=idempotency_key, metadata=metadata, reference=reference,
                                         **lot_terms))

    def reserve(self, user_id: UserId, credits: int, description: str, *, amount: Amount = "0",
                hold_expires_in: int | None = None, idempotency_key: str | None = None,
                metadata: Mapping[str, str] | None = None, reference: str | None = None) -> Transaction:
        """Hold ``credits`` (a positive count) for a job: a pending usage, to ``settle`` when it ends."""
        return self.create(writes.reserve(user_id, credits, description, amount=amount,
                                           hold_expires_in=hold_expires_in, idempotency_key=idempotency_key,
                                           metadata=metadata, reference=reference))

    def spend(self, user_id: UserId, credits: int, description: str, *, amount: Amount = "0",
              idempotency_key: str | None = None, metadata: Mapping[str, str] | None = None,
              reference: str | None = None) -> Transaction:
        """Spend ``credits`` (a positive count) at once: a completed usage."""
        return self.create(writes.spend(user_id, credits, description, amount=amount,
                                         idempotency_key=idempotency_key, metadata=metadata, reference=reference))

    def refund(self, purchase_id: UserId, credits: int, amount: Amount, description: str = "Refund", *,
               user_id: UserId | None = None, idempotency_key: str | None = None,
               metadata: Mapping[str, str] | None = None, reference: str | None = None) -> Transaction:
        """Give back ``credits`` and ``amount`` dollars of a completed purchase.

        Without ``user_id`` the purchase is read first to learn its user (which needs ``transactions:read``).
        """
        user_id = user_id if user_id is not None else self.get(purchase_id).user_id
        return self.create(writes.refund(user_id, purchase_id, credits, amount, description,
                                          idempotency_key=idempotency_key, metadata=metadata, reference=reference))

    def reverse(self, usage_id: UserId, credits: int, description: str = "Reversal", *,
                user_id: UserId | None = None, idempotency_key: str | None = None,
                metadata: Mapping[str, str] | None = None, reference: str | None = None) -> Transaction:
        """Give back ``credits`` of a completed usage (a generation that failed after charging).

        Without ``user_id`` the usage is read first to learn its user (which needs ``transactions:read``).
        """
        user_id = user_id if user_id is not None else self.get(usage_id).user_id
        return self.create(writes.reverse(user_id, usage_id, credits, description,
                                           idempotency_key=idempotency_key, metadata=metadata, reference=reference))

    def create(self, write: Write | Mapping[str, Any]) -> Transaction:
        """Any single write: a ``writes`` builder's, or a whole ``POST /api/transactions`` body with its
        ``idempotency_key`` (one is made when it has none), sent as the typed calls send theirs."""
        body: dict[str, Any] = {"idempotency_key": writes.new_idempotency_key(), **write}
        key = str(body.pop("idempotency_key"))
        response = self._request("POST", "/api/transactions", json=body, headers={"Idempotency-Key": key})
        return Transaction.from_json(response.json(), replayed=response.headers.get("Idempotent-Replayed") == "true")

    def settle(self, transaction_id: UserId, status: Settlement) -> Transaction:
        """Complete or fail a pending purchase or usage; asking again for the same status changes nothing."""
        if status not in ("completed", "failed"):
            raise ValueError(f"a settlement is 'completed' or 'failed', not {status!r}")
        response = self._request("PATCH", f"/api/transactions/{_segment(transaction_id)}", json={"status": status})
        return Transaction.from_json(response.json())

    def record_batch(self, items: Iterable[Write | Mapping[str, Any]], *, atomic: bool = False) -> list[BatchResult]:
        """Write any number of items, in order, in batches of 100; one result per item, in item order.

        With ``atomic``, at most 100 items, written all or none: the first refused item's problem is
        raised (its ``index`` among the problem's members) and nothing is written.

        Each item is a whole write (``writes.spend(...)`` and its siblings build them, with a key
        each); an item without an ``idempotency_key`` gets one. Each result answers what a single
        write of the item would have; a refusal is that item's alone. When a batch fails as a whole
        (a malformed item, or the service unreachable after the retries), its error is raised with
        ``batch_offset`` (the index of its first item) and ``batch_results`` (the results of the
        batches before it, which were applied); sending the same items again is safe.
        """
        prepared = [{"idempotency_key": writes.new_idempotency_key(), **item} for item in items]
        if atomic and len(prepared) > MAX_BATCH_ITEMS:
            raise ValueError(f"An atomic batch holds at most {MAX_BATCH_ITEMS} items, not {len(prepared)}.")
        results: list[BatchResult] = []
        for offset in range(0, len(prepared), MAX_BATCH_ITEMS):
            body: dict[str, Any] = {"items": prepared[offset:offset + MAX_BATCH_ITEMS]}
            if atomic:
                body["atomic"] = True
            try:
                response = self._request("POST", "/api/transactions/batch", json=body)
            except TransactionsError as failed:
                failed.batch_offset, failed.batch_results = offset, list(results)
                raise
            results.extend(BatchResult.from_json(result, offset=offset) for result in response.json()["results"])
        return results

    def register_user(self, user_id: UserId, *, low_balance_threshold: int | None = None) -> User:
        """Make the user known to the ledger (needed before its first write); a known user is left as it is."""
        body = None if low_balance_threshold is None else {"low_balance_threshold": low_balance_threshold}
        response = self._request("PUT", f"/api/users/{_segment(user_id)}", json=body)
        return User.from_json(response.json(), created=response.status_code == 201)

    # Reads (need the transactions:read scope)

    def get(self, transaction_id: UserId) -> Transaction:
        """One transaction, read from the primary (so a write just made is there)."""
        return Transaction.from_json(self._request("GET", f"/api/transactions/{_segment(transaction_id)}").json())

    def balance(self, user_id: UserId) -> Balance:
        """The user's credits now: balance, held, available (paid and promotional) and the next expiry."""
        return Balance.from_json(self._request("GET", "/api/balance", params={"user_id": str(user_id)}).json())

    def history(self, user_id: UserId, *, type: TransactionType | None = None, status: TransactionStatus | None = None,
                reference: str | None = None, metadata: Mapping[str, str] | None = None,
                created_after: datetime | None = None, created_before: datetime | None = None,
                page_size: int = MAX_PAGE_SIZE) -> Iterator[Transaction]:
        """Every transaction of the user matching the filters, newest first, fetched a page at a time."""
        params: dict[str, str] = {"user_id": str(user_id), "limit": str(page_size)}
        optional = {"type": type, "status": status, "reference": reference,
                    "created_after": created_after.isoformat() if created_after else None,
                    "created_before": created_before.isoformat() if created_before else None}
        params.update({name: value for name, value in optional.items() if value is not None})
        params.update({f"metadata[{key}]": value for key, value in (metadata or {}).items()})
        while True:
            page = self._request("GET", "/api/transactions", params=params).json()
            yield from (Transaction.from_json(row) for row in page["data"])
            if not page["has_more"]:
                return
            params["cursor"] = page["next_cursor"]

    # The wire

    def _request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, str] | None = None,
                 headers: Mapping[str, str] | None = None) -> httpx.Response:
        """One call: the same request (and so the same idempotency key) on every attempt, until it is answered."""
        # One request id for every attempt, so the service's logs show the retries of one call together.
        request_headers = {**self._headers, "X-Request-ID": uuid.uuid4().hex, **(headers or {})}
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, self.base_url + path, json=json, params=params,
                                              headers=request_headers, timeout=self._timeout)
            except _RETRIED_FAILURES as failure:
                if attempt == self.retries:
                    message = f"{method} {path}: no answer in {attempt + 1} attempts: {failure!r}"
                    raise ServiceUnreachable(message) from failure
                _sleep(self._delay(attempt, None))
                continue
            if response.is_success:
                return response
            problem = problem_from_response(response)
            delay = self._retry_delay(problem, attempt)
            if delay is None:
                raise problem
            _sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _retry_delay(self, problem: ProblemError, attempt: int) -> float | None:
        """How long to wait before retrying after this problem, or None to raise it."""
        retried = problem.status in _RETRIED_STATUSES or (problem.status == 409 and problem.code in _RETRIED_CODES)
        if not retried or attempt == self.retries:
            return None
        if problem.retry_after is not None and problem.retry_after > self.max_backoff:
            return None
        return self._delay(attempt, problem.retry_after)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter over an exponential ceiling, and never less than what the service asked for."""
        jittered = random.uniform(0, min(self.max_backoff, self.backoff * 2 ** attempt))
        return max(jittered, retry_after or 0.0)
