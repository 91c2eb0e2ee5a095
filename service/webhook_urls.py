"""Where a webhook may go: URL parsing, the refusal of private addresses, and connections
pinned to the address that was checked.

Only `http`/`https` URLs. Unless `webhooks_allow_private` (`auto`: in the embedded mode only), a
host that resolves to any private, loopback, link-local, reserved or multicast address is
refused at creation (`check_url`) and again at every delivery (`checked_address`, then a
`pinned_connection` to that address: no second lookup, so DNS rebinding cannot slip through).
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from service.config import Settings

MAX_URL_LENGTH = 2000


class UrlRefused(ValueError):
    """A webhook URL this service will not call; the message says why."""


def allow_private(settings: Settings) -> bool:
    """May webhooks reach private, loopback and link-local addresses? `auto`: only in the
    embedded mode (a SQLite database: one machine, the user's own)."""
    value = settings.webhooks_allow_private.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return settings.database_url.startswith("sqlite")


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str


def parse_url(url: str) -> Target:
    """The parts of an `http`/`https` URL this service calls; `UrlRefused` otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise UrlRefused("holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlRefused("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("must not hold credentials (use the secret to authenticate)")
    host = parts.hostname
    if not host:
        raise UrlRefused("has no host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, host, port or (443 if scheme == "https" else 80), path)


def _refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `address` is no public internet address, or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for what, flag in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if flag:
            return what
    if not address.is_global:
        return "not public"
    return None


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (a literal address is itself); `UrlRefused` if none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UrlRefused(f"host {host!r} does not resolve ({exc})") from None
    addresses: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UrlRefused(f"host {host!r} does not resolve")
    return addresses


def checked_address(target: Target, private_ok: bool) -> str:
    """The address to connect to: the host's first address, after checking every one of them
    (a name with one private address among public ones is refused)."""
    addresses = resolve(target.host, target.port)
    if not private_ok:
        for address in addresses:
            why = _refusal(ipaddress.ip_address(address))
            if why is not None:
                raise UrlRefused(
                    f"host {target.host!r} resolves to {address}, a {why} address; "
                    "set TRAINYARD_WEBHOOKS_ALLOW_PRIVATE=true to allow such addresses"
                )
    return addresses[0]


def check_url(url: str, private_ok: bool) -> None:
    """Raise `UrlRefused` unless `url` is one this service would deliver to now."""
    target = parse_url(url)
    if private_ok:
        return
    checked_address(target, private_ok)


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to `address` (checked), with `Host:` the URL's host."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to `address` (checked); the certificate is verified for the URL's host (SNI)."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def pinned_connection(
    target: Target, private_ok: bool, timeout: float
) -> http.client.HTTPConnection:
    """A connection (not yet open) to `target`'s host, at the address `checked_address` found;
    raises `UrlRefused` as it does."""
    address = checked_address(target, private_ok)
    cls = _PinnedHTTPSConnection if target.scheme == "https" else _PinnedHTTPConnection
    return cls(target.host, target.port, address, timeout)
