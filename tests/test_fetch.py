"""fetch_image against aiohttp servers on loopback only (127.0.0.1 and 127.0.0.2); never the internet."""

import asyncio
import contextlib
import ipaddress
import time

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from pipeline.errors import ImageError
from pipeline.fetch import (
    BlockedURLError,
    GuardedResolver,
    RemoteImageError,
    blocked_reason,
    fetch_image,
    make_fetch_session,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 100


def only(*allowed: str):
    """An address policy that allows exactly these addresses."""
    return lambda ip: None if str(ip) in allowed else "not on the test's list"


@contextlib.asynccontextmanager
async def serve(host: str = "127.0.0.1"):
    """A server with a few routes; yields (base URL, list of paths it was asked for)."""
    hits: list[str] = []

    async def record(request, handler):
        hits.append(request.path)
        return await handler(request)

    async def image(request):
        return web.Response(body=PNG, content_type="image/png")

    async def hop(request):  # /hop/3 -> /hop/2 -> /hop/1 -> /hop/0 -> /img
        n = int(request.match_info["n"])
        raise web.HTTPFound("/img" if n == 0 else f"/hop/{n - 1}")

    async def to(request):  # /to?url=... redirects anywhere
        raise web.HTTPFound(request.query["url"])

    async def endless(request):  # chunked, no Content-Length, never ends on its own
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(10_000):
            await resp.write(b"\xff" * 65536)
        return resp

    async def slow(request):
        await asyncio.sleep(5)
        return web.Response(body=PNG)

    def fixed(**response_args):
        async def handler(request):
            return web.Response(**response_args)

        return handler

    app = web.Application(middlewares=[web.middleware(record)])
    app.add_routes([
        web.get("/img", image),
        web.get("/hop/{n}", hop),
        web.get("/to", to),
        web.get("/big", fixed(body=b"\xff" * 5000)),
        web.get("/endless", endless),
        web.get("/slow", slow),
        web.get("/empty", fixed(body=b"")),
        web.get("/page", fixed(text="<!doctype html><p>hi", content_type="text/html")),
    ])
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield f"http://{host}:{runner.addresses[0][1]}", hits
    finally:
        await runner.cleanup()


async def fetch(url, **kwargs):
    session_args = {k: kwargs.pop(k) for k in ("allow_private", "policy") if k in kwargs}
    async with make_fetch_session(**session_args) as session:
        return await fetch_image(url, session, **kwargs)


def raises(exc_type, coro) -> str:
    with pytest.raises(exc_type) as info:
        asyncio.run(coro)
    return str(info.value)


# --- the address policy -------------------------------------------------------


@pytest.mark.parametrize(
    "address, kind",
    [
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("127.0.0.1", "loopback"),
        ("127.9.9.9", "loopback"),
        ("169.254.169.254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "metadata"),
        ("64:ff9b::a00:1", "private"),  # NAT64 form of 10.0.0.1
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "private"),  # TEST-NET-1: documentation only
    ],
)
def test_policy_refuses_non_public_addresses(address, kind):
    reason = blocked_reason(ipaddress.ip_address(address))
    assert reason is not None and kind in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_policy_allows_public_addresses(address):
    assert blocked_reason(ipaddress.ip_address(address)) is None


# --- refusing before connecting -----------------------------------------------


@pytest.mark.parametrize(
    "host, shown",
    [
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("localhost", "localhost resolves to 127.0.0.1, a loopback address"),
        ("2130706433", "127.0.0.1 is a loopback address"),  # decimal
        ("0x7f.1", "127.0.0.1 is a loopback address"),  # hex, short form
        ("127.1", "127.0.0.1 is a loopback address"),
        ("[::1]", "::1 is a loopback address"),
        ("[::ffff:127.0.0.1]", "is a loopback address"),
    ],
)
def test_loopback_is_refused_without_connecting(host, shown):
    async def go():
        async with serve() as (base, hits):
            port = base.rsplit(":", 1)[1]
            url = f"http://{host}:{port}/img?x=1"
            with pytest.raises(BlockedURLError) as info:
                await fetch(url, timeout=2)
            assert hits == []
            return str(info.value)

    message = asyncio.run(go())
    assert message.startswith(f"refused to fetch http://{host}:")
    assert "/img?x=1" in message and shown in message and "--allow-private-urls" in message


@pytest.mark.parametrize(
    "url, shown",
    [
        ("http://10.0.0.5/x.jpg", "10.0.0.5 is a private address"),
        ("http://192.168.0.1/x.jpg", "192.168.0.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is the cloud metadata address"),
        ("http://[fe80::1]/x.jpg", "fe80::1 is a link-local address"),
        ("http://100.64.0.1/x.jpg", "100.64.0.1 is a carrier-grade NAT address"),
    ],
)
def test_private_addresses_are_refused(url, shown):
    # Refused before any connection: were one tried, these would fail differently (or hang).
    message = raises(BlockedURLError, fetch(url, timeout=2))
    assert message == f"refused to fetch {url}: {shown} (pass --allow-private-urls to allow it)"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x.jpg", "gopher://example.com/x", "data:image/png;base64,AAAA"])
def test_only_http_and_https_are_fetched(url):
    message = raises(BlockedURLError, fetch(url, allow_private=True))
    assert message == f"refused to fetch {url}: only http and https URLs can be fetched"


def test_every_resolved_address_is_checked():
    class Fake(AbstractResolver):
        async def resolve(self, host, port=0, family=0):
            return [{"hostname": host, "host": a, "port": port, "family": 0, "proto": 0, "flags": 0}
                    for a in ("93.184.215.14", "10.0.0.7")]

        async def close(self):
            pass

    async def go():
        await GuardedResolver(blocked_reason, Fake()).resolve("rebind.example", 80)

    message = raises(Exception, go())
    assert message == "rebind.example resolves to 10.0.0.7, a private address"


def test_malformed_url_is_a_remote_image_error():
    assert raises(RemoteImageError, fetch("http://[::1/x.jpg")).startswith("cannot fetch http://[::1/x.jpg: not a valid URL")


def test_errors_are_image_errors_with_stable_types():
    assert issubclass(BlockedURLError, RemoteImageError) and issubclass(RemoteImageError, ImageError)
    assert (RemoteImageError.error_type, BlockedURLError.error_type) == ("remote_image_error", "url_blocked")


def test_a_plain_session_is_not_accepted():
    async def go():
        import aiohttp

        async with aiohttp.ClientSession() as session:
            await fetch_image("http://example.com/x.jpg", session)

    raises(TypeError, go())


# --- fetching from loopback when allowed --------------------------------------


def test_allow_private_fetches_a_loopback_image():
    async def go():
        async with serve() as (base, _):
            return await fetch(f"{base}/img", allow_private=True), await fetch(
                base.replace("127.0.0.1", "localhost") + "/img", allow_private=True
            )

    assert asyncio.run(go()) == (PNG, PNG)


def test_redirect_chain_is_followed():
    async def go():
        async with serve() as (base, hits):
            assert await fetch(f"{base}/hop/3", policy=only("127.0.0.1")) == PNG
            assert hits == ["/hop/3", "/hop/2", "/hop/1", "/hop/0", "/img"]

    asyncio.run(go())


def test_too_many_redirects():
    async def go():
        async with serve() as (base, hits):
            with pytest.raises(RemoteImageError) as info:
                await fetch(f"{base}/hop/5", allow_private=True, max_redirects=5)
            assert len(hits) == 6 and "/img" not in hits
            return str(info.value), base

    message, base = asyncio.run(go())
    assert message == f"download of {base}/hop/5 failed: more than 5 redirects"


def test_redirect_to_a_refused_address_is_refused_after_the_hop():
    async def go():
        async with serve("127.0.0.1") as (public, public_hits), serve("127.0.0.2") as (private, private_hits):
            with pytest.raises(BlockedURLError) as info:
                await fetch(f"{public}/to?url={private}/img", policy=only("127.0.0.1"))
            assert public_hits == ["/to"] and private_hits == []
            return str(info.value)

    message = asyncio.run(go())
    assert message.startswith("refused to fetch http://127.0.0.1:") and "(redirected to http://127.0.0.2:" in message
    assert message.endswith("/img): 127.0.0.2 is not on the test's list (pass --allow-private-urls to allow it)")


def test_redirect_to_a_name_resolving_to_a_refused_address():
    async def go():
        async with serve("127.0.0.1") as (first, hits), serve("127.0.0.2") as (second, _):
            target = first.replace("127.0.0.1", "localhost") + "/img"
            with pytest.raises(BlockedURLError) as info:
                await fetch(f"{second}/to?url={target}", policy=only("127.0.0.2"))
            assert hits == []
            return str(info.value)

    message = asyncio.run(go())
    assert "(redirected to http://localhost:" in message and "localhost resolves to 127.0.0.1" in message


def test_redirect_to_file_scheme_is_refused():
    async def go():
        async with serve() as (base, _):
            await fetch(f"{base}/to?url=file:///etc/passwd", allow_private=True)

    assert "only http and https" in raises(BlockedURLError, go())


# --- size, time, status, body -------------------------------------------------


def test_content_length_over_the_cap_is_refused():
    async def go():
        async with serve() as (base, _):
            await fetch(f"{base}/big", allow_private=True, max_bytes=4096)

    message = raises(RemoteImageError, go())
    assert message.endswith("/big is larger than the 4,096 bytes limit (5,000 bytes)")


def test_chunked_body_over_the_cap_stops_reading():
    async def go():
        async with serve() as (base, _):
            start = time.monotonic()
            with pytest.raises(RemoteImageError) as info:
                await fetch(f"{base}/endless", allow_private=True, max_bytes=1024 * 1024, timeout=5)
            assert time.monotonic() - start < 2
            return str(info.value)

    # The server would send 640 MB; a timeout here would mean the cap did not stop the read.
    assert asyncio.run(go()).endswith("/endless is larger than the 1 MB limit")


def test_slow_server_times_out():
    async def go():
        async with serve() as (base, _):
            await fetch(f"{base}/slow", allow_private=True, timeout=0.3)

    assert raises(RemoteImageError, go()).endswith("/slow timed out after 0.3 s")


def test_http_error_status_is_named():
    async def go():
        async with serve() as (base, _):
            await fetch(f"{base}/missing.jpg", allow_private=True)

    assert raises(RemoteImageError, go()).endswith("/missing.jpg failed: HTTP 404 Not Found")


def test_empty_body_is_an_error():
    async def go():
        async with serve() as (base, _):
            await fetch(f"{base}/empty", allow_private=True)

    assert raises(RemoteImageError, go()).endswith("/empty returned an empty body (HTTP 200)")


def test_web_page_is_named():
    async def go():
        async with serve() as (base, _):
            await fetch(f"{base}/page", allow_private=True)

    assert raises(RemoteImageError, go()).endswith("/page is a web page (text/html), not an image")


def test_connection_refused_is_a_remote_image_error():
    async def go():
        async with serve() as (base, _):
            pass  # stopped: nothing listens on that port any more
        await fetch(f"{base}/img", allow_private=True)

    assert "failed: Cannot connect" in raises(RemoteImageError, go())
