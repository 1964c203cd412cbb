import io
import json
import logging

from pipeline.logs import redact_in_logs, setup_logging


def test_json_lines_with_extra_fields_and_the_key_redacted():
    stream = io.StringIO()
    setup_logging("json", stream)
    redact_in_logs("sk-log-SECRET")
    logging.getLogger("pipeline").info("sent with %s", "Bearer sk-log-SECRET", extra={"progress": {"done": 3}})
    event = json.loads(stream.getvalue())
    assert event["message"] == "sent with Bearer ***" and event["progress"] == {"done": 3} and event["level"] == "info"
    assert "sk-log-SECRET" not in stream.getvalue()


def test_text_format():
    stream = io.StringIO()
    setup_logging("text", stream)
    logging.getLogger("pipeline").warning("careful")
    assert stream.getvalue() == "pipeline: careful\n"


def test_default_is_json_when_not_a_terminal():
    stream = io.StringIO()
    setup_logging(None, stream)
    logging.getLogger("pipeline").info("x")
    assert json.loads(stream.getvalue())["message"] == "x"


def test_a_placeholder_key_too_short_to_be_secret_is_not_redacted_everywhere():
    stream = io.StringIO()
    setup_logging("json", stream)
    redact_in_logs("bench")
    logging.getLogger("pipeline").info("wrote bench/results/a.parquet")
    assert json.loads(stream.getvalue())["message"] == "wrote bench/results/a.parquet"
