"""--batch against the simulator's batch APIs: same rows as online, half the price, never paid twice, every row accounted for."""

import json
import re
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


def started_and_submitted(manifest, out, base_url):
    """A `--batch` run in a process of its own, once its ledger records a submitted batch."""
    process = start(manifest, out, base_url)
    deadline = time.monotonic() + 30
    while not any(e["event"] == "submitted" for e in events(out)):
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read() if process.poll() is not None else "no submit"
        time.sleep(0.02)
    return process


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
    process = started_and_submitted(manifest, out, sim.base_url)
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
        for path in helpers.make_images(tmp_path / "more", 3, size=(41, 30)):  # new images, not twins of the first ones
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


def batch_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline", "batch", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_export_then_run_elsewhere_then_import_gives_the_rows_an_online_run_gives(sim, tmp_path):
    import base64
    import hashlib

    manifest = helpers.image_manifest(tmp_path, 5)
    _, online_rows = helpers.caption(manifest, tmp_path / "online.parquet", sim.base_url, KEY)
    out, requests = tmp_path / "out.parquet", tmp_path / "requests.jsonl"
    done = batch_cli("export", manifest, "-o", requests, "--output", out, env={"ANYFAST_API_KEY": ""})  # no key needed
    assert done.returncode == 0, done.stderr
    assert "exported" in done.stderr and f"pipeline batch import results.jsonl -o {out}" in done.stderr
    lines = [json.loads(line) for line in requests.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(online_rows)
    for line in lines:
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions" and line["body"]["stream"] is False
        data_url = line["body"]["messages"][-1]["content"][1]["image_url"]["url"]
        sent = base64.b64decode(data_url.split(",", 1)[1])
        assert hashlib.sha256(sent).hexdigest() == online_rows[line["custom_id"]]["image_sha256"]  # the same image bytes as online
    # Run it elsewhere: a manual upload with the official SDK, to the simulator's batch API.
    (tmp_path / "results.jsonl").write_bytes(helpers.run_batch_with_the_openai_sdk(sim.base_url, KEY, requests))
    done = batch_cli("import", tmp_path / "results.jsonl", "-o", out)
    assert done.returncode == 0 and "imported 5 rows" in done.stderr, done.stderr
    rows = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    assert {k: (r["caption"], r["fingerprint"]) for k, r in rows.items()} == {k: (r["caption"], r["fingerprint"]) for k, r in online_rows.items()}
    assert all(r["cost_usd"] == pytest.approx(online_rows[k]["cost_usd"] / 2) for k, r in rows.items())
    again = batch_cli("import", tmp_path / "results.jsonl", "-o", out)  # nothing exported is left: the results match nothing now
    assert again.returncode == 2 and "match no exported row" in again.stderr


def test_status_lists_the_batches_and_cancel_stops_the_live_ones(sim, tmp_path):
    sim.configure(batch_seconds=20)
    manifest = helpers.image_manifest(tmp_path, 4)
    out = tmp_path / "out.parquet"
    run(manifest, out, sim, batch_wait=False)
    status = batch_cli("status", out)
    assert status.returncode == 0 and "openai" in status.stdout and "in_progress" not in status.stdout
    assert "1 live (4 rows" in status.stderr
    overall = subprocess.run([sys.executable, "-m", "pipeline", "status", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert "4 rows are in 1 provider batches not collected yet" in overall.stdout, overall.stdout + overall.stderr
    cancelled = batch_cli("cancel", out, env={"ANYFAST_API_KEY": KEY})  # the base URL comes from the last run's record
    assert cancelled.returncode == 0 and "cancelling" in cancelled.stdout, cancelled.stderr
    assert sim.stats()["batches"]["cancelled"] == 1
    sim.configure(batch_seconds=0.2)
    collected, rows = run(manifest, out, sim)  # collects what the cancelled batch answered
    assert collected.exit_code == 0 and 1 <= len(rows) < 4 and f"{4 - len(rows)} rows the provider did not run" in collected.line()
    summary, rows = run(manifest, out, sim)  # submits the rest
    assert summary.exit_code == 0 and len(rows) == 4 and all(r["status"] == "ok" for r in rows.values())
    status = batch_cli("status", out, "--json")
    states = [json.loads(line)["state"] for line in status.stdout.splitlines()]
    assert states == ["collected", "collected"]


def test_the_official_sdks_read_the_simulators_batch_apis(sim, tmp_path):
    """Our simulator must speak the providers' batch APIs, not only to our client: their SDKs parse every object."""
    import anthropic
    import openai

    url = sim.image_url(32, 24)
    client = anthropic.Anthropic(base_url=sim.root_url, api_key=KEY)
    params = {"model": "claude-sonnet-4-20250514", "max_tokens": 50,
              "messages": [{"role": "user", "content": [{"type": "text", "text": "Describe."}, {"type": "image", "source": {"type": "url", "url": url}}]}]}
    batch = client.messages.batches.create(requests=[{"custom_id": "a", "params": params}, {"custom_id": "b", "params": params}])
    while batch.processing_status != "ended":
        time.sleep(0.05)
        batch = client.messages.batches.retrieve(batch.id)
    assert batch.request_counts.succeeded == 2
    results = {r.custom_id: r.result for r in client.messages.batches.results(batch.id)}
    assert results["a"].type == "succeeded" and "32×24" in results["a"].message.content[0].text
    assert [b.id for b in client.messages.batches.list()] == [batch.id]
    cancelled = client.messages.batches.cancel(client.messages.batches.create(requests=[{"custom_id": "c", "params": params}]).id)
    assert cancelled.processing_status in ("canceling", "ended")

    sdk = openai.OpenAI(base_url=sim.base_url, api_key=KEY)
    sim.configure(batch_fault="expire")
    line = {"method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "max_tokens": 20, "messages": params["messages"][:0] + [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": url}}]}]}}
    data = "".join(json.dumps({"custom_id": f"r{i}", **line}) + "\n" for i in range(4)).encode()
    made = sdk.batches.create(input_file_id=sdk.files.create(file=("in.jsonl", data), purpose="batch").id,
                              endpoint="/v1/chat/completions", completion_window="24h", metadata={"pipeline_key": "k"})
    while made.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.05)
        made = sdk.batches.retrieve(made.id)
    assert made.status == "expired" and made.request_counts.completed == 2 and made.metadata == {"pipeline_key": "k"}
    errors = [json.loads(l) for l in sdk.files.content(made.error_file_id).text.splitlines()]
    assert [e["error"]["code"] for e in errors] == ["batch_expired", "batch_expired"]
    sim.configure(batch_fault="fail_validation")
    failed = sdk.batches.create(input_file_id=sdk.files.create(file=("in.jsonl", data), purpose="batch").id,
                                endpoint="/v1/chat/completions", completion_window="24h")
    while failed.status != "failed":
        time.sleep(0.05)
        failed = sdk.batches.retrieve(failed.id)
    assert failed.errors.data[0].message.startswith("The batch input file failed validation")


