"""Which URLs and addresses a fetch may reach: the one place that decides.

Guarantees:

* :meth:`AddressPolicy.check_address` refuses every address that is not
  public unicast: loopback, private (RFC 1918), carrier-grade NAT, link-local
  (``169.254.0.0/16``, ``fe80::/10``), unique-local (``fc00::/7``), site-local,
  multicast, reserved, unspecified, benchmarking and documentation ranges.
  IPv6 forms that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``,
  6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) are judged by that IPv4 address;
  IPv4-compatible ``::a.b.c.d`` and local-use NAT64 ``64:ff9b:1::/48`` are
  always refused.
* Networks on the operator's allow-list (``FETCH_ALLOW_NETWORKS``) pass, except
  the cloud metadata addresses, unspecified and multicast addresses, which are
  refused whatever the allow-list says.
* :meth:`AddressPolicy.check_url` refuses, before any lookup or connection,
  anything but ``http``/``https``, URLs with credentials, host names with
  characters no DNS name has (``%``, spaces, empty labels), and host names
  that only ever mean the cloud metadata service. Host names compare lower-cased
  without one trailing dot.
* ``localhost`` and ``*.localhost`` are 127.0.0.1, whatever the resolver says.
* :func:`legacy_ipv4` reads the numeric host spellings the C resolver accepts
  (``2130706433``, ``0x7f.1``, ``127.1``, ``0177.0.0.1``) as the address they
  mean, so they are checked (and connected to) as that address.

Every refusal is :class:`FetchRefused` with the same reason for every address
(``"unreachable"``, as a closed port reads), so a refusal says nothing about the address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.net.errors import ADDRESS_NOT_ALLOWED, FetchRefused

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud instance-metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, ECS task, Alibaba): never reached.
METADATA_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.169.254/32", "169.254.170.2/32", "fd00:ec2::254/128", "100.100.100.200/32")
)
#: Host names that only ever mean a metadata service: refused before any DNS lookup.
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata.goog"})
#: Refused whatever the allow-list says: no server lives there.
_NEVER_V4 = (ipaddress.ip_network("0.0.0.0/32"), ipaddress.ip_network("224.0.0.0/4"))
_NEVER_V6 = (
    ipaddress.ip_network("::/96"),  # unspecified, loopback and the deprecated IPv4-compatible form
    ipaddress.ip_network("ff00::/8"),  # multicast
    ipaddress.ip_network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
SCHEMES = frozenset({"http", "https"})
if TYPE_CHECKING:
    import httpx

_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
_LEGACY_V4 = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$")


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Networks from a comma-separated list of CIDRs (``"127.0.0.1/32, 10.0.0.0/8"``).

    Raises ValueError naming the entry that is not a network (host bits set count as a typo).
    """
    networks: list[IPNetwork] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=True))
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not a network in CIDR form ({exc})") from None
    return tuple(networks)


def normalize_host(host: str) -> str:
    """``host`` lower-cased, without brackets and without one trailing dot."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host[:-1] if host.endswith(".") and not host.endswith("..") else host


def legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address a numeric spelling means to the C resolver (``127.1``), else None."""
    if not _LEGACY_V4.match(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` means without a DNS lookup, or None for a name to resolve.

    Any spelling the resolver would accept counts, and ``localhost``/``*.localhost``
    mean 127.0.0.1 (RFC 6761: they are loopback whatever a resolver says).
    """
    host = normalize_host(host)
    if host == "localhost" or host.endswith(".localhost"):
        return ipaddress.IPv4Address("127.0.0.1")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return legacy_ipv4(host)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, 6to4 or NAT64 IPv6 address carries, else None."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _public(address: IPAddress) -> bool:
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_link_local
        and not address.is_loopback
        and not address.is_private
        and not address.is_unspecified
        and not (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


@dataclass(frozen=True)
class AddressPolicy:
    """The address rules of one fetcher: refuse non-public addresses unless ``allowed`` lists them."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_text(cls, allow_networks: str) -> AddressPolicy:
        """A policy with the allow-list ``FETCH_ALLOW_NETWORKS`` spells (empty: nothing private)."""
        return cls(parse_networks(allow_networks))

    def allows(self, address: IPAddress | str) -> bool:
        """True if a fetch may connect to ``address``."""
        try:
            ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.scope_id:  # fe80::1%eth0 and friends: link-scoped by definition
                return False
            if any(ip in net for net in _NEVER_V6):
                return False
            carried = embedded_ipv4(ip)
            if carried is not None:
                return self.allows(carried)
        elif any(ip in net for net in _NEVER_V4):
            return False
        if any(ip in net for net in METADATA_NETWORKS):
            return False
        if any(ip.version == net.version and ip in net for net in self.allowed):
            return True
        return _public(ip)

    def check_address(self, address: IPAddress | str) -> None:
        """Raise :class:`FetchRefused` unless a fetch may connect to ``address``."""
        if not self.allows(address):
            raise FetchRefused(ADDRESS_NOT_ALLOWED)

    def check_addresses(self, addresses: Iterable[IPAddress | str]) -> None:
        """Raise :class:`FetchRefused` if any of ``addresses`` (all a name resolves to) is refused."""
        for address in addresses:
            self.check_address(address)

    def check_host(self, host: str) -> None:
        """Refuse a host that is a refused address in any spelling, or a metadata name."""
        literal = ip_literal(host)
        if literal is not None:
            self.check_address(literal)
        elif normalize_host(host) in METADATA_NAMES:
            raise FetchRefused(ADDRESS_NOT_ALLOWED)

    def check_url(self, url: str | httpx.URL) -> httpx.URL:
        """The parsed URL, if its scheme, credentials and host may be fetched; else :class:`FetchRefused`.

        Host names are checked again, address by address, when they are resolved.
        """
        import httpx  # here, not at import time: app.config reads parse_networks in light processes

        try:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        except (httpx.InvalidURL, ValueError):  # idna errors are ValueErrors
            raise FetchRefused("not a valid URL") from None
        if parsed.scheme not in SCHEMES:
            raise FetchRefused("only http and https URLs are fetched")
        if parsed.userinfo:
            # Credentials in a URL end up in reports, and parsers disagree about where they end.
            raise FetchRefused("URLs with credentials are not fetched")
        host = parsed.raw_host.decode("ascii", errors="replace").lower()  # IDNA-encoded already
        if not host or (ip_literal(host) is None and not _HOST_NAME.fullmatch(host)):
            raise FetchRefused("not a valid URL")
        self.check_host(host)
        return parsed
