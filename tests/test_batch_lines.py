"""Batch lines both ways, on the shapes the providers document, and batch prices."""

import json

import pytest

from pipeline.batch.lines import anthropic_line, openai_line, parse_anthropic_result, parse_openai_result
from pipeline.config import JobConfig
from pipeline.cost import load_price
from pipeline.errors import ConfigError
from pipeline.request import encode_chat_request

# From OpenAI's Batch API guide: one line of an output file, one of an error file.
OPENAI_OK = {"id": "batch_req_123", "custom_id": "request-2", "response": {"status_code": 200, "request_id": "req_123", "body": {
    "id": "chatcmpl-123", "object": "chat.completion", "created": 1711652795, "model": "gpt-3.5-turbo-0125",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello."}, "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 22, "completion_tokens": 2, "total_tokens": 24}, "system_fingerprint": "fp_123"}}, "error": None}
OPENAI_EXPIRED = {"id": "batch_req_456", "custom_id": "request-3", "response": None,
                  "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}
OPENAI_400 = {"id": "batch_req_789", "custom_id": "request-4", "response": {"status_code": 400, "request_id": "req_789", "body": {
    "error": {"message": "Invalid image.", "type": "invalid_request_error", "param": None, "code": "invalid_image"}}}, "error": None}
# From Anthropic's Message Batches reference: results lines.
ANTHROPIC_OK = {"custom_id": "my-second-request", "result": {"type": "succeeded", "message": {
    "id": "msg_014VwiXbi91y3JMjcpyGBHX5", "type": "message", "role": "assistant", "model": "claude-3-5-sonnet-20240620",
    "content": [{"type": "text", "text": "Hello again! It's nice to see you."}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 11, "output_tokens": 36}}}}
ANTHROPIC_ERRORED = {"custom_id": "my-third-request", "result": {"type": "errored", "error": {"type": "error", "error": {
    "type": "invalid_request_error", "message": "Validation error: image too large"}}}}


def line(obj):
    return json.dumps(obj).encode()


def test_openai_result_lines():
    ok = parse_openai_result(line(OPENAI_OK))
    assert ok.custom_id == "request-2" and ok.completion.caption == "Hello." and ok.completion.usage["total_tokens"] == 24
    expired = parse_openai_result(line(OPENAI_EXPIRED))
    assert expired.completion is None and expired.error is None  # never run: to do again
    bad = parse_openai_result(line(OPENAI_400))
    assert bad.error.error_type == "bad_request" and "Invalid image." in str(bad.error) and bad.error.request_id == "req_789"
    empty = parse_openai_result(line({**OPENAI_OK, "response": {**OPENAI_OK["response"], "body": {
        **OPENAI_OK["response"]["body"], "choices": [{"index": 0, "message": {"content": ""}, "finish_reason": "length"}]}}}))
    assert empty.error.error_type == "empty_answer"  # the online rule: an ok row holds a real answer


def test_anthropic_result_lines():
    ok = parse_anthropic_result(line(ANTHROPIC_OK))
    assert ok.completion.caption == "Hello again! It's nice to see you." and ok.completion.finish_reason == "stop"
    errored = parse_anthropic_result(line(ANTHROPIC_ERRORED))
    assert errored.error.error_type == "bad_request" and "image too large" in str(errored.error)
    for kind in ("canceled", "expired"):
        again = parse_anthropic_result(line({"custom_id": "x", "result": {"type": kind}}))
        assert again.completion is None and again.error is None


def test_request_lines_carry_the_online_body_and_the_same_image():
    config = JobConfig(system="Be brief.", temperature=0.2)
    data_url = b"data:image/png;base64,iVBORw0KGgo="
    body = encode_chat_request(config, "Describe.", data_url)
    openai = json.loads(openai_line('id "1"', body))
    assert openai == {"custom_id": 'id "1"', "method": "POST", "url": "/v1/chat/completions", "body": json.loads(body)}
    anthropic = json.loads(anthropic_line("r1", config, "Describe.", data_url))
    params = anthropic["params"]
    assert params["system"] == "Be brief." and params["temperature"] == 0.2 and params["max_tokens"] == config.max_tokens
    assert params["messages"][0]["content"] == [{"type": "text", "text": "Describe."}, {"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]
    by_url = json.loads(anthropic_line("r2", config, "Describe.", "https://example.com/a.jpg"))
    assert by_url["params"]["messages"][0]["content"][1]["source"] == {"type": "url", "url": "https://example.com/a.jpg"}


def test_batch_prices(tmp_path):
    prices = tmp_path / "p.toml"
    prices.write_text('[models.a]\ninput = 3\noutput = 15\ncached_input = 0.3\nbatch_discount = 0.5\n'
                      '[models.b]\ninput = 2\noutput = 8\nbatch_input = 1.5\nbatch_output = 6\n'
                      '[models.c]\ninput = 1\noutput = 4\n'
                      '[models.d]\ninput = 1\noutput = 4\nbatch_discount = 2\n')
    a = load_price(prices, "a", batch=True)
    assert (a.input, a.output, a.cached_input) == (1.5, 7.5, 0.15)
    b = load_price(prices, "b", batch=True)
    assert (b.input, b.output) == (1.5, 6.0)
    assert load_price(prices, "c", batch=True) == load_price(prices, "c")  # no batch price: the online one, never less
    with pytest.raises(ConfigError, match="batch_discount between 0 and 1"):
        load_price(prices, "d", batch=True)
