"""--schema: structured answers as typed columns, asked again when invalid, and the providers that ignore response_format."""

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import openai
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pydantic
import pytest

import helpers
from pipeline.providers import structured_mode
from pipeline.structured import SCHEMA_MARKER, first_json_object, is_strict

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-structured-test-3e9a"
GPT = "gpt-4.1-mini"  # a model whose provider follows response_format
ANNOTATION = {
    "type": "object", "title": "photo annotation",
    "properties": {
        "caption": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "objects": {"type": "array", "items": {
            "type": "object", "properties": {"label": {"type": "string"}, "box": {"type": "array", "items": {"type": "number"}}},
            "required": ["label", "box"], "additionalProperties": False}},
        "camera": {"type": "object", "properties": {"indoor": {"type": "boolean"}, "people": {"type": "integer"}},
                   "required": ["indoor", "people"], "additionalProperties": False},
        "quality": {"type": "number"},
    },
    "required": ["caption", "tags", "objects", "camera", "quality"], "additionalProperties": False,
}


@pytest.fixture
def schema_file(tmp_path):
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps(ANNOTATION))
    return path


def run(manifest, out, sim, schema, **flags):
    return helpers.caption(manifest, out, sim.base_url, KEY, schema=str(schema), **{"model": GPT, **flags})


def test_each_property_is_a_typed_column_that_pandas_and_duckdb_read(simulator, tmp_path, schema_file):
    manifest = helpers.image_manifest(tmp_path, 4)
    out = tmp_path / "out.parquet"
    summary, rows = run(manifest, out, simulator, schema_file)
    assert summary.ok == 4
    schema = pq.read_schema(out)
    assert schema.field("answer_caption").type == pa.string()  # "caption" is ours: it keeps the raw answer
    assert schema.field("tags").type == pa.list_(pa.string())
    assert schema.field("objects").type.value_type == pa.struct([("label", pa.string()), ("box", pa.list_(pa.float64()))])
    assert schema.field("camera").type == pa.struct([("indoor", pa.bool_()), ("people", pa.int64())])
    assert schema.field("quality").type == pa.float64()
    row = next(iter(rows.values()))
    assert json.loads(row["caption"])["tags"] == row["tags"] and row["answer_caption"] == json.loads(row["caption"])["caption"]
    sent = simulator.stats()["bodies"][0]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True and sent["json_schema"]["name"] == "photo_annotation"
    assert sent["json_schema"]["schema"] == ANNOTATION

    frame = pd.read_parquet(out)
    assert list(frame["tags"].iloc[0]) == row["tags"] and frame["camera"].iloc[0]["people"] == row["camera"]["people"]
    label, people, n = duckdb.sql(f"SELECT objects[1].label, camera.people, len(tags) FROM read_parquet('{out}') "
                                f"WHERE id = '{row['id']}'").fetchall()[0]
    assert (label, people, n) == (row["objects"][0]["label"], row["camera"]["people"], len(row["tags"]))


def test_an_invalid_answer_is_asked_again_and_its_cost_is_counted(simulator, tmp_path, schema_file):
    manifest = helpers.image_manifest(tmp_path, 3)
    _, clean = run(manifest, tmp_path / "clean.parquet", simulator, schema_file)
    simulator.reset()
    simulator.configure(invalid_answers=1)
    summary, rows = run(manifest, tmp_path / "out.parquet", simulator, schema_file)
    assert summary.ok == 3 and simulator.stats()["requests"] == 6
    for row_id, row in rows.items():
        assert row["status"] == "ok" and row["attempts"] == 2 and row["tags"] == clean[row_id]["tags"]
        assert row["cost_usd"] > clean[row_id]["cost_usd"] * 1.5  # both answers were billed


def test_an_answer_still_invalid_after_max_invalid_is_an_error_row_and_a_rerun_asks_again(simulator, tmp_path, schema_file):
    manifest = helpers.image_manifest(tmp_path, 2)
    out = tmp_path / "out.parquet"
    simulator.configure(invalid_answers=5)
    summary, rows = run(manifest, out, simulator, schema_file, max_invalid=1)
    assert summary.ok == 0 and summary.exit_code == 1 and simulator.stats()["requests"] == 4
    for row in rows.values():
        assert row["status"] == "error" and row["error_type"] == "invalid_output" and row["attempts"] == 2
        assert "does not follow the schema: 'caption' is a required property" in row["error"]
        assert row["tags"] is None and row["caption"] is None and row["cost_usd"] > 0  # billed, kept, never ok
    simulator.configure(invalid_answers=0)
    simulator.reset()
    again, rows = run(manifest, out, simulator, schema_file, max_invalid=1)
    assert again.ok == 2 and all(r["tags"] for r in rows.values())


