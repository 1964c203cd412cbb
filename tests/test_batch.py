"""--batch against the simulator's batch APIs: same rows as online, half the price, never paid twice, every row accounted for."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import helpers
from pipeline.batch.ledger import Ledger
from pipeline.files import batches_path

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-batch-test-7c1d"
FAST = {"batch": True, "batch_poll": 0.05}


@pytest.fixture
def sim(simulator):
    simulator.configure(batch_seconds=0.2)
    return simulator


def run(manifest, out, sim, **flags):
    return helpers.caption(manifest, out, sim.base_url, KEY, **{**FAST, **flags})


def start(manifest, out, base_url, *args):
    env = {**os.environ, "ANYFAST_API_KEY": KEY}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "caption", str(manifest), "-o", str(out), "--base-url", base_url,
                             "--batch", "--batch-poll", "0.05", *map(str, args)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def events(out):
    path = batches_path(out) / "ledger.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_batch_run_writes_the_same_rows_as_online_at_the_batch_price(sim, tmp_path):
    manifest = helpers.image_manifest(tmp_path, 12)
    online, online_rows = helpers.caption(manifest, tmp_path / "online.parquet", sim.base_url, KEY)
    sim.reset()
    summary, rows = run(manifest, tmp_path / "batch.parquet", sim, batch_max_requests=5)
    assert summary.exit_code == 0 and summary.ok == 12
    stats = sim.stats()["batches"]
    assert stats["batches_created"] == 3 and stats["files_uploaded"] == 3 and stats["lines"] == 12  # 5 + 5 + 2
    for row_id, row in rows.items():
        twin = online_rows[row_id]
        assert row["status"] == "ok" and row["caption"] == twin["caption"]
        # Same image, same request settings: a later online run would skip these rows.
        assert (row["fingerprint"], row["image_sha256"], row["prompt_tokens"]) == (twin["fingerprint"], twin["image_sha256"], twin["prompt_tokens"])
        assert row["cost_usd"] == pytest.approx(twin["cost_usd"] / 2)  # batch_discount = 0.5 in the shipped prices
    assert summary.cost_usd == pytest.approx(online.cost_usd / 2)
    assert [e["event"] for e in events(tmp_path / "batch.parquet")].count("collected") == 3
    assert not list(batches_path(tmp_path / "batch.parquet").glob("*.rows.jsonl"))  # collected batches leave only the ledger
    again, _ = helpers.caption(manifest, tmp_path / "batch.parquet", sim.base_url, KEY)  # online now: nothing left to do
    assert again.skipped == 12 and again.requests == 0


def test_kill_9_while_a_batch_runs_then_the_rerun_collects_it_without_submitting_again(sim, tmp_path):
    sim.configure(batch_seconds=3.0)
    manifest = helpers.image_manifest(tmp_path, 8)
    out = tmp_path / "out.parquet"
    process = start(manifest, out, sim.base_url)
    deadline = time.monotonic() + 30
    while not any(e["event"] == "submitted" for e in events(out)):
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read() if process.poll() is not None else "no submit"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    sim.configure(batch_seconds=0.2)
    summary, rows = run(manifest, out, sim)
    assert summary.exit_code == 0 and len(rows) == 8 and all(r["status"] == "ok" for r in rows.values())
    stats = sim.stats()["batches"]
    assert stats["batches_created"] == 1 and stats["files_uploaded"] == 1 and stats["lines"] == 8


def test_a_batch_created_but_not_recorded_before_a_kill_is_found_not_submitted_again(sim, tmp_path):
    manifest = helpers.image_manifest(tmp_path, 4)
    out = tmp_path / "out.parquet"
    summary, _ = run(manifest, out, sim, batch_wait=False)
    assert summary.exit_code == 0 and summary.rows == 0 and "at the provider" in summary.line()
    # As if the kill came after the provider created the batch and before the ledger said so.
    ledger = batches_path(out) / "ledger.jsonl"
    ledger.write_text("".join(line + "\n" for line in ledger.read_text().splitlines() if '"submitted"' not in line))
    summary, rows = run(manifest, out, sim)
    assert summary.ok == 4 and sim.stats()["batches"]["batches_created"] == 1


def test_no_wait_submits_and_exits_then_a_later_run_collects_and_submits_what_is_new(sim, tmp_path):
    sim.configure(batch_seconds=0.5)
    manifest = helpers.image_manifest(tmp_path, 6)
    out = tmp_path / "out.parquet"
    first, rows = run(manifest, out, sim, batch_wait=False)
    assert first.exit_code == 0 and rows == {} and "6 rows in 1 batches are at the provider" in first.line()
    with manifest.open("a") as f:  # the manifest grows, as a nightly one does
        for path in helpers.make_images(tmp_path / "more", 3):
            f.write(f"more/{path.name}\n")
    time.sleep(0.7)
    second, rows = run(manifest, out, sim)
    assert second.exit_code == 0 and len(rows) == 9 and all(r["status"] == "ok" for r in rows.values())
    assert sim.stats()["batches"]["batches_created"] == 2 and sim.stats()["batches"]["lines"] == 9


def test_an_expired_batch_writes_what_was_done_and_the_next_run_submits_the_rest(sim, tmp_path):
    sim.configure(batch_fault="expire")
    manifest = helpers.image_manifest(tmp_path, 10)
    out = tmp_path / "out.parquet"
    first, rows = run(manifest, out, sim)
    assert first.ok == 5 and first.error == 0 and len(rows) == 5  # the expired half is not an error: it was never run
    sim.configure(batch_fault="")
    second, rows = run(manifest, out, sim)
    assert second.ok == 5 and len(rows) == 10 and all(r["status"] == "ok" for r in rows.values())
    assert sim.stats()["batches"]["lines"] == 10 and sim.stats()["batches"]["batches_created"] == 2


def test_per_line_errors_are_error_rows_classified_as_online_and_a_rerun_retries_them(sim, tmp_path):
    sim.configure(fault_script=["500"])  # every image's first request: a 500
    manifest = helpers.image_manifest(tmp_path, 4)
    out = tmp_path / "out.parquet"
    first, rows = run(manifest, out, sim)
    assert first.exit_code == 1 and first.error_types == {"server_error": 4}
    assert all(r["status"] == "error" and "HTTP 500 in the batch" in r["error"] for r in rows.values())
    second, rows = run(manifest, out, sim)
    assert second.exit_code == 0 and all(r["status"] == "ok" for r in rows.values())


def test_a_batch_rejected_at_validation_says_which_and_why_and_its_rows_stay_to_do(sim, tmp_path, caplog):
    sim.configure(batch_fault="fail_validation")
    manifest = helpers.image_manifest(tmp_path, 3)
    out = tmp_path / "out.parquet"
    summary, rows = run(manifest, out, sim)
    assert summary.exit_code == 3 and rows == {}
    assert "rejected at validation" in summary.aborted and "failed validation (simulated)" in summary.aborted
    assert "requests.jsonl" in caplog.text  # the file it was given is kept, and named
    sim.configure(batch_fault="")
    summary, rows = run(manifest, out, sim)
    assert summary.exit_code == 0 and len(rows) == 3


def test_a_download_that_breaks_midway_is_started_again(sim, tmp_path):
    sim.configure(batch_break_download=True)
    manifest = helpers.image_manifest(tmp_path, 5)
    summary, rows = run(manifest, tmp_path / "out.parquet", sim)
    assert summary.ok == 5
    stats = sim.stats()["batches"]
    assert stats["broken_downloads"] == 1 and stats["downloads"] == 2


def test_anthropic_message_batches(sim, tmp_path):
    manifest = helpers.image_manifest(tmp_path, 4)
    online, online_rows = helpers.caption(manifest, tmp_path / "online.parquet", sim.base_url, KEY)
    summary, rows = run(manifest, tmp_path / "out.parquet", sim, batch_api="anthropic")
    assert summary.exit_code == 0 and summary.ok == 4
    for row_id, row in rows.items():
        assert row["caption"] == online_rows[row_id]["caption"]  # the simulator saw the same image and prompt
        assert row["prompt_tokens"] == online_rows[row_id]["prompt_tokens"] and row["finish_reason"] == "stop"
        assert json.loads(row["usage"]).keys() == {"input_tokens", "output_tokens"}  # Anthropic's own usage, kept as given
    assert "files_uploaded" not in sim.stats()["batches"] and sim.stats()["batches"]["batches_created"] == 1


def test_max_cost_counts_batches_at_the_provider_as_in_flight(sim, tmp_path):
    manifest = helpers.image_manifest(tmp_path, 10)
    out = tmp_path / "out.parquet"
    first, _ = run(manifest, out, sim, max_cost=0.003, batch_wait=False)  # room for the worst case of about 3 rows
    assert first.exit_code == 4 and "--max-cost" in first.line()
    (submitted,) = [e for e in events(out) if e["event"] == "prepared"]
    assert 0 < submitted["rows"] < 10 and submitted["worst_usd"] <= 0.003
    second, _ = run(manifest, out, sim, max_cost=0.003, batch_wait=False)  # the live batch still holds the budget
    assert second.exit_code == 4 and len([e for e in events(out) if e["event"] == "prepared"]) == 1


def test_an_online_run_does_not_send_rows_that_sit_in_a_live_batch(sim, tmp_path):
    sim.configure(batch_seconds=30)
    manifest = helpers.image_manifest(tmp_path, 3)
    out = tmp_path / "out.parquet"
    run(manifest, out, sim, batch_wait=False)
    online, _ = helpers.caption(manifest, out, sim.base_url, KEY)
    assert online.requests == 0 and sim.stats()["requests"] == 0
    assert len(Ledger.open(out).live()) == 1
