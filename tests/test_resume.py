import subprocess
import sys

import pytest

from pipeline.config import JobConfig
from pipeline.errors import ConfigError
from pipeline.records import Completion, ManifestRow, PreparedImage
from pipeline.results import error_row, ok_row
from pipeline.errors import ServerError
from pipeline.resume import ResumeIndex, fingerprinter
from pipeline.files import journal_path
from pipeline.writer import ResultWriter


def test_fingerprint_changes_with_every_request_setting_and_only_those():
    base = JobConfig()
    fp = fingerprinter(base)("p")
    assert fingerprinter(JobConfig())("p") == fp  # stable across processes and runs
    assert fingerprinter(base)("other prompt") != fp
    for change in ({"model": "m2"}, {"system": "s"}, {"max_tokens": 7}, {"temperature": 0.1}, {"max_image_side": 800},
                   {"max_image_bytes": 100_000}, {"image_detail": "low"}, {"fetch_remote": True}, {"extra_body": {"top_p": 0.5}}):
        assert fingerprinter(JobConfig(**change))("p") != fp, change
    for same in ({"concurrency": 3}, {"timeout": 5.0}, {"max_retries": 0}, {"base_url": "http://other/v1"}, {"stream": True}):
        assert fingerprinter(JobConfig(**same))("p") == fp, same


def _write(out, rows):
    writer = ResultWriter(out).open()
    for r in rows:
        writer.write(r)
    writer.close()


def _ok(i, fp):
    row = ManifestRow(line=i, id=f"r{i}", image="x", source="/x")
    return ok_row(row, PreparedImage("data:"), Completion("c", "stop", "m", "id", {}), attempts=1, latency_ms=1, fingerprint=fp)


def _err(i, fp):
    return error_row(ManifestRow(line=i, id=f"r{i}", image="x", source="/x"), ServerError("x", status=500), fingerprint=fp)


@pytest.mark.parametrize("retry_errors", [True, False])
def test_index_skips_ok_rows_with_the_same_fingerprint(tmp_path, retry_errors):
    out = tmp_path / "o.parquet"
    _write(out, [_ok(0, "A"), _ok(1, "B"), _err(2, "A")])
    index = ResumeIndex.load(out, retry_errors=retry_errors)
    assert index.rows_in_output == 3
    assert index.is_done("r0", "A") and not index.is_done("r0", "B")  # a new prompt: caption again
    assert index.is_done("r1", "B") and not index.is_done("r3", "A")
    assert index.is_done("r2", "A") is (not retry_errors)


def test_index_reads_a_journal_left_by_a_killed_run(tmp_path):
    out = tmp_path / "o.parquet"
    journal_path(out).write_text('{"id": "r5", "status": "ok", "fingerprint": "F"}\n{"id": "r6", "sta')
    assert ResumeIndex.load(out).is_done("r5", "F")


def test_many_fingerprints_one_index(tmp_path):
    out = tmp_path / "o.parquet"
    _write(out, [_ok(i, f"F{i}") for i in range(300)])  # a prompt per row: as many fingerprints as rows
    index = ResumeIndex.load(out)
    assert all(index.is_done(f"r{i}", f"F{i}") for i in range(300))
    assert not any(index.is_done(f"r{i}", f"F{i + 1}") for i in range(300))


def test_reading_the_output_does_not_import_pandas(tmp_path):
    # pyarrow imports pandas (~0.5 s) when it first turns a Python value into an Arrow one: every resumed run would pay it.
    out = tmp_path / "o.parquet"
    _write(out, [_ok(0, "A"), _err(1, "A")])
    code = ("import sys; from pathlib import Path; from pipeline.resume import ResumeIndex; "
            "ResumeIndex.load(Path(sys.argv[1]), retry_errors=False); print('pandas' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_an_output_that_is_not_ours_is_a_clear_error(tmp_path):
    out = tmp_path / "o.parquet"
    out.write_text("not parquet")
    with pytest.raises(ConfigError, match="move it away or pick another --output"):
        ResumeIndex.load(out)


def test_the_default_fingerprint_never_changes():
    # Outputs written by earlier versions must keep resuming: a change here re-captions (and re-bills) every row.
    assert fingerprinter(JobConfig())("p") == "99a3d53d72675832"


def test_a_replaced_image_is_captioned_again_and_an_untouched_one_is_not(simulator, tmp_path):
    import pyarrow.parquet as pq
    from PIL import Image

    from pipeline import load_config, run_job

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, colour in (("a.png", (200, 10, 10)), ("b.png", (10, 200, 10))):
        Image.new("RGB", (40, 30), colour).save(folder / name)
    config = load_config({"manifest": folder, "output": tmp_path / "out.parquet", "base_url": simulator.base_url},
                         environ={"ANYFAST_API_KEY": "sk-resume-test-123"})
    assert run_job(config).ok == 2
    first = {r["id"]: r for r in pq.read_table(config.output).to_pylist()}
    assert first["a.png"]["file_size"] == (folder / "a.png").stat().st_size
    assert run_job(config).rows == 0  # nothing changed: nothing sent

    Image.new("RGB", (80, 20), (10, 10, 200)).save(folder / "a.png")  # another photo under the same name
    simulator.reset()
    summary = run_job(config)
    assert (summary.rows, summary.skipped, simulator.stats()["requests"]) == (1, 1, 1)
    rows = {r["id"]: r for r in pq.read_table(config.output).to_pylist()}
    assert "80×20" in rows["a.png"]["caption"] and rows["a.png"]["caption"] != first["a.png"]["caption"]
    assert rows["b.png"]["caption"] == first["b.png"]["caption"]


def test_in_a_dataset_only_each_ids_newest_row_counts(tmp_path):
    """An ok row in an older part and a failed one in a newer part (a --redo that failed): the row is not done."""
    out = tmp_path / "out"
    _write(out, [_ok(1, "fp"), _ok(2, "fp"), _err(3, "fp")])
    _write(out, [_err(1, "fp"), _ok(3, "fp")])
    index = ResumeIndex.load(out)
    assert not index.is_done("r1", "fp") and index.is_done("r2", "fp") and index.is_done("r3", "fp")
    assert index.rows_in_output == 3  # one row per id, as a reader of the dataset sees it
    journal_path(out).write_text("".join(__import__("json").dumps(r) + "\n" for r in (_ok(1, "fp"), _err(1, "fp"))))
    assert not ResumeIndex.load(out).is_done("r1", "fp")  # a killed run's journal is newest of all, its last line last
