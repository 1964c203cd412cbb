"""Every failure the job knows, as a short typed hierarchy.

Two families:
- errors that stop the job before or during the run (ConfigError, ManifestError,
  AuthenticationError via RunAborted), each mapped to a documented exit code;
- errors that belong to one row (ImageError, APIError). They become an output
  row with `status='error'`, `error_type` and a message a person can act on.

Every class has a stable `error_type` string: it is what lands in the output
column and what a cron alert or a notebook filters on.
"""

from __future__ import annotations

# Exit codes, documented in the README.
EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_USAGE = 2
EXIT_ABORTED = 3
EXIT_BUDGET = 4  # stopped before spending more than --max-cost; rerun to continue
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug
EXIT_IO = 74  # EX_IOERR: the output could not be written (full disk, read-only folder)
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the output; try again later
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class PipelineError(Exception):
    error_type = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- errors that stop the job -------------------------------------------------


class ConfigError(PipelineError):
    """Bad option, job file or environment; exit code 2."""

    error_type = "config"


class ManifestError(PipelineError):
    """The manifest as a whole cannot be read; exit code 2."""

    error_type = "manifest"


# --- errors that belong to one manifest row -----------------------------------


class RowError(PipelineError):
    """A row-level failure: written as an error row, never stops the run."""


class ManifestRowError(RowError):
    """A manifest line that does not parse or has no image value."""

    error_type = "invalid_manifest_row"


class ImageError(RowError):
    error_type = "image_error"


class ImageMissingError(ImageError):
    error_type = "image_missing"


class ImageEmptyError(ImageError):
    error_type = "image_empty"


class ImageUnreadableError(ImageError):
    error_type = "image_unreadable"


class NotAnImageError(ImageError):
    error_type = "not_an_image"


class ImageTooLargeError(ImageError):
    """A decompression bomb or an absurd pixel count, refused from the header."""

    error_type = "image_too_large"


class RemoteImageError(ImageError):
    """--fetch-remote could not download a URL."""

    error_type = "remote_image_error"


class BlockedURLError(RemoteImageError):
    """A URL that resolves to a loopback, private or link-local address (SSRF guard)."""

    error_type = "url_blocked"


class APIError(RowError):
    """Anything that went wrong talking to the provider."""

    error_type = "api_error"


class APIConnectionError(APIError):
    error_type = "connection_error"


class APITimeoutError(APIError):
    error_type = "timeout"


class APIResponseError(APIError):
    """A 200 answer whose body is unusable: not JSON, an error object, no choices, null content."""

    error_type = "bad_response"


class AnswerError(APIResponseError):
    """A well-formed 200 whose answer is not a caption. Asking again with the same settings gets the same,
    so it is not retried in the run; a rerun tries again (it is an error row)."""

    def __init__(self, message: str, *, usage: dict | None = None, model: str | None = None,
                 response_id: str | None = None, finish_reason: str | None = None):
        super().__init__(message)
        # What the provider billed for the answer: the row keeps its tokens and cost.
        self.usage = usage or {}
        self.model = model
        self.request_id = response_id
        self.finish_reason = finish_reason


class EmptyAnswerError(AnswerError):
    """No caption text at all (often a reasoning model that spent max_tokens thinking)."""

    error_type = "empty_answer"


class RefusedError(AnswerError):
    """The model declined (`message.refusal`); the message keeps its words."""

    error_type = "refused"


class APIStatusError(APIError):
    """A non-2xx answer. Subclasses are picked by `status_error_class`."""

    error_type = "http_error"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        request_id: str | None = None,
        retry_after: float | None = None,
        should_retry: bool | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.request_id = request_id
        # Seconds the server asked us to wait (Retry-After / retry-after-ms), if any.
        self.retry_after = retry_after
        # The server's own word (`x-should-retry`), if it gave one.
        self.should_retry = should_retry
        # The provider's machine-readable error code, e.g. "insufficient_quota".
        self.code = code


