"""The providers' batch endpoints, each call classified once and retried like a chat request.

OpenAIBatches: any base URL serving OpenAI's Files and Batches (`POST /files` purpose=batch, `POST /batches`,
`GET /batches[/{id}]`, `POST /batches/{id}/cancel`, `GET /files/{id}/content`); our key travels in the
batch's metadata, so a batch a kill left unrecorded is found again. AnthropicBatches: Message Batches
(`x-api-key`, `POST /messages/batches`, results at `results_url`); it has no metadata, so such a batch is
known by its size and creation time.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import aiohttp

from ..config import JobConfig
from ..errors import APIConnectionError, APITimeoutError, status_error_class
from ..response import parse_error_body
from ..retry import RetryPolicy
from .ledger import Batch
from .lines import LineResult, parse_anthropic_result, parse_openai_result

OPENAI_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)


@dataclass(frozen=True)
class BatchState:
    """A batch as the provider last described it, in the same words for both APIs."""

    batch_id: str
    status: str  # the provider's own status
    ended: bool
    done: int = 0  # lines answered so far (succeeded or failed)
    total: int = 0
    output_file_id: str | None = None  # OpenAI: the output and error files; Anthropic: the results URL
    error_file_id: str | None = None
    problem: str | None = None  # why a batch failed validation, as the provider put it


class _HTTP:
    def __init__(self, session: aiohttp.ClientSession, config: JobConfig, headers: dict[str, str]):
        self.session = session
        self.base = config.base_url.rstrip("/")
        self.redact = config.redact
        self.headers = {**config.extra_headers, **headers}
        self.retry = RetryPolicy(max_retries=config.max_retries)

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        async def attempt() -> Any:
            async with self._request(method, path, **kwargs) as response:
                return await response.json(content_type=None)
        return await self.run(attempt)

    async def run(self, attempt: Callable[[], Any]) -> Any:
        """One call with retries, its network errors typed as a chat request's are (tenacity needs an async def)."""
        async def guarded() -> Any:
            return await self._guarded(attempt)
        return await self.retry.run(guarded)

    async def download(self, url_or_path: str, into: Path) -> None:
        """Stream a result file to `into` (through a temporary name): a download that breaks is started again."""
        partial = into.with_name(into.name + ".part")

        async def attempt() -> None:
            async with self._request("GET", url_or_path) as response:
                with open(partial, "wb") as f:
                    async for chunk in response.content.iter_chunked(1 << 20):
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(partial, into)
        await self.run(attempt)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        url = path if path.startswith(("http://", "https://")) else self.base + path
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return _Checked(self.session.request(method, url, headers=headers, timeout=_TIMEOUT, **kwargs), self.redact)

    async def _guarded(self, attempt: Callable[[], Any]) -> Any:
        try:
            return await attempt()
        except asyncio.TimeoutError:
            raise APITimeoutError(f"no answer from {self.base} in time") from None
        except aiohttp.ClientError as e:
            raise APIConnectionError(self.redact(f"connection to {self.base} failed: {type(e).__name__}: {e}")) from None


class _Checked:
    """`async with` a request whose non-2xx answer is raised as the typed error (errors.status_error_class)."""

    def __init__(self, request: Any, redact: Callable[[str], str]):
        self._request, self._redact, self._response = request, redact, None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        self._response = response = await self._request.__aenter__()
        if response.status >= 300:
            raw = await response.content.read(64 * 1024)
            message, code = parse_error_body(self._redact(raw.decode("utf-8", "replace")).encode())
            cls = status_error_class(response.status, code, message)
            await self._request.__aexit__(None, None, None)
            raise cls(f"HTTP {response.status} from the batch API: {message}", status=response.status,
                      request_id=response.headers.get("x-request-id") or response.headers.get("request-id"), code=code)
        return response

    async def __aexit__(self, *exc: Any) -> None:
        await self._request.__aexit__(*exc)


