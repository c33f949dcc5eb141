"""Where a webhook may be sent: the server-side request forgery guard (OWASP API7).

A webhook URL is chosen by a caller and fetched by us, from inside our
network. So only ``https`` URLs are accepted, and a host that resolves to a
loopback, private, link-local (the cloud metadata service at 169.254.169.254
among them), multicast, reserved or unspecified address is refused, at
registration and again before every delivery (a name may resolve elsewhere
later). ``WEBHOOK_ALLOW_HTTP`` and ``WEBHOOK_ALLOW_PRIVATE_NETWORKS`` lift
the two rules for local development and tests.

A delivery is sent to the very address that was checked (``pin``, ``post``):
the name is resolved once, the request goes to that IP with the original
``Host`` header, and TLS sends and verifies the original name. A resolver
that answers a public address to the check and an internal one to the
connection (DNS rebinding) therefore gets nothing. Redirects are never
followed, so a public URL cannot bounce a delivery inward.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_PORTS = {"http": 80, "https": 443}


class DestinationRefused(ValueError):
    """Why a URL may not receive webhooks, in words a caller can act on."""


@dataclass(frozen=True)
class _Target:
    """A URL taken apart once, so the check and the request read the same host, port and path."""

    scheme: str
    host: str  # lower case and ASCII (IDNA), an IP literal without brackets
    port: int
    path: str  # the path and query the request line carries


@dataclass(frozen=True)
class Pinned:
    """A checked URL bound to the one address it was checked at."""

    url: str  # the URL with its host replaced by that address
    address: IPAddress
    host_header: str  # the original host, with the port when it is not the scheme's default
    sni_hostname: str | None  # the name TLS sends and the certificate must carry; None for http and IP literals


def _target(url: str, allow_http: bool) -> _Target:
    parts = urlsplit(url)
    schemes = {"https", "http"} if allow_http else {"https"}
    if parts.scheme not in schemes:
        raise DestinationRefused("Webhook URLs must use https." if not allow_http else "Use an http or https URL.")
    if not parts.hostname:
        raise DestinationRefused("The URL has no host.")
    if parts.username or parts.password:
        raise DestinationRefused("The URL may not carry credentials; authenticate the signature instead.")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as error:
        raise DestinationRefused("The URL's port is not a number from 1 to 65535.") from error
    try:
        host = parts.hostname.encode("idna").decode("ascii")
    except UnicodeError as error:
        raise DestinationRefused(f"The host {parts.hostname!r} is not a valid host name.") from error
    return _Target(parts.scheme, host, port, (parts.path or "/") + (f"?{parts.query}" if parts.query else ""))


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _addresses(host: str, port: int) -> list[IPAddress]:
    """The host's addresses in the resolver's order: an IP literal as it is, a name asked once."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise DestinationRefused(f"The host {host!r} does not resolve.") from error
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in found))
    if not addresses:
        raise DestinationRefused(f"The host {host!r} does not resolve.")
    return addresses


def _internal(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified)


def _allowed_addresses(target: _Target, allow_private: bool) -> list[IPAddress]:
    """The one rule: every address the host resolves to must be outside private networks (unless allowed)."""
    addresses = _addresses(target.host, target.port)
    internal = sorted(str(address) for address in addresses if _internal(address))
    if internal and not allow_private:
        raise DestinationRefused(
            f"The host {target.host!r} resolves to {', '.join(internal)}, an address inside a private network."
        )
    return addresses


def check(url: str, *, allow_http: bool, allow_private: bool) -> None:
    """Refuse a URL that webhooks may not be sent to (DestinationRefused says why)."""
    target = _target(url, allow_http)
    if not allow_private:
        _allowed_addresses(target, allow_private=False)


def pin(url: str, *, allow_http: bool, allow_private: bool) -> Pinned:
    """Check ``url`` as ``check`` does, resolving it once, and say how to send to exactly the address checked."""
    target = _target(url, allow_http)
    address = _allowed_addresses(target, allow_private)[0]
    port = "" if target.port == DEFAULT_PORTS[target.scheme] else f":{target.port}"
    literal = _literal(target.host)
    netloc = f"[{address}]" if address.version == 6 else str(address)
    host = f"[{target.host}]" if literal is not None and literal.version == 6 else target.host
    sni_hostname = target.host if target.scheme == "https" and literal is None else None
    return Pinned(urlunsplit((target.scheme, netloc + port, target.path, "", "")), address, host + port, sni_hostname)


def post(client: httpx.Client, url: str, *, content: bytes, headers: Mapping[str, str], allow_http: bool,
         allow_private: bool) -> httpx.Response:
    """POST to the address ``url`` is checked at now, never to a second answer of the resolver; no redirects."""
    pinned = pin(url, allow_http=allow_http, allow_private=allow_private)
    sent = httpx.Headers(headers)
    sent["host"] = pinned.host_header
    extensions = {}
    if pinned.sni_hostname is not None:
        extensions["sni_hostname"] = pinned.sni_hostname
        # The pool keys connections by address alone: one verified for this name must not carry another's request.
        sent["connection"] = "close"
    return client.post(pinned.url, content=content, headers=sent, extensions=extensions, follow_redirects=False)
