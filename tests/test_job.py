"""The whole job, in-process, over real HTTP against the simulator on 127.0.0.1."""

import base64
import json
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import caption, make_images
from pipeline import load_config, run_job
from pipeline.results import OUTPUT_SCHEMA
from pipeline.simulator import image_key

KEY = "sk-test-job-0123456789"


def write_csv(path, rows, header="id,image"):
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def run(simulator, manifest, tmp_path, **flags):
    output = flags.pop("output", tmp_path / "out.parquet")
    return caption(manifest, output, flags.pop("base_url", simulator.base_url), KEY, **flags)


def data_url_key(path):
    return image_key("data:image/png;base64," + base64.b64encode(path.read_bytes()).decode())


def test_every_row_captioned_with_usage_and_schema(simulator, tmp_path):
    images = make_images(tmp_path / "img", 6)
    manifest = write_csv(tmp_path / "m.csv", [(f"r{i}", f"img/{p.name}", f"t{i}") for i, p in enumerate(images)], "id,image,title")
    summary, rows = run(simulator, manifest, tmp_path)
    assert summary.exit_code == 0 and (summary.ok, summary.error) == (6, 0)
    assert sorted(rows) == [f"r{i}" for i in range(6)]
    r0 = rows["r0"]
    assert r0["status"] == "ok" and "40×30 landscape" in r0["caption"]
    # Usage as the simulator bills it: ceil(40*30/750) image tokens + text tokens.
    assert r0["prompt_tokens"] > 2 and r0["total_tokens"] == r0["prompt_tokens"] + r0["completion_tokens"]
    assert json.loads(r0["usage"])["total_tokens"] == r0["total_tokens"]
    assert r0["title"] == "t0" and r0["attempts"] == 1 and r0["finish_reason"] == "stop"
    assert r0["response_id"].startswith("chatcmpl-sim-") and r0["model"] == "claude-sonnet-4-20250514"
    assert r0["image_sha256"] and r0["latency_ms"] >= 0 and r0["completed_at"] is not None
    table = pq.read_table(tmp_path / "out.parquet")
    assert OUTPUT_SCHEMA.names == table.schema.names[: len(OUTPUT_SCHEMA)]


def test_request_shape_is_the_providers(simulator, tmp_path):
    images = make_images(tmp_path, 1)
    manifest = write_csv(tmp_path / "m.csv", [("a", images[0].name)])
    run(simulator, manifest, tmp_path, system="Be brief.", prompt="What is this?", max_tokens=77, temperature=0.5)
    body = simulator.stats()["bodies"][0]
    assert body["model"] == "claude-sonnet-4-20250514" and body["max_tokens"] == 77


def test_the_output_reads_as_one_table_in_pandas_and_duckdb(simulator, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    images = make_images(tmp_path, 3)
    manifest = write_csv(tmp_path / "m.csv", [(f"r{i}", p.name) for i, p in enumerate(images)] + [("bad", "missing.png")])
    run(simulator, manifest, tmp_path)
    out = tmp_path / "out.parquet"
    frame = pq.read_table(out).to_pandas()
    assert len(frame) == 4 and set(frame["status"]) == {"ok", "error"}
    counts = duckdb.sql(f"select status, count(*) from read_parquet('{out}') group by status order by status").fetchall()
    assert counts == [("error", 1), ("ok", 3)]


def test_bad_images_become_error_rows_and_cost_no_request(simulator, tmp_path):
    good = make_images(tmp_path, 1)[0]
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:30])
    manifest = write_csv(tmp_path / "m.csv", [("good", good.name), ("missing", "nope.png"), ("empty", "empty.png"), ("text", "text.png"), ("cut", "cut.png"), ("noimage", "")])
    summary, rows = run(simulator, manifest, tmp_path)
    assert summary.exit_code == 1
    assert {i: r["error_type"] for i, r in rows.items()} == {
        "good": None,
        "missing": "image_missing",
        "empty": "image_empty",
        "text": "not_an_image",
        "cut": "image_unreadable",
        "noimage": "invalid_manifest_row",
    }
    assert "line 7" in rows["noimage"]["error"] and "nope.png" in rows["missing"]["error"]
    assert simulator.stats()["requests"] == 1
    assert all(r["attempts"] == 0 for i, r in rows.items() if i != "good")


