"""Anthropic's Message Batches on the simulator: POST/GET /v1/messages/batches[/{id}[/results|/cancel]].

Auth is Anthropic's `x-api-key` (or a bearer token, as newer SDKs send it). Each request's `params` (a Messages API body) is translated to a chat
completion, answered by the simulator's chat handler (batches.BatchEngine), and translated back into
an Anthropic message; lines not reached are `expired` (batch_fault=expire) or `canceled`.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from aiohttp import web

from pipeline.simulator.batches import BatchEngine, LineAnswer

if TYPE_CHECKING:
    from pipeline.simulator.server import Simulator

_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}


def anthropic_error(status: int, type_: str, message: str) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": type_, "message": message}}, status=status)


class MessageBatches:
    def __init__(self, simulator: "Simulator", engine: BatchEngine):
        self.sim = simulator
        self.engine = engine
        self.batches: dict[str, dict[str, Any]] = {}
        self.results: dict[str, bytes] = {}
        self._cancel: set[str] = set()

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/messages/batches", self._create)
        router.add_get("/v1/messages/batches", self._list)
        router.add_get("/v1/messages/batches/{batch_id}", self._get)
        router.add_get("/v1/messages/batches/{batch_id}/results", self._results)
        router.add_post("/v1/messages/batches/{batch_id}/cancel", self._cancel_batch)

    def _key(self, request: web.Request) -> str | None:
        # x-api-key, as documented; newer official SDKs send the key as a bearer token, which the API takes too.
        key = request.headers.get("x-api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
        expected = self.sim.settings.api_key
        ok = bool(key.strip()) if expected is None else hmac.compare_digest(key.encode(), expected.encode())
        return key if ok else None

    async def _create(self, request: web.Request) -> web.Response:
        key = self._key(request)
        if key is None:
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        try:
            spec = await request.json()
            requests = spec["requests"]
            custom_ids = [r["custom_id"] for r in requests]
            bodies = [_chat_body(r["params"]) for r in requests]
        except (ValueError, KeyError, TypeError) as e:
            return anthropic_error(400, "invalid_request_error", f"requests: each needs custom_id and params ({e})")
        bad = next((c for c in custom_ids if not isinstance(c, str) or not _CUSTOM_ID.match(c)), None)
        if bad is not None or len(set(custom_ids)) != len(custom_ids) or not requests:
            return anthropic_error(400, "invalid_request_error", f"custom_id must be unique and match ^[a-zA-Z0-9_-]{{1,64}}$: {bad!r}")
        if self.sim.settings.batch_fault == "fail_validation":
            return anthropic_error(400, "invalid_request_error", "The batch failed validation (simulated).")
        batch = {"id": self.engine.new_id("msgbatch_sim"), "type": "message_batch", "processing_status": "in_progress",
                 "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
                 "ended_at": None, "created_at": _now(), "expires_at": _now(86400), "archived_at": None,
                 "cancel_initiated_at": None, "results_url": None}
        self.batches[batch["id"]] = batch
        self.sim.stats.batches["batches_created"] += 1
        self.engine.start(self._run(batch, custom_ids, bodies, key))
        return web.json_response(batch)

    async def _list(self, request: web.Request) -> web.Response:
        if self._key(request) is None:
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        data = sorted(self.batches.values(), key=lambda b: b["id"], reverse=True)
        return web.json_response({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                                  "last_id": data[-1]["id"] if data else None})

    async def _get(self, request: web.Request) -> web.Response:
        if self._key(request) is None:
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        batch = self.batches.get(request.match_info["batch_id"])
        return web.json_response(batch) if batch else anthropic_error(404, "not_found_error", "batch not found")

    async def _results(self, request: web.Request) -> web.StreamResponse:
        if self._key(request) is None:
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        batch_id = request.match_info["batch_id"]
        if batch_id not in self.results:
            return anthropic_error(404, "not_found_error", "results are not available until the batch has ended")
        return await self.engine.serve_file(request, batch_id, self.results[batch_id], "application/binary")

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        if self._key(request) is None:
            return anthropic_error(401, "authentication_error", "invalid x-api-key")
        batch = self.batches.get(request.match_info["batch_id"])
        if batch is None:
            return anthropic_error(404, "not_found_error", "batch not found")
        if batch["processing_status"] == "in_progress":
            batch.update(processing_status="canceling", cancel_initiated_at=_now())
            self._cancel.add(batch["id"])
            self.sim.stats.batches["cancelled"] += 1
        return web.json_response(batch)

    async def _run(self, batch: dict[str, Any], custom_ids: list[str], bodies: list[dict[str, Any]], key: str) -> None:
        counts = batch["request_counts"]
        answers: dict[int, LineAnswer] = {}

        def done(index: int, answer: LineAnswer) -> None:
            answers[index] = answer
            counts["processing"] -= 1
            counts["succeeded" if answer[0] == 200 else "errored"] += 1

        # The chat handler takes any bearer token unless the simulator has a key: Anthropic's key is that key.
        await self.engine.answer_lines(bodies, key, done, lambda: batch["id"] in self._cancel)
        lines = []
        for index, custom_id in enumerate(custom_ids):
            if index in answers:
                result = _message_result(*answers[index])
            else:
                kind = "canceled" if batch["id"] in self._cancel else "expired"
                counts["processing"] -= 1
                counts[kind] += 1
                result = {"type": kind}
            lines.append(json.dumps({"custom_id": custom_id, "result": result}).encode() + b"\n")
        self.results[batch["id"]] = b"".join(lines)
        batch.update(processing_status="ended", ended_at=_now(),
                     results_url=f"{self.sim.base_url}/messages/batches/{batch['id']}/results")


def _chat_body(params: dict[str, Any]) -> dict[str, Any]:
    """A Messages API body as the chat completion the simulator's handler answers."""
    messages = []
    if params.get("system"):
        system = params["system"]
        messages.append({"role": "system", "content": system if isinstance(system, str) else
                         "".join(block.get("text", "") for block in system)})
    for message in params["messages"]:
        content = message["content"]
        if isinstance(content, list):
            content = [_chat_part(part) for part in content]
        messages.append({"role": message["role"], "content": content})
    body = {"model": params["model"], "max_tokens": int(params["max_tokens"]), "messages": messages}
    if "temperature" in params:
        body["temperature"] = params["temperature"]
    return body


def _chat_part(part: dict[str, Any]) -> dict[str, Any]:
    if part["type"] == "image":
        source = part["source"]
        url = source["url"] if source["type"] == "url" else f"data:{source['media_type']};base64,{source['data']}"
        return {"type": "image_url", "image_url": {"url": url}}
    return {"type": "text", "text": part["text"]}


def _message_result(status: int | None, body: Any) -> dict[str, Any]:
    if status != 200:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        kind = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
                529: "overloaded_error"}.get(status or 0, "api_error")
        message = error.get("message") if isinstance(error, dict) else str(body)
        return {"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": message or str(body)}}}
    choice = body["choices"][0]
    usage = body.get("usage") or {}
    message = {"id": body.get("id", "").replace("chatcmpl", "msg"), "type": "message", "role": "assistant",
               "model": body.get("model"), "content": [{"type": "text", "text": choice["message"].get("content") or ""}],
               "stop_reason": _STOP_REASONS.get(choice.get("finish_reason"), "end_turn"), "stop_sequence": None,
               "usage": {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0)}}
    return {"type": "succeeded", "message": message}


def _now(plus: float = 0.0) -> str:
    return datetime.fromtimestamp(time.time() + plus, timezone.utc).isoformat().replace("+00:00", "Z")
