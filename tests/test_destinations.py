"""Webhook destinations: a delivery goes to the address that was checked, whatever the resolver says next.

The resolver is replaced by one that answers from a script (``Resolver``) and
counts the questions; the opening of TCP connections is watched
(``connections``) so each test sees where a request really went, and only
loopback is ever reached. TLS runs against a local server with certificates
made here by a test authority (the ``cryptography`` package).
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from transactions_service.webhooks import destinations

NAME = "hooks.example.test"
PUBLIC = "93.184.215.14"  # a global address: never connected to, the connection watcher refuses it
PUBLIC_V6 = "2606:4700:4700::1111"
REAL_GETADDRINFO = socket.getaddrinfo
REAL_CREATE_CONNECTION = socket.create_connection


class Resolver:
    """Answers for some names, one list of addresses per question (the last repeated); other hosts resolve as usual.

    ``asked`` counts the questions per host, whoever asked: the guard, or the HTTP client connecting.
    """

    def __init__(self, answers: dict[str, list[tuple[str, ...]]]):
        self.answers, self.asked = answers, {}

    def __call__(self, host, port, *args, **kwargs):
        self.asked[host] = self.asked.get(host, 0) + 1
        if host not in self.answers:
            return REAL_GETADDRINFO(host, port, *args, **kwargs)
        script = self.answers[host]
        found = []
        for address in script[min(self.asked[host], len(script)) - 1]:
            if ":" in address:
                found.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (address, port, 0, 0)))
            else:
                found.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)))
        return found


@pytest.fixture
def resolve(monkeypatch):
    """Install a scripted resolver for the destinations module (and so for the HTTP client too)."""

    def install(answers):
        resolver = Resolver(answers)
        monkeypatch.setattr(destinations.socket, "getaddrinfo", resolver)
        return resolver

    return install


@pytest.fixture
def connections(monkeypatch):
    """Every (host, port) a TCP connection is opened to; only loopback literals are really connected."""
    opened = []

    def create_connection(address, *args, **kwargs):
        opened.append(address[:2])
        try:
            loopback = ipaddress.ip_address(address[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConnectionRefusedError(f"the test does not connect to {address[0]}")
        return REAL_CREATE_CONNECTION(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return opened


class Receiver:
    """An HTTP/1.1 server (keep-alive, so connections can be reused) noting each request's Host and path.

    With ``tls`` (certificate file, key file) it also notes the server name each TLS handshake asked for.
    """

    def __init__(self, address="127.0.0.1", port=0, tls=None, status=200, headers=()):
        self.requests, self.server_names = [], []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((self.headers["Host"], self.path))
                self.send_response(status)
                for header in headers:
                    self.send_header(*header)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        server_class = type("Server", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6}) \
            if ":" in address else ThreadingHTTPServer
        self.server = server_class((address, port), Handler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            context.sni_callback = lambda _socket, name, _context: receiver.server_names.append(name)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(**kwargs):
        made.append(Receiver(**kwargs))
        return made[-1]

    yield make
    for one in made:
        one.close()


class Authority:
    """A certificate authority for the tests: it issues server certificates for the names it is given."""

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "webhook tests' authority")])
        self.certificate = self._builder(self.name, self.key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True,
        ).add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False), critical=True,
        ).sign(self.key, hashes.SHA256())

    def _builder(self, subject, public_key):
        now = datetime.now(timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(hours=1))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))

    def issue(self, directory, *names):
        """A certificate and key for ``names`` (DNS names only, no IP), as files; returns their paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        certificate = self._builder(subject, key.public_key()).add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False,
        ).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True,
        ).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False,
        ).add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False,
        ).sign(self.key, hashes.SHA256())
        certificate_path, key_path = directory / f"{names[0]}.crt", directory / f"{names[0]}.key"
        certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return str(certificate_path), str(key_path)

    def client(self):
        """An HTTP client that trusts this authority only, verifying certificates as the worker's does."""
        pem = self.certificate.public_bytes(serialization.Encoding.PEM).decode()
        return httpx.Client(verify=ssl.create_default_context(cadata=pem), timeout=5, follow_redirects=False)


@pytest.fixture(scope="module")
def authority():
    return Authority()


def deliver(client, url, *, allow_http=True, allow_private=True):
    return destinations.post(client, url, content=b'{"type":"test"}', headers={"content-type": "application/json"},
                             allow_http=allow_http, allow_private=allow_private)


def test_a_name_is_resolved_once_and_the_request_goes_to_that_address_with_its_host(resolve, connections, receiver):
    rebound = receiver(address="127.0.0.2")  # where a second resolution would lead, on the same port
    checked = receiver(address="127.0.0.1", port=rebound.port)
    resolver = resolve({NAME: [("127.0.0.1",), ("127.0.0.2",)]})
    with httpx.Client(timeout=5) as client:
        response = deliver(client, f"http://{NAME}:{checked.port}/hooks?attempt=1")
    assert response.status_code == 200
    assert checked.requests == [(f"{NAME}:{checked.port}", "/hooks?attempt=1")]
    assert rebound.requests == []
    assert connections == [("127.0.0.1", checked.port)]
    assert resolver.asked[NAME] == 1


def test_a_name_that_rebinds_inward_after_the_check_is_never_connected_inward(resolve, connections):
    resolver = resolve({NAME: [(PUBLIC,), ("127.0.0.1",)]})
    with httpx.Client(timeout=5) as client, pytest.raises(httpx.ConnectError):
        deliver(client, f"http://{NAME}/hooks", allow_private=False)
    assert connections == [(PUBLIC, 80)]  # the checked address, refused by the watcher; never 127.0.0.1
    assert resolver.asked[NAME] == 1