@pytest.mark.parametrize("form", ["seconds", "ms", "http-date"])
def test_429_is_retried_after_the_advised_wait(simulator, tmp_path, form):
    advised = 1.0 if form == "http-date" else 0.6  # an HTTP date has whole-second resolution
    simulator.configure(fault_script=["429", "ok"], retry_after=advised, retry_after_form=form)
    image = make_images(tmp_path, 1)[0]
    manifest = write_csv(tmp_path / "m.csv", [("a", image.name)])
    started = time.monotonic()
    summary, rows = run(simulator, manifest, tmp_path)
    elapsed = time.monotonic() - started
    assert rows["a"]["status"] == "ok" and rows["a"]["attempts"] == 2
    assert simulator.stats()["by_status"] == {"429": 1, "200": 1}
    if form != "http-date":
        assert elapsed >= advised * 0.9  # waited as told, not the (shorter) own backoff


@pytest.mark.parametrize(
    "script",
    [["500", "ok"], ["529", "ok"], ["503", "502", "ok"], ["reset", "ok"], ["hang", "ok"], ["408", "ok"], ["409", "ok"],
     ["malformed:not_json", "ok"], ["malformed:error_object", "ok"], ["malformed:no_choices", "ok"]],
)
def test_transient_failures_are_retried(simulator, tmp_path, script):
    simulator.configure(fault_script=script, retry_after=0)
    image = make_images(tmp_path, 1)[0]
    manifest = write_csv(tmp_path / "m.csv", [("a", image.name)])
    summary, rows = run(simulator, manifest, tmp_path, timeout=0.5)
    assert rows["a"]["status"] == "ok" and rows["a"]["attempts"] == len(script)
    assert simulator.stats()["images"][data_url_key(image)]["requests"] == len(script)


def test_retries_run_out_into_an_error_row(simulator, tmp_path):
    simulator.configure(fault_script=["500"] * 5, retry_after=0)
    image = make_images(tmp_path, 1)[0]
    manifest = write_csv(tmp_path / "m.csv", [("a", image.name)])
    summary, rows = run(simulator, manifest, tmp_path, max_retries=2)
    assert summary.exit_code == 1
    assert rows["a"]["error_type"] == "server_error" and rows["a"]["attempts"] == 3
    assert "HTTP 500" in rows["a"]["error"]


def test_400_is_not_retried(simulator, tmp_path):
    simulator.configure(fault_script=["400", "ok"])
    image = make_images(tmp_path, 1)[0]
    manifest = write_csv(tmp_path / "m.csv", [("a", image.name)])
    summary, rows = run(simulator, manifest, tmp_path)
    assert rows["a"]["error_type"] == "bad_request" and rows["a"]["attempts"] == 1
    assert simulator.stats()["requests"] == 1


def test_an_image_the_provider_cannot_decode_is_a_bad_request_row(simulator, tmp_path):
    # Valid PNG header, garbage pixels: our header check passes, the provider's decoder does not.
    image = tmp_path / "noise.png"
    Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48).save(image)
    data = bytearray(image.read_bytes())
    data[100:-20] = b"\x00" * (len(data) - 120)
    image.write_bytes(bytes(data))
    manifest = write_csv(tmp_path / "m.csv", [("a", image.name)])
    summary, rows = run(simulator, manifest, tmp_path)
    assert rows["a"]["error_type"] == "bad_request" and "Could not process image" in rows["a"]["error"]