class OpenAIBatches:
    name = "openai"
    parse: Callable[[bytes], LineResult] = staticmethod(parse_openai_result)

    def __init__(self, session: aiohttp.ClientSession, config: JobConfig):
        key = config.api_key.reveal() if config.api_key else ""
        self.http = _HTTP(session, config, {"Authorization": f"Bearer {key}"})

    async def upload(self, path: Path) -> str:
        async def form_then_post() -> Any:
            with open(path, "rb") as f:
                form = aiohttp.FormData()
                form.add_field("purpose", "batch")
                form.add_field("file", f, filename=path.name, content_type="application/jsonl")
                async with self.http._request("POST", "/files", data=form) as response:
                    return await response.json(content_type=None)
        uploaded = await self.http.run(form_then_post)
        return uploaded["id"]

    async def create(self, batch: Batch, path: Path) -> BatchState:
        body = {"input_file_id": batch.file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
                "metadata": {"pipeline_key": batch.key}}
        return self._state(await self.http.json("POST", "/batches", json=body))

    async def find(self, batch: Batch, known: set[str]) -> BatchState | None:
        """The provider's batch carrying our key, if a kill came between its creation and our record of it."""
        after = None
        for _ in range(20):  # newest first: 2,000 batches reach far past any unrecorded one
            page = await self.http.json("GET", "/batches", params={"limit": 100, **({"after": after} if after else {})})
            for item in page.get("data") or []:
                if (item.get("metadata") or {}).get("pipeline_key") == batch.key:
                    return self._state(item)
                if isinstance(item.get("created_at"), (int, float)) and item["created_at"] < batch.at - 3600:
                    return None
            if not page.get("has_more") or not page.get("data"):
                return None
            after = page["data"][-1]["id"]
        return None

    async def get(self, batch_id: str) -> BatchState:
        return self._state(await self.http.json("GET", f"/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchState:
        return self._state(await self.http.json("POST", f"/batches/{batch_id}/cancel"))

    async def results(self, state: BatchState) -> AsyncIterator[tuple[str, str]]:
        """(name, what to download) of each result file."""
        for name, file_id in (("output", state.output_file_id), ("errors", state.error_file_id)):
            if file_id:
                yield name, f"/files/{file_id}/content"

    def _state(self, item: dict[str, Any]) -> BatchState:
        counts = item.get("request_counts") or {}
        errors = (item.get("errors") or {}).get("data") or []
        problem = "; ".join(f"{e.get('message')}" + (f" (line {e['line']})" if e.get("line") else "") for e in errors) or None
        return BatchState(item["id"], item.get("status", "?"), item.get("status") in OPENAI_ENDED,
                          (counts.get("completed") or 0) + (counts.get("failed") or 0), counts.get("total") or 0,
                          item.get("output_file_id"), item.get("error_file_id"), problem)


class AnthropicBatches:
    name = "anthropic"
    parse: Callable[[bytes], LineResult] = staticmethod(parse_anthropic_result)

    def __init__(self, session: aiohttp.ClientSession, config: JobConfig):
        key = config.api_key.reveal() if config.api_key else ""
        self.http = _HTTP(session, config, {"x-api-key": key, "anthropic-version": "2023-06-01"})

    async def upload(self, path: Path) -> str | None:
        return None  # the requests go in the create call itself

    async def create(self, batch: Batch, path: Path) -> BatchState:
        lines = [line for line in path.read_bytes().splitlines() if line.strip()]
        body = b'{"requests":[' + b",".join(lines) + b"]}"
        return self._state(await self.http.json("POST", "/messages/batches", data=body, headers={"Content-Type": "application/json"}))

    async def find(self, batch: Batch, known: set[str]) -> BatchState | None:
        """A batch of this one's size created since it was prepared, that no other record names."""
        page = await self.http.json("GET", "/messages/batches", params={"limit": 100})
        for item in page.get("data") or []:
            created = _epoch(item.get("created_at"))
            if item["id"] not in known and created is not None and created >= batch.at - 60 and sum((item.get("request_counts") or {}).values()) == batch.rows:
                return self._state(item)
        return None

    async def get(self, batch_id: str) -> BatchState:
        return self._state(await self.http.json("GET", f"/messages/batches/{batch_id}"))

    async def cancel(self, batch_id: str) -> BatchState:
        return self._state(await self.http.json("POST", f"/messages/batches/{batch_id}/cancel"))

    async def results(self, state: BatchState) -> AsyncIterator[tuple[str, str]]:
        if state.output_file_id:
            yield "output", state.output_file_id

    def _state(self, item: dict[str, Any]) -> BatchState:
        counts = item.get("request_counts") or {}
        total = sum(v for v in counts.values() if isinstance(v, int))
        return BatchState(item["id"], item.get("processing_status", "?"), item.get("processing_status") == "ended",
                          total - (counts.get("processing") or 0), total, item.get("results_url"))


def make_api(session: aiohttp.ClientSession, config: JobConfig) -> OpenAIBatches | AnthropicBatches:
    return AnthropicBatches(session, config) if config.batch_api == "anthropic" else OpenAIBatches(session, config)


def _epoch(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
