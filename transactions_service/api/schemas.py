"""The HTTP resources' input validation and output shape: the one place for both.

Input is validated by marshmallow schemas (``unknown = RAISE``); output is
rendered here, transactions by a hand-written renderer, because a history page
shapes twenty of them per request and this was most of its CPU
(BENCHMARKS.md). Every shape is checked against openapi.yaml by the tests.
"""

from __future__ import annotations

import functools
import json
import re
import zoneinfo
from datetime import date, datetime, timezone
from decimal import Decimal
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any
from zoneinfo import ZoneInfo

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, pre_load, validate, validates_schema

from ..config import METADATA_KEY_PATTERN
from ..errors import problem_body, validation_error
from ..http import IDEMPOTENCY_KEY_RULE, is_idempotency_key
from ..ids import rfc3339, utcnow
from ..ledger.batches import MAX_BATCH_ITEMS, Item, ItemResult
from ..ledger.models import (
    EVENT_TYPES,
    MAX_AMOUNT,
    MAX_CREDITS,
    MAX_DESCRIPTION_LENGTH,
    LotCategory,
    TransactionStatus,
    TransactionType,
)
from ..ledger.rules import EventsPage, HistoryPage, LotsPage
from ..ledger.store import Event, Posting, Transaction

_AMOUNT_PATTERN = re.compile(r"[0-9]{1,10}(\.[0-9]{1,2})?")
_CENT = Decimal("0.01")
# What a description may hold, as regular-expression classes: the one source for the rules
# below and for the `pattern` of `description` in openapi.yaml (a test keeps them equal).
# C0 controls (tab and line breaks too: a description is one line), DEL, C1 controls, and the
# Unicode line and paragraph separators; PostgreSQL text cannot hold NUL in any case.
CONTROL_CHARACTERS = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
# Bidirectional embeddings, overrides and isolates, which reorder how the text around them
# is shown ("Trojan Source", CVE-2021-42574). The marks (U+200E, U+200F, U+061C) stay allowed.
BIDI_CONTROLS = r"\u202a-\u202e\u2066-\u2069"
# Characters that show nothing on their own: spaces, format characters (soft hyphen, zero-width
# space and joiners, marks, word joiner, byte-order mark), variation selectors, blank fillers.
INVISIBLE_CHARACTERS = (
    r"\x20\xa0\xad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f\u2000-\u200f"
    r"\u202a-\u202f\u205f-\u206f\u2800\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb"
)
# Something visible, then only allowed characters to the very end ((?![\s\S]) is the end in
# every regex dialect; "$" would also match before a final line feed in some).
DESCRIPTION_PATTERN = rf"^(?=.*[^{INVISIBLE_CHARACTERS}])[^{CONTROL_CHARACTERS}{BIDI_CONTROLS}]*(?![\s\S])"
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")
_BIDI = re.compile(f"[{BIDI_CONTROLS}]")
_VISIBLE = re.compile(f"[^{INVISIBLE_CHARACTERS}]")


# The caller's metadata on a transaction: as Stripe's, a flat object of strings.
MAX_METADATA_KEYS, MAX_METADATA_VALUE_LENGTH = 20, 500
# A value may be empty, and holds what a description may, but for the visible character it needs.
METADATA_VALUE_PATTERN = rf"^[^{CONTROL_CHARACTERS}{BIDI_CONTROLS}]*(?![\s\S])"
_METADATA_KEY = re.compile(METADATA_KEY_PATTERN[1:-1])
_METADATA_KEY_RULE = "Keys are 1 to 40 characters of A-Z, a-z, 0-9, '_', '.' and '-'."
MAX_REFERENCE_LENGTH = 255
MAX_METADATA_FILTERS = 3
_METADATA_PARAMETER = re.compile(r"metadata\[(.*)\]", re.DOTALL)


