import io
import json
import logging
import re

from pipeline.logs import redact_in_logs, setup_logging


def test_json_lines_with_extra_fields_and_the_key_redacted():
    stream = io.StringIO()
    setup_logging("json", stream)
    redact_in_logs("sk-log-SECRET")
    logging.getLogger("pipeline").info("sent with %s", "Bearer sk-log-SECRET", extra={"progress": {"done": 3}})
    event = json.loads(stream.getvalue())
    assert event["message"] == "sent with Bearer ***" and event["progress"] == {"done": 3} and event["level"] == "info"
    assert "sk-log-SECRET" not in stream.getvalue()


def test_text_lines_carry_a_timestamp():
    stream = io.StringIO()
    setup_logging("text", stream)
    logging.getLogger("pipeline").warning("careful")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d pipeline: careful\n", stream.getvalue())


def test_the_key_is_masked_in_the_extra_fields_of_a_json_line_too():
    stream = io.StringIO()
    setup_logging("json", stream)
    redact_in_logs("sk-extra-SECRET-123")
    logging.getLogger("pipeline").info("start", extra={"options": {"base_url": "http://u:sk-extra-SECRET-123@h/v1"}})
    assert "sk-extra-SECRET" not in stream.getvalue() and json.loads(stream.getvalue())["options"]["base_url"] == "http://u:***@h/v1"


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
