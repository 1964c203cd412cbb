"""Each image paid once: rows with the same image bytes and request settings as an answered row reuse its answer."""

import json
import shutil

import pyarrow.parquet as pq

import pytest

import helpers

KEY = "sk-dedupe-test-51b0"


def twins(tmp_path, n=3):
    """n distinct images and a copy of each under another name: a manifest of 2n rows."""
    images = helpers.make_images(tmp_path / "img", n)
    for i, path in enumerate(images):
        shutil.copy(path, tmp_path / "img" / f"copy{i:03d}.png")
    manifest = tmp_path / "m.txt"
    manifest.write_text("".join(f"img/{name}\n" for name in [p.name for p in images] + [f"copy{i:03d}.png" for i in range(n)]))
    return manifest


def run(manifest, out, sim, **flags):
    return helpers.caption(manifest, out, sim.base_url, KEY, **flags)


def test_twins_in_one_run_are_sent_once_and_reuse_the_answer(simulator, tmp_path):
    summary, rows = run(twins(tmp_path), tmp_path / "out.parquet", simulator)
    assert summary.ok == 6 and summary.reused == 3 and simulator.stats()["requests"] == 3
    assert "3 answered by a row with the same image" in summary.line()
    for i in range(3):
        first, copy = rows[f"img/img{i:03d}.png"], rows[f"img/copy{i:03d}.png"]
        assert copy["reused_from"] == first["id"] and copy["caption"] == first["caption"] and copy["status"] == "ok"
        assert (copy["attempts"], copy["cost_usd"], copy["image_sha256"]) == (0, 0.0, first["image_sha256"])
        assert first["reused_from"] is None and first["cost_usd"] > 0
    assert not list(tmp_path.glob(".*.tmp"))  # the held rows' scratch file is gone with the run


def test_held_rows_wait_on_disk_and_a_full_disk_says_so(tmp_path, monkeypatch):
    from pipeline.dedupe import Dedupe, twin_key
    from pipeline.errors import OutputWriteError
    from pipeline.hashedset import HashedSet
    from pipeline.records import ManifestRow, PreparedImage

    spill = tmp_path / ".twins.tmp"
    dedupe = Dedupe(spill)
    image = PreparedImage(b"", "image/png", "ab" * 32, 10, 4, 3, 4, 3, 10, 1)
    assert not dedupe.hold(ManifestRow(1, "a", "a.png", "/a.png"), image, "fp")  # the first is sent
    for i in range(3):
        assert dedupe.hold(ManifestRow(i + 2, f"twin{i}", "a.png", "/a.png", extra={"n": i}, task="t"), image, "fp")
    dedupe._file.flush()
    assert len(spill.read_text().splitlines()) == 3  # on disk, not in memory
    rows = list(dedupe.finish([{"id": "a", "image_sha256": "ab" * 32, "fingerprint": "fp", "status": "ok", "caption": "c"}]))
    assert [(r["id"], r["task"], r["n"], r["reused_from"], r["caption"]) for r in rows] == \
        [(f"twin{i}", "t", i, "a", "c") for i in range(3)]
    assert not spill.exists() and dedupe.left == 0

    full = Dedupe(tmp_path / "full.tmp", answered=HashedSet())
    full.answered.add(twin_key("ab" * 32, "fp"))  # answered by an earlier run: the next such row is held
    monkeypatch.setattr("builtins.open", lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OutputWriteError, match="the disk is full"):
        full.hold(ManifestRow(9, "b", "a.png", "/a.png"), image, "fp")


def answered_then_a_twin_added(tmp_path, simulator, copy_of):
    """A run over two images, then img/later.png (a copy of `copy_of`) added to the manifest: (manifest, output)."""
    manifest = helpers.image_manifest(tmp_path, 2)
    out = tmp_path / "out.parquet"
    run(manifest, out, simulator)
    shutil.copy(tmp_path / "img" / copy_of, tmp_path / "img" / "later.png")
    with manifest.open("a") as f:
        f.write("img/later.png\n")
    return manifest, out


def test_a_twin_added_later_reuses_the_earlier_runs_answer(simulator, tmp_path):
    manifest, out = answered_then_a_twin_added(tmp_path, simulator, "img001.png")
    simulator.reset()
    summary, rows = run(manifest, out, simulator)
    assert simulator.stats()["requests"] == 0 and summary.reused == 1
    assert rows["img/later.png"]["reused_from"] == "img/img001.png" and rows["img/later.png"]["caption"] == rows["img/img001.png"]["caption"]


