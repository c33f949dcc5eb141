"""Who is calling: a signed-in user, or one of the product's services.

A *user* presents a JWT from the identity provider, verified only with its key
(``JWT_SECRET_KEY``, ``JWT_PUBLIC_KEY`` or ``JWT_JWKS_URL``). Whatever claims
it carries, it is a user: the user's UUID is read from ``sub`` (or the claim
named by ``JWT_IDENTITY_CLAIM``), a ``scope`` claim grants nothing, and it
reads only that user's data. Its life is bounded: ``iat`` and ``exp`` are
required, at most ``JWT_MAX_LIFETIME_SECONDS`` apart, and ``nbf`` is honoured.

A *service* presents an API key (``api_keys``): revocable, rotatable, scoped,
and in a format no JWT can take. Our privileges never depend on what another
system puts into its tokens.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jwt as pyjwt
from flask import Flask, current_app, request
from flask_jwt_extended import decode_token
from flask_jwt_extended.exceptions import JWTExtendedException

from . import api_keys, strict_json
from .errors import ApiError, problem_response
from .extensions import jwt

log = logging.getLogger(__name__)

_CALLER_KEY = "transactions_service.caller"
# RFC 7235: the scheme is case-insensitive, then one or more spaces, then token68.
_BEARER = re.compile(r"([A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*) +([A-Za-z0-9._~+/-]+=*)")


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of the current request (what it may do: ``ledger.policy``)."""

    name: str
    user_id: uuid.UUID | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    # The API key's id for a service (logs show it); None for a user.
    key_id: str | None = None

    @property
    def is_service(self) -> bool:
        return self.user_id is None


def invalid_token(detail: str) -> ApiError:
    """401 for a token that was sent but cannot be accepted."""
    return ApiError(
        401, "invalid_token", detail, title="Unauthorized", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )


def missing_token() -> ApiError:
    return ApiError(
        401,
        "missing_token",
        "Send a bearer token (a user's JWT, or a service's API key) in the Authorization header.",
        title="Unauthorized",
        headers={"WWW-Authenticate": "Bearer"},
    )


def bearer_credentials(authorization: str | None) -> str:
    """The credentials of an ``Authorization: Bearer ...`` header; the scheme's case does not matter."""
    if not authorization:
        raise missing_token()
    match = _BEARER.fullmatch(authorization)
    if match is None:
        if authorization.lower().startswith("bearer"):
            raise invalid_token("The Authorization header is not 'Bearer' followed by one token.")
        raise missing_token()
    if match[1].lower() != "bearer":
        raise missing_token()
    return match[2]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _refuse_repeated_members(token: str) -> None:
    """A header or payload naming a member twice is refused: its verifiers could disagree on what it says."""
    parts = token.split(".")
    if len(parts) != 3:
        raise invalid_token("The token is malformed or its signature is invalid.")
    for part in parts[:2]:
        try:
            strict_json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except (binascii.Error, strict_json.NotStrictJson) as exc:
            raise invalid_token("The token's header or payload is not valid JSON, or names a member twice.") from exc


def _check_lifetime(claims: dict[str, Any]) -> None:
    exp, iat = claims.get("exp"), claims.get("iat")
    if not _is_number(exp):
        raise invalid_token("The token has no expiry (exp) claim.")
    if not _is_number(iat):
        raise invalid_token("The token has no issue time (iat) claim.")
    limit = current_app.config["JWT_MAX_LIFETIME_SECONDS"]
    if exp - iat > limit:
        raise invalid_token(f"The token lives longer than this service accepts: at most {limit} s from iat to exp.")


def user_from_claims(claims: dict[str, Any]) -> Caller:
    """The user a verified token names; whatever else it claims (``scope`` included) grants nothing."""
    claim = current_app.config["USER_IDENTITY_CLAIM"]
    identity = claims.get(claim)
    try:
        user_id = uuid.UUID(identity) if isinstance(identity, str) else None
    except ValueError:
        user_id = None
    if user_id is None:
        raise invalid_token(f"The token's {claim!r} claim is not a user id (a UUID).")
    return Caller(name=str(user_id), user_id=user_id)


