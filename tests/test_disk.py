"""Disk faults and the run record: a full disk, a read-only folder or an unusable path is exit 74 with one
clear line, never an internal error; every journaled row survives; every run leaves its line in runs.jsonl."""

import json
import os
import subprocess
import uuid

import pyarrow.parquet as pq
import pytest

from pipeline import load_config, run_job
from pipeline.files import runs_path
from test_durability import KEY, make_manifest, run, start


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs; skipped where mounting is refused (not root, or no CAP_SYS_ADMIN)."""
    folder = tmp_path / "disk"
    folder.mkdir()

    def mount(*options):
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=1m", *options)), "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); CI runs this as root")
        return folder

    yield mount
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder, leave):
    """Leave about `leave` bytes free."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    with open(folder / "filler", "wb") as f:
        f.write(b"x" * max(0, free - leave))
    return folder / "filler"


def test_a_disk_that_fills_mid_run_stops_with_74_and_a_rerun_recovers_every_journaled_row(simulator, tmp_path, small_disk):
    disk = small_disk()
    manifest = make_manifest(tmp_path, 400)
    filler = fill(disk, 300 * 1024)
    out = disk / "out.parquet"
    code, stderr = run(manifest, out, simulator.base_url, "--concurrency", "4")
    assert code == 74, stderr
    assert "disk is full" in stderr and "internal error" not in stderr and "Traceback" not in stderr
    journaled = sum(1 for line in (disk / "out.parquet.journal.jsonl").read_text().splitlines() if line.endswith("}"))
    assert 50 < journaled < 400
    first = simulator.stats()["requests"]
    assert first < 400  # it stopped sending when the write failed
    filler.unlink()
    code, stderr = run(manifest, out, simulator.base_url, "--concurrency", "4")
    assert code == 0, stderr
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == len({r["id"] for r in rows}) == 400 and all(r["status"] == "ok" for r in rows)
    # Paid twice: only the rows of the one journal write that failed (those finished in one loop turn,
    # at most --concurrency) and those in flight when the run stopped (at most --concurrency).
    assert simulator.stats()["requests"] <= 400 + 2 * 4


def test_a_full_disk_is_found_before_the_first_request(simulator, tmp_path, small_disk):
    disk = small_disk()
    fill(disk, 16 * 1024)
    code, stderr = run(make_manifest(tmp_path, 5), disk / "out.parquet", simulator.base_url)
    assert code == 74 and "disk is full" in stderr, stderr
    assert simulator.stats()["requests"] == 0


def test_a_read_only_folder_is_74_at_the_lock(simulator, tmp_path, small_disk):
    disk = small_disk("ro")
    code, stderr = run(make_manifest(tmp_path, 2), disk / "out.parquet", simulator.base_url)
    assert code == 74 and "read-only" in stderr and "lock" in stderr, stderr
    assert simulator.stats()["requests"] == 0


def test_an_unusable_path_is_74_not_an_internal_error(simulator, tmp_path):
    code, stderr = run(make_manifest(tmp_path, 2), f"/proc/pipeline-{uuid.uuid4().hex}/out.parquet", simulator.base_url)
    assert code == 74 and "internal error" not in stderr and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1


def records(out):
    return [json.loads(line) for line in runs_path(out).read_text().splitlines()]


def test_a_run_refused_by_the_lock_is_in_the_run_record(simulator, tmp_path):
    simulator.configure(latency=5)
    manifest, out = make_manifest(tmp_path, 3), tmp_path / "out.parquet"
    first = start(manifest, out, simulator.base_url)
    try:
        for _ in range(100):
            if (tmp_path / "out.parquet.journal.jsonl").exists():
                break
            subprocess.run(["sleep", "0.05"])
        code, stderr = run(manifest, out, simulator.base_url)
        assert code == 75
    finally:
        first.kill()
        first.wait()
    [record] = records(out)
    assert record["exit_code"] == 75 and "another run" in record["error"] and KEY not in json.dumps(record)


def test_a_manifest_error_and_an_internal_error_are_in_the_run_record(simulator, tmp_path, monkeypatch):
    out = tmp_path / "out.parquet"
    code, stderr = run(tmp_path / "missing.csv", out, simulator.base_url)
    assert code == 2
    config = load_config({"manifest": make_manifest(tmp_path, 2), "output": out, "base_url": simulator.base_url},
                         environ={"ANYFAST_API_KEY": KEY})
    monkeypatch.setattr("pipeline.runner.ResumeIndex.load", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_job(config)
    assert [r["exit_code"] for r in records(out)] == [2, 70]
    assert "ZeroDivisionError" in records(out)[1]["error"]