@pytest.mark.parametrize("answer", [
    (PUBLIC, "10.0.0.5"),
    (PUBLIC, "::ffff:169.254.169.254"),
    ("127.0.0.1", PUBLIC),
], ids=["private-second", "mapped-metadata-second", "loopback-first"])
def test_a_name_with_any_internal_address_is_refused_before_connecting(resolve, connections, answer):
    resolve({NAME: [answer]})
    with httpx.Client(timeout=5) as client, pytest.raises(destinations.DestinationRefused, match="private network"):
        deliver(client, f"https://{NAME}/hooks", allow_private=False)
    assert connections == []


@pytest.mark.parametrize("url, answer, pinned_url, host_header, sni_hostname", [
    (f"https://{NAME}/hooks?x=1#top", (PUBLIC,), f"https://{PUBLIC}/hooks?x=1", NAME, NAME),
    (f"https://{NAME}:443/hooks", (PUBLIC,), f"https://{PUBLIC}/hooks", NAME, NAME),
    (f"https://{NAME}:8443", (PUBLIC,), f"https://{PUBLIC}:8443/", f"{NAME}:8443", NAME),
    (f"http://{NAME}:80/hooks", (PUBLIC,), f"http://{PUBLIC}/hooks", NAME, None),
    (f"http://{NAME}:443/hooks", (PUBLIC,), f"http://{PUBLIC}:443/hooks", f"{NAME}:443", None),
    (f"https://{NAME}/hooks", (PUBLIC_V6, PUBLIC), f"https://[{PUBLIC_V6}]/hooks", NAME, NAME),
    (f"https://{NAME}:8443/hooks", (PUBLIC, PUBLIC_V6), f"https://{PUBLIC}:8443/hooks", f"{NAME}:8443", NAME),
    (f"https://[{PUBLIC_V6}]:8443/hooks", None, f"https://[{PUBLIC_V6}]:8443/hooks", f"[{PUBLIC_V6}]:8443", None),
    (f"https://[{PUBLIC_V6.upper()}]/hooks", None, f"https://[{PUBLIC_V6}]/hooks", f"[{PUBLIC_V6}]", None),
    (f"https://{PUBLIC}:8443/hooks", None, f"https://{PUBLIC}:8443/hooks", f"{PUBLIC}:8443", None),
    ("https://Bücher.Example.test/hooks", (PUBLIC,), f"https://{PUBLIC}/hooks", "xn--bcher-kva.example.test",
     "xn--bcher-kva.example.test"),
], ids=["default-port", "default-port-written", "other-port", "http-default-port", "http-on-443", "ipv6-first",
        "ipv4-first", "ipv6-literal", "ipv6-literal-upper-case", "ipv4-literal", "international-name"])
def test_pin_points_the_url_at_the_first_address_and_keeps_the_original_host(
    resolve, url, answer, pinned_url, host_header, sni_hostname
):
    resolver = resolve({NAME: [answer], "xn--bcher-kva.example.test": [answer]})
    pinned = destinations.pin(url, allow_http=True, allow_private=False)
    assert (pinned.url, pinned.host_header, pinned.sni_hostname) == (pinned_url, host_header, sni_hostname)
    assert resolver.asked == ({} if answer is None else {host_header.split(":")[0]: 1})  # a literal is not looked up


def test_an_ipv6_literal_is_reached_in_brackets_with_its_host_header(connections, receiver):
    local = receiver(address="::1")
    with httpx.Client(timeout=5) as client:
        response = deliver(client, f"http://[::1]:{local.port}/hooks")
    assert response.status_code == 200
    assert local.requests == [(f"[::1]:{local.port}", "/hooks")]
    assert connections == [("::1", local.port)]


def test_over_https_the_certificate_is_checked_for_the_name_not_the_address(
    resolve, connections, receiver, authority, tmp_path
):
    server = receiver(tls=authority.issue(tmp_path, NAME))
    resolve({NAME: [("127.0.0.1",)]})
    with authority.client() as client:
        response = deliver(client, f"https://{NAME}:{server.port}/hooks", allow_http=False)
    assert response.status_code == 200
    assert server.server_names == [NAME]
    assert server.requests == [(f"{NAME}:{server.port}", "/hooks")]
    assert connections == [("127.0.0.1", server.port)]


def test_a_tls_connection_verified_for_one_name_never_carries_another_names_delivery(
    resolve, receiver, authority, tmp_path
):
    server = receiver(tls=authority.issue(tmp_path, "a.example.test"))  # a certificate for a.example.test only
    resolve({"a.example.test": [("127.0.0.1",)], "b.example.test": [("127.0.0.1",)]})
    with authority.client() as client:
        assert deliver(client, f"https://a.example.test:{server.port}/hooks", allow_http=False).status_code == 200
        with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
            deliver(client, f"https://b.example.test:{server.port}/hooks", allow_http=False)
    assert server.server_names == ["a.example.test", "b.example.test"]
    assert server.requests == [(f"a.example.test:{server.port}", "/hooks")]


def test_a_redirect_is_answered_not_followed_even_by_a_client_that_follows(resolve, connections, receiver):
    inner = receiver()
    outer = receiver(status=307, headers=[("Location", f"http://127.0.0.1:{inner.port}/inside")])
    resolve({NAME: [("127.0.0.1",)]})
    with httpx.Client(timeout=5, follow_redirects=True) as client:
        response = deliver(client, f"http://{NAME}:{outer.port}/hooks")
    assert response.status_code == 307
    assert inner.requests == []
    assert connections == [("127.0.0.1", outer.port)]
