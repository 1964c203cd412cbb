"""results.py: how a success or a failure becomes one output row."""

from pipeline.errors import EmptyAnswerError, ImageMissingError
from pipeline.records import Completion, ManifestRow, PreparedImage
from pipeline.results import OUTPUT_SCHEMA, error_row, ok_row

ROW = ManifestRow(line=2, id="a", image="a.png", source="/x/a.png", extra={"title": "T", "status": "clash"})
IMAGE = PreparedImage(url="data:", sha256="ab", width=10, height=5, original_width=20, original_height=10,
                      file_size=123, file_mtime_ns=456)


def test_an_ok_row_has_every_column_and_the_manifests_passthrough():
    usage = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 20, "prompt_tokens_details": {"cached_tokens": 0}}
    row = ok_row(ROW, IMAGE, Completion("A cat.", "stop", "m", "r1", usage), attempts=2, latency_ms=12.34, fingerprint="f", cost_usd=0.5)
    assert set(OUTPUT_SCHEMA.names) <= set(row)
    assert (row["status"], row["caption"], row["attempts"], row["latency_ms"], row["cost_usd"]) == ("ok", "A cat.", 2, 12.3, 0.5)
    assert (row["completion_tokens"], row["reasoning_tokens"], row["cached_tokens"]) == (10, 7, 0)  # billed: total - prompt
    assert (row["file_size"], row["file_mtime_ns"], row["width"], row["original_width"]) == (123, 456, 10, 20)
    assert row["title"] == "T" and row["manifest_status"] == "clash"  # a clashing manifest column keeps its value


def test_an_error_row_says_why_and_keeps_what_an_answer_cost():
    failed = error_row(ROW, ImageMissingError("image file not found: /x/a.png"))
    assert (failed["status"], failed["error_type"], failed["attempts"], failed["caption"]) == ("error", "image_missing", 0, None)
    billed = EmptyAnswerError("no content", usage={"prompt_tokens": 5, "completion_tokens": 300, "total_tokens": 305},
                              finish_reason="length", model="m")
    row = error_row(ROW, billed, attempts=1, cost_usd=0.01, image=IMAGE)
    assert (row["error_type"], row["completion_tokens"], row["finish_reason"], row["cost_usd"]) == ("empty_answer", 300, "length", 0.01)
