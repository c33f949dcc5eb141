"""API keys: the credentials of the product's services, which no user token can become.

A service sends ``Authorization: Bearer tsk_<id>_<secret><check>``:

- ``tsk_`` marks the text as one of this service's keys, for logs and secret scanners;
- ``<id>`` (12 base62 characters) names the key; it is not secret, and logs show it;
- ``<secret>`` (43 base62 characters) holds 256 random bits;
- ``<check>`` (6 base62 characters) is the CRC32 of everything before it, so a
  mistyped or truncated key is refused without a database lookup, and a
  scanner can tell a real key from a look-alike offline.

The database keeps only the SHA-256 of the secret, with the key's name,
scopes and times (created, last used, expires, revoked). A plain hash is
enough for 256 random bits; slow password hashes defend guessable secrets
and would cost milliseconds on every cache miss (ADR 0004).

Verifying a key reads its row at most once per ``API_KEY_CACHE_SECONDS`` per
worker, so a revoked key stops working on every worker within that time;
an expiry (the end of a rotation's grace period) is checked on every request.
``last_used_at`` is written at most once a minute per key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import ARRAY, CheckConstraint, DateTime, Index, LargeBinary, Text, func, or_, select, update
from sqlalchemy.orm import Mapped, mapped_column

from .extensions import db, run_statement
from .ids import utcnow
from .scopes import SERVICE_SCOPES

KEY_PREFIX = "tsk_"
ID_LENGTH = 12
SECRET_LENGTH = 43
CHECK_LENGTH = 6
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
LAST_USED_RESOLUTION = timedelta(minutes=1)

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_KEY = re.compile(
    rf"{KEY_PREFIX}([0-9A-Za-z]{{{ID_LENGTH}}})_([0-9A-Za-z]{{{SECRET_LENGTH}}})([0-9A-Za-z]{{{CHECK_LENGTH}}})"
)
_NAME = re.compile(NAME_PATTERN)
_SCOPE_LIST = ", ".join(f"'{scope}'" for scope in sorted(SERVICE_SCOPES))


class ApiKey(db.Model):
    """A service's key: its hash, never its secret."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(f"id ~ '^[0-9A-Za-z]{{{ID_LENGTH}}}$'", name="id_format"),
        CheckConstraint(f"name ~ '{NAME_PATTERN}'", name="name_format"),
        CheckConstraint("octet_length(secret_hash) = 32", name="secret_hash_length"),
        CheckConstraint(f"cardinality(scopes) >= 1 AND scopes <@ ARRAY[{_SCOPE_LIST}]::text[]", name="scopes_known"),
        Index("ix_api_keys_name", "name"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The end of a rotation's grace period (or of a key made to expire); NULL: never.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None:
            return "expired" if self.expires_at <= now else "expiring"
        return "active"


class KeyRequestError(ValueError):
    """A key management request that cannot be carried out (unknown name, bad scope)."""


class InvalidKey(Exception):
    """A presented key that does not authenticate; ``detail`` says why, safely."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class IssuedKey:
    """A key just made: the only moment its full text exists outside the caller's hands."""

    id: str
    name: str
    scopes: tuple[str, ...]
    key: str


@dataclass(frozen=True)
class VerifiedKey:
    """Who a verified key speaks for."""

    id: str
    name: str
    scopes: frozenset[str]


class _KeyRow(NamedTuple):
    id: str
    name: str
    scopes: list[str]
    secret_hash: bytes
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


def _base62(data: bytes, length: int) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    for _ in range(length):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))


def _check(text: str) -> str:
    return _base62(zlib.crc32(text.encode()).to_bytes(4, "big"), CHECK_LENGTH)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def looks_like_key(credentials: str) -> bool:
    """Whether bearer credentials are meant as an API key (rather than a JWT, which starts ``eyJ``)."""
    return credentials.startswith(KEY_PREFIX)


def parse(text: str) -> tuple[str, str] | None:
    """The key's (id, secret), or None if the text is not a well-formed key with a correct check."""
    match = _KEY.fullmatch(text)
    if match is None or not hmac.compare_digest(_check(text[: -CHECK_LENGTH]), match[3]):
        return None
    return match[1], match[2]


class NewKey(NamedTuple):
    id: str
    secret_hash: bytes
    text: str


def generate() -> NewKey:
    """A fresh key: its id, the hash the database keeps, and the text only its owner keeps."""
    key_id = _base62(secrets.token_bytes(9), ID_LENGTH)
    secret = _base62(secrets.token_bytes(32), SECRET_LENGTH)
    body = f"{KEY_PREFIX}{key_id}_{secret}"
    return NewKey(key_id, _digest(secret), body + _check(body))


