"""Where a webhook may be sent: the server-side request forgery guard (OWASP API7).

A webhook URL is chosen by a caller and fetched by us, from inside our
network. So only ``https`` URLs are accepted, and a host that resolves to a
loopback, private, link-local (the cloud metadata service at 169.254.169.254
among them), multicast, reserved or unspecified address is refused, at
registration and again before every delivery (a name may resolve elsewhere
later). ``WEBHOOK_ALLOW_HTTP`` and ``WEBHOOK_ALLOW_PRIVATE_NETWORKS`` lift
the two rules for local development and tests. Redirects are never followed
(the worker's client), so a public URL cannot bounce a delivery inward.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit


class DestinationRefused(ValueError):
    """Why a URL may not receive webhooks, in words a caller can act on."""


def _addresses(host: str, port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise DestinationRefused(f"The host {host!r} does not resolve.") from error
    return {ipaddress.ip_address(info[4][0].split("%")[0]) for info in found}


def _internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
            or address.is_reserved or address.is_unspecified)


def check(url: str, *, allow_http: bool, allow_private: bool) -> None:
    """Refuse a URL that webhooks may not be sent to (DestinationRefused says why)."""
    parts = urlsplit(url)
    schemes = {"https", "http"} if allow_http else {"https"}
    if parts.scheme not in schemes:
        raise DestinationRefused("Webhook URLs must use https." if not allow_http else "Use an http or https URL.")
    if not parts.hostname:
        raise DestinationRefused("The URL has no host.")
    if parts.username or parts.password:
        raise DestinationRefused("The URL may not carry credentials; authenticate the signature instead.")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise DestinationRefused("The URL's port is not a number from 1 to 65535.") from error
    if allow_private:
        return
    internal = sorted(str(address) for address in _addresses(parts.hostname, port) if _internal(address))
    if internal:
        raise DestinationRefused(
            f"The host {parts.hostname!r} resolves to {', '.join(internal)}, an address inside a private network."
        )