class Metadata(fields.Field):
    """A JSON object of at most 20 strings: keys of 1-40 characters of ``[A-Za-z0-9_.-]``, values of at most
    500 characters without control characters. A refusal names the key (its first 40 characters)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            raise ValidationError("Must be a JSON object whose values are strings.")
        if len(value) > MAX_METADATA_KEYS:
            raise ValidationError(f"At most {MAX_METADATA_KEYS} keys; this has {len(value)}.")
        errors = {}
        for key, item in value.items():
            if not _METADATA_KEY.fullmatch(key):
                errors[key[:40]] = [_METADATA_KEY_RULE]
            elif not isinstance(item, str):
                errors[key] = ["Must be a string."]
            elif len(item) > MAX_METADATA_VALUE_LENGTH:
                errors[key] = [f"At most {MAX_METADATA_VALUE_LENGTH} characters."]
            elif _CONTROL.search(item) or _BIDI.search(item):
                errors[key] = ["Must not contain control or bidirectional formatting characters."]
        if errors:
            raise ValidationError(errors)
        return dict(value)


class Instant(fields.AwareDateTime):
    """An RFC 3339 instant with its offset, taken to UTC: PostgreSQL reads offsets up to 15:59 only, and
    an instant at the edge of the calendar may have no UTC time at all."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="iso", **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        moment = super()._deserialize(value, attr, data, **kwargs)
        try:
            return moment.astimezone(timezone.utc)
        except OverflowError as error:
            raise ValidationError("Not an instant this service can store.") from error


