"""The Python client (clients/python) against the real service under gunicorn: each call, its retries, its errors."""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal

import httpx
import pytest
import yaml
from sqlalchemy import func, select

import transactions_client
from transactions_client import (
    Client,
    DuplicateReference,
    InsufficientCredits,
    InvalidTransition,
    NotFound,
    PermissionDenied,
    ProblemError,
    RateLimited,
    RefundExceedsRemaining,
    ServiceUnavailable,
    ServiceUnreachable,
    UnknownUser,
    ValidationFailed,
    writes,
)
from transactions_client import client as client_module
from transactions_service.ledger.models import UserTransaction

from .conftest import REPO_ROOT

PAYMENT_SCOPES = ("purchases:write", "users:write", "transactions:read")
GENERATION_SCOPES = ("usage:write", "transactions:read")


@pytest.fixture
def payment(live_server, service_token):
    with Client(live_server, service_token(*PAYMENT_SCOPES, name="payment-service")) as ledger:
        yield ledger


@pytest.fixture
def generation(live_server, service_token):
    with Client(live_server, service_token(*GENERATION_SCOPES, name="generation-service")) as ledger:
        yield ledger


@pytest.fixture
def waits(monkeypatch):
    """The client's waits between attempts, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(client_module, "_sleep", recorded.append)
    return recorded


def funded_user(payment, credits=1000):
    user_id = uuid.uuid4()
    payment.register_user(user_id)
    payment.record_purchase(user_id, credits, "10.00", "funding")
    return user_id


def rows(db_session, user_id, kind=None):
    query = select(func.count()).select_from(UserTransaction).where(UserTransaction.user_id == user_id)
    if kind is not None:
        query = query.where(UserTransaction.type == kind)
    return db_session.scalar(query)


def problem(status, code, **members):
    body = {"type": f"https://transactions.example/problems/{code.replace('_', '-')}", "title": code, "status": status,
            "detail": f"a {code}", "code": code, **members}
    return body


class Scripted(httpx.BaseTransport):
    """Forwards each request to the live service, except that attempt ``i`` meets ``script[i]`` first:

    a problem body (answered instead of forwarding), ``"refused"`` (no connection), ``"lost"`` (forwarded and
    applied, but the answer never arrives: a timeout), or ``None`` (forwarded).
    """

    def __init__(self, *script, retry_after=None):
        self.script = list(script)
        self.retry_after = retry_after
        self.requests: list[httpx.Request] = []
        self.service = httpx.HTTPTransport()

    def handle_request(self, request):
        self.requests.append(request)
        step = self.script.pop(0) if self.script else None
        if step == "refused":
            raise httpx.ConnectError("connection refused", request=request)
        if isinstance(step, dict):
            headers = {"Content-Type": "application/problem+json"}
            if self.retry_after is not None:
                headers["Retry-After"] = str(self.retry_after)
            return httpx.Response(step["status"], content=json.dumps(step).encode(), headers=headers, request=request)
        response = self.service.handle_request(request)
        response.read()
        if step == "lost":
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    def close(self):
        self.service.close()

    def bodies(self):
        return [json.loads(request.content) for request in self.requests]


def scripted_client(live_server, service_token, transport, **options):
    key = service_token(*PAYMENT_SCOPES, *GENERATION_SCOPES, name="scripted-service")
    return Client(live_server, key, transport=transport, **options)


def offline_client(transport, **options):
    """A client whose every answer comes from ``transport`` (which must not forward): no service needed."""
    return Client("http://transactions.test", "tsk_offline", transport=transport, **options)


# --- each call, against the live service --------------------------------------------------------------------------


@pytest.mark.slow
def test_register_user_says_whether_it_was_new(payment):
    user_id = uuid.uuid4()
    first, again = payment.register_user(user_id), payment.register_user(user_id)
    assert (first.id, first.created, again.created) == (user_id, True, False)


@pytest.mark.slow
def test_a_completed_purchase_adds_its_credits_and_comes_back_typed(payment):
    user_id = uuid.uuid4()
    payment.register_user(user_id)
    purchase = payment.record_purchase(user_id, 500, Decimal("9.99"), "Starter pack", metadata={"plan": "starter"},
                                       reference="pi_1")
    assert (purchase.type, purchase.status, purchase.credits, purchase.amount) == ("purchase", "completed", 500,
                                                                                    Decimal("9.99"))
    assert (purchase.user_id, purchase.metadata, purchase.reference) == (user_id, {"plan": "starter"}, "pi_1")
    assert not purchase.replayed
    assert purchase.created_at.tzinfo is not None
    balance = payment.balance(user_id)
    assert (balance.balance, balance.held, balance.available, balance.paid) == (500, 0, 500, 500)
    assert balance.next_expiry is None


@pytest.mark.slow
def test_a_pending_purchase_adds_nothing_until_it_is_settled_completed(payment):
    user_id = uuid.uuid4()
    payment.register_user(user_id)
    pending = payment.record_purchase(user_id, 1200, "19.99", "Creator pack", status="pending")
    assert payment.balance(user_id).balance == 0
    settled = payment.settle(pending.id, "completed")
    assert (settled.id, settled.status) == (pending.id, "completed")
    assert payment.settle(pending.id, "completed").status == "completed"  # a redelivered webhook changes nothing
    assert payment.balance(user_id).balance == 1200


@pytest.mark.slow
def test_lot_terms_pass_through_to_the_purchase_lot(payment):
    user_id = uuid.uuid4()
    payment.register_user(user_id)
    payment.record_purchase(user_id, 100, "1.00", "Expiring pack", expires_in=3600, priority=10)
    expiry = payment.balance(user_id).next_expiry
    assert expiry is not None and expiry.credits == 100


@pytest.mark.slow
def test_a_grant_makes_a_promotional_lot_spent_before_paid_credits(payment, live_server, service_token):
    growth = Client(live_server, service_token("credits:grant", "transactions:read", name="growth-service"))
    user_id = uuid.uuid4()
    payment.register_user(user_id)
    payment.record_purchase(user_id, 100, "1.00", "Starter pack")
    key = f"bonus-{user_id}"
    granted = growth.grant(user_id, 30, "Welcome bonus", expires_in=3600, priority=10, idempotency_key=key)
    assert (granted.type, granted.credits, granted.status) == ("grant", 30, "completed")
    again = growth.grant(user_id, 30, "Welcome bonus", expires_in=3600, priority=10, idempotency_key=key)
    assert (again.id, again.replayed) == (granted.id, True)
    balance = growth.balance(user_id)
    assert (balance.balance, balance.paid, balance.promotional) == (130, 100, 30)
    with pytest.raises(PermissionDenied):
        payment.grant(user_id, 5, "Not the payment service's to give")


def test_unknown_lot_terms_are_refused_before_any_request():
    transport = Scripted()
    with offline_client(transport) as ledger, pytest.raises(TypeError, match="colour"):
        ledger.record_purchase(uuid.uuid4(), 100, "1.00", "pack", colour="red")
    assert transport.requests == []


@pytest.mark.slow
def test_a_reservation_holds_credits_positive_in_the_call_and_negative_on_the_wire(payment, generation):
    user_id = funded_user(payment, 100)
    hold = generation.reserve(user_id, 20, "Image generation", hold_expires_in=600, metadata={"model": "img-2"})
    assert (hold.type, hold.status, hold.credits, hold.hold_expires_at is not None) == ("usage", "pending", -20, True)
    balance = generation.balance(user_id)
    assert (balance.balance, balance.held, balance.available) == (100, 20, 80)
    generation.settle(hold.id, "completed")
    balance = generation.balance(user_id)
    assert (balance.balance, balance.held, balance.available) == (80, 0, 80)


@pytest.mark.slow
def test_a_failed_reservation_releases_its_credits(payment, generation):
    user_id = funded_user(payment, 100)
    hold = generation.reserve(user_id, 30, "Video generation")
    assert generation.settle(hold.id, "failed").status == "failed"
    assert generation.balance(user_id).available == 100


@pytest.mark.slow
def test_a_spend_takes_credits_at_once(payment, generation):
    user_id = funded_user(payment, 100)
    usage = generation.spend(user_id, 8, "Text generation", reference="gen_1")
    assert (usage.status, usage.credits, usage.amount, usage.reference) == ("completed", -8, Decimal("0.00"), "gen_1")
    assert generation.balance(user_id).available == 92


@pytest.mark.slow
def test_a_refund_gives_back_part_of_a_purchase_with_or_without_its_user(payment):
    user_id = uuid.uuid4()
    payment.register_user(user_id)
    purchase = payment.record_purchase(user_id, 500, "9.99", "Starter pack")
    refund = payment.refund(purchase.id, 200, "4.00", "Partial refund")  # its user read from the purchase
    assert (refund.type, refund.credits, refund.amount) == ("refund", -200, Decimal("4.00"))
    assert refund.refunds == purchase.id
    payment.refund(purchase.id, 100, "2.00", user_id=user_id)
    assert payment.balance(user_id).balance == 200
    with pytest.raises(RefundExceedsRemaining) as refused:
        payment.refund(purchase.id, 300, "1.00", user_id=user_id)
    assert (refused.value.code, refused.value.remaining) == ("refund_exceeds_remaining", 200)


@pytest.mark.slow
def test_a_reversal_gives_back_a_usage(payment, generation):
    user_id = funded_user(payment, 100)
    usage = generation.spend(user_id, 40, "Generation that failed after charging")
    reversal = generation.reverse(usage.id, 40)
    assert (reversal.type, reversal.credits, reversal.reverses, reversal.description) == ("reversal", 40, usage.id,
                                                                                         "Reversal")
    assert generation.balance(user_id).available == 100


@pytest.mark.slow
def test_a_write_given_the_same_key_again_replays_its_first_answer(payment, db_session):
    user_id = uuid.uuid4()
    payment.register_user(user_id)
    first = payment.record_purchase(user_id, 500, "9.99", "Starter pack", idempotency_key="evt_1")
    again = payment.record_purchase(user_id, 500, "9.99", "Starter pack", idempotency_key="evt_1")
    assert (again.id, first.replayed, again.replayed) == (first.id, False, True)
    assert rows(db_session, user_id) == 1


@pytest.mark.slow
def test_writes_without_a_key_get_one_each(payment, generation, db_session):
    user_id = funded_user(payment, 100)
    first, second = generation.spend(user_id, 5, "Generation"), generation.spend(user_id, 5, "Generation")
    assert first.id != second.id and rows(db_session, user_id, "usage") == 2


@pytest.mark.slow
def test_history_iterates_every_page_newest_first(payment, generation, live_server, service_token):
    user_id = funded_user(payment, 100)
    spends = [generation.spend(user_id, 1, f"Generation {index}", metadata={"model": "a" if index % 2 else "b"})
              for index in range(24)]
    pages = Scripted()
    with scripted_client(live_server, service_token, pages) as ledger:
        history = list(ledger.history(user_id, page_size=10))
    assert len(pages.requests) == 3
    assert [transaction.id for transaction in history] == [usage.id for usage in reversed(spends)] + [history[-1].id]
    assert history[-1].type == "purchase"
    assert len(list(generation.history(user_id, type="usage", page_size=5))) == 24
    assert {t.metadata["model"] for t in generation.history(user_id, metadata={"model": "a"}, page_size=3)} == {"a"}
    assert len(list(generation.history(user_id, metadata={"model": "a"}, page_size=3))) == 12


@pytest.mark.slow
def test_the_history_of_a_user_without_entries_is_empty(generation):
    assert list(generation.history(uuid.uuid4())) == []


@pytest.mark.slow
def test_a_client_given_an_httpx_client_uses_it_and_leaves_it_open(live_server, service_token, payment):
    user_id = funded_user(payment, 10)
    with httpx.Client() as http:
        with Client(live_server, service_token(*GENERATION_SCOPES), http_client=http) as ledger:
            assert ledger.balance(user_id).available == 10
        assert not http.is_closed


# --- problems as typed exceptions ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_usage_beyond_the_available_credits_is_insufficient_credits(payment, generation, db_session):
    user_id = funded_user(payment, 10)
    with pytest.raises(InsufficientCredits) as refused:
        generation.spend(user_id, 11, "Generation")
    error = refused.value
    assert (error.code, error.status, isinstance(error, ProblemError)) == ("insufficient_credits", 409, True)
    assert error.detail and error.request_id and error.type.endswith("/insufficient-credits")
    assert rows(db_session, user_id, "usage") == 0


@pytest.mark.slow
def test_a_duplicate_reference_names_the_transaction_that_has_it(payment, generation):
    user_id = funded_user(payment, 100)
    first = generation.spend(user_id, 1, "Generation", reference="gen_8f2c")
    with pytest.raises(DuplicateReference) as refused:
        generation.spend(user_id, 1, "Generation", reference="gen_8f2c")
    assert (refused.value.code, refused.value.transaction_id) == ("duplicate_reference", first.id)
    assert refused.value.extensions == {"transaction_id": str(first.id)}


@pytest.mark.slow
def test_an_invalid_write_is_validation_failed_with_its_errors(payment, generation):
    user_id = funded_user(payment, 100)
    with pytest.raises(ValidationFailed) as refused:
        generation.spend(user_id, 1, "x" * 501)
    assert (refused.value.code, refused.value.status, list(refused.value.errors)) == ("validation_error", 422,
                                                                                      ["description"])


@pytest.mark.slow
def test_settling_a_settled_transaction_the_other_way_is_invalid_transition(payment):
    user_id = uuid.uuid4()
    payment.register_user(user_id)
    purchase = payment.record_purchase(user_id, 10, "1.00", "pack")
    with pytest.raises(InvalidTransition) as refused:
        payment.settle(purchase.id, "failed")
    assert refused.value.code == "invalid_transition"


@pytest.mark.slow
def test_a_purchase_for_an_unregistered_user_is_unknown_user(payment):
    with pytest.raises(UnknownUser) as refused:
        payment.record_purchase(uuid.uuid4(), 10, "1.00", "pack")
    assert (refused.value.code, refused.value.status) == ("unknown_user", 422)


@pytest.mark.slow
def test_a_write_without_its_scope_is_permission_denied(payment, generation):
    user_id = funded_user(payment, 10)
    with pytest.raises(PermissionDenied) as refused:
        generation.record_purchase(user_id, 10, "1.00", "pack")
    assert refused.value.code == "insufficient_scope"


@pytest.mark.slow
def test_an_unknown_transaction_is_not_found(payment):
    with pytest.raises(NotFound) as refused:
        payment.settle(uuid.uuid4(), "completed")
    assert refused.value.code == "not_found"


@pytest.mark.slow
def test_a_refused_api_key_is_authentication_failed(live_server):
    with Client(live_server, "tsk_not_a_key") as ledger, \
            pytest.raises(transactions_client.AuthenticationFailed) as refused:
        ledger.balance(uuid.uuid4())
    assert refused.value.code == "invalid_token"


def documented_codes():
    description = yaml.safe_load((REPO_ROOT / "openapi.yaml").read_text())["info"]["description"]
    listed = description.split("Codes in use:")[1].split("(and, for other HTTP errors")[0]
    return sorted(set(re.findall(r"`([a-z_]+)`", listed)) | {"hold_expired"})


@pytest.mark.parametrize("code", documented_codes())
def test_every_code_the_contract_documents_has_an_exception_of_its_own(code):
    # 418: no status fallback applies, so only a class for the code itself is not the bare ProblemError.
    assert transactions_client.problem_class(418, code) is not ProblemError


# --- retries ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("first_attempt", [
    problem(503, "database_unavailable"),
    problem(503, "balance_busy"),
    problem(409, "idempotency_key_in_use"),
    "refused",
    "lost",
], ids=["database_unavailable", "balance_busy", "idempotency_key_in_use", "refused", "lost"])
def test_a_write_retried_after_a_failed_attempt_keeps_its_key_and_writes_one_row(
        first_attempt, live_server, service_token, payment, db_session, waits):
    user_id = funded_user(payment, 100)
    transport = Scripted(first_attempt)
    with scripted_client(live_server, service_token, transport) as ledger:
        usage = ledger.spend(user_id, 10, "Generation")
    keys = {request.headers["Idempotency-Key"] for request in transport.requests}
    request_ids = {request.headers["X-Request-ID"] for request in transport.requests}
    assert (len(transport.requests), len(keys), len(request_ids), len(waits)) == (2, 1, 1, 1)
    assert usage.replayed == (first_attempt == "lost")  # the lost attempt was applied: the retry replays it
    assert rows(db_session, user_id, "usage") == 1 and payment.balance(user_id).available == 90


@pytest.mark.slow
def test_several_failed_attempts_are_retried_with_growing_waits(live_server, service_token, payment, db_session, waits):
    user_id = funded_user(payment, 100)
    transport = Scripted("refused", problem(503, "database_unavailable"), "lost")
    with scripted_client(live_server, service_token, transport, retries=3, backoff=1, max_backoff=100) as ledger:
        ledger.spend(user_id, 10, "Generation", idempotency_key="job-7")
    assert [request.headers["Idempotency-Key"] for request in transport.requests] == ["job-7"] * 4
    assert all(0 <= wait <= 2 ** attempt for attempt, wait in enumerate(waits)) and len(waits) == 3
    assert rows(db_session, user_id, "usage") == 1


@pytest.mark.slow
def test_a_settlement_is_retried_too(live_server, service_token, payment, waits):
    user_id = uuid.uuid4()
    payment.register_user(user_id)
    pending = payment.record_purchase(user_id, 50, "1.00", "pack", status="pending")
    transport = Scripted("lost", "refused")
    with scripted_client(live_server, service_token, transport) as ledger:
        assert ledger.settle(pending.id, "completed").status == "completed"
    assert len(transport.requests) == 3 and payment.balance(user_id).balance == 50


@pytest.mark.slow
def test_retry_after_is_waited_for(live_server, service_token, payment, waits):
    user_id = funded_user(payment, 100)
    transport = Scripted(problem(503, "balance_busy"), retry_after=3)
    with scripted_client(live_server, service_token, transport, backoff=0.01) as ledger:
        ledger.spend(user_id, 1, "Generation")
    assert len(waits) == 1 and waits[0] >= 3


def test_a_retry_after_longer_than_the_longest_wait_is_raised_at_once(waits):
    transport = Scripted(problem(503, "database_unavailable"), retry_after=60)
    with offline_client(transport, max_backoff=10) as ledger, pytest.raises(ServiceUnavailable) as failed:
        ledger.balance(uuid.uuid4())
    assert (len(transport.requests), waits, failed.value.retry_after) == (1, [], 60)


def test_when_the_retries_are_spent_the_last_problem_is_raised(waits):
    transport = Scripted(*[problem(503, "database_unavailable")] * 5)
    with offline_client(transport, retries=2) as ledger, pytest.raises(ServiceUnavailable) as failed:
        ledger.balance(uuid.uuid4())
    assert (len(transport.requests), len(waits), failed.value.code) == (3, 2, "database_unavailable")


def test_when_no_attempt_is_answered_the_service_is_unreachable(waits):
    transport = Scripted(*["refused"] * 5)
    with offline_client(transport, retries=2) as ledger, pytest.raises(ServiceUnreachable) as failed:
        ledger.balance(uuid.uuid4())
    assert len(transport.requests) == 3 and isinstance(failed.value.__cause__, httpx.ConnectError)


@pytest.mark.parametrize("answer, raised", [
    (problem(409, "insufficient_credits"), InsufficientCredits),
    (problem(422, "validation_error", errors={"credits": ["Not a valid integer."]}), ValidationFailed),
    (problem(409, "duplicate_reference", transaction_id=str(uuid.uuid4())), DuplicateReference),
    (problem(429, "rate_limited"), RateLimited),
    (problem(403, "insufficient_scope"), PermissionDenied),
    (problem(400, "malformed_json"), transactions_client.InvalidRequest),
    (problem(500, "internal_error"), transactions_client.ServerError),
], ids=lambda value: value["code"] if isinstance(value, dict) else None)
def test_no_other_4xx_nor_a_500_is_retried(answer, raised, waits):
    transport = Scripted(answer, retry_after=1)
    with offline_client(transport) as ledger, pytest.raises(raised) as failed:
        ledger.spend(uuid.uuid4(), 1, "Generation")
    assert (len(transport.requests), waits, failed.value.code) == (1, [], answer["code"])


@pytest.mark.slow
def test_a_real_refusal_is_sent_once(live_server, service_token, payment, waits):
    user_id = funded_user(payment, 1)
    transport = Scripted()
    with scripted_client(live_server, service_token, transport) as ledger, pytest.raises(InsufficientCredits):
        ledger.spend(user_id, 5, "Generation")
    assert (len(transport.requests), waits) == (1, [])


def test_an_error_page_that_is_not_a_problem_is_raised_by_its_status(waits):
    class Gateway(httpx.BaseTransport):
        def handle_request(self, request):
            return httpx.Response(404, text="<html>not here</html>", headers={"Content-Type": "text/html"})

    with offline_client(Gateway()) as ledger, pytest.raises(NotFound) as failed:
        ledger.balance(uuid.uuid4())
    assert (failed.value.status, failed.value.code) == (404, "http_error")


# --- batches ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_batch_of_250_goes_in_three_calls_and_answers_in_item_order(live_server, service_token, payment, db_session):
    user_id = funded_user(payment, 1000)
    items = [writes.spend(user_id, 1, f"Generation {index}") for index in range(250)]
    transport = Scripted()
    with scripted_client(live_server, service_token, transport) as ledger:
        results = ledger.record_batch(items)
    assert [len(body["items"]) for body in transport.bodies()] == [100, 100, 50]
    assert [body["items"][0]["description"] for body in transport.bodies()] == ["Generation 0", "Generation 100",
                                                                               "Generation 200"]
    assert [result.index for result in results] == list(range(250))
    assert all(result.ok and result.status == 201 and not result.replayed for result in results)
    assert [result.transaction.description for result in results] == [f"Generation {index}" for index in range(250)]
    assert rows(db_session, user_id, "usage") == 250 and payment.balance(user_id).available == 750


@pytest.mark.slow
def test_a_refused_item_is_its_own_result(payment, generation):
    user_id = funded_user(payment, 5)
    results = generation.record_batch([writes.spend(user_id, 3, "first"), writes.spend(user_id, 3, "second"),
                                       writes.reserve(user_id, 2, "third"),
                                       {"user_id": str(uuid.uuid4()), "type": "usage", "amount": "0", "credits": -1,
                                        "description": "nobody"}])
    assert [(result.index, result.status) for result in results] == [(0, 201), (1, 409), (2, 201), (3, 422)]
    assert isinstance(results[1].problem, InsufficientCredits) and results[1].transaction is None
    assert isinstance(results[3].problem, UnknownUser)
    assert results[2].transaction.status == "pending"
    assert generation.balance(user_id).available == 0


@pytest.mark.slow
def test_a_batch_retried_whole_after_a_lost_answer_applies_each_item_once(live_server, service_token, payment,
                                                                          db_session, waits):
    user_id = funded_user(payment, 100)
    items = [writes.spend(user_id, 1, f"Generation {index}") for index in range(10)]
    transport = Scripted("lost")
    with scripted_client(live_server, service_token, transport) as ledger:
        results = ledger.record_batch(items)
    assert len(transport.requests) == 2 and transport.bodies()[0] == transport.bodies()[1]
    assert all(result.replayed and result.status == 200 for result in results)
    assert rows(db_session, user_id, "usage") == 10


@pytest.mark.slow
def test_items_without_a_key_get_one_kept_across_the_retries(live_server, service_token, payment, db_session, waits):
    user_id = funded_user(payment, 100)
    raw = {"user_id": str(user_id), "type": "usage", "amount": "0", "credits": -1, "description": "Generation"}
    transport = Scripted(problem(503, "database_unavailable"))
    with scripted_client(live_server, service_token, transport) as ledger:
        results = ledger.record_batch([raw, dict(raw)])
    first, second = transport.bodies()
    assert first == second and first["items"][0]["idempotency_key"] != first["items"][1]["idempotency_key"]
    assert "idempotency_key" not in raw and [result.status for result in results] == [201, 201]
    assert rows(db_session, user_id, "usage") == 2


@pytest.mark.slow
def test_a_malformed_item_stops_the_batch_at_its_chunk_and_the_list_can_be_sent_again(payment, generation, db_session):
    user_id = funded_user(payment, 1000)
    items = [writes.spend(user_id, 1, f"Generation {index}") for index in range(150)]
    items[120]["description"] = ""
    with pytest.raises(ValidationFailed) as refused:
        generation.record_batch(items)
    assert refused.value.batch_offset == 100 and list(refused.value.errors["items"]) == ["20"]
    assert [result.index for result in refused.value.batch_results] == list(range(100))
    assert rows(db_session, user_id, "usage") == 100
    items[120]["description"] = "Generation 120"
    again = generation.record_batch(items)
    assert [result.replayed for result in again] == [True] * 100 + [False] * 50
    assert rows(db_session, user_id, "usage") == 150


def test_an_empty_list_sends_nothing():
    transport = Scripted()
    with offline_client(transport) as ledger:
        assert ledger.record_batch([]) == []
    assert transport.requests == []


# --- the README's examples -----------------------------------------------------------------------------------------


def readme_example(caller):
    """The Python block under the client README's heading for this caller."""
    readme = (REPO_ROOT / "clients" / "python" / "README.md").read_text()
    section = readme.split(f"## The {caller}\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_readme_example_of_the_payment_service_runs(live_server, service_token, monkeypatch, payment):
    monkeypatch.setenv("TRANSACTIONS_URL", live_server)
    monkeypatch.setenv("PAYMENT_KEY", service_token(*PAYMENT_SCOPES, name="payment-service"))
    user_id = uuid.uuid4()
    example = {"user_id": user_id, "payment_intent_id": "pi_3PqR", "payment_succeeded": True}
    exec(readme_example("payment service"), example)
    assert payment.balance(user_id).available == 250
    assert [t.type for t in payment.history(user_id)] == ["refund", "purchase"]


@pytest.mark.slow
def test_the_readme_example_of_the_generation_service_runs(live_server, service_token, monkeypatch, payment):
    monkeypatch.setenv("TRANSACTIONS_URL", live_server)
    monkeypatch.setenv("GENERATION_KEY", service_token(*GENERATION_SCOPES, name="generation-service"))
    user_id = funded_user(payment, 300)
    example = {"user_id": user_id, "job_id": "job-42", "run_generation": lambda: True}
    exec(readme_example("generation service"), example)
    assert example["refused"] == [] and len(example["results"]) == 250
    assert payment.balance(user_id).available == 300 - 20 - 250


# --- the bodies -----------------------------------------------------------------------------------------------------


def test_the_builders_sign_credits_as_the_ledger_stores_them():
    user_id, other = uuid.uuid4(), uuid.uuid4()
    assert {name: writes.reserve(user_id, 20, "hold")[name] for name in ("type", "credits", "status", "amount")} == {
        "type": "usage", "credits": -20, "status": "pending", "amount": "0"}
    assert writes.spend(user_id, 8, "spend")["credits"] == -8
    assert writes.refund(user_id, other, 250, Decimal("5.00"))["credits"] == -250
    assert writes.reverse(user_id, other, 8)["credits"] == 8
    assert writes.purchase(user_id, 500, "9.99", "pack")["credits"] == 500
    assert {name: writes.grant(user_id, 30, "bonus")[name] for name in ("type", "credits", "category")} == {
        "type": "grant", "credits": 30, "category": "promotional"}


@pytest.mark.slow
def test_create_sends_a_whole_body_keyed_as_given_or_with_a_key_of_its_own(payment, db_session):
    user_id = uuid.uuid4()
    payment.register_user(user_id)
    body = {"user_id": str(user_id), "type": "purchase", "amount": "1.00", "credits": 100, "description": "Pack"}
    first = payment.create({**body, "idempotency_key": f"pack-{user_id}"})
    again = payment.create({**body, "idempotency_key": f"pack-{user_id}"})
    assert (again.id, again.replayed, first.replayed) == (first.id, True, False)
    other = payment.create(body)  # no key given: one of its own, so a second row
    assert other.id != first.id and "idempotency_key" not in body
    assert payment.balance(user_id).balance == 200


@pytest.mark.parametrize("credits", [0, -5, True, 2.5])
def test_credits_are_a_positive_count(credits):
    with pytest.raises(ValueError):
        writes.spend(uuid.uuid4(), credits, "spend")


def test_an_amount_is_never_a_float():
    with pytest.raises(TypeError):
        writes.purchase(uuid.uuid4(), 500, 9.99, "pack")


@pytest.mark.slow
def test_an_atomic_batch_is_written_all_or_none(payment, generation, db_session):
    user_id = funded_user(payment, 5)
    items = [writes.spend(user_id, 3, "first"), writes.spend(user_id, 3, "second")]
    with pytest.raises(InsufficientCredits) as refused:
        generation.record_batch(items, atomic=True)
    assert refused.value.extensions["index"] == 1 and rows(db_session, user_id, "usage") == 0
    payment.record_purchase(user_id, 10, "1.00", "more credits")
    results = generation.record_batch(items, atomic=True)
    assert [(result.status, result.replayed) for result in results] == [(201, False), (201, False)]
    with pytest.raises(ValueError):
        generation.record_batch([writes.spend(user_id, 1, "g") for _ in range(101)], atomic=True)
