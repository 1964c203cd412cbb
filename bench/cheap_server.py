"""A server that costs far less per request than any client: the yardstick's other half (issue 13).

It checks that the body carries an image part by looking for it in the bytes (no JSON parse, no
base64, no image decode), waits `--latency` seconds, and answers a fixed caption with usage. With
`--rpm N` it admits N requests per sliding `--window` seconds and answers the rest 429 with
Retry-After; its `x-ratelimit-*` headers speak of a per-minute bucket of N, as OpenAI's do (without
--rpm, of a million a minute, as the reference server's do).
`GET /_sim/stats` and `POST /_sim/reset` work as the simulator's, so bench/procs.py drives both.

    python bench/cheap_server.py [--port 0] [--latency S] [--rpm N] [--window S]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time

from aiohttp import web

CAPTION = "A photograph with a clear subject in the middle, soft light from the left and a plain background. " * 3
USAGE = {"prompt_tokens": 1600, "completion_tokens": 60, "total_tokens": 1660}


class Cheap:
    def __init__(self, latency: float, rpm: int, window: float):
        self.latency, self.rpm, self.window = latency, rpm, window
        self.reset()

    def reset(self) -> None:
        self.admitted: collections.deque[float] = collections.deque()
        self.stats = {"requests": 0, "ok": 0, "rate_limited": 0, "bad_request": 0, "in_flight": 0, "peak_in_flight": 0}
        self.count = 0

    def headers(self, now: float) -> dict[str, str]:
        """Like a hosted provider's, on every answer; without --rpm they announce a limit nobody reaches."""
        rpm = self.rpm or 1_000_000
        used = len(self.admitted)  # admitted within the window: as many as the per-minute bucket has spent, at most
        return {"x-ratelimit-limit-requests": str(rpm), "x-ratelimit-remaining-requests": str(max(rpm - used, 0)),
                "x-ratelimit-reset-requests": f"{60 * used / rpm:.3f}s"}

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.read()
        s = self.stats
        s["requests"] += 1
        if b'"image_url"' not in body or (b'"url":"data:image/' not in body and b'"url": "data:image/' not in body
                                          and b'"url":"http' not in body and b'"url": "http' not in body):
            s["bad_request"] += 1
            return web.json_response({"error": {"message": "no image_url part", "type": "invalid_request_error"}}, status=400)
        now = time.monotonic()
        if self.rpm:
            while self.admitted and self.admitted[0] <= now - self.window:
                self.admitted.popleft()
            if len(self.admitted) >= self.rpm * self.window / 60:
                s["rate_limited"] += 1
                wait = self.admitted[0] + self.window - now
                return web.json_response({"error": {"message": "rate limit", "type": "rate_limit_error", "code": "rate_limit_exceeded"}},
                                         status=429, headers={"retry-after-ms": f"{max(wait, 0.001) * 1000:.0f}", **self.headers(now)})
            self.admitted.append(now)
        s["in_flight"] += 1
        s["peak_in_flight"] = max(s["peak_in_flight"], s["in_flight"])
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
        finally:
            s["in_flight"] -= 1
        s["ok"] += 1
        self.count += 1
        answer = {"id": f"cheap-{self.count}", "object": "chat.completion", "created": int(time.time()), "model": "cheap",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": CAPTION}, "finish_reason": "stop"}],
                  "usage": USAGE}
        return web.Response(body=json.dumps(answer).encode(), content_type="application/json", headers=self.headers(now))

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response({**self.stats, "by_status": {"200": self.stats["ok"], "429": self.stats["rate_limited"]}})

    async def post_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})


async def serve(args: argparse.Namespace) -> None:
    cheap = Cheap(args.latency, args.rpm, args.window)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes([web.post("/v1/chat/completions", cheap.chat), web.get("/_sim/stats", cheap.get_stats),
                    web.post("/_sim/reset", cheap.post_reset)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"simulator listening on http://127.0.0.1:{port}/v1", flush=True)  # the line procs.Simulator waits for
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before every answer")
    parser.add_argument("--rpm", type=int, default=0, help="requests per minute admitted (0: no limit)")
    parser.add_argument("--window", type=float, default=1.0, help="the sliding window --rpm is enforced over, in seconds")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