def test_a_provider_that_ignores_response_format_gets_the_schema_in_the_prompt(simulator, tmp_path, schema_file):
    simulator.configure(ignore_response_format=True)  # as Anthropic's OpenAI layer documents
    manifest = helpers.image_manifest(tmp_path, 2)
    ignored, rows = run(manifest, tmp_path / "forced.parquet", simulator, schema_file, schema_mode="response_format")
    assert ignored.ok == 0 and {r["error_type"] for r in rows.values()} == {"invalid_output"}  # prose is never an ok row
    assert all("holds no JSON object" in r["error"] for r in rows.values())
    simulator.reset()
    prompted, rows = run(manifest, tmp_path / "auto.parquet", simulator, schema_file, model="claude-sonnet-4-20250514")
    assert prompted.ok == 2 and all(r["caption"].startswith("Here is") and r["tags"] for r in rows.values())
    body = simulator.stats()["bodies"][0]
    assert body["response_format"] is None and json.dumps(ANNOTATION) in body["text"]


def test_the_providers_table():
    assert structured_mode("https://api.openai.com/v1", "gpt-4.1") == "response_format"
    assert structured_mode("http://localhost:8000/v1", "Qwen/Qwen2.5-VL-7B-Instruct") == "response_format"  # vLLM
    assert structured_mode("https://openrouter.ai/api/v1", "google/gemini-2.5-flash") == "response_format"
    assert structured_mode("https://api.anthropic.com/v1", "claude-sonnet-4-20250514") == "prompt"
    assert structured_mode("https://www.anyfast.ai/v1", "claude-sonnet-4-20250514") == "prompt"


def test_a_schema_strict_mode_refuses_is_sent_with_strict_false(simulator, tmp_path):
    loose = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}, "mood": {"type": "string"}},
             "required": ["tags"]}
    assert not is_strict(loose) and is_strict(ANNOTATION)
    path = tmp_path / "loose.json"
    path.write_text(json.dumps(loose))
    manifest = helpers.image_manifest(tmp_path, 1)
    summary, rows = run(manifest, tmp_path / "out.parquet", simulator, path)
    assert summary.ok == 1 and simulator.stats()["bodies"][0]["response_format"]["json_schema"]["strict"] is False
    # The simulator refuses the same schema with strict on, as OpenAI does: the official SDK sees a BadRequestError.
    client = openai.OpenAI(base_url=simulator.base_url, api_key=KEY, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="additionalProperties"):
        client.chat.completions.create(model=GPT, messages=_messages(), response_format={
            "type": "json_schema", "json_schema": {"name": "loose", "schema": loose, "strict": True}})


class Box(pydantic.BaseModel):
    label: str
    corners: list[float]


class Annotation(pydantic.BaseModel):
    summary: str
    objects: list[Box]
    outdoors: bool


def test_the_openai_sdk_parses_the_simulators_answer_into_a_pydantic_model(simulator):
    client = openai.OpenAI(base_url=simulator.base_url, api_key=KEY, max_retries=0)
    answer = client.beta.chat.completions.parse(model=GPT, messages=_messages(), response_format=Annotation)
    parsed = answer.choices[0].message.parsed
    assert isinstance(parsed, Annotation) and parsed.objects and isinstance(parsed.objects[0], Box)


def test_a_pydantic_schema_with_defs_gives_struct_columns(simulator, tmp_path):
    path = tmp_path / "pydantic.json"
    path.write_text(json.dumps(Annotation.model_json_schema()))  # nested models as $defs and $ref
    manifest = helpers.image_manifest(tmp_path, 2)
    summary, rows = run(manifest, tmp_path / "out.parquet", simulator, path)
    assert summary.ok == 2
    kind = pq.read_schema(tmp_path / "out.parquet").field("objects").type
    assert kind == pa.list_(pa.struct([("label", pa.string()), ("corners", pa.list_(pa.float64()))]))


def test_a_schema_table_in_the_job_file_and_a_manifest_column_of_the_same_name(simulator, tmp_path):
    manifest = tmp_path / "m.csv"
    helpers.make_images(tmp_path / "img", 2)
    manifest.write_text("image,tags\nimg/img000.png,mine\nimg/img001.png,mine too\n")
    job = tmp_path / "job.toml"
    job.write_text('model = "gpt-4.1-mini"\n[schema]\ntype = "object"\nrequired = ["tags"]\n'
                   '[schema.properties.tags]\ntype = "array"\nitems = {type = "string"}\n')
    summary, rows = helpers.caption(manifest, tmp_path / "out.parquet", simulator.base_url, KEY, job=job)
    assert summary.ok == 2
    assert rows["img/img000.png"]["manifest_tags"] == "mine" and isinstance(rows["img/img000.png"]["tags"], list)


