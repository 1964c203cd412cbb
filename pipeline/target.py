"""Where a run writes: a local output, or a dataset in a bucket through this machine's staging folder (remote.py).

`held()` takes the output for this run (the local lock; for a bucket also the lease, renewed while the
run goes); `publish()` puts finished parts into the bucket; `record()` appends the run record.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from .errors import write_error
from .lock import OutputLock
from .remote import RENEW_SECONDS, RemoteDataset, local_output
from .runlog import append_run_record
from .storage import Storage

log = logging.getLogger("pipeline")


class Target:
    def __init__(self, output: Path | str, store: Storage):
        self.output = output
        self.local = local_output(output)
        self.remote = RemoteDataset(output, store) if isinstance(output, str) else None

    @asynccontextmanager
    async def held(self) -> AsyncIterator["Target"]:
        with OutputLock(self.local):
            if self.remote is None:
                yield self
                return
            await asyncio.to_thread(self.remote.acquire_lease)
            renewing = asyncio.create_task(self._renew())
            try:
                yield self
            finally:
                renewing.cancel()
                try:
                    await asyncio.to_thread(self.remote.release_lease)
                except Exception as e:  # noqa: BLE001 - it expires by itself
                    log.warning("could not release the lease on %s (%s: %s); it expires by itself", self.output, type(e).__name__, e)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                await asyncio.to_thread(self.remote.renew_lease)
            except Exception as e:  # noqa: BLE001 - the next renewal may work; the lease lasts LEASE_SECONDS
                log.warning("could not renew the lease on %s: %s: %s", self.output, type(e).__name__, e)

    def publish(self) -> None:
        """Put the parts finished here into the bucket (a killed run's recovered journal included)."""
        if self.remote is None:
            return
        try:
            put = self.remote.publish(self.local)
        except Exception as e:  # the store's own errors: the parts stay here, and the next run puts them
            raise write_error(self.output, OSError(f"{type(e).__name__}: {e}"), "put the finished rows into") from None
        if put:
            log.info("put %d part%s into %s", put, "" if put == 1 else "s", self.output)

    def record(self, record: dict[str, Any], *, required: bool = True, quiet: bool = False) -> None:
        append_run_record(self.local, record, required=required, quiet=quiet)
        if self.remote is not None:
            try:
                self.remote.append_run(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            except Exception as e:  # noqa: BLE001 - the local record has it
                log.warning("could not append the run record to %s: %s: %s (it is in %s)", self.output, type(e).__name__, e, self.local)
