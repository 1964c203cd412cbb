"""Manifests and images in a bucket (issue 14): a real S3-compatible server (moto's) on 127.0.0.1, read through s3fs."""

import hashlib
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import helpers
from pipeline.config import load_config
from pipeline.errors import ConfigError, ManifestError
from pipeline.manifest import open_manifest
from pipeline.storage import Storage

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

BUCKET = "photos"
SECRET = "s3cr3t-never-printed-5150"


@pytest.fixture(scope="module")
def endpoint():
    port = helpers.free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3(endpoint, monkeypatch, tmp_path):
    """A fresh bucket, credentials in the environment as a user has them, and a job file naming the endpoint."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    if fs.exists(BUCKET):
        fs.rm(BUCKET, recursive=True)
    fs.mkdir(BUCKET)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)  # for the commands that take no job file (status, compact)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where a bucket output's staging folder goes
    job = tmp_path / "job.toml"
    job.write_text(f'[storage.s3]\nendpoint_url = "{endpoint}"\nsecret = "{SECRET}"\nkey = "testing"\n')
    return fs, job


def _png(i, size=(40, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(buffer, "PNG")
    return buffer.getvalue()


def _put_images(fs, n, prefix="img"):
    data = {}
    for i in range(n):
        data[f"{prefix}/{i:03d}.png"] = _png(i)
        fs.pipe(f"{BUCKET}/{prefix}/{i:03d}.png", data[f"{prefix}/{i:03d}.png"])
    return data


def test_a_csv_manifest_in_a_bucket_with_keys_beside_it_is_captioned_resumed_and_rechecked(s3, simulator, tmp_path):
    fs, job = s3
    data = _put_images(fs, 5)
    lines = ["id,image"] + [f"r{i},img/{i:03d}.png" for i in range(4)] + [f"r4,s3://{BUCKET}/img/004.png"]
    fs.pipe(f"{BUCKET}/manifest.csv", "\n".join(lines).encode())
    out = tmp_path / "out.parquet"

    summary, rows = helpers.caption(f"s3://{BUCKET}/manifest.csv", out, simulator.base_url, "sk-x", job=job)
    assert summary.ok == 5 and simulator.stats()["requests"] == 5
    assert rows["r0"]["image"] == "img/000.png" and rows["r4"]["image"] == f"s3://{BUCKET}/img/004.png"
    for i in range(5):  # the bytes read from the bucket are those sent: hashed, sized, stamped
        row = rows[f"r{i}"]
        assert row["image_sha256"] == hashlib.sha256(data[f"img/{i:03d}.png"]).hexdigest()
        assert row["file_size"] == len(data[f"img/{i:03d}.png"]) and row["file_mtime_ns"] > 0

    simulator.reset()
    summary, _ = helpers.caption(f"s3://{BUCKET}/manifest.csv", out, simulator.base_url, "sk-x", job=job)
    assert summary.skipped == 5 and simulator.stats()["requests"] == 0  # resume lists the prefix; no HEAD or GET per row

    fs.pipe(f"{BUCKET}/img/002.png", _png(99, size=(50, 30)))  # replaced in place: a new size and time
    summary, rows = helpers.caption(f"s3://{BUCKET}/manifest.csv", out, simulator.base_url, "sk-x", job=job)
    assert simulator.stats()["requests"] == 1 and summary.skipped == 4
    assert rows["r2"]["width"] == 50 and len(rows) == 5


def test_a_missing_object_is_an_error_row_and_the_others_are_answered(s3, simulator, tmp_path):
    fs, job = s3
    _put_images(fs, 2)
    fs.pipe(f"{BUCKET}/m.jsonl", b"".join(json.dumps({"id": k, "image": f"img/{k}.png"}).encode() + b"\n" for k in ("000", "001", "404")))
    summary, rows = helpers.caption(f"s3://{BUCKET}/m.jsonl", tmp_path / "o.parquet", simulator.base_url, "sk-x", job=job)
    assert (summary.ok, summary.error) == (2, 1)
    assert rows["404"]["error_type"] == "image_missing" and f"s3://{BUCKET}/img/404.png" in rows["404"]["error"]


def test_a_parquet_manifest_and_a_folder_prefix_in_a_bucket(s3, simulator, tmp_path):
    fs, job = s3
    _put_images(fs, 3, prefix="set/a")
    fs.pipe(f"{BUCKET}/set/README.md", b"not an image")
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": ["x", "y"], "image": ["set/a/000.png", "set/a/001.png"]}), buffer)
    fs.pipe(f"{BUCKET}/m.parquet", buffer.getvalue())

    summary, rows = helpers.caption(f"s3://{BUCKET}/m.parquet", tmp_path / "p.parquet", simulator.base_url, "sk-x", job=job)
    assert summary.ok == 2 and set(rows) == {"x", "y"}

    summary, rows = helpers.caption(f"s3://{BUCKET}/set/", tmp_path / "f.parquet", simulator.base_url, "sk-x", job=job)
    assert summary.ok == 3 and set(rows) == {"a/000.png", "a/001.png", "a/002.png"}
    assert summary.skipped_files == 1  # README.md, as in a local folder


def test_storage_options_reach_the_store_and_never_the_log_or_the_run_record(s3, simulator, tmp_path):
    fs, job = s3
    _put_images(fs, 1)
    fs.pipe(f"{BUCKET}/m.txt", b"img/000.png\n")
    out = tmp_path / "o.parquet"
    code, stderr = _cli(f"s3://{BUCKET}/m.txt", out, simulator.base_url, job)
    assert code == 0, stderr
    record = (tmp_path / "o.parquet.runs.jsonl").read_text()
    assert SECRET not in stderr and SECRET not in record and '"storage": ["s3"]' in record
    assert SECRET not in pq.read_table(out).to_pandas().to_json()


def test_a_bad_bucket_url_or_a_missing_package_is_one_clear_message(s3, tmp_path):
    fs, job = s3
    config = load_config({"manifest": f"s3://{BUCKET}/nothing.csv", "dry_run": True}, environ={}, job_file=job)
    with pytest.raises(ManifestError, match="manifest not found: s3://photos/nothing.csv"):
        open_manifest(config.manifest, store=Storage(config.storage))
    with pytest.raises(ManifestError, match="unknown storage protocol nope://"):
        open_manifest("nope://x/m.csv", store=Storage())
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(ManifestError, match=r"needs gcsfs: pip install gcsfs \(or pip install 'pipeline\[gcs\]'\)"):
            open_manifest("gs://bucket/m.csv", store=Storage())
    with pytest.raises(ConfigError, match="an output in a bucket is a dataset folder of part files: end it with /"):
        load_config({"manifest": "m.csv", "output": "s3://b/o.parquet", "dry_run": True}, environ={})


def _cli(manifest, out, base_url, job):
    import os
    import subprocess
    import sys
    env = {**os.environ, "ANYFAST_API_KEY": "sk-x"}
    done = subprocess.run([sys.executable, "-m", "pipeline", "caption", manifest, "-o", str(out), "--base-url", base_url,
                           "--job", str(job), "--log-format", "json"], capture_output=True, text=True, env=env, timeout=120)
    return done.returncode, done.stderr


# --- a dataset output in the bucket -------------------------------------------------------------


def _local_manifest(folder, start, n):
    folder.mkdir(exist_ok=True)
    manifest = folder / "m.csv"
    lines = [] if manifest.exists() else ["id,image"]
    for i in range(start, start + n):
        (folder / f"{i}.png").write_bytes(_png(i))
        lines.append(f"r{i},{i}.png")
    with manifest.open("a") as f:
        f.write("\n".join(lines) + "\n")
    return manifest


def _run(manifest, out, simulator, job, **flags):
    from pipeline.runner import run_job
    return run_job(load_config({"manifest": manifest, "output": out, "base_url": simulator.base_url, **flags},
                               environ={"ANYFAST_API_KEY": "sk-x"}, job_file=job))


def test_a_dataset_output_in_a_bucket_grows_by_whole_parts_resumes_and_compacts(s3, simulator, tmp_path):
    from pipeline.compact import compact
    from pipeline.remote import local_output
    from pipeline.status import output_status
    fs, job = s3
    out = f"s3://{BUCKET}/out/"
    manifest = _local_manifest(tmp_path / "imgs", 0, 5)
    assert _run(manifest, out, simulator, job).ok == 5
    [first] = [p for p in fs.ls(f"{BUCKET}/out", refresh=True) if p.rsplit("/", 1)[-1].startswith("part-")]
    etag = fs.info(first)["ETag"]
    _local_manifest(tmp_path / "imgs", 5, 3)  # the manifest grows
    assert _run(manifest, out, simulator, job).ok == 3 and simulator.stats()["requests"] == 8
    listed = json.loads(fs.cat_file(f"{BUCKET}/out/_parts.json"))
    assert [p["rows"] for p in listed["parts"]] == [5, 3] and fs.info(first)["ETag"] == etag  # never rewritten
    assert not fs.exists(f"{BUCKET}/out/_lease.json") and len(fs.cat_file(f"{BUCKET}/out/_runs.jsonl").splitlines()) == 2
    assert not list(local_output(out).glob("part-*"))  # every part was put, none is left behind here

    simulator.reset()
    assert _run(manifest, out, simulator, job).skipped == 8 and simulator.stats()["requests"] == 0
    status = output_status(out)
    assert (status.rows, status.ok, len(status.last_runs)) == (8, 8, 3)

    rows, before = compact(out)
    assert (rows, before) == (8, 2)
    import pandas
    table = pandas.read_parquet(out, storage_options={"endpoint_url": fs.client_kwargs.get("endpoint_url") or fs.endpoint_url})
    assert sorted(table["id"]) == sorted(f"r{i}" for i in range(8))


def test_a_live_lease_refuses_a_second_writer_and_a_dead_one_is_taken_over(s3, simulator, tmp_path):
    import time
    fs, job = s3
    manifest = _local_manifest(tmp_path / "imgs", 0, 2)
    out = f"s3://{BUCKET}/leased/"
    fs.pipe(f"{BUCKET}/leased/_lease.json", json.dumps({"token": "t", "host": "other-box", "pid": 7, "expires_at": time.time() + 300}).encode())
    code, stderr = _cli(str(manifest), out, simulator.base_url, job)
    assert code == 75 and "another run holds s3://photos/leased/_lease.json (pid 7 on other-box" in stderr
    assert simulator.stats()["requests"] == 0
    fs.pipe(f"{BUCKET}/leased/_lease.json", json.dumps({"token": "t", "host": "other-box", "pid": 7, "expires_at": time.time() - 1}).encode())
    assert _run(manifest, out, simulator, job).ok == 2  # its holder stopped renewing it: taken over
    assert not fs.exists(f"{BUCKET}/leased/_lease.json")


def test_kill_9_with_a_bucket_output_then_a_rerun_puts_what_was_journaled_and_finishes(s3, simulator, tmp_path):
    import time
    from pipeline.compact import compact
    from pipeline.remote import local_output
    from test_durability import run as run_cli, start
    fs, job = s3
    simulator.configure(latency=0.1, jitter=0.05)
    manifest = _local_manifest(tmp_path / "imgs", 0, 30)
    out = f"s3://{BUCKET}/killed/"
    journal = local_output(out) / "_journal.jsonl"
    process = start(manifest, out, simulator.base_url, "--concurrency", 4, "--job", job)
    deadline = time.monotonic() + 30
    while not (journal.exists() and journal.read_text().count("\n") >= 5) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert journal.read_text().count("\n") >= 5 and not fs.exists(f"{BUCKET}/killed/_parts.json")  # nothing was put yet
    fs.rm_file(f"{BUCKET}/killed/_lease.json")  # a killed run's lease would expire in 5 minutes; the test does not wait
    code, stderr = run_cli(manifest, out, simulator.base_url, "--concurrency", 4, "--job", job)
    assert code == 0, stderr
    assert max(c["ok"] for c in simulator.stats()["images"].values()) <= 2
    assert compact(out)[0] == 30
    [part] = [p for p in fs.ls(f"{BUCKET}/killed", refresh=True) if p.rsplit("/", 1)[-1].startswith("part-")]
    rows = pq.read_table(fs.open(part, "rb")).to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(30)) and all(r["status"] == "ok" for r in rows)
