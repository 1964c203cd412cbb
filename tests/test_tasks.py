"""[tasks.NAME] in a job file: several questions per image, one output row per (id, task), resumed per task."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import helpers
from pipeline import load_config
from pipeline.compact import compact
from pipeline.errors import ConfigError
from pipeline.images import ImageLoader
from pipeline.outputs import Output

KEY = "sk-tasks-test-5d1c"
TAGS = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["tags"], "additionalProperties": False}
JOB = """model = "gpt-4.1-mini"
[tasks.short]
prompt = "{short}"
max_tokens = 60
[tasks.tags]
prompt = "List tags."
schema = "tags.json"
"""


@pytest.fixture
def job(tmp_path):
    (tmp_path / "tags.json").write_text(json.dumps(TAGS))
    path = tmp_path / "job.toml"
    path.write_text(JOB.format(short="One short sentence."))
    return path


def run(manifest, out, sim, job, **flags):
    summary, _ = helpers.caption(manifest, out, sim.base_url, KEY, job=job, **flags)
    return summary, _rows(out)


def _rows(out):
    return {(r["id"], r["task"]): r for batch in Output(out).batches() for r in batch.to_pylist()}


def test_every_image_is_asked_each_task_and_read_once(simulator, tmp_path, job, monkeypatch):
    manifest = helpers.image_manifest(tmp_path, 3)
    loads = []
    real_load = ImageLoader.load

    async def counted(self, row):
        loads.append(row.id)
        return await real_load(self, row)

    monkeypatch.setattr(ImageLoader, "load", counted)
    summary, rows = run(manifest, tmp_path / "out.parquet", simulator, job)
    assert summary.ok == 6 and summary.error == 0
    assert sorted(loads) == sorted({i for i, _ in rows})  # one read per image, not one per task
    assert {task for _, task in rows} == {"short", "tags"}
    stats = simulator.stats()
    assert stats["requests"] == 6 and stats["repeat_images"] == 3  # each image sent once per task
    bodies = {b["text"]: b for b in stats["bodies"]}
    assert bodies["One short sentence."]["max_tokens"] == 60 and bodies["One short sentence."]["response_format"] is None
    assert bodies["List tags."]["max_tokens"] == 300 and bodies["List tags."]["response_format"]["type"] == "json_schema"
    for (row_id, task), row in rows.items():
        assert row["status"] == "ok"
        if task == "tags":
            assert isinstance(row["tags"], list) and json.loads(row["caption"])["tags"] == row["tags"]
        else:
            assert row["tags"] is None and row["caption"]
    short = {r["fingerprint"] for (_, t), r in rows.items() if t == "short"}
    tags = {r["fingerprint"] for (_, t), r in rows.items() if t == "tags"}
    assert len(short) == len(tags) == 1 and short != tags


def test_a_changed_task_reruns_alone(simulator, tmp_path, job):
    manifest = helpers.image_manifest(tmp_path, 3)
    out = tmp_path / "out.parquet"
    run(manifest, out, simulator, job)
    first = _rows(out)

    summary, rows = run(manifest, out, simulator, job)
    assert summary.skipped == 6 and summary.ok == 0 and simulator.stats()["requests"] == 6

    job.write_text(JOB.format(short="A different sentence."))
    summary, rows = run(manifest, out, simulator, job)
    assert summary.skipped == 3 and summary.ok == 3
    stats = simulator.stats()
    assert stats["requests"] == 9 and {b["text"] for b in stats["bodies"][6:]} == {"A different sentence."}
    assert len(rows) == 6 and len(pq.read_table(out)) == 6  # one row per (id, task), the rerun's replacing the old
    for (row_id, task), row in rows.items():
        if task == "tags":
            assert row["response_id"] == first[row_id, task]["response_id"]  # untouched
        else:
            assert row["response_id"] != first[row_id, task]["response_id"]


def test_a_failed_task_is_retried_alone_and_a_bad_image_fails_every_task(simulator, tmp_path, job):
    manifest = helpers.image_manifest(tmp_path, 2)
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    manifest.write_text(manifest.read_text() + "img/broken.png\n")
    out = tmp_path / "out"  # a dataset: every run adds a part, the newest row per (id, task) wins on reading
    out.mkdir()
    # The first two answers per image are broken: its tags answer is among them (the short task has no schema to break).
    simulator.configure(invalid_answers=2)
    summary, rows = run(manifest, out, simulator, job, max_invalid=0)
    assert {(k[1], r["status"], r["error_type"]) for k, r in rows.items() if "broken" not in k[0]} == \
        {("short", "ok", None), ("tags", "error", "invalid_output")}
    assert {(k[1], r["error_type"]) for k, r in rows.items() if "broken" in k[0]} == {("short", "not_an_image"), ("tags", "not_an_image")}

    sent = simulator.stats()["requests"]
    summary, _ = run(manifest, out, simulator, job, max_invalid=0, retry_errors=False)  # failed (id, task) pairs are left alone
    assert summary.skipped == 6 and simulator.stats()["requests"] == sent
    summary, rows = run(manifest, out, simulator, job, max_invalid=0)
    assert simulator.stats()["requests"] - sent == 2  # the two tags rows; the short ones were ok
    assert summary.ok == 2 and summary.skipped == 2
    assert len(rows) == 6 and all(r["status"] == "ok" for k, r in rows.items() if "broken" not in k[0])
    assert compact(out)[0] == 6  # compacting keeps one row per (id, task), not one per id


def test_task_settings_are_checked(tmp_path):
    manifest = helpers.image_manifest(tmp_path, 1)

    def load(text, **flags):
        path = tmp_path / "bad.toml"
        path.write_text(text)
        return load_config({"manifest": manifest, **flags}, environ={"ANYFAST_API_KEY": KEY}, job_file=path)

    for text, message in (
        ('[tasks.short]\npromt = "x"\n', "[tasks.short]: unknown option(s) promt"),
        ('[tasks."a b"]\nprompt = "x"\n', "task name 'a b'"),
        ('[tasks.short]\nmax_tokens = "lots"\n', "[tasks.short]: max-tokens must be a whole number"),
        ('tasks = "short"\n', "tasks must be tables"),
        ('[tasks.a]\nschema = {type = "object", properties = {n = {type = "integer"}}}\n'
         '[tasks.b]\nschema = {type = "object", properties = {n = {type = "string"}}}\n', "tasks give the column 'n' two types"),
    ):
        with pytest.raises(ConfigError) as raised:
            load(text)
        assert message in str(raised.value)


def test_the_dry_run_counts_a_row_per_task(tmp_path, job):
    manifest = helpers.image_manifest(tmp_path, 2)
    result = subprocess.run([sys.executable, "-m", "pipeline", "caption", str(manifest), "--job", str(job), "--dry-run",
                             "-o", str(tmp_path / "out.parquet")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "would send 4 requests" in result.stdout
    assert "2 tasks per image: short, tags" in result.stdout
    assert "task tags answers must follow the schema" in result.stdout
    # Each task's answers priced by its own max_tokens (60 for short, the job's 300 for tags).
    assert "15 to 60 tokens each for short" in result.stdout and "75 to 300 tokens each for tags" in result.stdout


def test_newest_row_per_id_and_task_wins_across_journal_chunks_and_parts(tmp_path, monkeypatch):
    from pipeline import merge
    from pipeline.errors import NotAnImageError
    from pipeline.records import ManifestRow
    from pipeline.results import error_row
    from pipeline.writer import ResultWriter

    monkeypatch.setattr(merge, "JOURNAL_CHUNK_ROWS", 2)  # every journal spills into several chunks

    def row(i, task, n):
        return error_row(ManifestRow(1, f"id{i}", "x.png", "/x.png", task=task), NotAnImageError(f"take {n}"))

    for out in (tmp_path / "one.parquet", tmp_path / "dataset"):
        for n in range(2):  # two runs: the second's rows replace the first's, per (id, task)
            writer = ResultWriter(out).open()
            for i in range(3):
                for task in ("a", "b", None):
                    writer.write(row(i, task, n))
            writer.write(row(0, "a", n + 10))  # the same (id, task) again in this run: the newest line wins
            writer.close()
        rows = {(r["id"], r["task"]): r["error"] for batch in Output(out).batches() for r in batch.to_pylist()}
        assert len(rows) == 9
        assert rows["id0", "a"] == "take 11" and rows["id0", "b"] == "take 1" and rows["id2", None] == "take 1"
    killed = ResultWriter(out).open()  # a run killed after one row: its journal is read in place of that row's older one
    killed.write(row(0, "b", 99))
    rows = {(r["id"], r["task"]): r["error"] for batch in Output(out).batches() for r in batch.to_pylist()}
    assert len(rows) == 9 and rows["id0", "b"] == "take 99" and rows["id0", "a"] == "take 11"
    killed.close()


def test_export_wide_gives_one_row_per_image(simulator, tmp_path, job):
    manifest = tmp_path / "m.csv"
    helpers.make_images(tmp_path / "img", 3)
    manifest.write_text("id,image,album\n" + "".join(f"p{i},img/img{i:03d}.png,trip{i % 2}\n" for i in range(3)))
    out = tmp_path / "out.parquet"
    run(manifest, out, simulator, job)
    long = _rows(out)

    def export(*args):
        result = subprocess.run([sys.executable, "-m", "pipeline", "export", str(out), "--wide", *args],
                                capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result

    export("--format", "parquet", "-o", str(tmp_path / "wide.parquet"))
    wide = pq.read_table(tmp_path / "wide.parquet")
    assert wide.num_rows == 3 and "task" not in wide.column_names
    names = set(wide.column_names)
    assert {"id", "image", "album", "width", "image_sha256"} <= names  # the image's own columns, once
    assert {"short_caption", "short_status", "tags_caption", "tags_tags", "tags_cost_usd"} <= names
    assert "short_tags" not in names and "caption" not in names  # the short task has no tags; every caption is a task's
    tags = wide.schema.field("tags_tags").type  # typed as in the long table, not text
    assert pa.types.is_list(tags) and tags.value_type == pa.string() and wide.schema.field("tags_attempts").type == pa.int32()
    for row in wide.to_pylist():
        assert row["short_caption"] == long[row["id"], "short"]["caption"]
        assert row["tags_tags"] == long[row["id"], "tags"]["tags"]
        assert row["album"] == long[row["id"], "short"]["album"]

    lines = export("--format", "csv", "--columns", "id,short_caption,tags_tags").stdout.decode().splitlines()
    assert lines[0] == '"id","short_caption","tags_tags"' and len(lines) == 4
    bad = subprocess.run([sys.executable, "-m", "pipeline", "export", str(out), "--wide", "--format", "csv", "--columns", "caption"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no column caption in its wide form" in bad.stderr


def test_twins_reuse_the_answer_of_their_own_task(simulator, tmp_path, job):
    helpers.make_images(tmp_path / "img", 2)
    manifest = tmp_path / "m.csv"  # b is a's bytes under another id
    manifest.write_text("id,image\na,img/img000.png\nb,img/img000.png\nc,img/img001.png\n")
    summary, rows = run(manifest, tmp_path / "out.parquet", simulator, job)
    assert simulator.stats()["requests"] == 4  # a and c, each once per task
    assert summary.ok == 6 and summary.reused == 2
    for task in ("short", "tags"):
        twin, source = rows["b", task], rows["a", task]
        assert twin["reused_from"] == "a" and twin["attempts"] == 0 and twin["cost_usd"] == 0
        assert twin["caption"] == source["caption"] and twin["tags"] == source["tags"]


def test_status_counts_what_is_left_per_task(simulator, tmp_path, job):
    manifest = helpers.image_manifest(tmp_path, 3)
    out = tmp_path / "out.parquet"
    run(manifest, out, simulator, job, limit=2)  # two images, both tasks

    def status():
        result = subprocess.run([sys.executable, "-m", "pipeline", "status", str(out), str(manifest), "--json"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    s = status()
    assert (s["rows"], s["ok"], s["manifest_rows"], s["left"], s["tasks"]) == (4, 4, 3, 2, ["short", "tags"])
    job.write_text(JOB.format(short="Another sentence."))
    run(manifest, out, simulator, job, limit=1)  # one image's short task again: its tags answer still holds
    assert status()["left"] == 2


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_tasks_as_batch_jobs_match_online_and_rerun_per_task(simulator, tmp_path, job, api):
    simulator.configure(batch_seconds=0.2)
    manifest = helpers.image_manifest(tmp_path, 3)
    batch = {"batch": True, "batch_poll": 0.05, "batch_api": api}
    _, online = run(manifest, tmp_path / "online.parquet", simulator, job)
    simulator.reset()
    summary, rows = run(manifest, tmp_path / "batch.parquet", simulator, job, **batch)
    assert summary.ok == 6 and simulator.stats()["batches"]["lines"] == 6
    for k, row in rows.items():
        assert (row["status"], row["tags"], row["fingerprint"]) == ("ok", online[k]["tags"], online[k]["fingerprint"])
        if k[1] == "short":  # (a Message Batch gets the tags schema in its prompt, and its answer says more around the JSON)
            assert row["caption"] == online[k]["caption"]

    job.write_text(JOB.format(short="A different sentence."))
    summary, rows = run(manifest, tmp_path / "batch.parquet", simulator, job, **batch)
    assert summary.ok == 3 and summary.skipped == 3 and simulator.stats()["batches"]["lines"] == 9
    assert len(rows) == 6 and len(pq.read_table(tmp_path / "batch.parquet")) == 6


def test_export_run_elsewhere_import_gives_each_task_its_typed_columns(simulator, tmp_path, job):
    manifest = helpers.image_manifest(tmp_path, 2)
    _, online = run(manifest, tmp_path / "online.parquet", simulator, job)
    out, requests = tmp_path / "out.parquet", tmp_path / "requests.jsonl"

    def batch_cli(*args):
        result = subprocess.run([sys.executable, "-m", "pipeline", "batch", *map(str, args)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result

    batch_cli("export", manifest, "-o", requests, "--output", out, "--job", job)
    lines = [json.loads(line) for line in requests.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == sorted(f"{i}\x1f{t}" for i, t in online)
    (tmp_path / "results.jsonl").write_bytes(helpers.run_batch_with_the_openai_sdk(simulator.base_url, KEY, requests))
    assert "imported 4 rows" in batch_cli("import", tmp_path / "results.jsonl", "-o", out).stderr
    rows = _rows(out)
    assert pq.read_schema(out).field("tags").type == pa.list_(pa.string())  # the export's schema came with its batch
    assert {k: (r["caption"], r["tags"], r["fingerprint"]) for k, r in rows.items()} == \
        {k: (r["caption"], r["tags"], r["fingerprint"]) for k, r in online.items()}


def test_the_example_annotation_job_runs_on_the_sample_images(simulator, tmp_path):
    from pathlib import Path

    from pipeline import run_job

    job = Path(__file__).resolve().parent.parent / "jobs" / "annotate.toml"
    config = load_config({"output": tmp_path / "annotations.parquet", "base_url": simulator.base_url},
                         environ={"ANYFAST_API_KEY": KEY}, job_file=job)
    summary = run_job(config)
    rows = _rows(config.output)
    images = {i for i, _ in rows}
    assert summary.ok == 2 * (len(images) - 1) and summary.error == 2  # sample_data/broken.jpg fails both tasks
    schema = pq.read_schema(config.output)
    assert schema.field("objects").type.value_type == pa.struct([("label", pa.string()), ("count", pa.int64())])
    assert all(isinstance(r["safe"], bool) for (_, task), r in rows.items() if task == "tags" and r["status"] == "ok")


def test_kill_9_mid_run_then_a_rerun_gives_one_row_per_image_and_task(simulator, tmp_path, job):
    from test_durability import start, wait_for_journal_rows

    simulator.configure(latency=0.1, jitter=0.05)
    manifest = helpers.image_manifest(tmp_path, 30)
    out = tmp_path / "out.parquet"
    process = start(manifest, out, simulator.base_url, "--job", job, "--concurrency", 4)
    wait_for_journal_rows(out, 10)
    process.kill()
    process.wait()
    result = subprocess.run([sys.executable, "-m", "pipeline", "caption", str(manifest), "-o", str(out), "--base-url",
                             simulator.base_url, "--job", str(job), "--concurrency", "4"],
                            env={**os.environ, "ANYFAST_API_KEY": KEY}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    keys = [(r["id"], r["task"]) for r in pq.read_table(out).to_pylist()]
    assert len(keys) == len(set(keys)) == 60 and {t for _, t in keys} == {"short", "tags"}
    assert simulator.stats()["requests"] <= 60 + 4 + 1  # at most the requests in flight at the kill were paid twice


def test_a_task_that_fails_every_row_stops_the_run_while_the_other_succeeds(simulator, tmp_path, job):
    simulator.configure(invalid_answers=100)  # every tags answer is invalid; the short task has no schema to break
    manifest = helpers.image_manifest(tmp_path, 12)
    summary, rows = run(manifest, tmp_path / "out.parquet", simulator, job, max_invalid=0, concurrency=2)
    assert summary.exit_code == 3 and "setup looks wrong" in summary.aborted  # not 12 paid-for invalid answers
    tags = [r for (_, task), r in rows.items() if task == "tags"]
    assert 3 <= len(tags) < 12 and {r["error_type"] for r in tags} == {"invalid_output"}
    assert any(r["status"] == "ok" for (_, task), r in rows.items() if task == "short")