_TOKEN_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (pyjwt.ExpiredSignatureError, "The token has expired."),
    (pyjwt.ImmatureSignatureError, "The token is not valid yet (its nbf or iat lies in the future)."),
    (pyjwt.InvalidAudienceError, "The token is not meant for this service (aud)."),
    (pyjwt.InvalidIssuerError, "The token was not issued by the configured identity provider (iss)."),
)


def _decoded(token: str) -> dict[str, Any]:
    """The token's claims, verified with the identity provider's key (and aud, iss, exp, nbf, iat)."""
    try:
        return decode_token(token)
    except (pyjwt.PyJWTError, JWTExtendedException) as exc:
        for kind, detail in _TOKEN_ERRORS:
            if isinstance(exc, kind):
                raise invalid_token(detail) from exc
        raise invalid_token("The token is malformed or its signature is invalid.") from exc


def _user_caller(token: str) -> Caller:
    verified: VerifiedTokens = current_app.extensions["transactions_verified_tokens"]
    caller = verified.get(token)
    if caller is None:
        _refuse_repeated_members(token)
        claims = _decoded(token)
        _check_lifetime(claims)
        caller = user_from_claims(claims)
        # PyJWT compares the current time with exp as a whole second; so does the cache.
        verified.put(token, caller, float(math.floor(claims["exp"])))
    return caller


def _service_caller(key: str) -> Caller:
    verifier: api_keys.KeyVerifier = current_app.extensions["transactions_key_verifier"]
    try:
        verified = verifier.verify(key)
    except api_keys.InvalidKey as exc:
        raise invalid_token(exc.detail) from exc
    return Caller(name=verified.name, scopes=verified.scopes, key_id=verified.id)


def verified_caller() -> Caller | None:
    """The caller, if this request's token has already been verified; never verifies."""
    return request.environ.get(_CALLER_KEY)


class VerifiedTokens:
    """Tokens verified recently, so that a token sent again skips decoding and the signature check.

    A browser or a service sends the same token with every request until it
    expires; verifying it once per process instead of once per request saves
    most of what authentication costs. An entry lasts until the token's
    ``exp`` or ``ttl`` seconds, whichever is first; the oldest entries make
    room when ``size`` are held. Only tokens that passed every check are
    kept: a refused token is checked again each time. A signing key withdrawn
    from the identity provider's JWKS is honoured for tokens seen before for
    up to ``ttl`` more seconds, beside the JWKS cache's own lifetime
    (``JWT_JWKS_CACHE_SECONDS``) during which it verifies new tokens too.
    """

    def __init__(self, size: int, ttl: int) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> Caller | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if entry[0] <= time.time():
            with self._lock:
                self._entries.pop(token, None)
            return None
        return entry[1]

    def put(self, token: str, caller: Caller, expires_at: float) -> None:
        if self.size <= 0:
            return
        with self._lock:
            while len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[token] = (min(expires_at, time.time() + self.ttl), caller)


def current_caller() -> Caller:
    """The caller of this request, verified once per request (and cached per process, see above)."""
    caller = request.environ.get(_CALLER_KEY)
    if caller is not None:
        return caller
    credentials = bearer_credentials(request.headers.get("Authorization"))
    caller = _service_caller(credentials) if api_keys.looks_like_key(credentials) else _user_caller(credentials)
    request.environ[_CALLER_KEY] = caller
    return caller


F = TypeVar("F", bound=Callable[..., Any])