def test_auth_failure_aborts_at_once_and_keeps_finished_rows(simulator, tmp_path):
    # Five ids share one image, so the script plays across them: two succeed, the third gets a 401.
    simulator.configure(fault_script=["ok", "ok", "401"])
    image = make_images(tmp_path, 1)[0]
    manifest = write_csv(tmp_path / "m.csv", [(f"r{i}", image.name) for i in range(5)])
    summary, rows = run(simulator, manifest, tmp_path, concurrency=1, dedupe=False)  # one request per id, not per image
    assert summary.exit_code == 3 and summary.aborted
    assert [rows[f"r{i}"]["status"] for i in range(3)] == ["ok", "ok", "error"]
    assert rows["r2"]["error_type"] == "auth_failed" and "API key" in rows["r2"]["error"]
    assert "r3" not in rows and "r4" not in rows
    assert simulator.stats()["requests"] == 3


def test_concurrency_is_bounded_and_used(simulator, tmp_path):
    simulator.configure(latency=0.15)
    images = make_images(tmp_path, 30)
    manifest = write_csv(tmp_path / "m.csv", [(f"r{i}", p.name) for i, p in enumerate(images)])
    summary, rows = run(simulator, manifest, tmp_path, concurrency=5)
    assert summary.ok == 30
    assert simulator.stats()["peak_in_flight"] == 5


def test_duplicate_ids_are_sent_once(simulator, tmp_path):
    images = make_images(tmp_path, 2)
    manifest = write_csv(tmp_path / "m.csv", [("a", images[0].name), ("b", images[1].name), ("a", images[1].name)])
    summary, rows = run(simulator, manifest, tmp_path)
    assert sorted(rows) == ["a", "b"] and summary.duplicates == 1
    assert simulator.stats()["requests"] == 2


def test_per_row_prompt_and_limit(simulator, tmp_path):
    images = make_images(tmp_path, 3)
    lines = [json.dumps({"image": p.name, "prompt": f"prompt {i}", "n": i}) for i, p in enumerate(images)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    summary, rows = run(simulator, manifest, tmp_path, limit=2)
    assert len(rows) == 2 and simulator.stats()["requests"] == 2
    assert {b["text"] for b in simulator.stats()["bodies"]} == {"prompt 0", "prompt 1"}
    assert sorted(r["n"] for r in rows.values()) == [0, 1]


def test_a_folder_manifest(simulator, tmp_path):
    make_images(tmp_path / "photos" / "2024", 2)
    make_images(tmp_path / "photos", 1)
    summary, rows = run(simulator, tmp_path / "photos", tmp_path)
    assert sorted(rows) == ["2024/img000.png", "2024/img001.png", "img000.png"] and summary.ok == 3


def test_remote_urls_pass_through(simulator, tmp_path):
    make_images(tmp_path / "served", 1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "served")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/img000.png"
        manifest = tmp_path / "m.txt"
        manifest.write_text(url + "\n")
        summary, rows = run(simulator, manifest, tmp_path)
    finally:
        server.shutdown()
    assert rows[url]["status"] == "ok" and "40×30" in rows[url]["caption"]
    assert image_key(url) in simulator.stats()["images"]  # the URL itself was sent, not a data: URL


def test_dry_run_sends_nothing_and_writes_nothing(simulator, tmp_path, capsys):
    images = make_images(tmp_path, 2)
    manifest = write_csv(tmp_path / "m.csv", [("a", images[0].name), ("b", images[1].name), ("c", "missing.png")])
    config = load_config({"manifest": manifest, "output": tmp_path / "out.parquet", "base_url": simulator.base_url, "dry_run": True}, environ={})
    summary = run_job(config)
    out = capsys.readouterr().out
    assert "would send 2 requests" in out and "image_missing" in out and '"image_url"' in out
    assert summary.dry_run and summary.exit_code == 1
    assert simulator.stats()["requests"] == 0 and not (tmp_path / "out.parquet").exists()
    line = summary.line()
    assert "nothing was sent: would send 2 requests, 1 row would fail without a request (image_missing: 1)" in line
    assert "exit 1: 1 row would fail" in line and " ok" not in line
    (tmp_path / "missing.png").write_bytes(images[0].read_bytes())
    assert run_job(config).exit_code == 0  # nothing would fail: exit 0
