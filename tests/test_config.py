from pathlib import Path

import pytest

from pipeline.config import JobConfig, Secret, load_config
from pipeline.errors import ConfigError

KEY = {"ANYFAST_API_KEY": "sk-test-config"}


def test_precedence_flag_over_env_over_job_over_default(tmp_path):
    job = tmp_path / "job.toml"
    job.write_text('manifest = "m.csv"\nmodel = "from-job"\nbase_url = "http://job/v1"\nconcurrency = 3\nmax_tokens = 50\n')
    env = {**KEY, "CAPTION_MODEL": "from-env", "CAPTION_BASE_URL": "http://env/v1"}
    config = load_config({"model": "from-flag", "concurrency": None}, environ=env, job_file=job)
    assert config.model == "from-flag"  # flag beats env and job
    assert config.base_url == "http://env/v1"  # env beats job
    assert config.concurrency == 3  # job beats default
    assert config.max_retries == JobConfig().max_retries  # default
    assert config.manifest == tmp_path / "m.csv"  # relative to the job file, not the cwd


def test_default_output_is_named_after_the_manifest():
    config = load_config({"manifest": "data/photos.jsonl"}, environ=KEY)
    assert config.output == Path("output/photos.parquet")


def test_key_falls_back_to_openai_and_is_never_shown():
    config = load_config({"manifest": "m.csv"}, environ={"OPENAI_API_KEY": "sk-fallback-123"})
    assert config.api_key.reveal() == "sk-fallback-123"
    for text in (repr(config), str(config), f"{config.api_key}", str(config.public_options())):
        assert "sk-fallback-123" not in text
    assert config.redact("echo sk-fallback-123 back") == "echo *** back"


@pytest.mark.parametrize(
    "environ, api_key_env, fragment",
    [
        ({}, None, "ANYFAST_API_KEY (or OPENAI_API_KEY)"),
        ({"OPENAI_API_KEY": "x"}, "MY_KEY", "MY_KEY"),
    ],
)
def test_missing_key_names_the_variable(environ, api_key_env, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_config({"manifest": "m.csv", "api_key_env": api_key_env}, environ=environ)


def test_dry_run_needs_no_key():
    assert load_config({"manifest": "m.csv", "dry_run": True}, environ={}).api_key is None


@pytest.mark.parametrize(
    "flags, fragment",
    [
        ({}, "no manifest"),
        ({"manifest": "m.csv", "concurrency": 0}, "concurrency must be between 1"),
        ({"manifest": "m.csv", "temperature": 3}, "temperature must be between 0 and 2"),
        ({"manifest": "m.csv", "timeout": "fast"}, "timeout must be a number"),
        ({"manifest": "m.csv", "base_url": "ftp://x"}, "base-url must start with http"),
        ({"manifest": "m.csv", "prompt": ""}, "prompt must not be empty"),
    ],
)
def test_bad_values_are_config_errors(flags, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(flags, environ=KEY)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("concurency = 4\n", "unknown option"),
        ('api_key = "sk-oops"\n', "keys never go in files"),
        ("model = \n", "not valid TOML"),
        ("max_tokens = true\n", "max-tokens must be a whole number"),
    ],
)
def test_bad_job_files(tmp_path, text, fragment):
    job = tmp_path / "job.toml"
    job.write_text('manifest = "m.csv"\n' + text)
    with pytest.raises(ConfigError, match=fragment):
        load_config({}, environ=KEY, job_file=job)


def test_missing_job_file(tmp_path):
    with pytest.raises(ConfigError, match="job file not found"):
        load_config({}, environ=KEY, job_file=tmp_path / "nope.toml")


def test_shipped_job_files_load():
    root = Path(__file__).resolve().parent.parent
    jobs = [*sorted((root / "jobs").glob("*.toml")), root / "pipeline" / "defaults" / "demo.toml"]
    assert len(jobs) >= 3
    for job in jobs:
        load_config({"manifest": "m.csv"}, environ=KEY, job_file=job)


def test_secret_repr():
    assert "abc" not in repr(Secret("abc")) and Secret("abc").reveal() == "abc"


@pytest.mark.parametrize("value", ["sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t", "AIzaSyD-abcdefghijklmnopqrstuvwx", "gsk_1234567890abcdefABCDEF"])
def test_a_key_pasted_into_api_key_env_is_refused_without_being_echoed(value):
    with pytest.raises(ConfigError) as info:
        load_config({"manifest": "m.csv", "api_key_env": value}, environ={})
    assert value not in str(info.value) and value[:12] not in str(info.value)
    assert "NAME of an environment variable" in str(info.value)


def test_a_key_is_masked_whole_and_by_any_long_piece():
    key = Secret("sk-0123456789abcdefghijklmnopqrstuv")
    text = "page quoted 'Bearer sk-0123456789abcdefghij' cut mid-key, and ...klmnopqrstuv at the end"
    masked = key.mask(text)
    assert "0123456789ab" not in masked and "klmnopqrstuv" not in masked
    assert key.mask("nothing secret here") == "nothing secret here"
