"""Remote images (`--fetch-remote`): download a URL's bytes without letting it reach inside the network.

A manifest URL is data from outside, so it must not make the job fetch
http://169.254.169.254/ or an internal admin page (SSRF). Every hop of a fetch
is checked: the scheme must be http(s) and every address the host resolves to
must pass the address policy (public addresses only, unless private ones are
allowed). The check lives in the session's resolver, and the connector connects
only to the addresses that resolver returned, so a name cannot resolve to a
public address for the check and to a private one for the connection (DNS
rebinding). IP literals never reach a resolver, so fetch_image checks them itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from .errors import BlockedURLError, RemoteImageError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# An address policy: why an address may not be fetched from, or None when it may.
AddressPolicy = Callable[[IPAddress], "str | None"]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_METADATA = ipaddress.ip_address("169.254.169.254")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REDIRECTS = (301, 302, 303, 307, 308)


def blocked_reason(ip: IPAddress) -> str | None:
    """The default policy: only globally routable unicast addresses may be fetched from."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip in _NAT64:  # a NAT64 gateway would connect to the embedded IPv4 address
        ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip == _METADATA:
        return "the cloud metadata address"
    for test, kind in [
        (ip.is_unspecified, "an unspecified"),
        (ip.is_loopback, "a loopback"),
        (ip.is_link_local, "a link-local"),
        (ip.is_multicast, "a multicast"),
        (ip in _CGNAT, "a carrier-grade NAT"),
        (ip.is_reserved, "a reserved"),
        (ip.is_private, "a private"),
        (not ip.is_global, "a non-public"),
    ]:
        if test:
            return f"{kind} address"
    return None


class _Blocked(Exception):
    """Raised inside the resolver; not an OSError, so aiohttp lets it through unwrapped."""


class GuardedResolver(AbstractResolver):
    """Resolves with getaddrinfo and refuses the name if any address fails the policy."""

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None):
        self.policy = policy
        self._inner = inner or aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        infos = await self._inner.resolve(host, port, family)
        for info in infos:
            ip = ipaddress.ip_address(info["host"])
            if reason := self.policy(ip):
                raise _Blocked(f"{host} resolves to {ip}, {reason}")
        return infos

    async def close(self) -> None:
        await self._inner.close()


class FetchConnector(aiohttp.TCPConnector):
    def __init__(self, policy: AddressPolicy):
        # No DNS cache: every connection asks the guarded resolver.
        super().__init__(resolver=GuardedResolver(policy), use_dns_cache=False)
        self.policy = policy


def make_fetch_session(*, allow_private: bool = False, policy: AddressPolicy | None = None) -> aiohttp.ClientSession:
    """The only kind of session fetch_image accepts. `policy` overrides allow_private (tests)."""
    connector = FetchConnector(policy or ((lambda ip: None) if allow_private else blocked_reason))
    # trust_env stays off: no proxy may connect on our behalf to an address we never checked.
    # Raw bytes only: a gzip body could otherwise inflate past max_bytes in one chunk.
    return aiohttp.ClientSession(connector=connector, auto_decompress=False, headers={"Accept-Encoding": "identity"})


async def fetch_image(url: str, session: aiohttp.ClientSession, *, max_bytes: int = 20 * 1024 * 1024,
                      timeout: float = 30.0, max_redirects: int = 5) -> bytes:
    """The body of `url`, following up to max_redirects redirects; raise a RemoteImageError on any failure."""
    if not isinstance(session.connector, FetchConnector):
        raise TypeError("fetch_image needs a session from make_fetch_session()")
    try:
        async with asyncio.timeout(timeout):
            return await _fetch(url, session, session.connector.policy, max_bytes, max_redirects)
    except TimeoutError as exc:
        raise RemoteImageError(f"download of {url} timed out after {timeout:g} s") from exc
    except ValueError as exc:  # yarl: a URL or a Location header that does not parse
        raise RemoteImageError(f"cannot fetch {url}: not a valid URL ({exc})") from exc


async def _fetch(url: str, session: aiohttp.ClientSession, policy: AddressPolicy, max_bytes: int, max_redirects: int) -> bytes:
    current = URL(url)
    for hop in range(max_redirects + 1):
        where = url if hop == 0 else f"{url} (redirected to {current})"
        _check_url(current, where, policy)
        try:
            async with session.get(current, allow_redirects=False) as resp:
                if resp.status in _REDIRECTS:
                    if not (location := resp.headers.get("Location")):
                        raise RemoteImageError(f"download of {where} failed: HTTP {resp.status} without a Location")
                    current = current.join(URL(location))
                    continue
                if not 200 <= resp.status < 300:
                    raise RemoteImageError(f"download of {where} failed: HTTP {resp.status} {resp.reason or ''}".rstrip())
                return await _read_capped(resp, where, max_bytes)
        except _Blocked as exc:
            raise BlockedURLError(f"refused to fetch {where}: {exc} (pass --allow-private-urls to allow it)") from None
        except aiohttp.ClientError as exc:
            raise RemoteImageError(f"download of {where} failed: {str(exc) or type(exc).__name__}") from exc
    raise RemoteImageError(f"download of {url} failed: more than {max_redirects} redirects")


def _check_url(url: URL, where: str, policy: AddressPolicy) -> None:
    if url.scheme not in ("http", "https"):
        raise BlockedURLError(f"refused to fetch {where}: only http and https URLs can be fetched")
    if not url.host:
        raise RemoteImageError(f"cannot fetch {where}: the URL has no host")
    ip = _literal_ip(url.host)
    if ip is not None and (reason := policy(ip)):
        raise BlockedURLError(f"refused to fetch {where}: {ip} is {reason} (pass --allow-private-urls to allow it)")


def _literal_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:  # legacy IPv4 spellings the C library accepts: 2130706433, 0x7f.1, 127.1
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


async def _read_capped(resp: aiohttp.ClientResponse, where: str, max_bytes: int) -> bytes:
    if resp.content_length is not None and resp.content_length > max_bytes:
        raise RemoteImageError(f"{where} is larger than the {_size(max_bytes)} limit ({_size(resp.content_length)})")
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > max_bytes:
            raise RemoteImageError(f"{where} is larger than the {_size(max_bytes)} limit")
    if not body:
        raise RemoteImageError(f"download of {where} returned an empty body (HTTP {resp.status})")
    if resp.content_type == "text/html" and body.lstrip()[:1] == b"<":
        raise RemoteImageError(f"{where} is a web page (text/html), not an image")
    return bytes(body)


def _size(n: int) -> str:
    return f"{n // 2**20} MB" if n % 2**20 == 0 else f"{n:,} bytes"