class Money(fields.Field):
    """Dollars as a JSON string (``"9.99"``) or number, at most two decimals (input only).

    Numbers arrive as ``int`` or exact ``Decimal`` (``strict_json``), so more
    precision than cents is refused, never rounded.
    """

    default_error_messages = {
        "invalid": "Must be a decimal number of dollars with at most two decimals, as a string or a number.",
        "precision": "Must have at most two decimals; the amount is never rounded.",
        "range": f"Must be between 0 and {MAX_AMOUNT}.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
            raise self.make_error("invalid")
        if isinstance(value, str):
            if value.startswith("-") and _AMOUNT_PATTERN.fullmatch(value[1:]):
                raise self.make_error("range")
            if not _AMOUNT_PATTERN.fullmatch(value):
                raise self.make_error("invalid")
            return Decimal(value).quantize(_CENT)
        decimal = Decimal(value)
        if not decimal.is_finite():
            raise self.make_error("invalid")
        if decimal < 0 or decimal > MAX_AMOUNT:
            raise self.make_error("range")
        if decimal != decimal.quantize(_CENT):
            raise self.make_error("precision")
        return abs(decimal.quantize(_CENT))  # abs() turns -0.0 into 0.00


class StrictInteger(fields.Integer):
    """An integer as JSON Schema defines one: ``66`` or ``66.0``; ``66.5``, ``"66"`` and booleans are rejected.

    JSON has one number type and some clients (JavaScript among them) may
    write ``66.0``; accepting exactly the values the spec's ``type: integer``
    admits keeps the contract and the service in agreement. Numbers with a
    fraction arrive as exact ``Decimal`` (``strict_json``): ``999999999.99999999999``
    is not an integer, where a float would have rounded it to one.
    """

    default_error_messages = {
        "invalid": "Must be a whole number.",
        "string": "Must be a JSON number, not a string: send 500, not \"500\".",
        "too_large": "Number too large.",
    }

    def _validated(self, value: Any) -> int:
        if isinstance(value, str):
            raise self.make_error("string")
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise self.make_error("invalid")
            # By its exponent first: arithmetic on Decimal("1e999999999") overflows, and int() of it never ends.
            if value.adjusted() > 18:
                raise self.make_error("too_large")
            if value != value.to_integral_value():
                raise self.make_error("invalid")
            return int(value)
        if not isinstance(value, int):
            raise self.make_error("invalid")
        return value


class QueryInteger(fields.Integer):
    """A whole number in a query string: ASCII digits only (not ``１``, ``+1``, `` 1`` or ``1_0``)."""

    _DIGITS = re.compile(r"[0-9]{1,9}")
    default_error_messages = {"invalid": "Must be a whole number written with the digits 0-9."}

    def _validated(self, value: Any) -> int:
        if not isinstance(value, str) or not self._DIGITS.fullmatch(value):
            raise self.make_error("invalid")
        return int(value)


class Timestamp(fields.DateTime):
    """RFC 3339 in UTC with a ``Z`` suffix."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else rfc3339(value)


class Text(fields.String):
    """A one-line label: no control characters, no bidi controls, and something visible in it."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if _CONTROL.search(text):
            raise ValidationError("Must not contain control characters (tabs and line breaks included).")
        if _BIDI.search(text):
            raise ValidationError("Must not contain bidirectional embedding, override or isolate characters.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800"
            raise ValidationError("Must be valid Unicode text.") from exc
        if not _VISIBLE.search(text):
            raise ValidationError("Must not be blank: it needs at least one visible character.")
        return text


class StrictBoolean(fields.Boolean):
    """true or false, and nothing else: marshmallow's own takes 0, 1 and "yes" (and 0 == False in Python,
    so ``falsy={False}`` takes 0 too)."""

    default_error_messages = {"invalid": "Must be true or false."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class StrictSchema(Schema):
    class Meta:
        unknown = RAISE


# The types a caller may write, and what each does to credits ("expiration" is the service's own;
# an adjustment goes either way, never by nothing).
_SIGNS = {
    TransactionType.PURCHASE: (1, "A purchase adds credits: must be greater than 0."),
    TransactionType.GRANT: (1, "A grant adds credits: must be greater than 0."),
    TransactionType.USAGE: (-1, "Usage spends credits: must be less than 0."),
    TransactionType.REFUND: (-1, "A refund takes the purchase's credits back: must be less than 0."),
    TransactionType.REVERSAL: (1, "A reversal gives the usage's credits back: must be greater than 0."),
    TransactionType.ADJUSTMENT: (0, "An adjustment changes the balance: must not be 0."),
}
_WRITABLE = ", ".join(kind.value for kind in _SIGNS)
# The types that move no money (their amount is 0.00, and may be left out) and that take effect at once.
_FREE = {TransactionType.GRANT, TransactionType.REVERSAL, TransactionType.ADJUSTMENT}
_AT_ONCE = {TransactionType.GRANT, TransactionType.REFUND, TransactionType.REVERSAL, TransactionType.ADJUSTMENT}
# Which field names the transaction a refund or reversal gives back.
_GIVES_BACK = {TransactionType.REFUND: "refunds", TransactionType.REVERSAL: "reverses"}
_LOT_TERMS = ("expires_at", "expires_in", "priority")


def _makes_lot(data: dict[str, Any]) -> bool:
    kind = data.get("type")
    if kind is TransactionType.ADJUSTMENT:
        return (data.get("credits") or 0) > 0
    return kind in (TransactionType.PURCHASE, TransactionType.GRANT)


class NewTransactionSchema(StrictSchema):
    user_id = fields.UUID(required=True)
    type = fields.Enum(
        TransactionType, by_value=True, required=True,
        validate=validate.OneOf(list(_SIGNS), error=f"Must be one of: {_WRITABLE}."),
    )
    # Required but for the types that move no money, whose amount is 0.00 when left out.
    amount = Money(load_default=None)
    credits = StrictInteger(required=True, validate=validate.Range(-MAX_CREDITS, MAX_CREDITS))
    description = Text(required=True, validate=validate.Length(1, MAX_DESCRIPTION_LENGTH))
    status = fields.Enum(TransactionStatus, by_value=True, load_default=TransactionStatus.COMPLETED)
    # Seconds until a pending usage's hold lapses; at most HOLD_TTL_SECONDS (checked by the ledger).
    hold_expires_in = StrictInteger(load_default=None, allow_none=False, validate=validate.Range(min=1))
    # The terms of the lot a purchase, grant or positive adjustment makes: when it expires, and its
    # place in the spend order.
    expires_at = Instant(load_default=None, allow_none=False)
    expires_in = StrictInteger(load_default=None, allow_none=False, validate=validate.Range(1, 100 * 365 * 86_400))
    priority = StrictInteger(load_default=None, allow_none=False, validate=validate.Range(0, 100))
    category = fields.Enum(LotCategory, by_value=True, load_default=None, allow_none=False)
    # The purchase a refund gives back, the usage a reversal gives back.
    refunds = fields.UUID(load_default=None, allow_none=False)
    reverses = fields.UUID(load_default=None, allow_none=False)
    # The caller's own: left out, they stay out of the idempotency fingerprint (a retry of a request
    # recorded before they existed is still a replay).
    metadata = Metadata(load_default=None, allow_none=False)
    reference = Text(load_default=None, allow_none=False, validate=validate.Length(1, MAX_REFERENCE_LENGTH))

    @validates_schema
    def hold_only_on_pending_usage(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("hold_expires_in") is None:
            return
        if data.get("type") is not TransactionType.USAGE or data.get("status") is not TransactionStatus.PENDING:
            raise ValidationError("Only a pending usage holds credits, so only it can set a hold expiry.", "hold_expires_in")

    @validates_schema
    def credits_sign_matches_type(self, data: dict[str, Any], **kwargs: Any) -> None:
        credits, kind = data.get("credits"), data.get("type")
        if credits is None or kind not in _SIGNS:
            return
        sign, message = _SIGNS[kind]
        if credits == 0 or credits * sign < 0:
            raise ValidationError(message, "credits")

    @validates_schema
    def amount_and_status_per_type(self, data: dict[str, Any], **kwargs: Any) -> None:
        kind, amount = data.get("type"), data.get("amount")
        if kind in _FREE and amount is not None and amount != 0:
            raise ValidationError(f"A {kind.value} moves no money: its amount is 0.00 (or left out).", "amount")
        if kind not in _FREE and kind is not None and amount is None:
            raise ValidationError("Missing data for required field.", "amount")
        if kind in _AT_ONCE and data.get("status") is not TransactionStatus.COMPLETED:
            raise ValidationError(f"A {kind.value} takes effect at once: its status is completed.", "status")

    @validates_schema
    def names_what_it_gives_back(self, data: dict[str, Any], **kwargs: Any) -> None:
        kind = data.get("type")
        for gives_back, field in _GIVES_BACK.items():
            if kind is gives_back and data.get(field) is None:
                raise ValidationError(f"A {kind.value} names the transaction it gives back.", field)
            if kind is not gives_back and data.get(field) is not None:
                raise ValidationError(f"Only a {gives_back.value} names a transaction in {field}.", field)

    @validates_schema
    def lot_terms_only_on_credits(self, data: dict[str, Any], **kwargs: Any) -> None:
        kind = data.get("type")
        given = [name for name in (*_LOT_TERMS, "category") if data.get(name) is not None]
        if given and kind is not None and not _makes_lot(data):
            raise ValidationError(
                "Only a purchase, a grant or an adjustment that adds credits makes a lot with these terms.", given[0]
            )
        if data.get("category") is not None and kind is TransactionType.PURCHASE:
            raise ValidationError("A purchase's credits are paid; only a grant or adjustment chooses.", "category")
        if data.get("expires_at") is not None and data.get("expires_in") is not None:
            raise ValidationError("Give expires_at or expires_in, not both.", "expires_in")
        if data.get("expires_at") is not None and data["expires_at"] <= utcnow():
            raise ValidationError("Must lie in the future.", "expires_at")

    @post_load
    def free_of_charge(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if data.get("amount") is None and data.get("type") in _FREE:
            data["amount"] = Decimal("0.00")
        return data


def _an_idempotency_key(key: str) -> None:
    if not is_idempotency_key(key):
        raise ValidationError(f"Must be {IDEMPOTENCY_KEY_RULE}")


class BatchItemSchema(NewTransactionSchema):
    """An item of a batch: a single write's body, and its own idempotency key."""

    idempotency_key = fields.String(required=True, validate=_an_idempotency_key)


class BatchSchema(StrictSchema):
    # Each item is checked by the single write's schema (``batch_items``), each item's messages its own.
    items = fields.List(fields.Raw(), required=True, validate=validate.Length(1, MAX_BATCH_ITEMS))
    atomic = StrictBoolean(load_default=False)


_batch_item = BatchItemSchema()


def batch_items(items: list[Any]) -> list[Item]:
    """Each item as a single write's request and its key; refused whole (422, each item's messages under
    ``items``, nothing written) when any item is not one: a caller's malformed item is a bug to fix, not a
    refusal to record beside the others."""
    loaded: list[Item] = []
    errors: dict[str, Any] = {}
    for index, raw in enumerate(items):
        if not isinstance(raw, dict):
            errors[str(index)] = {"_schema": ["An item must be a JSON object."]}
            continue
        try:
            request = _batch_item.load(raw)
        except ValidationError as invalid:
            errors[str(index)] = invalid.messages
            continue
        loaded.append((request, request.pop("idempotency_key")))
    if errors:
        raise validation_error({"items": errors}, f"{len(errors)} of the {len(items)} items are not valid;"
                                                  " nothing was written.")
    return loaded


class SettleSchema(StrictSchema):
    status = fields.Enum(
        TransactionStatus,
        by_value=True,
        required=True,
        validate=validate.OneOf([TransactionStatus.COMPLETED, TransactionStatus.FAILED]),
    )


class UserQuerySchema(StrictSchema):
    user_id = fields.UUID(load_default=None)


class HistoryFiltersSchema(UserQuerySchema):
    """Which of a user's transactions a history page or an export holds."""

    kind = fields.Enum(TransactionType, by_value=True, load_default=None, data_key="type")
    status = fields.Enum(TransactionStatus, by_value=True, load_default=None)
    # metadata[KEY]=VALUE, up to three, gathered into one field by ``metadata_pairs``.
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), load_default=None)
    # Any text: a reference no write could have given simply matches nothing.
    reference = fields.String(load_default=None, validate=validate.Length(1, MAX_REFERENCE_LENGTH))
    # RFC 3339 with an offset; the interval is half-open: from created_after, up to but not including
    # created_before (one that ends before it starts holds nothing: an empty page, not an error).
    created_after = Instant(load_default=None)
    created_before = Instant(load_default=None)

    @pre_load
    def metadata_pairs(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """``metadata[KEY]=VALUE`` parameters, as one ``metadata`` object; a refusal names the parameter."""
        pairs, rest, errors = {}, {}, {}
        for name, value in data.items():
            match = _METADATA_PARAMETER.fullmatch(name)
            if match is None:
                rest[name] = value
            elif not _METADATA_KEY.fullmatch(match.group(1)):
                errors[name[:60]] = [_METADATA_KEY_RULE]
            elif len(value) > MAX_METADATA_VALUE_LENGTH:
                errors[name] = [f"At most {MAX_METADATA_VALUE_LENGTH} characters."]
            else:
                pairs[match.group(1)] = value
        if len(pairs) + len(errors) > MAX_METADATA_FILTERS:
            errors["metadata"] = [f"At most {MAX_METADATA_FILTERS} metadata[KEY] filters."]
        if errors:
            raise ValidationError(errors)
        return {**rest, "metadata": pairs} if pairs else rest


class HistoryQuerySchema(HistoryFiltersSchema):
    limit = QueryInteger(load_default=20, validate=validate.Range(1, 100))
    cursor = fields.String(load_default=None)


class ExportQuerySchema(HistoryFiltersSchema):
    form = fields.String(load_default="csv", validate=validate.OneOf(["csv", "jsonl"]), data_key="format")


class BalanceQuerySchema(UserQuerySchema):
    at = Instant(load_default=None)


# Years a month or a day may name: the calendar's edges have no instant to read at.
_YEARS = (1970, 9998)


class TimeZone(fields.String):
    """An IANA time zone name (``Europe/Berlin``), as a ZoneInfo; ``UTC`` when absent."""

    default_error_messages = {"unknown": "Not an IANA time zone name, such as Europe/Berlin or UTC."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> ZoneInfo:
        name = super()._deserialize(value, attr, data, **kwargs)
        if name not in _zone_names():
            raise self.make_error("unknown")
        return ZoneInfo(name)


@functools.cache
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


class Day(fields.Date):
    """A calendar day, ``YYYY-MM-DD``, in the years a summary can read."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        day = super()._deserialize(value, attr, data, **kwargs)
        if not _YEARS[0] <= day.year <= _YEARS[1]:
            raise ValidationError(f"Must be a day from {_YEARS[0]} to {_YEARS[1]}.")
        return day


_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")


class Month(fields.String):
    """A month, ``YYYY-MM``, as the date of its first day."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        match = _MONTH.fullmatch(super()._deserialize(value, attr, data, **kwargs))
        if match is None or not _YEARS[0] <= int(match[1]) <= _YEARS[1]:
            raise ValidationError(f"Must be a month, YYYY-MM, from {_YEARS[0]} to {_YEARS[1]}.")
        return date(int(match[1]), int(match[2]), 1)


class StatementQuerySchema(UserQuerySchema):
    month = Month(required=True)
    zone = TimeZone(load_default=ZoneInfo("UTC"), data_key="tz")


class UsageQuerySchema(UserQuerySchema):
    granularity = fields.String(load_default="day", validate=validate.OneOf(["day", "week", "month"]))
    first = Day(load_default=None, data_key="from")
    last = Day(load_default=None, data_key="to")
    group_by = fields.String(load_default=None, validate=validate.Regexp(
        rf"^metadata\.{METADATA_KEY_PATTERN[1:-1]}$", error="Must be metadata.KEY, for a key of USAGE_GROUP_KEYS."))
    zone = TimeZone(load_default=ZoneInfo("UTC"), data_key="tz")


class BalanceAtSchema(Schema):
    user_id = fields.UUID()
    at = Timestamp()
    balance = fields.Integer()
    held = fields.Integer()
    available = fields.Integer()


class StatementSchema(Schema):
    user_id = fields.UUID()
    month = fields.String()
    tz = fields.String()
    starts_at = Timestamp()
    ends_at = Timestamp()
    final = fields.Boolean()
    opening_balance = fields.Integer(attribute="opening.balance")
    purchases = fields.Integer(attribute="lines.purchases")
    grants = fields.Integer(attribute="lines.grants")
    usage = fields.Integer(attribute="lines.usage")
    refunds = fields.Integer(attribute="lines.refunds")
    reversals = fields.Integer(attribute="lines.reversals")
    adjustments = fields.Integer(attribute="lines.adjustments")
    expirations = fields.Integer(attribute="lines.expirations")
    carried_in = fields.Integer(attribute="lines.carried_in")
    closing_balance = fields.Integer(attribute="closing.balance")
    closing_held = fields.Integer(attribute="closing.held")
    amount_paid = fields.Function(lambda statement: f"{Decimal(statement.lines.amount_paid):.2f}")
    amount_refunded = fields.Function(lambda statement: f"{Decimal(statement.lines.amount_refunded):.2f}")


class BucketSchema(Schema):
    start = fields.Date()
    starts_at = Timestamp()
    ends_at = Timestamp()
    credits = fields.Integer()
    split = fields.List(fields.Integer())


class UsageSummarySchema(Schema):
    user_id = fields.UUID()
    granularity = fields.String()
    first = fields.Date(data_key="from")
    last = fields.Date(data_key="to")
    tz = fields.String()
    group_by = fields.String(allow_none=True)
    series = fields.List(fields.Dict())
    total = fields.Integer()
    buckets = fields.List(fields.Nested(BucketSchema))



class NextExpirySchema(Schema):
    credits = fields.Integer(attribute="next_expiry_credits")
    expires_at = Timestamp(attribute="next_expiry_at")


class BalanceSchema(Schema):
    user_id = fields.UUID()
    balance = fields.Integer()
    held = fields.Integer()
    available = fields.Integer()
    paid = fields.Integer()
    promotional = fields.Integer()
    next_expiry = fields.Method("_next_expiry")

    def _next_expiry(self, balance: Any) -> dict[str, Any] | None:
        return None if balance.next_expiry_at is None else NextExpirySchema().dump(balance)


class LotSchema(Schema):
    id = fields.UUID()
    user_id = fields.UUID()
    transaction_id = fields.UUID(allow_none=True)
    category = fields.String()
    credits = fields.Integer()
    remaining = fields.Integer()
    held = fields.Integer()
    priority = fields.Integer()
    expires_at = Timestamp(allow_none=True)
    cost_basis = fields.Method("_cost_basis")
    created_at = Timestamp()
    status = fields.String()

    def _cost_basis(self, lot: Any) -> str:
        return f"{lot.cost_basis.normalize():f}" if lot.cost_basis else "0"


class LotQuerySchema(StrictSchema):
    user_id = fields.UUID(load_default=None)
    limit = QueryInteger(load_default=20, validate=validate.Range(1, 100))
    cursor = fields.String(load_default=None)
    status = fields.String(load_default="active", validate=validate.OneOf(["active", "all"]))


class EventQuerySchema(StrictSchema):
    limit = QueryInteger(load_default=100, validate=validate.Range(1, 100))
    after = fields.String(load_default=None)
    types = fields.List(
        fields.String(validate=validate.OneOf(EVENT_TYPES)), load_default=list, data_key="type",
        validate=validate.Length(max=len(EVENT_TYPES)),
    )
    user_id = fields.UUID(load_default=None)


def _event_types(**options: Any) -> fields.List:
    return fields.List(
        fields.String(validate=validate.OneOf(EVENT_TYPES)),
        validate=[validate.Length(1, len(EVENT_TYPES)), _unique], **options,
    )


def _unique(values: list[str]) -> None:
    if len(set(values)) != len(values):
        raise ValidationError("Name each event type once.")


class NewWebhookEndpointSchema(StrictSchema):
    url = fields.String(required=True, validate=validate.Length(1, 2048))
    event_types = _event_types(required=True)
    description = Text(load_default="", validate=validate.Length(1, MAX_DESCRIPTION_LENGTH))


class WebhookEndpointChangesSchema(StrictSchema):
    url = fields.String(validate=validate.Length(1, 2048))
    event_types = _event_types()
    description = Text(validate=validate.Length(1, MAX_DESCRIPTION_LENGTH))
    disabled = StrictBoolean()


class DeliveriesQuerySchema(StrictSchema):
    limit = QueryInteger(load_default=20, validate=validate.Range(1, 100))
    cursor = fields.String(load_default=None)


def webhook_endpoint_json(endpoint: Any, secret: str | None = None) -> dict[str, Any]:
    """An endpoint (``WebhookEndpoint`` in openapi.yaml); its secret only when just made or rotated."""
    body = endpoint._asdict()
    if secret is not None:
        body["secret"] = secret
    return body


def deliveries_page_json(page: Any) -> dict[str, Any]:
    """An endpoint's deliveries (``DeliveriesPage``), each with its attempts."""
    return {
        "data": [
            {**delivery_json(delivery), "attempt_log": [
                {name: value for name, value in attempt._asdict().items() if name != "delivery_id"}
                for attempt in page.attempts[delivery.id]
            ]}
            for delivery in page.deliveries
        ],
        "has_more": page.has_more,
        "next_cursor": page.next_cursor,
    }


def delivery_json(delivery: Any) -> dict[str, Any]:
    """A delivery (``WebhookDelivery``) without its attempts."""
    return delivery._asdict()


class PostingSchema(Schema):
    lot_id = fields.UUID()
    credits = fields.Integer()
    held = fields.Integer()
    created_at = Timestamp()


class UserSchema(Schema):
    id = fields.UUID()
    created_at = Timestamp()
    low_balance_threshold = fields.Integer(allow_none=True)


class RegisterUserSchema(StrictSchema):
    """The body of a registration, optional: the user's low-balance threshold (null: no alerts)."""

    low_balance_threshold = StrictInteger(allow_none=True, validate=validate.Range(0, MAX_CREDITS))


def transaction_json(transaction: Transaction, postings: list[Posting] | None = None) -> str:
    """A transaction as every endpoint returns it (``Transaction`` in openapi.yaml), as compact JSON text.

    A single transaction's read adds its ``postings`` (``TransactionDetail``); pages stay lean.
    """
    t = transaction
    detail = "" if postings is None else f',"postings":{json.dumps(_posting.dump(postings, many=True), separators=(",", ":"))}'
    return (
        f'{{"id":"{t.id}","user_id":"{t.user_id}","type":"{t.type}","amount":"{t.amount}","credits":{t.credits},'
        f'"description":{_json_string(t.description)},"status":"{t.status}",'
        f'"created_at":"{t.created_at}","updated_at":"{t.updated_at}","hold_expires_at":{_nullable(t.hold_expires_at)},'
        f'"refunds":{_nullable(t.refunds)},"reverses":{_nullable(t.reverses)},'
        f'"metadata":{json.dumps(t.metadata or {}, separators=(",", ":"))},'
        f'"reference":{"null" if t.reference is None else _json_string(t.reference)}{detail}}}'
    )


def _nullable(text: str | None) -> str:
    """A field PostgreSQL formatted (a timestamp, an id: nothing to escape) as JSON, or null."""
    return "null" if text is None else f'"{text}"'


def lots_page_json(page: LotsPage) -> dict[str, Any]:
    return {"data": _lot.dump(page.lots, many=True), "has_more": page.has_more, "next_cursor": page.next_cursor}


def event_json(e: Event) -> str:
    """An event (``Event`` in openapi.yaml) as compact JSON text, its data as written."""
    return (
        f'{{"id":"{e.id}","type":"{e.type}","created_at":"{e.created_at}","user_id":"{e.user_id}",'
        f'"sequence":{e.sequence},"data":{e.data}}}'
    )


def events_page_json(page: EventsPage) -> str:
    """A page of the event feed (``EventsPage`` in openapi.yaml) as compact JSON text."""
    rows = ",".join(event_json(e) for e in page.events)
    cursor = "null" if page.next_cursor is None else f'"{page.next_cursor}"'
    return f'{{"data":[{rows}],"has_more":{"true" if page.has_more else "false"},"next_cursor":{cursor}}}'


def _result_json(index: int, result: ItemResult) -> str:
    transaction = "null" if result.transaction is None else transaction_json(result.transaction)
    problem = "null" if result.problem is None else json.dumps(problem_body(result.problem), separators=(",", ":"))
    return (f'{{"index":{index},"status":{result.status},"replayed":{"true" if result.replayed else "false"},'
            f'"transaction":{transaction},"problem":{problem}}}')


def batch_json(results: list[ItemResult]) -> str:
    """A batch's answers (``BatchResults`` in openapi.yaml), one per item in item order, as compact JSON."""
    return f'{{"results":[{",".join(_result_json(i, result) for i, result in enumerate(results))}]}}'


def history_page_json(page: HistoryPage) -> str:
    """A page of history (``HistoryPage`` in openapi.yaml) as compact JSON text."""
    cursor = "null" if page.next_cursor is None else f'"{page.next_cursor}"'
    rows = ",".join(transaction_json(transaction) for transaction in page.transactions)
    return f'{{"data":[{rows}],"has_more":{"true" if page.has_more else "false"},"next_cursor":{cursor}}}'


_posting = PostingSchema()
_lot = LotSchema()