def authenticated(view: F) -> F:
    """Require a valid token; the view reads the caller with :func:`current_caller`."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        current_caller()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _identity_provider_unavailable() -> ApiError:
    return ApiError(
        503,
        "identity_provider_unavailable",
        "The identity provider's signing keys could not be fetched; retry shortly.",
        title="Service Unavailable",
        headers={"Retry-After": "5"},
    )


class _KeyResolver:
    """Finds the key that verifies a token, from the configured source."""

    def __init__(self, app: Flask) -> None:
        self.source = app.config["JWT_KEY_SOURCE"]
        self.key = app.config.get("JWT_SECRET_KEY") or app.config.get("JWT_PUBLIC_KEY")
        self.jwks: pyjwt.PyJWKClient | None = None
        if self.source == "JWT_JWKS_URL":
            self.jwks = pyjwt.PyJWKClient(
                app.config["JWT_JWKS_URL"],
                cache_keys=False,
                lifespan=app.config["JWT_JWKS_CACHE_SECONDS"],
                cooldown_duration=app.config["JWT_JWKS_REFRESH_COOLDOWN_SECONDS"],
                timeout=5,
            )

    def __call__(self, header: dict[str, Any], _claims: dict[str, Any]) -> Any:
        if self.jwks is None:
            return self.key
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise invalid_token("The token names no signing key (kid).")
        try:
            self.jwks.get_jwk_set()  # cached; a broken endpoint fails here, not as an unknown key
        except (pyjwt.PyJWKClientError, pyjwt.PyJWKSetError, ValueError) as exc:
            raise _identity_provider_unavailable() from exc
        try:
            return self.jwks.get_signing_key(kid).key
        except pyjwt.PyJWKClientConnectionError as exc:
            raise _identity_provider_unavailable() from exc
        except (pyjwt.PyJWKClientError, pyjwt.PyJWKSetError) as exc:
            raise invalid_token("The token is signed with a key the identity provider does not publish.") from exc
        except ValueError as exc:
            raise _identity_provider_unavailable() from exc


def init_auth(app: Flask) -> None:
    jwt.init_app(app)
    # The JWTManager is shared by every app in the process; the key source is per app.
    app.extensions["transactions_key_resolver"] = _KeyResolver(app)
    app.extensions["transactions_verified_tokens"] = VerifiedTokens(
        app.config["TOKEN_CACHE_SIZE"], app.config["TOKEN_CACHE_SECONDS"]
    )
    app.extensions["transactions_key_verifier"] = api_keys.KeyVerifier(app.config["API_KEY_CACHE_SECONDS"])
    jwt.decode_key_loader(lambda header, claims: current_app.extensions["transactions_key_resolver"](header, claims))
    if not app.config.get("JWT_DECODE_AUDIENCE"):
        log.warning(
            "JWT_DECODE_AUDIENCE is not set: user tokens are accepted whatever API the identity provider issued "
            "them for. Set it to the audience your identity provider puts in this service's tokens."
        )

    # Anything PyJWT or flask-jwt-extended raises outside token verification.
    @app.errorhandler(pyjwt.PyJWTError)
    @app.errorhandler(JWTExtendedException)
    def _token_error(_error: Exception) -> Any:
        return problem_response(invalid_token("The token could not be verified."))


def issue_token(
    user_id: str,
    *,
    expires_in: int = 3600,
    extra_claims: dict[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> str:
    """Sign a user token the way an identity provider would: ``sub``, ``iat``, ``exp`` (and ``aud``, ``iss``).

    ``config`` is the app's by default, or ``config.token_settings()`` where there is no app (no database).
    """
    config = current_app.config if config is None else config
    signing_key = config.get("JWT_SECRET_KEY") or config.get("JWT_PRIVATE_KEY")
    if not signing_key:
        raise RuntimeError("Issuing tokens needs JWT_SECRET_KEY, or JWT_PRIVATE_KEY beside JWT_PUBLIC_KEY")
    if not 0 < expires_in <= config["JWT_MAX_LIFETIME_SECONDS"]:
        raise ValueError(f"a token lives at most JWT_MAX_LIFETIME_SECONDS ({config['JWT_MAX_LIFETIME_SECONDS']} s)")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + expires_in}
    if config.get("JWT_DECODE_AUDIENCE"):
        claims["aud"] = config["JWT_DECODE_AUDIENCE"]
    if config.get("JWT_DECODE_ISSUER"):
        claims["iss"] = config["JWT_DECODE_ISSUER"]
    claims.update(extra_claims or {})
    return pyjwt.encode(claims, signing_key, algorithm=config["JWT_ALGORITHM"])
