"""The command line as a user runs it: a real process, real exit codes, messages on stderr."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-cli-DISTINCTIVE-7f3a9c"


def cli(*args, env=None, cwd=ROOT):
    environment = {k: v for k, v in os.environ.items() if k not in ("ANYFAST_API_KEY", "OPENAI_API_KEY")}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True, env=environment, cwd=cwd, timeout=120)


@pytest.fixture
def manifest(tmp_path):
    for i in range(3):
        Image.new("RGB", (30, 20), (i * 80, 100, 200)).save(tmp_path / f"p{i}.jpg")
    path = tmp_path / "photos.csv"
    path.write_text("id,image\n" + "".join(f"p{i},p{i}.jpg\n" for i in range(3)))
    return path


def test_a_run_does_not_import_pandas(simulator, manifest, tmp_path):
    # pyarrow would import it (0.5-1 s of start-up) when installed, as it is in the test environment.
    result = cli("caption", manifest, "-o", tmp_path / "o.parquet", "--base-url", simulator.base_url,
                 env={"ANYFAST_API_KEY": KEY, "PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    imported = {line.rpartition("|")[2].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "pyarrow" in imported and not any(name.startswith("pandas.") for name in imported)  # a blocked import lists only "pandas"


def test_help_explains_every_option():
    out = cli("caption", "--help").stdout
    for option in ("--output", "--job", "--base-url", "--model", "--api-key-env", "--prompt", "--system", "--max-tokens",
                   "--temperature", "--concurrency", "--max-retries", "--timeout", "--limit", "--dry-run"):
        assert option in out
    assert "CAPTION_BASE_URL" in out and "ANYFAST_API_KEY" in out and "exit codes" in out


def test_exit_0_when_every_row_is_ok(simulator, manifest, tmp_path):
    out = tmp_path / "o.parquet"
    result = cli("caption", manifest, "-o", out, "--base-url", simulator.base_url, env={"ANYFAST_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    assert "done in" in result.stderr and "3 ok" in result.stderr
    assert pq.read_table(out).num_rows == 3


def test_default_output_is_output_slash_manifest_stem(simulator, manifest, tmp_path):
    result = cli("caption", manifest, "--base-url", simulator.base_url, env={"OPENAI_API_KEY": KEY}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "output" / "photos.parquet").exists()


def test_exit_1_when_some_rows_failed(simulator, manifest, tmp_path):
    with manifest.open("a") as f:
        f.write("gone,gone.jpg\n")
    result = cli("caption", manifest, "-o", tmp_path / "o.parquet", "--base-url", simulator.base_url, env={"ANYFAST_API_KEY": KEY})
    assert result.returncode == 1
    assert "image_missing: 1" in result.stderr
    assert f"1 row failed (a rerun tries them again): see them with `pipeline status {tmp_path / 'o.parquet'}`" in result.stderr
    assert "rows left" not in result.stderr  # it finished: nothing is left


@pytest.mark.parametrize(
    "args, env, fragment",
    [
        (["caption", "m.csv", "--frobnicate"], {"ANYFAST_API_KEY": KEY}, "unrecognized arguments: --frobnicate"),
        (["caption", "does-not-exist.csv"], {"ANYFAST_API_KEY": KEY}, "does-not-exist.csv"),
        (["caption", "{manifest}"], {}, "set the environment variable ANYFAST_API_KEY"),
        (["caption", "{manifest}", "--api-key-env", "MY_PROVIDER_KEY"], {"ANYFAST_API_KEY": KEY}, "MY_PROVIDER_KEY"),
        (["caption", "{manifest}", "--concurrency", "0"], {"ANYFAST_API_KEY": KEY}, "concurrency must be between 1"),
        (["caption", "--job", "nope.toml"], {"ANYFAST_API_KEY": KEY}, "job file not found"),
    ],
)
def test_exit_2_on_usage_errors_with_a_message_not_a_traceback(manifest, args, env, fragment):
    result = cli(*[a.replace("{manifest}", str(manifest)) for a in args], env=env)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_exit_3_on_auth_failure_and_the_key_is_never_shown(simulator, manifest, tmp_path):
    simulator.configure(api_key="the-right-key")
    out = tmp_path / "o.parquet"
    result = cli("caption", manifest, "-o", out, "--base-url", simulator.base_url, "--concurrency", "1", env={"ANYFAST_API_KEY": KEY})
    assert result.returncode == 3
    assert "authentication" in result.stderr.lower() or "401" in result.stderr
    assert simulator.stats()["requests"] == 1  # aborted at once
    assert "rows left: fix the cause above, then rerun the same command to continue" in result.stderr
    assert KEY not in result.stderr + result.stdout
    assert KEY.encode() not in out.read_bytes()


def test_job_file_sets_everything(simulator, manifest, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text(f'manifest = "photos.csv"\noutput = "out/x.parquet"\nbase_url = "{simulator.base_url}"\nmax_tokens = 5\n')
    result = cli("caption", "--job", job, env={"ANYFAST_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    rows = pq.read_table(tmp_path / "out" / "x.parquet").to_pylist()
    assert len(rows) == 3 and all(r["finish_reason"] == "length" for r in rows)


def test_dry_run_needs_no_key_and_sends_nothing(simulator, manifest):
    result = cli("caption", manifest, "--dry-run", "--base-url", simulator.base_url)
    assert result.returncode == 0, result.stderr
    assert "would send 3 requests" in result.stdout
    assert simulator.stats()["requests"] == 0


def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "demo.parquet"
    result = cli("demo", "-o", out)
    assert result.returncode == 0, result.stderr
    assert f"output written to {out}" in result.stdout
    assert f"wrote {out}.html" in result.stdout and (tmp_path / "demo.parquet.html").stat().st_size > 10_000
    rows = {r["id"]: r for r in pq.read_table(out).to_pylist()}
    assert len(rows) == 10 and rows["broken"]["error_type"] == "not_an_image"
    assert all(r["status"] == "ok" for i, r in rows.items() if i != "broken")


@pytest.mark.parametrize("leftover_journal", [False, True])
def test_an_output_that_is_not_parquet_is_refused_and_left_alone(simulator, manifest, tmp_path, leftover_journal):
    out = tmp_path / "o.parquet"
    out.write_text("my notes, not a table")
    if leftover_journal:
        (tmp_path / "o.parquet.journal.jsonl").write_text('{"id": "p0", "status": "ok"}\n')
    result = cli("caption", manifest, "-o", out, "--base-url", simulator.base_url, env={"ANYFAST_API_KEY": KEY})
    assert result.returncode == 2 and "cannot be read as our Parquet output" in result.stderr
    assert "Traceback" not in result.stderr and out.read_text() == "my notes, not a table"
    assert simulator.stats()["requests"] == 0


def test_a_typo_in_a_flag_gets_a_suggestion_under_the_subcommands_usage(manifest):
    result = cli("caption", str(manifest), "--concurency", "4")
    assert result.returncode == 2
    assert "did you mean --concurrency?" in result.stderr and "usage: python -m pipeline caption" in result.stderr


def test_a_typo_in_a_job_file_key_gets_a_suggestion(manifest, tmp_path):
    job = tmp_path / "job.toml"
    job.write_text("max_token = 100\n")
    result = cli("caption", str(manifest), "--job", str(job), env={"ANYFAST_API_KEY": "sk-x"})
    assert result.returncode == 2 and "max_token (did you mean max_tokens?)" in result.stderr


def test_an_output_that_is_not_parquet_by_name_is_refused(manifest, tmp_path):
    result = cli("caption", str(manifest), "-o", str(tmp_path / "x.csv"), env={"ANYFAST_API_KEY": "sk-x"})
    assert result.returncode == 2 and "must name a .parquet file" in result.stderr and "x.parquet" in result.stderr
    assert not (tmp_path / "x.csv").exists()


def test_an_empty_folder_says_nothing_to_caption_and_names_no_file(simulator, tmp_path):
    empty = tmp_path / "emptydir"
    empty.mkdir()
    out = tmp_path / "out.parquet"
    result = cli("caption", str(empty), "-o", str(out), "--base-url", simulator.base_url, "--log-format", "text",
                 env={"ANYFAST_API_KEY": "sk-x"})
    assert result.returncode == 0 and "nothing to caption" in result.stderr
    assert str(out) not in result.stderr and not out.exists()


def test_make_caption_quotes_paths_with_spaces(tmp_path):
    dry = subprocess.run(["make", "-n", "caption", "MANIFEST=my photos/", "OUTPUT=my out.parquet"], cwd=ROOT, capture_output=True, text=True)
    assert '"my photos/"' in dry.stdout and '--output "my out.parquet"' in dry.stdout


def test_a_jsonl_manifest_without_an_image_column_is_exit_2_and_image_column_fixes_it(simulator, tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.jpg")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"key": "k1", "Photo": "a.jpg"}\n')
    result = cli("caption", manifest, "-o", tmp_path / "o.parquet", "--base-url", simulator.base_url, env={"ANYFAST_API_KEY": KEY})
    assert result.returncode == 2 and "has no image column" in result.stderr and "--image-column" in result.stderr
    job = tmp_path / "job.toml"
    job.write_text('image_column = "photo"\n')
    result = cli("caption", manifest, "--job", job, "--id-column", "KEY", "-o", tmp_path / "o.parquet", "--base-url", simulator.base_url,
                 env={"ANYFAST_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    assert pq.read_table(tmp_path / "o.parquet").column("id").to_pylist() == ["k1"]