def validate_request(name: str, scopes: list[str]) -> tuple[str, ...]:
    """The scopes, sorted and unique, if ``name`` and ``scopes`` make a valid key; else KeyRequestError."""
    if not _NAME.fullmatch(name):
        raise KeyRequestError(
            "a key name is 1 to 63 of a-z 0-9 . _ - and starts with a letter or digit (e.g. payment-service)"
        )
    unknown = sorted(set(scopes) - SERVICE_SCOPES)
    if not scopes or unknown:
        raise KeyRequestError(
            f"--scope needs one or more of: {', '.join(sorted(SERVICE_SCOPES))}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    return tuple(sorted(set(scopes)))


def _insert(name: str, scopes: tuple[str, ...], expires_at: datetime | None) -> IssuedKey:
    new = generate()
    db.session.add(ApiKey(id=new.id, name=name, secret_hash=new.secret_hash, scopes=list(scopes), expires_at=expires_at))
    return IssuedKey(new.id, name, scopes, new.text)


def create(name: str, scopes: list[str], expires_in: timedelta | None = None) -> IssuedKey:
    """Make a key for the service ``name``; its text is in the result and nowhere else."""
    allowed = validate_request(name, scopes)
    issued = _insert(name, allowed, None if expires_in is None else utcnow() + expires_in)
    db.session.commit()
    return issued


def _active(name: str, now: datetime) -> Any:
    return (
        select(ApiKey)
        .where(ApiKey.name == name, ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now))
        .order_by(ApiKey.created_at.desc(), ApiKey.id)
    )


def rotate(name: str, grace: timedelta) -> IssuedKey:
    """A new key for ``name`` with the newest active key's scopes; the others stop working after ``grace``."""
    now = utcnow()
    try:
        active = db.session.scalars(_active(name, now).with_for_update()).all()
        if not active:
            raise KeyRequestError(f"no active key is named {name!r}: create one with `keys create`")
        issued = _insert(name, tuple(active[0].scopes), None)
        cutoff = now + grace
        for key in active:
            if key.expires_at is None or key.expires_at > cutoff:
                key.expires_at = cutoff
        db.session.commit()
    except BaseException:
        db.session.rollback()
        raise
    return issued


def revoke(id_or_name: str) -> list[str]:
    """Revoke the key with this id, or every key with this name; returns the ids revoked."""
    revoked = db.session.scalars(
        update(ApiKey)
        .where(or_(ApiKey.id == id_or_name, ApiKey.name == id_or_name), ApiKey.revoked_at.is_(None))
        .values(revoked_at=func.now())
        .returning(ApiKey.id)
    ).all()
    db.session.commit()
    if not revoked:
        known = db.session.scalar(select(func.count()).where(or_(ApiKey.id == id_or_name, ApiKey.name == id_or_name)))
        db.session.rollback()
        raise KeyRequestError(
            f"every key with id or name {id_or_name!r} is revoked already" if known
            else f"no key has the id or name {id_or_name!r}"
        )
    return sorted(revoked)


def all_keys() -> list[ApiKey]:
    keys = db.session.scalars(select(ApiKey).order_by(ApiKey.name, ApiKey.created_at, ApiKey.id)).all()
    db.session.rollback()
    return list(keys)


_LOOKUP = (
    "SELECT id, name, scopes, secret_hash, expires_at, revoked_at, last_used_at FROM api_keys WHERE id = %(id)s"
)
# The condition makes concurrent workers write at most once a minute between them.
_TOUCH = (
    "UPDATE api_keys SET last_used_at = now() WHERE id = %(id)s"
    " AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')"
)


def _lookup(key_id: str) -> _KeyRow | None:
    rows = run_statement(_LOOKUP, {"id": key_id}, repeatable=True)
    if not rows:
        return None
    row = _KeyRow(*rows[0])
    return row._replace(secret_hash=bytes(row.secret_hash))


def _verify_row(row: _KeyRow | None, secret: str, now: datetime) -> VerifiedKey:
    if row is None or not hmac.compare_digest(row.secret_hash, _digest(secret)):
        raise InvalidKey("The API key is not one this service issued.")
    if row.revoked_at is not None:
        raise InvalidKey("The API key has been revoked.")
    if row.expires_at is not None and row.expires_at <= now:
        raise InvalidKey("The API key has expired.")
    return VerifiedKey(row.id, row.name, frozenset(row.scopes))


class KeyVerifier:
    """Verifies presented keys, reading each key's row at most once per ``ttl`` seconds (per process).

    The cache holds rows, not verdicts: the secret is checked against the
    row's hash on every request, and so is the expiry.
    """

    def __init__(self, ttl: float, size: int = 1024) -> None:
        self.ttl = ttl
        self.size = size
        self._rows: dict[str, tuple[float, _KeyRow]] = {}
        self._lock = threading.Lock()

    def verify(self, text: str) -> VerifiedKey:
        parsed = parse(text)
        if parsed is None:
            raise InvalidKey("The API key is malformed (check that it was copied whole).")
        key_id, secret = parsed
        now = utcnow()
        cached = self._rows.get(key_id)
        if cached is not None and time.monotonic() - cached[0] < self.ttl:
            return _verify_row(cached[1], secret, now)
        row = _lookup(key_id)
        verified = _verify_row(row, secret, now)
        assert row is not None
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
            run_statement(_TOUCH, {"id": key_id}, repeatable=True)
            row = row._replace(last_used_at=now)
        self._remember(key_id, row)
        return verified

    def _remember(self, key_id: str, row: _KeyRow) -> None:
        with self._lock:
            self._rows.pop(key_id, None)
            while len(self._rows) >= self.size:
                self._rows.pop(next(iter(self._rows)))
            self._rows[key_id] = (time.monotonic(), row)


def find_active(text: str) -> VerifiedKey | None:
    """The key ``text`` speaks for, read afresh from the database, if it works now."""
    parsed = parse(text)
    if parsed is None:
        return None
    try:
        return _verify_row(_lookup(parsed[0]), parsed[1], utcnow())
    except InvalidKey:
        return None
