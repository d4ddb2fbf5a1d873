"""The fetch address policy: every refused range and spelling, and the operator's allow-list.

The last tests fetch every spelling of a loopback address whose port has a
real listener, and check that the listener never saw a connection: a refusal
happens before any connection is made, and always says the same words.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from app.config import Settings
from app.errors import ConfigurationError
from app.net.errors import ADDRESS_NOT_ALLOWED, FetchRefused
from app.net.fetch import Fetcher
from app.net.policy import AddressPolicy, ip_literal, parse_networks

STRICT = AddressPolicy()

REFUSED_ADDRESSES = [
    "127.0.0.1",  # loopback
    "127.255.255.254",
    "10.0.0.1",  # private
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # carrier-grade NAT
    "169.254.1.1",  # link-local
    "169.254.169.254",  # cloud metadata
    "169.254.170.2",  # ECS task metadata
    "100.100.100.200",  # Alibaba metadata
    "0.0.0.0",  # unspecified
    "224.0.0.1",  # multicast
    "239.255.255.250",
    "240.0.0.1",  # reserved
    "255.255.255.255",  # broadcast
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "::1",  # IPv6 loopback
    "::",  # unspecified
    "fe80::1",  # link-local
    "fe80::1%1",  # link-local with a zone
    "fc00::1",  # unique-local
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fec0::1",  # site-local (deprecated)
    "ff02::1",  # multicast
    "2001:db8::1",  # documentation
    "2001::1",  # Teredo
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "::8.8.8.8",  # IPv4-compatible is deprecated: refused even for a public address
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a00:1::",  # 6to4 of 10.0.0.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::808:808",  # local-use NAT64
]
ALLOWED_ADDRESSES = [
    "8.8.8.8",
    "93.184.215.14",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "2002:808:808::",
    "64:ff9b::808:808",
]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not STRICT.allows(address)
    with pytest.raises(FetchRefused) as caught:
        STRICT.check_address(address)
    assert caught.value.reason == ADDRESS_NOT_ALLOWED


@pytest.mark.parametrize("address", ALLOWED_ADDRESSES)
def test_public_addresses_are_allowed(address: str) -> None:
    assert STRICT.allows(address)


@pytest.mark.parametrize(
    ("spelling", "meaning"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7F000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("[::1]", "::1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("0", "0.0.0.0"),
        ("2852039166", "169.254.169.254"),
    ],
)
def test_odd_spellings_mean_the_address_the_resolver_would_use(spelling: str, meaning: str) -> None:
    assert str(ip_literal(spelling)) == meaning
    with pytest.raises(FetchRefused, match=ADDRESS_NOT_ALLOWED):
        STRICT.check_host(spelling)


@pytest.mark.parametrize(
    "url",
    [
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.GOOGLE.INTERNAL./",
        "http://metadata.goog/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://127.1/",
        "HTTP://127.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/",
    ],
)
def test_urls_naming_refused_hosts_are_refused_without_a_lookup(url: str) -> None:
    with pytest.raises(FetchRefused) as caught:
        STRICT.check_url(url)
    assert caught.value.reason == ADDRESS_NOT_ALLOWED


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "only http and https URLs are fetched"),
        ("ftp://example.com/feed", "only http and https URLs are fetched"),
        ("gopher://example.com/", "only http and https URLs are fetched"),
        ("javascript:alert(1)", "only http and https URLs are fetched"),
        ("http://evil@127.0.0.1/", "URLs with credentials are not fetched"),
        ("http://user:secret@example.com/", "URLs with credentials are not fetched"),
        ("http:///nohost", "not a valid URL"),
        ("http://exa mple.com/", "not a valid URL"),
    ],
)
def test_only_plain_http_urls_are_accepted(url: str, reason: str) -> None:
    with pytest.raises(FetchRefused) as caught:
        STRICT.check_url(url)
    assert caught.value.reason == reason


def test_public_names_pass_the_url_check_and_are_checked_again_when_resolved() -> None:
    assert STRICT.check_url("https://news.example.com/feed.xml").host == "news.example.com"
    with pytest.raises(FetchRefused):
        STRICT.check_addresses(["93.184.215.14", "10.0.0.5"])  # one private answer refuses the name


def test_allow_list_lets_chosen_networks_through_but_never_metadata() -> None:
    policy = AddressPolicy.from_text("127.0.0.1/32, 10.0.0.0/8,fd00::/8, 169.254.0.0/16")
    assert policy.allows("127.0.0.1") and policy.allows("::ffff:127.0.0.1")
    assert policy.allows("10.20.30.40") and policy.allows("fd12::1")
    assert not policy.allows("127.0.0.2") and not policy.allows("192.168.0.1")
    assert policy.allows("169.254.10.10")
    for never in ("169.254.169.254", "fd00:ec2::254", "0.0.0.0", "224.0.0.1", "::ffff:169.254.169.254"):
        assert not policy.allows(never), never
    assert AddressPolicy.from_text("0.0.0.0/0").allows("192.168.1.1")  # an operator may open everything


@pytest.mark.parametrize("text", ["10.0.0.1/8", "localhost", "10.0.0.0/33", "127.0.0.1/32;10.0.0.0/8"])
def test_a_malformed_allow_list_names_the_entry(text: str) -> None:
    with pytest.raises(ValueError, match="is not a network in CIDR form"):
        parse_networks(text)


def test_settings_refuse_a_malformed_allow_list_naming_the_variable(setenv) -> None:  # type: ignore[no-untyped-def]
    from app.config import get_settings

    setenv(FETCH_ALLOW_NETWORKS="10.0.0.0/8,nonsense")
    with pytest.raises(ConfigurationError, match="FETCH_ALLOW_NETWORKS: 'nonsense' is not a network"):
        get_settings()


def test_fetch_settings_have_safe_defaults() -> None:
    settings = Settings()
    assert settings.fetch_allow_networks == ""
    assert settings.fetch_deadline_seconds == 30.0
    assert settings.fetch_max_bytes == 5_000_000
    assert settings.fetch_max_redirects == 5
    assert Fetcher.from_settings(settings).policy == AddressPolicy()


# ---- refused before any connection ----------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A real TCP listener on 127.0.0.1 (and ::1 when available) that records connection attempts."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    yield sock
    sock.close()


def _accepted(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "2130706433",
    "0x7f.1",
    "0x7f000001",
    "127.1",
    "127.0.0.1.",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[::127.0.0.1]",
    "[64:ff9b::7f00:1]",
    "[2002:7f00:1::]",
    "localhost",
    "LOCALHOST.",
    "0.0.0.0",
    "0",
]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_spelling_of_a_listening_loopback_port_is_refused_before_connecting(
    listener: socket.socket, host: str
) -> None:
    port = listener.getsockname()[1]
    fetcher = Fetcher(policy=STRICT, deadline_seconds=5)
    with pytest.raises(FetchRefused) as caught:
        fetcher.fetch(f"http://{host}:{port}/feed.xml")
    assert caught.value.reason == ADDRESS_NOT_ALLOWED
    assert _accepted(listener) == 0


def test_the_allow_list_is_what_lets_the_same_listener_be_reached(listener: socket.socket) -> None:
    from app.net.errors import FetchError

    port = listener.getsockname()[1]
    fetcher = Fetcher(policy=AddressPolicy.from_text("127.0.0.1/32"), deadline_seconds=0.5)
    with pytest.raises(FetchError):  # the listener never answers; the point is that it was reached
        fetcher.fetch(f"http://127.0.0.1:{port}/feed.xml")
    assert _accepted(listener) == 1
