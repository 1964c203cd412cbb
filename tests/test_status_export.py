"""`pipeline status` and `pipeline export`: how far an output is, and its rows out as CSV or JSON lines."""

import csv
import io
import json
import subprocess
import sys

import pyarrow.parquet as pq

from helpers import image_manifest
from pipeline.errors import NotAnImageError
from pipeline.records import Completion, ManifestRow, PreparedImage
from pipeline.results import error_row, ok_row
from pipeline.status import describe, output_status
from pipeline.writer import ResultWriter


def pipeline(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd)


def _row(i, **extra):
    return ManifestRow(line=i + 1, id=f"id{i}", image=f"img{i}.png", source=f"/x/img{i}.png", extra=extra)


def _ok(i, caption="a caption", cost=0.001, **extra):
    completion = Completion(caption, "stop", "m", f"resp{i}", {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12})
    return ok_row(_row(i, **extra), PreparedImage("data:", "image/png", "ab" * 32, 3), completion, attempts=1, latency_ms=5.0, cost_usd=cost)


def test_status_counts_errors_cost_last_runs_and_rows_left(tmp_path, caption):
    manifest = image_manifest(tmp_path, 6)
    with manifest.open("a") as f:
        f.write("img/gone.png\n")
    out = tmp_path / "out.parquet"
    caption(manifest, output=out, limit=4)  # 4 of 7 rows; the missing image comes later
    caption(manifest, output=out)
    status = output_status(out, manifest)
    assert (status.rows, status.ok, status.error, status.error_types) == (7, 6, 1, {"image_missing": 1})
    assert (status.manifest_rows, status.left, status.left_failed) == (7, 1, 1)
    assert status.cost_usd > 0 and status.prompt_tokens > 0
    assert [r["rows"] for r in status.last_runs] == [4, 3] and [r["exit_code"] for r in status.last_runs] == [0, 1]
    text = describe(status)
    assert "7 rows, 6 ok, 1 error" in text and "errors: image_missing 1" in text
    assert "7 rows, 1 left (1 failed, 0 not tried)" in text and "exit 1  3 rows" in text

    result = pipeline("status", out, manifest, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["left"] == 1 and json.loads(result.stdout)["error_types"] == {"image_missing": 1}


def test_status_counts_the_rows_of_an_interrupted_run_in_place_of_the_older_ones(tmp_path):
    out = tmp_path / "out.parquet"
    writer = ResultWriter(out).open()
    writer.write(error_row(_row(0), NotAnImageError("img0.png is not an image")))
    writer.write(_ok(1))
    writer.close()
    writer = ResultWriter(out).open()
    writer.write(_ok(0))  # the retry succeeded, then the run was killed: this row is only in the journal
    status = output_status(out)
    assert (status.rows, status.ok, status.error, status.journal_rows) == (2, 2, 0, 1)
    assert "in the journal of an interrupted run" in describe(status)


def test_status_of_an_unpriced_model_says_unknown_and_a_missing_output_is_exit_2(tmp_path):
    out = tmp_path / "out.parquet"
    writer = ResultWriter(out).open()
    writer.write(_ok(0, cost=None))
    writer.close()
    assert "cost unknown (no price for m in prices.toml)" in describe(output_status(out))
    result = pipeline("status", tmp_path / "nothing.parquet")
    assert result.returncode == 2 and "no such output" in result.stderr and "Traceback" not in result.stderr


def test_export_csv_and_jsonl_hold_every_row_once_with_nested_columns_as_json(tmp_path):
    out = tmp_path / "out.parquet"
    writer = ResultWriter(out).open()
    writer.write(_ok(0, caption='say "hi", then\nleave', tags=["a", "b"]))
    writer.write(_ok(1, tags=["c"]))
    writer.close()
    writer = ResultWriter(out).open()
    writer.write(_ok(1, caption="newer", tags=["d"]))  # in the journal: it wins over the file's row
    result = pipeline("export", out, "--format", "csv")
    assert result.returncode == 0, result.stderr
    rows = {r["id"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert rows["id0"]["caption"] == 'say "hi", then\nleave' and json.loads(rows["id0"]["tags"]) == ["a", "b"]
    assert rows["id1"]["caption"] == "newer" and len(rows) == 2

    target = tmp_path / "rows.jsonl"
    result = pipeline("export", out, "--format", "jsonl", "-o", target, "--columns", "id,caption,completed_at")
    assert result.returncode == 0 and "exported 2 rows" in result.stderr
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert sorted(lines[0]) == ["caption", "completed_at", "id"] and lines[0]["completed_at"].startswith("20")
    assert {r["id"]: r["caption"] for r in lines} == {"id0": 'say "hi", then\nleave', "id1": "newer"}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_export_refuses_an_unknown_column_and_a_file_that_is_not_an_output(tmp_path):
    out = tmp_path / "out.parquet"
    writer = ResultWriter(out).open()
    writer.write(_ok(0))
    writer.close()
    result = pipeline("export", out, "--format", "csv", "--columns", "id,captoin")
    assert result.returncode == 2 and "no column captoin" in result.stderr
    other = tmp_path / "other.parquet"
    pq.write_table(pq.read_table(out).select(["caption"]), other)
    result = pipeline("export", other, "--format", "jsonl")
    assert result.returncode == 2 and "not a caption output" in result.stderr and "Traceback" not in result.stderr