class BadRequestError(APIStatusError):
    error_type = "bad_request"


class ImageURLTimeoutError(BadRequestError):
    """The provider timed out downloading an image URL: a 400 that is worth retrying."""

    error_type = "image_url_timeout"


class AuthenticationError(APIStatusError):
    """401/403: every other request would fail the same way, so the run aborts."""

    error_type = "auth_failed"


class PaymentRequiredError(APIStatusError):
    """402: the account has no credits left (OpenRouter and others); waiting will not help."""

    error_type = "payment_required"


class NotFoundError(APIStatusError):
    error_type = "not_found"


class RateLimitError(APIStatusError):
    error_type = "rate_limited"


class QuotaExhaustedError(RateLimitError):
    """A 429 that means money, not load (`insufficient_quota`): waiting will not help, so the run aborts."""

    error_type = "quota_exhausted"


class LongWaitError(RateLimitError):
    """A Retry-After far past what a run should hold for (a daily quota): the run stops and says how long."""

    error_type = "rate_limited_long"


class ServerError(APIStatusError):
    error_type = "server_error"


def is_quota_exhausted(code: str | None, message: str) -> bool:
    """OpenAI's `insufficient_quota`, also when a gateway flattened the code to "429" and kept it in the type or text."""
    text = f"{code or ''} {message}".lower()
    return "insufficient_quota" in text or "exceeded your current quota" in text


def status_error_class(status: int, code: str | None = None, message: str = "") -> type[APIStatusError]:
    if status == 429 and is_quota_exhausted(code, message):
        return QuotaExhaustedError
    # OpenAI's "Timeout while downloading <url>": its code is shared with bad URLs, so the wording decides.
    if status == 400 and code == "invalid_image_url" and "timeout" in message.lower():
        return ImageURLTimeoutError
    if status in (401, 403):
        return AuthenticationError
    if status == 400 and code == "no_db_connection":  # LiteLLM's proxy without a database: not its master key
        return AuthenticationError
    if status == 402:
        return PaymentRequiredError
    if status == 404:
        return NotFoundError
    if status == 429:
        return RateLimitError
    if status >= 500:
        return ServerError
    if status == 400:
        return BadRequestError
    return APIStatusError


# Row errors after which every other request would fail the same way: the run stops.
RUN_ENDING_ERRORS = (AuthenticationError, PaymentRequiredError, QuotaExhaustedError, LongWaitError)


class RunAborted(PipelineError):
    """The run stopped early on purpose; finished rows are kept. Exit code 3."""

    error_type = "aborted"


class OutputWriteError(PipelineError):
    """The output, its journal or a file beside it cannot be written (full disk, read-only folder). Exit code 74."""

    error_type = "output_write"


def write_error(path: object, error: OSError, doing: str = "write") -> OutputWriteError:
    """An OSError on our own files, said as what a person can do about it."""
    cause = error.strerror or str(error)
    what = {28: "the disk is full", 30: "the file system is read-only", 13: "permission denied", 122: "the disk quota is exceeded"}
    cause = what.get(error.errno or 0, cause)
    return OutputWriteError(
        f"cannot {doing} {path}: {cause}. Every finished row already journaled is kept; free space or fix the folder "
        "(or pick another --output), then rerun the same command to continue"
    )


class OutputLocked(PipelineError):
    """Another run is writing the same output. Exit code 75."""

    error_type = "locked"


def exit_code_for(error: BaseException) -> int:
    """The documented exit code for an error that ended a run (see the README's table)."""
    if isinstance(error, (ConfigError, ManifestError)):
        return EXIT_USAGE
    if isinstance(error, OutputLocked):
        return EXIT_LOCKED
    if isinstance(error, OutputWriteError):
        return EXIT_IO
    if isinstance(error, RunAborted):
        return EXIT_ABORTED
    if isinstance(error, KeyboardInterrupt):
        return EXIT_SIGINT
    return EXIT_INTERNAL
