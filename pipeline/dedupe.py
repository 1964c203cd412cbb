"""Each image paid once: a row whose prepared image and request settings equal another row's reuses that row's answer.

The key is image_sha256 + fingerprint (`twin_key`): the same bytes sent with the same prompt, model and
settings. The keys of the output's ok rows come with the resume index and this run's keys join as rows are
sent, each kept as a 64-bit hash (HashedSet), so a million-row manifest costs a few MB. A row whose key is
known is held back (its id and image columns, no pixels, as a line of a scratch file beside the output) and
written when the run's requests are done, with the answer of the row that had the key: status ok, attempts 0,
cost 0, `reused_from` naming that row. One pass over this run's journal and the output finds those answers
(memory: one answer per distinct image held, not per row held). A held row whose source failed gets its error
(and is retried with it by the next run); one whose source was never answered (a stopped run, a batch not
collected) is left to do.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import write_error

from .hashedset import HashedSet
from .records import ManifestRow, PreparedImage
from .results import OutputRow, reused_row

log = logging.getLogger("pipeline")
# What a reused row copies from the row it reuses: the answer, not the usage (nothing was billed for it).
ANSWER_COLUMNS = ("status", "caption", "model", "finish_reason", "error_type", "error")


def twin_key(sha256: str, fingerprint: str) -> str:
    """The one key for "the same bytes asked the same way", wherever it is made (here, resume.py, dryrun.py)."""
    return sha256 + fingerprint


def twin_keys(sha256s: Iterable[str], fingerprints: Iterable[str]) -> Iterator[str]:
    """twin_key of each pair, made in C (the resume index makes one per output row)."""
    return map(str.__add__, sha256s, fingerprints)


class Dedupe:
    def __init__(self, spill: Path, answered: HashedSet | None = None, answer_columns: Iterable[str] = ()):
        """`spill`: a scratch file the held rows wait in (one JSON line each), so that memory does not grow with them."""
        self.answered = answered if answered is not None else HashedSet()  # keys with an ok row in the output
        self.sent = HashedSet()  # keys this run sends
        self.answer_columns = tuple(answer_columns)  # the structured answer's (--schema)
        self.held = 0
        self.hashes: set[str] = set()  # the held rows' image_sha256: what the output's earlier rows are scanned for
        self.left = 0  # held rows whose source had no row (after finish)
        self._wanted = HashedSet()  # the held rows' keys
        self._spill = spill
        self._file: IO[str] | None = None

    def hold(self, row: ManifestRow, image: PreparedImage, fingerprint: str) -> bool:
        """True when the row's answer is another row's: it is kept to be written by `finish`, not sent."""
        if image.sha256 is None:  # a URL sent as it is: its bytes are the provider's to see
            return False
        key = twin_key(image.sha256, fingerprint)
        if key in self.answered or not self.sent.add(key):
            self._keep(row, image, fingerprint)
            self._wanted.add(key)
            self.hashes.add(image.sha256)
            self.held += 1
            return True
        return False

    def finish(self, sources: Iterable[dict[str, Any]]) -> Iterator[OutputRow]:
        """The held rows whose source has a row in `sources` (newest last), as reused rows; `left` counts the others.

        Every source is read before the first row comes: the caller may write to a journal that is one of them."""
        found: dict[str, dict[str, Any]] = {}
        for source in sources:
            if not (source.get("image_sha256") and source.get("fingerprint")):
                continue
            key = twin_key(source["image_sha256"], source["fingerprint"])
            if key in self._wanted and (key not in found or found[key]["status"] != "ok"):  # an ok answer wins over an error
                found[key] = {name: source.get(name) for name in ("id", *ANSWER_COLUMNS, *self.answer_columns)}
        self.left = 0
        for row, image, fingerprint in self._held():
            source = found.get(twin_key(image.sha256, fingerprint))
            if source is None:
                self.left += 1
            else:
                yield reused_row(row, image, fingerprint, source)
        if self.left:
            log.info("%d rows with the same image as a row not answered yet are left for the next run", self.left)
        self.close()

    def close(self) -> None:
        """Remove the scratch file (quietly: this runs on the way out of a run that may be failing for a full disk)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self._spill.unlink(missing_ok=True)

    def _keep(self, row: ManifestRow, image: PreparedImage, fingerprint: str) -> None:
        line = {"row": [row.line, row.id, row.image, row.source, row.prompt, row.extra, row.problem, row.task],
                "image": {f.name: getattr(image, f.name) for f in fields(image) if f.name != "url"}, "fp": fingerprint}
        try:
            if self._file is None:
                self._file = open(self._spill, "w", encoding="utf-8")
            self._file.write(json.dumps(line, ensure_ascii=False, default=str) + "\n")
        except OSError as e:
            raise write_error(self._spill, e, "hold a row with the same image as another") from None

    def _held(self) -> Iterator[tuple[ManifestRow, PreparedImage, str]]:
        if self._file is None:
            return
        file, self._file = self._file, None
        try:
            file.close()  # the last lines reach the disk here
        except OSError as e:
            raise write_error(self._spill, e, "hold a row with the same image as another") from None
        with open(self._spill, encoding="utf-8") as f:
            for line in f:
                held = json.loads(line)
                line_no, row_id, image, source, prompt, extra, problem, task = held["row"]
                yield (ManifestRow(line_no, row_id, image, source, prompt, extra, problem, task=task),
                       PreparedImage(url=b"", **held["image"]), held["fp"])


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
