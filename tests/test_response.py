import json

import pytest

from pipeline.errors import APIResponseError
from pipeline.response import parse_completion, parse_error_body


def _body(**kw):
    payload = {
        "id": "chatcmpl-1",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "A cat."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13, "prompt_tokens_details": {"cached_tokens": 0}},
    }
    payload.update(kw)
    return json.dumps(payload).encode()


def test_parses_caption_and_copies_usage_as_given():
    c = parse_completion(_body())
    assert (c.caption, c.finish_reason, c.model, c.response_id) == ("A cat.", "stop", "m", "chatcmpl-1")
    assert c.usage["prompt_tokens_details"] == {"cached_tokens": 0}


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"<html>502 Bad Gateway</html>", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "not an object"),
        (json.dumps({"error": {"message": "overloaded"}}).encode(), "overloaded"),
        (_body(choices=[]), "without any choices"),
        (_body(choices=None), "without any choices"),
        (_body(choices=[{"message": {"content": None}, "finish_reason": "stop"}]), "no content"),
    ],
)
def test_unusable_200_bodies_are_typed_errors(raw, fragment):
    with pytest.raises(APIResponseError, match=fragment):
        parse_completion(raw)


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b'{"error": {"message": "Rate limit", "code": "rate_limit_exceeded"}}', ("Rate limit", "rate_limit_exceeded")),
        (b'{"error": {"message": "quota", "type": "insufficient_quota"}}', ("quota", "insufficient_quota")),
        (b'{"object": "error", "message": "bad model"}', ("bad model", None)),
        (b"upstream timeout", ("'upstream timeout'", None)),
        (b"", ("(empty body)", None)),
    ],
)
def test_parse_error_body(raw, expected):
    assert parse_error_body(raw) == expected
