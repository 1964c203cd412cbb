"""Manifests and images in a bucket (issue 14): a real S3-compatible server (moto's) on 127.0.0.1, read through s3fs."""

import hashlib
import io
import json
import socket

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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint():
    port = _free_port()
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
    with pytest.raises(ConfigError, match="output must be a local path for now"):
        load_config({"manifest": "m.csv", "output": "s3://b/o.parquet", "dry_run": True}, environ={})


def _cli(manifest, out, base_url, job):
    import os
    import subprocess
    import sys
    env = {**os.environ, "ANYFAST_API_KEY": "sk-x"}
    done = subprocess.run([sys.executable, "-m", "pipeline", "caption", manifest, "-o", str(out), "--base-url", base_url,
                           "--job", str(job), "--log-format", "json"], capture_output=True, text=True, env=env, timeout=120)
    return done.returncode, done.stderr