@pytest.mark.parametrize("content, message", [
    (None, "schema file not found"),
    ("{not json", "is not JSON"),
    ('{"type": "array", "items": {}}', "top level must be"),
    ('{"type": "object", "properties": {"a": {"type": "strin"}}}', "is not a valid JSON Schema"),
])
def test_a_bad_schema_is_a_clear_message_and_exit_2(tmp_path, content, message):
    path = tmp_path / "schema.json"
    if content is not None:
        path.write_text(content)
    manifest = helpers.image_manifest(tmp_path, 1)
    done = subprocess.run([sys.executable, "-m", "pipeline", "caption", str(manifest), "--schema", str(path), "--dry-run"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_the_first_json_object_of_an_answer():
    assert first_json_object('{"a": 1}') == {"a": 1}
    assert first_json_object('Sure! {"a": {"b": [1, "}"]}} and more {"c": 2}') == {"a": {"b": [1, "}"]}}
    assert first_json_object('```json\n{"a": 1}\n```') == {"a": 1}
    assert first_json_object("[1, 2]") is None and first_json_object("no braces {at all") is None


def test_batch_rows_get_the_same_columns_and_invalid_lines_are_error_rows(simulator, tmp_path, schema_file):
    simulator.configure(batch_seconds=0.1, invalid_answers=1)  # every image's first answer breaks the schema
    manifest = helpers.image_manifest(tmp_path, 3)
    out = tmp_path / "out.parquet"
    first, rows = run(manifest, out, simulator, schema_file, batch=True, batch_poll=0.05)
    assert {r["error_type"] for r in rows.values()} == {"invalid_output"}  # a batch line is answered once
    second, rows = run(manifest, out, simulator, schema_file, batch=True, batch_poll=0.05)
    assert second.ok == 3 and all(isinstance(r["objects"][0]["box"], list) for r in rows.values())
    assert pq.read_schema(out).field("camera").type == pa.struct([("indoor", pa.bool_()), ("people", pa.int64())])


def _messages():
    import base64
    url = "data:image/jpeg;base64," + base64.b64encode((ROOT / "sample_data" / "chelsea.jpg").read_bytes()).decode()
    return [{"role": "user", "content": [{"type": "text", "text": "Annotate it."}, {"type": "image_url", "image_url": {"url": url}}]}]


def test_the_dry_run_says_how_the_schema_is_sent_and_counts_its_tokens(simulator, tmp_path, schema_file, capsys):
    manifest = helpers.image_manifest(tmp_path, 2)
    estimates = {}
    for model in (GPT, "claude-sonnet-4-20250514"):
        summary, _ = run(manifest, tmp_path / "out.parquet", simulator, schema_file, model=model, dry_run=True, schema_mode="auto")
        estimates[model] = summary.estimated_input_tokens
        printed = capsys.readouterr().out
        assert "tags, objects, camera, quality" in printed
    assert "sent in the prompt" in printed and SCHEMA_MARKER in printed  # the example body shows the prompt sent
    bare, _ = helpers.caption(manifest, tmp_path / "out.parquet", simulator.base_url, KEY, model="claude-sonnet-4-20250514", dry_run=True)
    assert estimates["claude-sonnet-4-20250514"] > bare.estimated_input_tokens + 100  # the schema in the prompt is paid for
    assert simulator.stats()["requests"] == 0


SAMPLES = ROOT / "tests" / "fixtures" / "provider-samples"
TAGS = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}, "required": ["tags"]}


def _sample_completions():
    from pipeline.errors import PipelineError
    from pipeline.response import parse_completion
    from test_provider_samples import stream

    for path in sorted(SAMPLES.iterdir()):
        try:
            yield path.name, parse_completion(path.read_bytes()) if path.suffix == ".json" else stream(path.name)
        except (PipelineError, ValueError):
            continue  # an error body or a refusal: never a completion, so never a row to read


def test_no_real_providers_prose_answer_becomes_an_ok_row_under_a_schema():
    from pipeline.structured import AnswerSchema, InvalidOutputError

    answers = AnswerSchema(TAGS, "prompt")
    read = list(_sample_completions())
    assert len(read) >= 10  # plain and streamed answers of every provider
    for name, completion in read:
        with pytest.raises(InvalidOutputError):
            answers.read(completion)
            pytest.fail(f"{name}: {completion.caption!r} read as a structured answer")


def test_json_in_a_think_block_is_not_taken_for_the_answer():
    from pipeline.response import parse_completion
    from pipeline.structured import AnswerSchema

    sample = json.loads((SAMPLES / "vllm_think_inline.json").read_text())
    sample["choices"][0]["message"]["content"] = '<think>Draft: {"tags": ["draft"]}. Better:</think>\n{"tags": ["cat", "sofa"]}'
    columns = AnswerSchema(TAGS, "response_format").read(parse_completion(json.dumps(sample).encode()))
    assert columns == {"tags": ["cat", "sofa"]}


def test_a_provider_that_ignores_the_format_stops_the_run_before_it_burns_the_manifest(simulator, tmp_path, schema_file):
    simulator.configure(ignore_response_format=True)
    manifest = helpers.image_manifest(tmp_path, 8)
    summary, rows = run(manifest, tmp_path / "out.parquet", simulator, schema_file, schema_mode="response_format",
                        concurrency=1, max_invalid=1)
    assert summary.exit_code == 3 and "setup looks wrong" in summary.aborted
    assert len(rows) == 3 and simulator.stats()["requests"] == 6  # three rows, each asked twice; five never sent
