"""When failures mean the setup is broken, not the rows: the run stops instead of burning the manifest.

- An account-level error (401/403, 402, an exhausted quota, a Retry-After of hours) stops the run at once.
- Before any row succeeded, a 404 (a base URL without /v1, a model that does not exist) stops it at once,
  and so does the same non-retryable error on the first few rows.
- After that, `--max-consecutive-failures` rows in a row that failed the same way (a transient error that
  outlived its retries, or an identical non-retryable error) stop it.
Errors found without a request (a bad image file) say nothing about the endpoint and count for nothing.
"""

from __future__ import annotations

from .errors import RUN_ENDING_ERRORS, APIError, APIStatusError, PipelineError, RunAborted
from .retry import should_retry

SETUP_ROWS = 3  # identical failures on this many first rows, before any success, mean the setup is wrong


class FailureWatch:
    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.in_a_row = 0
        self.any_success = False
        self._last: tuple | None = None  # signature of the last non-retryable failure in the streak

    def check(self, error: PipelineError | None, message: str) -> None:
        """After each finished row; raises RunAborted when the run should stop. `message` is the row's error text."""
        if error is None:
            self.any_success = True
            self.in_a_row, self._last = 0, None
            return
        if isinstance(error, RUN_ENDING_ERRORS):
            raise RunAborted(f"aborted: {message}")
        if not isinstance(error, APIError):
            return
        if should_retry(error):  # a transient failure that outlived its retries
            self.in_a_row += 1
        else:
            signature = (error.error_type, getattr(error, "status", None), getattr(error, "code", None))
            self.in_a_row = self.in_a_row + 1 if signature == self._last else 1
            self._last = signature
            if not self.any_success:
                if isinstance(error, APIStatusError) and error.status == 404:
                    raise RunAborted(f"aborted before any row succeeded: {message}")
                if self.in_a_row >= SETUP_ROWS:
                    raise RunAborted(
                        f"aborted: the first {self.in_a_row} rows failed the same way and none succeeded, so the "
                        f"setup looks wrong (last: {message}). Fix it and rerun to continue."
                    )
        if self.max_consecutive and self.in_a_row >= self.max_consecutive:
            raise RunAborted(
                f"aborted: {self.in_a_row} rows in a row failed (last: {message}); "
                "the endpoint looks broken, so the rest of the manifest was not sent. Rerun to continue."
            )
