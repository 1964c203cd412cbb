"""The simulator's batch APIs: OpenAI's Files + Batches, and Anthropic's Message Batches, finished in seconds.

Each line of a batch is answered by the simulator's own chat completions handler, over loopback, so every
online knob (fault_script per image, fault rates, latency) shapes the lines' answers: a 500 there is a
per-line error here. A batch takes `batch_seconds` in progress and `batch_finalizing_seconds` finalizing.
Faults of the batch itself (`batch_fault`): "expire" answers the first half of the lines and expires the
rest; "fail_validation" rejects the input at validation. `batch_break_download` cuts the first download
of every result file off midway. Anthropic's requests are translated to chat completions and back
(message_batches.py).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import aiohttp
from aiohttp import web

from pipeline.simulator.answers import error_body

if TYPE_CHECKING:
    from pipeline.simulator.server import Simulator

# What a line's answer is: (HTTP status, body as JSON), or (None, why) when the connection failed.
LineAnswer = tuple[int | None, Any]
OPENAI_ENDPOINT = "/v1/chat/completions"


class BatchEngine:
    """Runs a batch's lines against the simulator's chat handler, in its time scale, with its batch faults."""

    def __init__(self, simulator: "Simulator"):
        self.sim = simulator
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._session: aiohttp.ClientSession | None = None

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    def start(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()

    async def answer_lines(self, bodies: list[Any], token: str, done: Callable[[int, LineAnswer], None],
                           cancelled: Callable[[], bool]) -> int:
        """Answer bodies in order until cancelled or, with batch_fault=expire, half way; returns how many were answered."""
        settings = self.sim.settings
        started = time.monotonic()
        last = len(bodies) // 2 if settings.batch_fault == "expire" else len(bodies)
        gate = asyncio.Semaphore(16)
        answered = 0

        async def one(index: int) -> None:
            nonlocal answered
            async with gate:
                if cancelled():
                    return
                # Spread the lines over batch_seconds, as a provider works through a queue (a cancel cuts the wait short).
                while (left := started + settings.batch_seconds * index / max(len(bodies), 1) - time.monotonic()) > 0:
                    await asyncio.sleep(min(left, 0.05))
                    if cancelled():
                        return
                done(index, await self._ask(bodies[index], token))
                answered += 1

        await asyncio.gather(*(one(i) for i in range(last)))
        while not cancelled() and (left := started + settings.batch_seconds - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.05))
        self.sim.stats.batches["lines"] += answered
        return answered

    async def _ask(self, body: Any, token: str) -> LineAnswer:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600))
        try:
            async with self._session.post(f"{self.sim.base_url}/chat/completions", json=body,
                                          headers={"Authorization": f"Bearer {token}"}) as response:
                raw = await response.read()
                try:
                    return response.status, json.loads(raw)
                except ValueError:
                    return response.status, {"error": {"message": raw[:200].decode("utf-8", "replace"), "type": "server_error"}}
        except aiohttp.ClientError as e:
            return None, f"{type(e).__name__}: {e}"

    async def serve_file(self, request: web.Request, key: str, data: bytes, content_type: str) -> web.StreamResponse:
        """A result file; with batch_break_download on, its first download stops halfway and the connection drops."""
        stats = self.sim.stats.batches
        stats["downloads"] += 1
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = len(data)
        await response.prepare(request)
        if self.sim.settings.batch_break_download and stats[f"download:{key}"] == 0 and len(data) > 1:
            stats[f"download:{key}"] += 1
            stats["broken_downloads"] += 1
            await response.write(data[: len(data) // 2])
            await asyncio.sleep(0.05)
            if request.transport is not None:
                request.transport.close()
            return response
        stats[f"download:{key}"] += 1
        await response.write(data)
        await response.write_eof()
        return response


class OpenAIBatches:
    """POST /v1/files, GET /v1/files/{id}[/content], POST /v1/batches, GET /v1/batches[/{id}], POST .../cancel."""

    def __init__(self, simulator: "Simulator", engine: BatchEngine):
        self.sim = simulator
        self.engine = engine
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._cancel: set[str] = set()

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/files", self._upload)
        router.add_get("/v1/files/{file_id}", self._file)
        router.add_get("/v1/files/{file_id}/content", self._content)
        router.add_post("/v1/batches", self._create)
        router.add_get("/v1/batches", self._list)
        router.add_get("/v1/batches/{batch_id}", self._get)
        router.add_post("/v1/batches/{batch_id}/cancel", self._cancel_batch)

    def _refuse(self, request: web.Request) -> web.Response | None:
        if self.sim._authorized(request):
            return None
        return web.json_response(error_body("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"), status=401)

    def _store(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = self.engine.new_id("file-sim")
        meta = {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed"}
        self.files[file_id] = {**meta, "data": data}
        return meta

    async def _upload(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        purpose, data, filename = None, None, "upload.jsonl"
        reader = await request.multipart()
        async for part in reader:
            if part.name == "purpose":
                purpose = (await part.text()).strip()
            elif part.name == "file":
                filename = part.filename or filename
                data = await part.read()
        if data is None or purpose is None:
            return web.json_response(error_body("Missing file or purpose.", "invalid_request_error", None), status=400)
        self.sim.stats.batches["files_uploaded"] += 1
        return web.json_response(self._store(bytes(data), filename, purpose))

    async def _file(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        stored = self.files.get(request.match_info["file_id"])
        if stored is None:
            return web.json_response(error_body("No such File object.", "invalid_request_error", None), status=404)
        return web.json_response({k: v for k, v in stored.items() if k != "data"})

    async def _content(self, request: web.Request) -> web.StreamResponse:
        if refused := self._refuse(request):
            return refused
        file_id = request.match_info["file_id"]
        stored = self.files.get(file_id)
        if stored is None:
            return web.json_response(error_body("No such File object.", "invalid_request_error", None), status=404)
        return await self.engine.serve_file(request, file_id, stored["data"], "application/octet-stream")

    async def _create(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        spec = await request.json()
        input_file = self.files.get(spec.get("input_file_id", ""))
        if input_file is None:
            return web.json_response(error_body("Invalid input file id.", "invalid_request_error", None), status=400)
        if spec.get("endpoint") != OPENAI_ENDPOINT or spec.get("completion_window") != "24h":
            return web.json_response(error_body("endpoint must be /v1/chat/completions and completion_window 24h.",
                                                "invalid_request_error", None), status=400)
        now = int(time.time())
        batch = {"id": self.engine.new_id("batch_sim"), "object": "batch", "endpoint": OPENAI_ENDPOINT, "errors": None,
                 "input_file_id": input_file["id"], "completion_window": "24h", "status": "validating",
                 "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
                 "expires_at": now + 86400, "finalizing_at": None, "completed_at": None, "failed_at": None,
                 "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": spec.get("metadata") or {}}
        self.batches[batch["id"]] = batch
        self.sim.stats.batches["batches_created"] += 1
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        self.engine.start(self._run(batch, input_file["data"], token))
        return web.json_response(batch)

    async def _list(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        newest_first = sorted(self.batches.values(), key=lambda b: b["id"], reverse=True)
        after = request.query.get("after")
        if after:
            newest_first = [b for b in newest_first if b["id"] < after]
        limit = int(request.query.get("limit", 20))
        page = newest_first[:limit]
        return web.json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                                  "last_id": page[-1]["id"] if page else None, "has_more": len(newest_first) > limit})

    async def _get(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return web.json_response(error_body("No such batch.", "invalid_request_error", None), status=404)
        return web.json_response(batch)

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        if refused := self._refuse(request):
            return refused
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return web.json_response(error_body("No such batch.", "invalid_request_error", None), status=404)
        if batch["status"] in ("validating", "in_progress", "finalizing"):
            batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
            self._cancel.add(batch["id"])
            self.sim.stats.batches["cancelled"] += 1
        return web.json_response(batch)

    async def _run(self, batch: dict[str, Any], data: bytes, token: str) -> None:
        lines, problem = _read_input(data)
        if problem is None and self.sim.settings.batch_fault == "fail_validation":
            problem = {"code": "invalid_request", "message": "The batch input file failed validation (simulated).", "line": 1}
        await asyncio.sleep(min(0.05, self.sim.settings.batch_seconds))
        if problem is not None:
            batch.update(status="failed", failed_at=int(time.time()), errors={"object": "list", "data": [problem]})
            return
        batch.update(status="in_progress", in_progress_at=int(time.time()))
        batch["request_counts"]["total"] = len(lines)
        answers: dict[int, LineAnswer] = {}

        def done(index: int, answer: LineAnswer) -> None:
            answers[index] = answer
            batch["request_counts"]["completed" if answer[0] == 200 else "failed"] += 1

        answered = await self.engine.answer_lines([line["body"] for line in lines], token, done, lambda: batch["id"] in self._cancel)
        outcome = "cancelled" if batch["id"] in self._cancel else "expired" if answered < len(lines) else "completed"
        if outcome == "completed":
            batch.update(status="finalizing", finalizing_at=int(time.time()))
            await asyncio.sleep(self.sim.settings.batch_finalizing_seconds)
        output, errors = [], []
        for index, line in enumerate(lines):
            if index in answers:
                status, body = answers[index]
                result = {"id": f"batch_req_{batch['id']}_{index}", "custom_id": line["custom_id"], "response": None, "error": None}
                if status is None:
                    result["error"] = {"code": "server_error", "message": body}
                else:
                    result["response"] = {"status_code": status, "request_id": f"req-sim-{batch['id']}-{index}", "body": body}
                (output if status == 200 else errors).append(result)
            elif outcome == "expired":  # OpenAI writes a batch's unfinished requests to its error file
                errors.append({"id": f"batch_req_{batch['id']}_{index}", "custom_id": line["custom_id"], "response": None,
                               "error": {"code": "batch_expired", "message": "This request could not be executed before the "
                                         "completion window expired."}})
        for name, results in (("output_file_id", output), ("error_file_id", errors)):
            if results:
                data = b"".join(json.dumps(r).encode() + b"\n" for r in results)
                batch[name] = self._store(data, f"{batch['id']}_{name.split('_')[0]}.jsonl", "batch_output")["id"]
        batch.update(status=outcome, **{f"{outcome}_at": int(time.time())})


def _read_input(data: bytes) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The input file's lines, or the first problem as OpenAI's validation reports it."""
    lines, seen = [], set()
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            return [], {"code": "invalid_json_line", "message": f"Line {number} is not valid JSON.", "line": number}
        if not isinstance(line, dict) or line.get("method") != "POST" or line.get("url") != OPENAI_ENDPOINT \
                or not isinstance(line.get("body"), dict) or not isinstance(line.get("custom_id"), str):
            return [], {"code": "invalid_request", "message": f"Line {number} needs custom_id, method POST, url "
                        f"{OPENAI_ENDPOINT} and a body.", "line": number}
        if line["custom_id"] in seen:
            return [], {"code": "duplicate_custom_id", "message": f"The custom_id on line {number} is not unique.", "line": number}
        seen.add(line["custom_id"])
        lines.append(line)
    if not lines:
        return [], {"code": "empty_file", "message": "The batch input file is empty.", "line": None}
    return lines, None
