import pyarrow.parquet as pq

from pipeline.errors import NotAnImageError
from pipeline.records import Completion, ManifestRow, PreparedImage
from pipeline.results import OUTPUT_SCHEMA, error_row, ok_row
from pipeline.writer import ResultWriter, journal_path, read_journal


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
