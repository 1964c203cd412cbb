"""No wrong ok, no lost answer: real providers' dialects and mistakes, end to end against the simulator."""

import time

import pytest

from helpers import caption, image_manifest
from pipeline.errors import QuotaExhaustedError, RunAborted, status_error_class
from pipeline.failures import FailureWatch
from pipeline.response import parse_error_body
from pipeline.simulator.dialects import REFUSAL, THINKING

KEY = "sk-answers-Zq8wX2vB7nM4kL9pR3tY6uH1"


def run(simulator, tmp_path, n=1, **flags):
    output = flags.pop("output", tmp_path / "out.parquet")
    summary, rows = caption(image_manifest(tmp_path, n), output, simulator.base_url, KEY, concurrency=1, **flags)
    return summary, list(rows.values())


@pytest.mark.parametrize("stream", [False, True])
def test_a_reasoning_model_out_of_tokens_is_an_error_not_retried_and_a_rerun_repairs_it(simulator, tmp_path, stream):
    simulator.configure(fault_script=["empty"])
    summary, [row] = run(simulator, tmp_path, stream=stream)
    assert (row["status"], row["error_type"], row["attempts"]) == ("error", "empty_answer", 1)
    assert "--max-tokens" in row["error"] and "reasoning" in row["error"].lower()
    assert row["completion_tokens"] == 300 and row["cost_usd"] > 0  # billed, so counted
    assert simulator.stats()["requests"] == 1
    summary, [row] = run(simulator, tmp_path, stream=stream)  # the rerun tries it again
    assert row["status"] == "ok" and row["caption"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_refusal_is_an_error_row_that_keeps_its_words(simulator, tmp_path, stream):
    simulator.configure(fault_script=["refusal"])
    summary, [row] = run(simulator, tmp_path, stream=stream)
    assert (row["status"], row["error_type"], row["attempts"]) == ("error", "refused", 1)
    assert REFUSAL in row["error"]


@pytest.mark.parametrize("fault", ["parts", "think"])
@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_is_kept_out_of_the_caption_and_parts_are_joined(simulator, tmp_path, fault, stream):
    summary, [plain] = run(simulator, tmp_path / "a", stream=stream)
    simulator.configure(fault_script=[fault])
    simulator.reset()
    summary, [row] = run(simulator, tmp_path / "b", stream=stream)
    assert row["status"] == "ok" and row["caption"] == plain["caption"]
    assert THINKING not in row["caption"]


def test_tokens_only_in_total_are_counted_and_priced_as_output(simulator, tmp_path):
    summary, [plain] = run(simulator, tmp_path / "a")
    simulator.configure(fault_script=["hidden_reasoning"])
    simulator.reset()
    summary, [row] = run(simulator, tmp_path / "b")
    assert row["total_tokens"] == row["prompt_tokens"] + row["completion_tokens"]
    assert row["completion_tokens"] == 6 * plain["completion_tokens"]
    assert row["reasoning_tokens"] == 5 * plain["completion_tokens"]
    assert row["cost_usd"] > plain["cost_usd"]
    assert row["cached_tokens"] == 0  # a reported zero stays zero


@pytest.mark.parametrize("fault", ["stream_error_llamacpp", "stream_error_openrouter", "stream_error_vllm", "stream_error"])
def test_an_error_inside_a_stream_is_retried_never_stored_as_a_cut_off_caption(simulator, tmp_path, fault):
    summary, [plain] = run(simulator, tmp_path / "a", stream=True)
    simulator.configure(fault_script=[fault, "ok"], retry_after=0)
    simulator.reset()
    summary, [row] = run(simulator, tmp_path / "b", stream=True)
    assert (row["status"], row["attempts"], row["caption"]) == ("ok", 2, plain["caption"])


@pytest.mark.parametrize("fault, style", [("gemini_429", "plain"), ("429", "litellm")])
def test_the_wait_is_read_from_a_json_body_and_from_a_gateways_renamed_headers(simulator, tmp_path, fault, style):
    simulator.configure(fault_script=[fault, "ok"], retry_after=1.0, header_style=style)
    started = time.monotonic()
    summary, [row] = run(simulator, tmp_path)
    assert (row["status"], row["attempts"]) == ("ok", 2)
    assert time.monotonic() - started >= 0.9  # the server's 1 s, not our own (shorter) first backoff


@pytest.mark.parametrize("script, fragment", [
    (["402"], "no credits"),
    (["404"], "--base-url"),
    (["400", "400", "400"], "setup looks wrong"),
])
def test_a_broken_setup_stops_the_run_at_once_with_exit_3(simulator, tmp_path, script, fragment):
    simulator.configure(fault_script=script)
    summary, rows = run(simulator, tmp_path, n=20)
    assert summary.exit_code == 3 and fragment in summary.aborted
    assert simulator.stats()["requests"] == len(script)  # not the whole manifest


def test_a_day_long_retry_after_ends_the_run_and_says_how_long(simulator, tmp_path):
    simulator.configure(fault_script=["429"], retry_after=86400)
    started = time.monotonic()
    summary, rows = run(simulator, tmp_path, n=5)
    assert summary.exit_code == 3 and "24.0 h" in summary.aborted
    assert time.monotonic() - started < 10 and simulator.stats()["requests"] == 1


def test_no_piece_of_the_key_survives_an_error_page_that_echoes_it(simulator, tmp_path):
    simulator.configure(fault_script=["echo_key"] * 10, retry_after=0)
    summary, [row] = run(simulator, tmp_path, max_retries=1)
    assert row["error_type"] == "server_error"
    secret = KEY.removeprefix("sk-")
    for start in range(len(KEY) - 11):
        assert KEY[start : start + 12] not in row["error"]
    assert secret[:8] not in row["error"] or "***" in row["error"]


def test_a_quota_code_flattened_by_a_gateway_is_still_a_quota():
    # LiteLLM's shape: the provider's code becomes the status, the meaning stays in type and text.
    raw = b'{"error": {"message": "You exceeded your current quota, please check your plan.", "type": "insufficient_quota", "param": null, "code": "429"}}'
    message, code = parse_error_body(raw)
    assert status_error_class(429, code, message) is QuotaExhaustedError
    # Gemini's RESOURCE_EXHAUSTED is a per-minute limit, not money.
    assert status_error_class(429, "429", "Resource has been exhausted (e.g. check quota).") is not QuotaExhaustedError


def _status(status, code=None):
    return status_error_class(status, code)(f"HTTP {status}", status=status, code=code)


@pytest.mark.parametrize("errors, aborts_at", [
    ([None, _status(400), _status(400), _status(400), _status(400)], 5),  # after a success: the --max-consecutive-failures budget
    ([_status(400), _status(422), _status(400)], None),  # different errors do not add up before a success
    ([_status(500)] * 4, 4),  # transient ones (after their retries) do
    ([None, _status(404)], None),  # a 404 after a success is one row's trouble
])
def test_failure_watch(errors, aborts_at):
    watch = FailureWatch(max_consecutive=4)
    for n, error in enumerate(errors, 1):
        try:
            watch.check(error, str(error))
        except RunAborted:
            assert n == aborts_at
            return
    assert aborts_at is None


def test_an_answer_bigger_than_any_caption_is_a_bad_response_read_in_bounded_memory(simulator, tmp_path):
    simulator.configure(fault_script=["huge", "ok"], retry_after=0)
    summary, [row] = run(simulator, tmp_path)
    assert (row["status"], row["attempts"]) == ("ok", 2)  # the 12 MB answer was refused, then retried
    simulator.configure(fault_script=["huge"] * 3)
    simulator.reset()
    summary, [row] = run(simulator, tmp_path / "b", max_retries=1)
    assert row["error_type"] == "bad_response" and "larger than" in row["error"]
