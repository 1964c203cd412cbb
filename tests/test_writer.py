import asyncio
import json

import pyarrow.parquet as pq

from pipeline.errors import NotAnImageError
from pipeline.records import Completion, ManifestRow, PreparedImage
from pipeline.results import OUTPUT_SCHEMA, error_row, ok_row
from pipeline import merge as merge_module
from pipeline.files import journal_path
from pipeline.merge import read_journal
from pipeline.writer import ResultWriter


def _row(i, **extra):
    return ManifestRow(line=i + 2, id=f"id{i}", image=f"img{i}.png", source=f"/x/img{i}.png", extra=extra)


def _ok(i, **extra):
    completion = Completion("a caption", "stop", "m", f"resp{i}", {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12})
    return ok_row(_row(i, **extra), PreparedImage("data:", "image/png", "ab" * 32, 3), completion, attempts=1, latency_ms=12.345)


def test_rows_are_in_the_journal_as_soon_as_written(tmp_path):
    out = tmp_path / "out.parquet"
    writer = ResultWriter(out).open()
    writer.write(_ok(0))
    # Not closed: a process killed now would leave exactly this journal behind.
    assert [r["id"] for r in read_journal(journal_path(out))] == ["id0"]
    assert not out.exists()
    writer.close()
    assert out.exists() and not journal_path(out).exists()


def test_output_schema_types_and_passthrough(tmp_path):
    out = tmp_path / "out.parquet"
    writer = ResultWriter(out).open()
    writer.write(_ok(0, title="first", size=3, status="from manifest"))
    writer.write(error_row(_row(1, title="second", size=4), NotAnImageError("img1.png is not an image")))
    writer.close()
    table = pq.read_table(out)
    for field in OUTPUT_SCHEMA:
        assert table.schema.field(field.name).type == field.type
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "error"]
    assert rows[0]["caption"] == "a caption" and rows[0]["total_tokens"] == 12 and rows[0]["latency_ms"] == 12.3
    assert rows[1]["error_type"] == "not_an_image" and "not an image" in rows[1]["error"]
    assert [r["title"] for r in rows] == ["first", "second"]
    assert table.schema.field("size").type == "int64"
    # A manifest column named like one of ours is kept, renamed.
    assert rows[0]["manifest_status"] == "from manifest"
    assert rows[0]["completed_at"].tzinfo is not None


def test_mixed_types_in_a_passthrough_column_become_text(tmp_path):
    out = tmp_path / "out.parquet"
    writer = ResultWriter(out).open()
    writer.write(_ok(0, tag=5))
    writer.write(_ok(1, tag="five"))
    writer.write(_ok(2, tag={"nested": True}))
    writer.close()
    assert pq.read_table(out).column("tag").to_pylist() == ["5", "five", '{"nested": true}']


def test_a_line_cut_short_by_a_kill_is_ignored(tmp_path):
    journal = tmp_path / "j.jsonl"
    journal.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "capt')
    assert [r["id"] for r in read_journal(journal)] == ["a", "b"]


def test_replacing_an_output_leaves_no_temporary_files(tmp_path):
    out = tmp_path / "out.parquet"
    for n in (1, 2):
        writer = ResultWriter(out).open()
        for i in range(n):
            writer.write(_ok(i))
        writer.close()
    assert pq.read_table(out).num_rows == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_a_journal_longer_than_a_chunk_merges_as_one_table(tmp_path, monkeypatch):
    monkeypatch.setattr(merge_module, "JOURNAL_CHUNK_ROWS", 3)
    out = tmp_path / "out.parquet"
    first = ResultWriter(out).open()
    for i in range(4):
        first.write(_ok(i))
    first.close()
    second = ResultWriter(out).open()
    for row in (
        _ok(1, tag=7), _ok(10, tag=8), _ok(11, tag=9),  # chunk 1: tag is int; id1 replaces the old row
        _ok(10, tag="ten"), _ok(12, tag="twelve, draft"), _ok(12, tag="twelve"),  # chunk 2: tag is text; id10 again
        _ok(13, shelf="B2"), _ok(14, shelf="B3"),  # chunk 3: no tag, a column no earlier chunk had
    ):
        second.write(row)
    second.close()
    table = pq.read_table(out)
    for field in OUTPUT_SCHEMA:
        assert table.schema.field(field.name).type == field.type
    assert table.schema.field("tag").type == "string" and table.schema.field("shelf").type == "string"
    rows = table.to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(f"id{i}" for i in (0, 1, 2, 3, 10, 11, 12, 13, 14))
    assert {r["id"]: (r["tag"], r["shelf"]) for r in rows} == {
        "id0": (None, None), "id1": ("7", None), "id2": (None, None), "id3": (None, None),
        "id10": ("ten", None), "id11": ("9", None), "id12": ("twelve", None),
        "id13": (None, "B2"), "id14": (None, "B3"),
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_a_merge_holds_one_chunk_of_the_journal_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(merge_module, "JOURNAL_CHUNK_ROWS", 3)
    tables_built = []
    rows_to_table = merge_module.rows_to_table
    monkeypatch.setattr(merge_module, "rows_to_table", lambda rows, typed=None: tables_built.append(len(rows)) or rows_to_table(rows, typed))
    out = tmp_path / "out.parquet"
    writer = ResultWriter(out).open()
    for i in range(10):
        writer.write(_ok(i))
    writer.close()
    assert tables_built == [3, 3, 3, 1]
    assert pq.read_table(out).column("id").to_pylist() == [f"id{i}" for i in range(10)]


def test_a_killed_runs_journal_is_recovered_a_chunk_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(merge_module, "JOURNAL_CHUNK_ROWS", 2)
    out = tmp_path / "out.parquet"
    lines = [json.dumps(_ok(i, tag=i)) for i in range(5)] + ["not json", json.dumps(_ok(0, tag="again"))]
    journal_path(out).write_text("\n".join(lines) + "\n" + json.dumps(_ok(9))[:40])
    (tmp_path / ".out.parquet.123.journal0.tmp").write_bytes(b"a part a killed merge left")
    writer = ResultWriter(out).open()
    writer.close()
    assert writer.rows_recovered == 6
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["id"] for r in rows) == ["id0", "id1", "id2", "id3", "id4"]
    assert {r["id"]: r["tag"] for r in rows} == {"id0": "again", "id1": "1", "id2": "2", "id3": "3", "id4": "4"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]


def test_rows_finished_in_one_loop_turn_reach_the_os_in_one_write_before_the_next_turn(tmp_path):
    out = tmp_path / "out.parquet"
    writer = ResultWriter(out).open()
    flushes = []

    class Counting:
        def __init__(self, file):
            self.file = file

        def __getattr__(self, name):
            return getattr(self.file, name)

        def flush(self):
            flushes.append(1)
            self.file.flush()

    writer._file = Counting(writer._file)

    async def finish_three():
        for i in range(3):  # three answers handled in the same turn of the loop
            writer.write(_ok(i))
        assert [r["id"] for r in read_journal(journal_path(out))] == []  # still ours, in one buffer
        await asyncio.sleep(0)  # the next turn, before any other answer is read
        return [r["id"] for r in read_journal(journal_path(out))]

    assert asyncio.run(finish_three()) == ["id0", "id1", "id2"] and len(flushes) == 1
    writer.close()
    assert pq.read_table(out).num_rows == 3
