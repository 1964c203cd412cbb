"""Crashes, kills, signals and reruns, with real processes: nothing paid for is lost, nothing is paid twice."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from pipeline.files import journal_path

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-durable-5e1f0c2b"


def make_manifest(folder: Path, n: int, start: int = 0, name: str = "m.csv") -> Path:
    manifest = folder / name
    new = not manifest.exists()
    with manifest.open("a") as f:
        if new:
            f.write("id,image\n")
        for i in range(start, start + n):
            Image.new("RGB", (24, 16), ((i * 37) % 256, (i * 11) % 256, 90)).save(folder / f"i{i}.png")
            f.write(f"r{i},i{i}.png\n")
    return manifest


def start(manifest, out, base_url, *args, env=None):
    environment = {**os.environ, "ANYFAST_API_KEY": KEY, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "caption", str(manifest), "-o", str(out), "--base-url", base_url, *map(str, args)],
        cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def run(manifest, out, base_url, *args, env=None):
    process = start(manifest, out, base_url, *args, env=env)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def rows_of(out):
    return pq.read_table(out).to_pylist() if out.exists() else []


def wait_for_journal_rows(out, n, timeout=30):
    deadline = time.monotonic() + timeout
    journal = journal_path(out)
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"the run never journaled {n} rows")


def test_kill_9_at_several_moments_then_reruns_give_one_ok_row_per_id(simulator, tmp_path):
    simulator.configure(latency=0.1, jitter=0.05)
    manifest = make_manifest(tmp_path, 60)
    out = tmp_path / "out.parquet"
    for journaled in (0, 5, 25):  # killed while starting, early, mid-run
        process = start(manifest, out, simulator.base_url, "--concurrency", 4)
        if journaled:
            wait_for_journal_rows(out, journaled)
        else:
            time.sleep(0.5)
        answered_before = sum(c["ok"] for c in simulator.stats()["images"].values())
        process.kill()
        process.wait()
        # What was answered is on disk, but for at most the requests in flight.
        kept = len({r["id"] for r in rows_of(out)} | {json.loads(l)["id"] for l in journal_path(out).read_text().splitlines() if l.endswith("}")}) if journal_path(out).exists() else len(rows_of(out))
        assert kept >= answered_before - 4 - 1  # in flight, plus one answered between the snapshot and the kill
    code, stderr = run(manifest, out, simulator.base_url, "--concurrency", 4)
    assert code == 0, stderr
    rows = rows_of(out)
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(60))
    assert all(r["status"] == "ok" for r in rows)
    assert max(c["ok"] for c in simulator.stats()["images"].values()) <= 2
    assert not journal_path(out).exists()
    assert not list(tmp_path.glob(".out.parquet.*.tmp"))


def test_a_rerun_of_a_finished_job_sends_nothing_and_says_so(simulator, tmp_path):
    manifest = make_manifest(tmp_path, 5)
    out = tmp_path / "out.parquet"
    assert run(manifest, out, simulator.base_url)[0] == 0
    before = out.stat().st_mtime_ns
    simulator.reset()
    code, stderr = run(manifest, out, simulator.base_url)
    assert code == 0
    assert simulator.stats()["requests"] == 0
    assert "nothing to do: all 5 rows are already in" in stderr
    assert out.stat().st_mtime_ns == before  # not even rewritten


def test_appended_rows_are_the_only_ones_captioned(simulator, tmp_path):
    manifest = make_manifest(tmp_path, 4)
    out = tmp_path / "out.parquet"
    run(manifest, out, simulator.base_url)
    make_manifest(tmp_path, 3, start=4)
    simulator.reset()
    code, stderr = run(manifest, out, simulator.base_url)
    assert code == 0 and simulator.stats()["requests"] == 3
    assert sorted(r["id"] for r in rows_of(out)) == [f"r{i}" for i in range(7)]
    assert all(len(r["image_sha256"]) == 64 for r in rows_of(out))


def test_changing_the_prompt_recaptions_and_redo_forces_everything(simulator, tmp_path):
    manifest = make_manifest(tmp_path, 3)
    out = tmp_path / "out.parquet"
    run(manifest, out, simulator.base_url)
    first = {r["id"]: r["fingerprint"] for r in rows_of(out)}
    simulator.reset()
    run(manifest, out, simulator.base_url, "--prompt", "Name the dominant colour.")
    assert simulator.stats()["requests"] == 3
    assert {b["text"] for b in simulator.stats()["bodies"]} == {"Name the dominant colour."}
    second = {r["id"]: r["fingerprint"] for r in rows_of(out)}
    assert all(first[i] != second[i] for i in first) and len(rows_of(out)) == 3
    simulator.reset()
    run(manifest, out, simulator.base_url, "--prompt", "Name the dominant colour.", "--redo")
    assert simulator.stats()["requests"] == 3 and len(rows_of(out)) == 3


def test_failed_rows_are_retried_on_a_rerun_unless_told_not_to(simulator, tmp_path):
    manifest = make_manifest(tmp_path, 2)
    out = tmp_path / "out.parquet"
    simulator.configure(fault_script=["400"])  # the first request for each image fails for good
    assert run(manifest, out, simulator.base_url)[0] == 1
    simulator.reset()
    simulator.configure(fault_script=[])
    assert run(manifest, out, simulator.base_url, "--no-retry-errors")[0] == 0
    assert simulator.stats()["requests"] == 0
    assert run(manifest, out, simulator.base_url)[0] == 0
    assert simulator.stats()["requests"] == 2
    assert [r["status"] for r in rows_of(out)] == ["ok", "ok"]


def test_sigterm_stops_gracefully_with_143_and_a_rerun_finishes(simulator, tmp_path):
    simulator.configure(latency=0.3)
    manifest = make_manifest(tmp_path, 40)
    out = tmp_path / "out.parquet"
    process = start(manifest, out, simulator.base_url, "--concurrency", 4, "--grace", 20)
    wait_for_journal_rows(out, 4)
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143, stderr
    assert time.monotonic() - signalled < 10  # it waited for the requests in flight, not for the whole grace
    stopped = rows_of(out)
    assert 4 <= len(stopped) < 40 and all(r["status"] == "ok" for r in stopped)  # in-flight ones finished, not cut
    assert simulator.stats()["in_flight"] == 0
    runs = [json.loads(l) for l in (tmp_path / "out.parquet.runs.jsonl").read_text().splitlines()]
    assert runs[-1]["exit_code"] == 143 and runs[-1]["stopped_by"] == "SIGTERM"
    left = 40 - len(stopped)
    assert runs[-1]["left"] == left and f"{left} row{'s' * (left != 1)} left: rerun the same command to continue" in stderr
    code, _ = run(manifest, out, simulator.base_url, "--concurrency", 4)
    assert code == 0 and len(rows_of(out)) == 40
    assert max(c["ok"] for c in simulator.stats()["images"].values()) == 1  # nothing paid twice


def test_grace_runs_out_and_a_second_ctrl_c_stops_at_once(simulator, tmp_path):
    simulator.configure(latency=30)  # requests that will not finish in time
    manifest = make_manifest(tmp_path, 6)
    out = tmp_path / "out.parquet"
    for second_signal in (False, True):
        process = start(manifest, out, simulator.base_url, "--concurrency", 2, "--grace", 1 if not second_signal else 60)
        deadline = time.monotonic() + 20
        # One in flight: the job starts gently into an unknown limit, and these requests take 30 s to answer.
        while simulator.stats()["in_flight"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        if second_signal:
            time.sleep(0.3)
            process.send_signal(signal.SIGINT)
        started = time.monotonic()
        process.communicate(timeout=30)
        assert process.returncode == 130
        assert time.monotonic() - started < 10  # not the 30 s latency, nor the 60 s grace
        assert not journal_path(out).exists() and rows_of(out) == []


def test_a_second_run_on_the_same_output_exits_75_naming_the_first(simulator, tmp_path):
    simulator.configure(latency=0.5)
    manifest = make_manifest(tmp_path, 8)
    out = tmp_path / "out.parquet"
    first = start(manifest, out, simulator.base_url, "--concurrency", 1)
    try:
        deadline = time.monotonic() + 20
        while simulator.stats()["requests"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        code, stderr = run(manifest, out, simulator.base_url)
        assert code == 75
        assert f"pid {first.pid}" in stderr
    finally:
        first.kill()
        first.wait()
    # The kill released the lock: the next run goes ahead.
    simulator.configure(latency=0)
    assert run(manifest, out, simulator.base_url)[0] == 0


def test_a_broken_endpoint_aborts_after_the_failure_budget(simulator, tmp_path):
    simulator.configure(rate_5xx=1.0, retry_after=0)
    manifest = make_manifest(tmp_path, 30)
    out = tmp_path / "out.parquet"
    code, stderr = run(manifest, out, simulator.base_url, "--max-retries", 1, "--max-consecutive-failures", 5, "--concurrency", 1)
    assert code == 3 and "5 rows in a row failed" in stderr
    assert len(rows_of(out)) == 5 and simulator.stats()["requests"] == 10


def test_leftovers_of_a_killed_run_are_recovered(simulator, tmp_path):
    manifest = make_manifest(tmp_path, 3)
    out = tmp_path / "out.parquet"
    # A journal with one finished row (and a line cut short by the kill), and a half-written temporary file.
    done = {"id": "r0", "image": "i0.png", "status": "ok", "caption": "from the killed run", "fingerprint": None}
    journal_path(out).write_text(json.dumps(done) + "\n" + '{"id": "r1", "sta')
    (tmp_path / ".out.parquet.999.tmp").write_bytes(b"PAR1 half")
    assert run(manifest, out, simulator.base_url)[0] == 0
    rows = {r["id"]: r for r in rows_of(out)}
    assert sorted(rows) == ["r0", "r1", "r2"]
    assert not (tmp_path / ".out.parquet.999.tmp").exists() and not journal_path(out).exists()


def test_run_record_and_json_logs_never_show_the_key(simulator, tmp_path):
    # Force a 429, a reset, a timeout and finally a 401 with a distinctive key.
    simulator.configure(fault_script=["429", "reset", "hang", "401"], retry_after=0)
    manifest = make_manifest(tmp_path, 1)
    out = tmp_path / "out.parquet"
    code, stderr = run(manifest, out, simulator.base_url, "--timeout", 0.5)
    assert code == 3
    lines = stderr.strip().splitlines()
    assert all(json.loads(line)["message"] for line in lines)  # one JSON object per line
    record = json.loads((tmp_path / "out.parquet.runs.jsonl").read_text().splitlines()[-1])
    assert record["exit_code"] == 3 and record["requests"] == 4 and record["options"]["model"]
    assert {"run_id", "started_at", "ended_at", "host", "ok", "error", "skipped", "retries", "total_tokens"} <= set(record)
    for path in tmp_path.iterdir():
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert KEY not in stderr


def test_an_exhausted_quota_aborts_at_once(simulator, tmp_path):
    simulator.configure(fault_script=["quota"])
    manifest = make_manifest(tmp_path, 10)
    out = tmp_path / "out.parquet"
    code, stderr = run(manifest, out, simulator.base_url, "--concurrency", 1)
    assert code == 3 and "quota" in stderr
    assert simulator.stats()["requests"] == 1  # not retried, and nothing more sent
    assert [r["error_type"] for r in rows_of(out)] == ["quota_exhausted"]
