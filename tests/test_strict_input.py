"""Input the contract does not mean to accept is refused, never quietly reinterpreted.

Descriptions without control, bidi or only invisible characters; numbers never
rounded; query integers in ASCII digits; JSON without repeated members or
non-finite literals; one Idempotency-Key (strict_json.py, schemas.py, http.py).
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from transactions_service.ledger.models import UserTransaction
from transactions_service.api.schemas import DESCRIPTION_PATTERN, METADATA_KEY_PATTERN, METADATA_VALUE_PATTERN

from .helpers import bearer


def count_rows(db_session):
    return db_session.scalar(select(func.count()).select_from(UserTransaction))


def post_raw(api, body: str, **headers):
    return api.client.post(
        "/api/transactions", data=body.encode(),
        headers={**bearer(api.admin_token), "Content-Type": "application/json", **headers},
    )


def purchase_json(user_id, amount='"9.99"', credits="500", description='"Starter pack"') -> str:
    return (
        f'{{"user_id": "{user_id}", "type": "purchase", "amount": {amount}, "credits": {credits},'
        f' "description": {description}}}'
    )


# --- descriptions ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "description",
    [
        pytest.param("a\u009b[31mred", id="c1-control-sequence-introducer"),
        pytest.param("a\u0085b", id="c1-next-line"),
        pytest.param("tab\there", id="tab"),
        pytest.param("line\nbreak", id="line-feed"),
        pytest.param("carriage\rreturn", id="carriage-return"),
        pytest.param("a\x7fb", id="delete"),
        pytest.param("line\u2028separator", id="line-separator"),
        pytest.param("\u202egnp.exe", id="right-to-left-override"),
        pytest.param("a\u202ab", id="left-to-right-embedding"),
        pytest.param("a\u2066b\u2069", id="left-to-right-isolate"),
        pytest.param("\u200b", id="only-a-zero-width-space"),
        pytest.param("\u200b\u200c\u200d\u2060\ufeff", id="only-zero-width-characters"),
        pytest.param("\u3164", id="only-a-hangul-filler"),
        pytest.param("\u2800\u00a0\u3000", id="only-blank-fillers-and-spaces"),
        pytest.param("\ufe0f", id="only-a-variation-selector"),
        pytest.param("\u00ad", id="only-a-soft-hyphen"),
    ],
)
def test_a_description_with_control_bidi_or_only_invisible_characters_is_422(api, db_session, description):
    response = api.purchase(api.register(), description=description)
    assert response.status_code == 422, response.json
    assert "description" in response.json["errors"]
    assert count_rows(db_session) == 0


@pytest.mark.parametrize(
    "description",
    [
        "Génération d'image: 🚀 x2",
        "שלום \u200f(credits)",  # Hebrew with a right-to-left mark, which is allowed
        "👍🏽 family: 👨\u200d👩\u200d👧",  # joiners inside visible text
        "e\u0301",  # a combining accent on a letter
        "\u00a0padded\u00a0",
    ],
)
def test_a_description_in_any_script_is_kept_exactly(api, description):
    response = api.purchase(api.register(), description=description)
    assert response.status_code == 201, response.json
    assert response.json["description"] == description


def test_the_contract_states_the_description_rule_the_service_applies(contract):
    schema = contract.spec["components"]["schemas"]["NewTransaction"]["properties"]["description"]
    assert schema["pattern"] == DESCRIPTION_PATTERN


# --- numbers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount, credits, field",
    [
        ("9.999999999999999999", "500", "amount"),
        ("9.991", "500", "amount"),
        ("1e-3", "500", "amount"),
        ("1e999999999", "500", "amount"),
        ("1e-999999999", "500", "amount"),
        ('"9.99"', "999999999.99999999999", "credits"),
        ('"9.99"', "500.0000000000000001", "credits"),
        ('"9.99"', "1e999999999", "credits"),
        ('"9.99"', "-1e999999999", "credits"),
        ('"9.99"', "1e-999999999", "credits"),
        ('"9.99"', "5e-1", "credits"),
    ],
)
def test_more_precision_than_a_field_allows_is_422_never_rounded(api, db_session, amount, credits, field):
    response = post_raw(api, purchase_json(api.register(), amount=amount, credits=credits))
    assert response.status_code == 422, response.json
    assert field in response.json["errors"]
    assert count_rows(db_session) == 0


@pytest.mark.parametrize(
    "amount, credits, stored_amount, stored_credits",
    [
        ("9.99", "500", "9.99", 500),
        ("9.990", "500.0", "9.99", 500),
        ("1e1", "5e2", "10.00", 500),
        ("0", "1", "0.00", 1),
    ],
)
def test_numbers_that_mean_a_valid_value_exactly_are_accepted(api, amount, credits, stored_amount, stored_credits):
    response = post_raw(api, purchase_json(api.register(), amount=amount, credits=credits))
    assert response.status_code == 201, response.json
    assert (response.json["amount"], response.json["credits"]) == (stored_amount, stored_credits)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_number_literals_are_not_json(api, db_session, literal):
    response = post_raw(api, purchase_json(api.register(), credits=literal))
    assert response.status_code == 400
    assert response.json["code"] == "malformed_json"
    assert count_rows(db_session) == 0


# --- repeated members ------------------------------------------------------------------------------------


def test_a_body_naming_a_member_twice_is_400_and_writes_nothing(api, db_session):
    user_id = api.register()
    body = purchase_json(user_id).replace('"credits": 500', '"credits": 1, "credits": 100000')
    response = post_raw(api, body)
    assert response.status_code == 400
    assert response.json["code"] == "malformed_json"
    assert "'credits' appears more than once" in response.json["detail"]
    assert count_rows(db_session) == 0


def test_a_nested_repeated_member_is_refused_too(api):
    response = api.client.patch(
        "/api/transactions/01975c3e-8a41-7c2b-9f1e-3d5a6b7c8d90",
        data=b'{"status": "failed", "status": "completed"}',
        headers={**bearer(api.admin_token), "Content-Type": "application/json"},
    )
    assert response.status_code == 400 and response.json["code"] == "malformed_json"


# --- query integers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["\uff11", "\u0661", "+1", " 1", "1 ", "1_0", "0x1", "1.0", "-1", "١٠"])
def test_a_query_integer_is_ascii_digits_only(api, limit):
    response = api.history(api.register(), limit=limit)
    assert response.status_code == 422
    assert "limit" in response.json["errors"]


def test_a_query_integer_in_ascii_digits_is_accepted(api):
    assert api.history(api.register(), limit="007").status_code == 200


# --- headers ---------------------------------------------------------------------------------------------


def test_two_idempotency_key_headers_are_422_not_one_joined_key(api, db_session):
    user_id = api.register()
    response = api.client.post(
        "/api/transactions",
        json={"user_id": str(user_id), "type": "purchase", "amount": "1", "credits": 1, "description": "x"},
        headers=[("Authorization", f"Bearer {api.admin_token}"), ("Idempotency-Key", "evt_1"), ("Idempotency-Key", "evt_2")],
    )
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json["errors"]
    assert count_rows(db_session) == 0


def test_an_idempotency_key_with_a_comma_is_422(api):
    assert api.purchase(api.register(), key="evt_1,evt_2").status_code == 422


def test_the_contract_states_the_reference_rule_the_service_applies(contract):
    """A reference is a one-line label, as a description is."""
    schema = contract.spec["components"]["schemas"]["NewTransaction"]["properties"]["reference"]
    assert schema["pattern"] == DESCRIPTION_PATTERN


def test_the_contract_states_the_metadata_rules_the_service_applies(contract):
    schema = contract.spec["components"]["schemas"]["Metadata"]
    assert schema["propertyNames"]["pattern"] == METADATA_KEY_PATTERN
    assert schema["additionalProperties"]["pattern"] == METADATA_VALUE_PATTERN