def test_no_dedupe_sends_every_row_and_the_simulator_reports_the_repeats(simulator, tmp_path):
    summary, rows = run(twins(tmp_path), tmp_path / "out.parquet", simulator, dedupe=False)
    assert simulator.stats()["requests"] == 6 and simulator.stats()["repeat_images"] == 3
    assert summary.reused == 0 and all(r["reused_from"] is None and r["attempts"] == 1 for r in rows.values())


def test_the_same_image_with_another_prompt_is_asked_again(simulator, tmp_path):
    helpers.make_images(tmp_path / "img", 1)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "image": "img/img000.png"}) + "\n"
                        + json.dumps({"id": "b", "image": "img/img000.png", "prompt": "List the colours."}) + "\n")
    summary, rows = run(manifest, tmp_path / "out.parquet", simulator)
    assert simulator.stats()["requests"] == 2 and summary.reused == 0


def test_a_twin_of_a_row_that_failed_says_so_and_the_rerun_answers_both_once(simulator, tmp_path):
    manifest = twins(tmp_path, 1)
    out = tmp_path / "out.parquet"
    simulator.configure(fault_script=["400"])  # the image's first request is refused
    summary, rows = run(manifest, out, simulator)
    copy = rows["img/copy000.png"]
    assert summary.error == 2 and simulator.stats()["requests"] == 1
    assert copy["error_type"] == "bad_request" and copy["error"].startswith("the same image as img/img000.png, which failed:")
    assert copy["attempts"] == 0 and copy["cost_usd"] == 0.0
    simulator.configure(fault_script=[])
    simulator.reset()
    again, rows = run(manifest, out, simulator)
    assert again.ok == 2 and simulator.stats()["requests"] == 1 and rows["img/copy000.png"]["reused_from"] == "img/img000.png"


def test_the_dry_run_counts_the_twins_and_the_saving(simulator, tmp_path, capsys):
    summary, _ = run(twins(tmp_path), tmp_path / "out.parquet", simulator, dry_run=True)
    printed = capsys.readouterr().out
    assert "would send 3 requests" in printed and "3 rows have the same image and settings as another row" in printed
    low, high = (float(x) for x in printed.split("saving $")[1].split(" online")[0].split(" to $"))
    assert 0 < low <= high
    assert "would send 3 requests" in summary.line() and simulator.stats()["requests"] == 0


def test_a_twin_gets_the_structured_columns_too(simulator, tmp_path):
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
                                  "required": ["tags"], "additionalProperties": False}))
    out = tmp_path / "out.parquet"
    summary, rows = run(twins(tmp_path, 2), out, simulator, schema=str(schema), model="gpt-4.1-mini")
    assert summary.ok == 4 and simulator.stats()["requests"] == 2
    assert rows["img/copy001.png"]["tags"] == rows["img/img001.png"]["tags"] and rows["img/copy001.png"]["tags"]
    assert str(pq.read_schema(out).field("tags").type) == "list<element: string>"


def test_twins_in_batch_mode_go_in_one_line_and_are_written_when_it_is_collected(simulator, tmp_path):
    simulator.configure(batch_seconds=0.1)
    manifest = twins(tmp_path)
    out = tmp_path / "out.parquet"
    first, rows = run(manifest, out, simulator, batch=True, batch_wait=False, batch_poll=0.05)
    assert rows == {} and "3 rows in 1 batches are at the provider" in first.line()  # the twins wait for their answers
    second, rows = run(manifest, out, simulator, batch=True, batch_poll=0.05)
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows.values())
    assert simulator.stats()["batches"]["lines"] == 3 and second.reused == 3  # one line per distinct image, in all


def test_the_dry_run_counts_a_twin_of_an_earlier_runs_row(simulator, tmp_path, capsys):
    manifest, out = answered_then_a_twin_added(tmp_path, simulator, "img000.png")
    capsys.readouterr()
    summary, _ = run(manifest, out, simulator, dry_run=True)
    printed = capsys.readouterr().out
    assert "would send 0 requests" in printed and "1 rows have the same image and settings as another row" in printed
