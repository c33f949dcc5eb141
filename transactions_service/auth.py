"""Who is calling: a signed-in user or one of the product's services.

A *user token* carries the user's UUID (in ``sub``, or the claim named by
``JWT_IDENTITY_CLAIM``) and reads only that user's data. A *service token*
has ``sub`` = the service's name and a ``scope`` claim listing some of
:data:`SERVICE_SCOPES`; a ``scope`` claim without any of them (as identity
providers put on user tokens) does not make a service.
"""

from __future__ import annotations

import functools
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jwt as pyjwt
from flask import Flask, current_app, request
from flask_jwt_extended import get_jwt, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTExtendedException

from .errors import ApiError, problem_response, validation_error
from .extensions import jwt

READ_TRANSACTIONS = "transactions:read"
WRITE_PURCHASES = "purchases:write"
WRITE_USAGE = "usage:write"
WRITE_USERS = "users:write"
SERVICE_SCOPES = frozenset({READ_TRANSACTIONS, WRITE_PURCHASES, WRITE_USAGE, WRITE_USERS})
_CALLER_KEY = "transactions_service.caller"
_INSUFFICIENT_SCOPE = {"WWW-Authenticate": 'Bearer error="insufficient_scope"'}


@dataclass(frozen=True)
class Caller:
    """The authenticated caller of the current request."""

    name: str
    user_id: uuid.UUID | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)

    @property
    def is_service(self) -> bool:
        return self.user_id is None

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise ApiError(
                403,
                "insufficient_scope",
                f"This operation needs the {scope!r} scope, which the token does not grant.",
                title="Forbidden",
                headers=_INSUFFICIENT_SCOPE,
            )

    def require_any_scope(self, scopes: Iterable[str]) -> None:
        scopes = list(scopes)
        if not self.scopes.intersection(scopes):
            raise ApiError(
                403,
                "insufficient_scope",
                f"This operation needs one of the scopes {', '.join(scopes)}.",
                title="Forbidden",
                headers=_INSUFFICIENT_SCOPE,
            )

    def readable_user(self, requested: uuid.UUID | None) -> uuid.UUID:
        """The user whose data this caller may read, given the ``user_id`` it asked for."""
        if self.user_id is not None:
            if requested is not None and requested != self.user_id:
                raise ApiError(403, "forbidden", "A user token reads only its own user's data.", title="Forbidden")
            return self.user_id
        self.require_scope(READ_TRANSACTIONS)
        if requested is None:
            raise validation_error(
                {"user_id": ["Missing data for required field."]}, "Service callers must name the user they read."
            )
        return requested

    def can_read(self, owner: uuid.UUID) -> bool:
        """Whether this caller may see a row of ``owner``'s (services: after :meth:`require_read`)."""
        return self.user_id is None or self.user_id == owner

    def require_read(self) -> None:
        if self.user_id is None:
            self.require_scope(READ_TRANSACTIONS)


def invalid_token(detail: str) -> ApiError:
    """401 for a token that was sent but cannot be accepted."""
    return ApiError(
        401, "invalid_token", detail, title="Unauthorized", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )


def caller_from_claims(claims: dict[str, Any]) -> Caller:
    raw_scope = claims.get("scope")
    scopes = frozenset(raw_scope.split()) if isinstance(raw_scope, str) else frozenset()
    service_scopes = scopes & SERVICE_SCOPES
    if service_scopes:
        return Caller(name=str(claims["sub"]), scopes=service_scopes)
    claim = current_app.config["USER_IDENTITY_CLAIM"]
    identity = claims.get(claim)
    try:
        user_id = uuid.UUID(identity) if isinstance(identity, str) else None
    except ValueError:
        user_id = None
    if user_id is None:
        raise invalid_token(f"The token's {claim!r} claim is not a user id (a UUID).")
    return Caller(name=str(user_id), user_id=user_id)


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
    """The caller of this request, verified once per request (and once per process, see VerifiedTokens)."""
    caller = request.environ.get(_CALLER_KEY)
    if caller is not None:
        return caller
    authorization = request.headers.get("Authorization")
    verified: VerifiedTokens = current_app.extensions["transactions_verified_tokens"]
    caller = verified.get(authorization) if authorization else None
    if caller is None:
        verify_jwt_in_request()
        claims = get_jwt()
        caller = caller_from_claims(claims)
        # PyJWT compares the current time with exp as a whole second; so does the cache.
        verified.put(authorization, caller, float(math.floor(claims["exp"])))
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
    jwt.decode_key_loader(lambda header, claims: current_app.extensions["transactions_key_resolver"](header, claims))

    @jwt.token_verification_loader
    def _has_expiry(_header: dict[str, Any], claims: dict[str, Any]) -> bool:
        return isinstance(claims.get("exp"), (int, float))

    def _reject(detail: str) -> Callable[..., Any]:
        return lambda *_args: problem_response(invalid_token(detail))

    jwt.unauthorized_loader(
        lambda reason: problem_response(
            ApiError(
                401,
                "missing_token",
                "Send a bearer token in the Authorization header.",
                title="Unauthorized",
                headers={"WWW-Authenticate": "Bearer"},
            )
        )
    )
    jwt.invalid_token_loader(lambda reason: problem_response(invalid_token("The token is malformed or its signature is invalid.")))
    jwt.expired_token_loader(_reject("The token has expired."))
    jwt.token_verification_failed_loader(_reject("The token has no expiry (exp) claim."))
    jwt.revoked_token_loader(_reject("The token has been revoked."))
    jwt.needs_fresh_token_loader(_reject("The token is not accepted here."))
    jwt.user_lookup_error_loader(_reject("The token's identity is unknown."))

    # Anything PyJWT or flask-jwt-extended raises that the loaders above do not catch.
    @app.errorhandler(pyjwt.PyJWTError)
    @app.errorhandler(JWTExtendedException)
    def _token_error(_error: Exception) -> Any:
        return problem_response(invalid_token("The token could not be verified."))


def issue_token(
    subject: str,
    *,
    scopes: Iterable[str] = (),
    expires_in: int = 3600,
    extra_claims: dict[str, Any] | None = None,
) -> str:
    """Sign a token the way an identity provider would: only ``sub``, ``iat``, ``exp`` (and ``scope``)."""
    config = current_app.config
    signing_key = config.get("JWT_SECRET_KEY") or config.get("JWT_PRIVATE_KEY")
    if not signing_key:
        raise RuntimeError("Issuing tokens needs JWT_SECRET_KEY, or JWT_PRIVATE_KEY beside JWT_PUBLIC_KEY")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "iat": now, "exp": now + expires_in}
    scopes = sorted(set(scopes))
    if scopes:
        claims["scope"] = " ".join(scopes)
    if config.get("JWT_DECODE_AUDIENCE"):
        claims["aud"] = config["JWT_DECODE_AUDIENCE"]
    if config.get("JWT_DECODE_ISSUER"):
        claims["iss"] = config["JWT_DECODE_ISSUER"]
    claims.update(extra_claims or {})
    return pyjwt.encode(claims, signing_key, algorithm=config["JWT_ALGORITHM"])
