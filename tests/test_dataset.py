"""A folder output (issue 14): each run adds a part and rewrites none; newest row per id; compact; readers' one-liners."""

import hashlib
import json
import subprocess
import sys
import time

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.compact import compact
from pipeline.dataset import parts, read_parts_manifest
from pipeline.outputs import Output
from pipeline.status import output_status
from test_durability import ROOT, make_manifest, run, start, wait_for_journal_rows


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _newest(out):
    reader = Output(out)
    return {r["id"]: r for b in reader.batches() for r in b.to_pylist()}


def test_each_run_adds_one_part_and_never_rewrites_an_earlier_one(simulator, tmp_path):
    manifest = make_manifest(tmp_path, 5)
    out = tmp_path / "out"
    code, stderr = run(manifest, out, simulator.base_url)
    assert code == 0, stderr
    [first] = parts(out)
    before = (_digest(first), first.stat().st_mtime_ns, first.stat().st_ino)

    make_manifest(tmp_path, 3, start=5)  # the manifest grows, as a nightly one does
    code, stderr = run(manifest, out, simulator.base_url)
    assert code == 0, stderr
    assert simulator.stats()["requests"] == 8  # only the new rows were sent
    assert parts(out)[0] == first and (_digest(first), first.stat().st_mtime_ns, first.stat().st_ino) == before
    listed = read_parts_manifest(out)
    assert [p["rows"] for p in listed["parts"]] == [5, 3] and listed["rows"] == 8
    assert [p["name"] for p in listed["parts"]] == [p.name for p in parts(out)]

    code, stderr = run(manifest, out, simulator.base_url)  # nothing left: no new part
    assert code == 0 and "nothing to do" in stderr and len(parts(out)) == 2
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("_")) == [p.name for p in parts(out)]


def test_a_row_captioned_again_wins_over_its_older_row_until_compact_leaves_one_per_id(simulator, tmp_path):
    manifest = make_manifest(tmp_path, 6)
    out = tmp_path / "out"
    assert run(manifest, out, simulator.base_url)[0] == 0
    time.sleep(0.01)
    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "i2.png")  # replaced: a new size
    code, stderr = run(manifest, out, simulator.base_url)
    assert code == 0, stderr
    assert [pq.ParquetFile(p).metadata.num_rows for p in parts(out)] == [6, 1]
    assert pads.dataset(out).count_rows() == 7  # a plain reader sees both rows of r2 until compaction
    newest = _newest(out)
    assert len(newest) == 6 and newest["r2"]["width"] == 30
    assert output_status(out).rows == 6

    rows, before = compact(out, n_parts=2)
    assert (rows, before) == (6, 2)
    assert len(parts(out)) == 2 and sum(p["rows"] for p in read_parts_manifest(out)["parts"]) == 6
    table = pads.dataset(out).to_table()
    assert sorted(table.column("id").to_pylist()) == [f"r{i}" for i in range(6)]
    assert {r["id"]: r["width"] for r in table.to_pylist()}["r2"] == 30

    simulator.reset()
    assert run(manifest, out, simulator.base_url)[0] == 0 and simulator.stats()["requests"] == 0  # resume reads the compacted parts


def test_the_readers_one_liners(simulator, tmp_path):
    """What the README shows, each in its own library: one table of the rows."""
    manifest = make_manifest(tmp_path, 4)
    out = tmp_path / "out"
    assert run(manifest, out, simulator.base_url)[0] == 0
    make_manifest(tmp_path, 2, start=4)
    assert run(manifest, out, simulator.base_url)[0] == 0
    ids = sorted(f"r{i}" for i in range(6))

    assert sorted(pads.dataset(out).to_table().column("id").to_pylist()) == ids
    import duckdb
    assert sorted(r[0] for r in duckdb.sql(f"select id from read_parquet('{out}/*.parquet', union_by_name=true)").fetchall()) == ids
    import pandas
    assert sorted(pandas.read_parquet(out)["id"]) == ids
    polars = pytest.importorskip("polars")
    assert sorted(polars.read_parquet(f"{out}/*.parquet")["id"].to_list()) == ids
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("parquet", data_files=f"{out}/*.parquet", split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(loaded["id"]) == ids


def test_kill_9_then_rerun_and_compact_gives_one_row_per_id(simulator, tmp_path):
    simulator.configure(latency=0.1, jitter=0.05)
    manifest = make_manifest(tmp_path, 40)
    out = tmp_path / "out"
    process = start(manifest, out, simulator.base_url, "--concurrency", 4)
    wait_for_journal_rows(out, 10)
    process.kill()
    process.wait()
    assert (out / "_journal.jsonl").exists() and not parts(out)
    code, stderr = run(manifest, out, simulator.base_url, "--concurrency", 4)
    assert code == 0, stderr
    assert len(parts(out)) == 2  # the killed run's journal became a part of its own, then the rerun's
    assert not (out / "_journal.jsonl").exists() and not list(out.glob(".*.tmp"))
    assert max(c["ok"] for c in simulator.stats()["images"].values()) <= 2
    done = subprocess.run([sys.executable, "-m", "pipeline", "compact", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 parts -> 1, 40 rows" in done.stderr
    rows = pq.read_table(parts(out)[0]).to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(40)) and all(r["status"] == "ok" for r in rows)
    runs = [json.loads(line) for line in (out / "_runs.jsonl").read_text().splitlines()]
    assert runs[-1]["exit_code"] == 0


def test_compact_and_outputs_refuse_clearly(tmp_path):
    single = tmp_path / "o.parquet"
    done = subprocess.run([sys.executable, "-m", "pipeline", "compact", str(single)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "single Parquet file" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "pipeline", "compact", str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "no such dataset output" in done.stderr


def test_status_and_the_review_page_read_a_dataset_newest_row_per_id(simulator, tmp_path):
    manifest = make_manifest(tmp_path, 4)
    out = tmp_path / "out"
    assert run(manifest, out, simulator.base_url)[0] == 0
    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "i1.png")  # changed: captioned again into a second part
    assert run(manifest, out, simulator.base_url)[0] == 0
    done = subprocess.run([sys.executable, "-m", "pipeline", "status", str(out), "--json"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert (status["rows"], status["ok"]) == (4, 4) and len(status["last_runs"]) == 2
    from pipeline.report import write_report
    page = write_report(out, tmp_path / "r.html").html_path.read_text()
    assert page.count('"r1"') == 1 and all(f'"r{i}"' in page for i in range(4))
