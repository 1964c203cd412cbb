"""Each image paid once: a row whose prepared image and request settings equal another row's reuses that row's answer.

The key is image_sha256 + fingerprint (`twin_key`): the same bytes sent with the same prompt, model and
settings. The keys of the output's ok rows come with the resume index and this run's keys join as rows are sent, each kept as a
64-bit hash (HashedSet), so a million-row manifest costs a few MB. A row whose key is known is held back
(its id and image columns, no pixels) and written when the run's requests are done, with the answer of the row
that had the key: status ok, attempts 0, cost 0, `reused_from` naming that row. One pass over this run's journal
and the output finds those answers. A held row whose source failed gets its error (and is retried with it by
the next run); one whose source was never answered (a stopped run, a batch not collected) is left to do.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from .hashedset import HashedSet
from .records import ManifestRow, PreparedImage
from .results import OutputRow, reused_row

log = logging.getLogger("pipeline")
# What a reused row copies from the row it reuses: the answer, not the usage (nothing was billed for it).
ANSWER_COLUMNS = ("status", "caption", "model", "finish_reason", "error_type", "error")


def twin_key(sha256: str, fingerprint: str) -> str:
    """The one key for "the same bytes asked the same way", wherever it is made (here, resume.py, dryrun.py)."""
    return sha256 + fingerprint


@dataclass(slots=True)
class Held:
    row: ManifestRow
    image: PreparedImage
    fingerprint: str


class Dedupe:
    def __init__(self, answered: HashedSet | None = None, answer_columns: Iterable[str] = ()):
        self.answered = answered if answered is not None else HashedSet()  # keys with an ok row in the output
        self.sent = HashedSet()  # keys this run sends
        self.held: list[Held] = []
        self.answer_columns = tuple(answer_columns)  # the structured answer's (--schema)

    def hold(self, row: ManifestRow, image: PreparedImage, fingerprint: str) -> bool:
        """True when the row's answer is another row's: it is kept to be written by `finish`, not sent."""
        if image.sha256 is None:  # a URL sent as it is: its bytes are the provider's to see
            return False
        key = twin_key(image.sha256, fingerprint)
        if key in self.answered or not self.sent.add(key):
            self.held.append(Held(row, image, fingerprint))
            return True
        return False

    def finish(self, sources: Iterable[dict[str, Any]]) -> tuple[list[OutputRow], int]:
        """The held rows whose source has a row in `sources` (newest last), and how many are left to do."""
        wanted = {twin_key(h.image.sha256, h.fingerprint) for h in self.held}
        found: dict[str, dict[str, Any]] = {}
        for source in sources:
            if not (source.get("image_sha256") and source.get("fingerprint")):
                continue
            key = twin_key(source["image_sha256"], source["fingerprint"])
            if key in wanted and (key not in found or found[key]["status"] != "ok"):  # an ok answer wins over an error
                found[key] = {name: source.get(name) for name in ("id", *ANSWER_COLUMNS, *self.answer_columns)}
        rows = [reused_row(h.row, h.image, h.fingerprint, found[key]) for h in self.held
                if (key := twin_key(h.image.sha256, h.fingerprint)) in found]
        left = len(self.held) - len(rows)
        if left:
            log.info("%d rows with the same image as a row not answered yet are left for the next run", left)
        return rows, left


def journal_rows(journal: Path) -> Iterator[dict[str, Any]]:
    from .merge import read_journal

    return read_journal(journal) if journal.exists() else iter(())


def output_rows(files: list[Any], wanted_hashes: set[str], columns: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The rows of earlier runs' Parquet files whose image_sha256 is wanted, with `columns` (one streaming pass)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not wanted_hashes:
        return
    value_set = pa.array(sorted(wanted_hashes), pa.string())
    for parquet in files:
        names = [c for c in ("id", "image_sha256", "fingerprint", *ANSWER_COLUMNS, *columns) if c in parquet.schema_arrow.names]
        if "image_sha256" not in names:
            continue
        for batch in parquet.iter_batches(batch_size=65_536, columns=names):
            table = pa.Table.from_batches([batch])
            yield from table.filter(pc.fill_null(pc.is_in(table.column("image_sha256"), value_set=value_set), False)).to_pylist()


def batch_keys(rows_files: Iterable[Path]) -> Iterator[str]:
    """The keys of the rows in live provider batches: their answers are on the way, so their twins wait too."""
    for path in rows_files:
        try:
            with path.open(encoding="utf-8") as f:
                for line in f:
                    meta = json.loads(line)
                    if (meta.get("img") or {}).get("sha256") and meta.get("fp"):
                        yield twin_key(meta["img"]["sha256"], meta["fp"])
        except (OSError, ValueError):
            continue
