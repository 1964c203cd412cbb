"""One source per option: the flags, the job-file keys, jobs/default.toml and the README's table all come from
(or are checked against) the declarations on JobConfig."""

from pathlib import Path

import tomllib

from pipeline.cli import build_parser
from pipeline.config import OPTION_NAMES, JobConfig, read_job_file
from pipeline.options import declared, default_job_toml, flag_of

ROOT = Path(__file__).resolve().parent.parent


def test_every_field_but_the_key_and_the_task_name_is_declared():
    # `task` is set in a task's own configuration (tasks.task_configs); the job file declares tasks with [tasks.NAME].
    assert OPTION_NAMES == set(JobConfig.__dataclass_fields__) - {"api_key", "task"}


def test_jobs_default_toml_is_generated_from_the_declarations():
    assert (ROOT / "jobs" / "default.toml").read_text() == default_job_toml(JobConfig), \
        "regenerate it: python -c \"from pipeline.options import default_job_toml; from pipeline.config import JobConfig; " \
        "open('jobs/default.toml','w').write(default_job_toml(JobConfig))\""


def test_jobs_default_toml_uncommented_is_a_valid_job_file_with_every_option(tmp_path):
    lines = []
    for line in default_job_toml(JobConfig).splitlines():
        text = line.removeprefix("# ")
        key, _, rest = text.partition(" = ")
        if key in OPTION_NAMES and not rest.startswith("("):
            lines.append(f"{key} = {rest.split('  # ')[0]}")
    job = tmp_path / "all.toml"
    job.write_text("\n".join(lines) + "\n")
    values = read_job_file(job)
    listed = {line.removeprefix("# ").split(" = ")[0].strip("[]").split("]")[0] for line in default_job_toml(JobConfig).splitlines()}
    assert OPTION_NAMES <= listed | {"manifest", "output"}
    assert tomllib.loads(job.read_text()) and values


def test_every_flag_is_in_help_and_in_the_readme_table():
    help_text = build_parser()._subparsers._group_actions[0].choices["caption"].format_help()
    readme = (ROOT / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| `")]
    for field, opt in declared(JobConfig):
        flag = flag_of(field, opt)
        if flag is None:
            name = "MANIFEST" if field.name == "manifest" else field.name
            assert any(f"`{name}`" in row for row in table), field.name  # job-file-only options are in the table too
            continue
        assert flag in help_text, flag
        assert any(f"`{flag}" in row or f"/{flag}" in row or f", {flag}" in row for row in table), f"{flag} is not in the README's option table"