def test_the_dry_run_shows_the_batch_price_beside_the_online_one(sim, tmp_path, capsys):
    manifest = helpers.image_manifest(tmp_path, 3)
    summary, _ = helpers.caption(manifest, tmp_path / "o.parquet", sim.base_url, KEY, dry_run=True)
    printed = capsys.readouterr().out
    online = [float(v) for v in re.search(r"estimated cost: \$([\d.]+) to \$([\d.]+) online", printed).groups()]
    batch = [float(v) for v in re.search(r"estimated cost with --batch: \$([\d.]+) to \$([\d.]+)", printed).groups()]
    assert batch == pytest.approx([v / 2 for v in online], abs=1e-4) and sim.stats()["requests"] == 0


def test_a_collection_cut_short_is_finished_by_the_next_run_without_writing_a_row_twice(sim, tmp_path, monkeypatch):
    import pipeline.batch.collect as collect

    manifest = helpers.image_manifest(tmp_path, 6)
    out = tmp_path / "captions"  # a dataset: each run adds a part, so a row written twice would show
    run(manifest, out, sim, batch_wait=False)
    time.sleep(0.4)
    made, real = [], collect.output_row

    def crash_after_three(*args):
        if len(made) == 3:
            raise OSError("disk gone (simulated)")
        made.append(args[0]["id"])
        return real(*args)

    monkeypatch.setattr(collect, "output_row", crash_after_three)
    with pytest.raises(OSError):
        run(manifest, out, sim)
    monkeypatch.undo()
    summary, _ = run(manifest, out, sim)
    assert summary.ok == 3 and sim.stats()["batches"]["batches_created"] == 1
    stored = pq.read_table(out).column("id").to_pylist()  # every part's rows, as a reader of its own sees them
    assert sorted(stored) == sorted(f"img/img{i:03d}.png" for i in range(6))


def test_a_batch_a_kill_stopped_while_it_filled_is_removed_and_its_rows_are_sent(sim, tmp_path):
    manifest = helpers.image_manifest(tmp_path, 3)
    out = tmp_path / "out.parquet"
    folder = batches_path(out)
    folder.mkdir(parents=True)
    for name in ("bkilled.rows.jsonl", "bkilled.requests.jsonl"):  # never recorded as prepared
        (folder / name).write_text('{"c": "img/img000.png", "id": "img/img000.png"}\n')
    summary, rows = run(manifest, out, sim)
    assert summary.ok == 3 and not list(folder.glob("bkilled.*"))


def test_sigterm_while_waiting_exits_143_at_once_and_leaves_the_batch_to_the_next_run(sim, tmp_path):
    sim.configure(batch_seconds=30)
    manifest = helpers.image_manifest(tmp_path, 3)
    out = tmp_path / "out.parquet"
    process = started_and_submitted(manifest, out, sim.base_url)
    stopped_at = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 143 and time.monotonic() - stopped_at < 10, stderr
    assert "3 rows in 1 batches are at the provider" in stderr
    sim.configure(batch_seconds=0.1)
    summary, rows = run(manifest, out, sim)
    assert summary.ok == 3 and sim.stats()["batches"]["batches_created"] == 1


def test_a_batch_that_is_slow_to_finalize_is_waited_for_not_collected_early_or_submitted_again(sim, tmp_path):
    sim.configure(batch_seconds=0.05, batch_finalizing_seconds=1.5)
    manifest = helpers.image_manifest(tmp_path, 4)
    out = tmp_path / "out.parquet"
    run(manifest, out, sim, batch_wait=False)
    time.sleep(0.5)  # every line answered, the output file not written yet
    during, rows = run(manifest, out, sim, batch_wait=False)
    assert rows == {} and "4 rows in 1 batches are at the provider" in during.line()
    after, rows = run(manifest, out, sim)
    assert after.ok == 4 and len(rows) == 4 and sim.stats()["batches"]["batches_created"] == 1
