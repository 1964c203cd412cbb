"""What happens to one row: load its image and build its request (prepare), then send it within the
budget, with retries, and write its result (send). The worker pool calls these two; nothing else here."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

from .client import ChatClient
from .config import JobConfig
from .cost import Budget, budget_note, load_price, row_cost, worst_case_cost
from .errors import AnswerError, APIError, ImageError, ManifestRowError, PipelineError
from .estimate import estimate_request_tokens
from .failures import FailureWatch
from .images import ImageLoader
from .pool import StopRequest
from .progress import Progress
from .records import ManifestRow, PreparedImage
from .request import encode_chat_request
from .results import OutputRow, error_row, ok_row
from .resume import fingerprinter
from .retry import RetryPolicy
from .usage import billed_usage
from .writer import ResultWriter


@dataclass(slots=True)
class ReadyRequest:
    """A row whose request is built and waiting to be sent."""

    row: ManifestRow
    image: PreparedImage
    body: bytes
    tokens: int  # estimated, for a tokens-per-minute limit
    fingerprint: str


class CaptionJob:
    """What happens to one row: load the image, send it (with retries), write the result."""

    def __init__(self, config: JobConfig, images: ImageLoader, client: ChatClient | None, writer: ResultWriter, progress: Progress,
                 stop: StopRequest, *, encode: Callable[[ManifestRow, str, str | bytes], bytes] | None = None):
        """`encode(row, prompt, image_url)`: the request's bytes (default: the chat request body; the batch backend
        makes it a batch line). Without a client, the job only prepares."""
        self.config = config
        self.encode = encode or (lambda row, prompt, image_url: encode_chat_request(config, prompt, image_url))
        self.images = images
        self.client = client
        self.writer = writer
        self.progress = progress
        self.stop = stop
        self.retry = RetryPolicy(max_retries=config.max_retries)
        self.fingerprint = fingerprinter(config)
        self.failures = FailureWatch(config.max_consecutive_failures)
        self.price = load_price(config.prices, config.model)
        self.budget = Budget(config.max_cost)
        self.refused: float | None = None  # the worst case of a request --max-cost did not let go

    def budget_note(self) -> str | None:
        """At --max-cost: the cap, what was spent (and is in flight), and what the next request could cost."""
        if self.refused is None:
            return None
        return budget_note(self.config.max_cost, self.budget.spent, self.budget.reserved, self.refused, self.config.max_tokens)

    async def prepare(self, row: ManifestRow) -> ReadyRequest | None:
        """Load the row's image and build its request; a row that fails here is finished (None)."""
        prompt = row.prompt or self.config.prompt
        fingerprint = self.fingerprint(prompt)
        if row.problem:
            self._finish(*self._failed(row, ManifestRowError(row.problem), fingerprint))
            return None
        try:
            image = await self.images.load(row)
        except ImageError as e:
            self._finish(*self._failed(row, e, fingerprint))
            return None
        body = self.encode(row, prompt, image.url)
        tokens = estimate_request_tokens(self.config, image, prompt)
        # The body holds the image now; keeping its data: URL too would hold every waiting image twice.
        return ReadyRequest(row, dataclasses.replace(image, url=b""), body, tokens, fingerprint)

    async def send(self, ready: ReadyRequest) -> None:
        """Send a prepared row (with retries) within the cost budget, and write its result."""
        worst_case = worst_case_cost(self.price, ready.tokens, self.config.max_tokens)
        if not self.budget.reserve(worst_case):  # not sent: the next run takes it
            self.refused = max(self.refused or 0.0, worst_case)
            self.stop("max-cost", f" ({self.budget_note()})")
            return
        try:
            result, error = await self._send(ready.row, ready.image, ready.body, ready.tokens, ready.fingerprint)
        except BaseException:
            self.budget.settle(worst_case, worst_case)  # cancelled in flight: it may still be billed
            raise
        self.budget.settle(worst_case, result["cost_usd"] or 0.0)
        self._finish(result, error)

    def _finish(self, result: OutputRow, error: PipelineError | None) -> None:
        self.writer.write(result)
        self.progress.record(result)
        self.failures.check(error, result["error"] or "")

    async def _send(self, row: ManifestRow, image: PreparedImage, body: bytes, tokens: int, fingerprint: str) -> tuple[OutputRow, PipelineError | None]:
        attempts = 0
        started = time.monotonic()

        async def attempt():
            nonlocal attempts, started
            attempts += 1
            started = time.monotonic()
            self.progress.attempt_started(first=attempts == 1)
            try:
                return await self.client.complete(body, stream=self.config.stream, tokens=tokens)
            except Exception as e:
                self.progress.attempt_failed(getattr(e, "status", None))
                raise

        try:
            completion = await self.retry.run(attempt)
        except APIError as e:
            self.progress.gave_up()
            # An empty answer or a refusal was billed: its row keeps the tokens and their cost.
            cost = self._cost(e.usage) if isinstance(e, AnswerError) else None
            return self._failed(row, e, fingerprint, attempts=attempts, latency_ms=(time.monotonic() - started) * 1000,
                                cost_usd=cost, image=image)
        latency_ms = (time.monotonic() - started) * 1000
        cost = self._cost(completion.usage)
        return ok_row(row, image, completion, attempts=attempts, latency_ms=latency_ms, fingerprint=fingerprint, cost_usd=cost), None

    def _cost(self, usage: dict[str, Any]) -> float | None:
        return row_cost(self.price, billed_usage(usage))

    def _failed(self, row: ManifestRow, error: PipelineError, fingerprint: str, **kwargs: Any) -> tuple[OutputRow, PipelineError]:
        message = self.config.redact(str(error))
        return error_row(row, error, message=message, model=self.config.model, fingerprint=fingerprint, **kwargs), error
