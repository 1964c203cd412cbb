"""The SSE parser by the WHATWG rules, the chunk assembler, and read_completion against a fake body."""

import asyncio
import json
import random

import pytest

from pipeline.errors import (
    APIResponseError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    RateLimitError,
    ServerError,
)
from pipeline.sse import CompletionAssembler, Event, SSEParser, read_completion


def events(*chunks: bytes) -> list[str]:
    parser = SSEParser()
    out = [e.data for chunk in chunks for e in parser.feed(chunk)]
    return out + [e.data for e in parser.close()]


# --- the parser ---------------------------------------------------------------


@pytest.mark.parametrize(
    "stream, expected",
    [
        (b"data: a\n\ndata: b\n\n", ["a", "b"]),
        (b"data: a\r\n\r\ndata: b\r\n\r\n", ["a", "b"]),
        (b"data: a\r\rdata: b\r\r", ["a", "b"]),
        (b"data: a\r\n\ndata: b\r\r\n", ["a", "b"]),  # mixed line ends in one stream
        (b": keep-alive\n\ndata: a\n: comment inside an event\ndata: b\n\n", ["a\nb"]),
        (b"data: {\ndata:  \"k\": 1\ndata: }\n\n", ['{\n "k": 1\n}']),  # multi-line data joined with \n
        (b"data:a\n\n", ["a"]),  # no space after the colon
        (b"data:  a \n\n", [" a "]),  # only one space is removed, trailing ones kept
        (b"data\n\n", [""]),  # a field name alone has an empty value
        (b"data:\n\n", [""]),
        (b"data: a:b: c\n\n", ["a:b: c"]),  # only the first colon splits
        (b"event: x\nid: 7\nretry: 10\nfoo: bar\n\n", []),  # no data: nothing dispatched
        (b"foo: bar\ndata: a\nDATA: b\n\n", ["a"]),  # unknown fields ignored, names are case-sensitive
        (b"\n\n\ndata: a\n\n\n\n", ["a"]),  # blank lines without data dispatch nothing
        (b"data: a\n\ndata: b\n", ["a"]),  # an unterminated last event is dropped
        (b"data: a", []),
        (b"\xef\xbb\xbfdata: a\n\n", ["a"]),  # one leading BOM is skipped
        (b"data: a\n\n\xef\xbb\xbfdata: b\n\n", ["a"]),  # ... only at the very start
        (b"data: [DONE]\n\n", ["[DONE]"]),  # the parser knows nothing of [DONE]
        ("data: 3×4 é 😀\n\n".encode(), ["3×4 é 😀"]),
        (b"data: \xff\n\n", ["\ufffd"]),  # bad UTF-8 becomes U+FFFD, never an exception
    ],
)
def test_parser_follows_the_spec(stream, expected):
    assert events(stream) == expected


def test_event_type_and_id_are_kept():
    parser = SSEParser()
    got = parser.feed(b"retry: 2500\nid: 1\nevent: error\ndata: x\n\ndata: y\n\n")
    assert got == [Event("x", "error", "1"), Event("y", "message", "1")]
    assert parser.retry_ms == 2500


def test_pending_says_whether_close_dropped_something():
    parser = SSEParser()
    parser.feed(b"data: a\n\n")
    assert not parser.pending
    parser.feed(b"data: {\"choices\"")
    assert parser.close() == [] and parser.pending


STREAM = (
    ": keep-alive\r\n\r\n"
    'data: {"c": "3×4 ×"}\r\n\r\n'
    "data: a\rdata: b\r\r"
    "data: c\n\n"
    "data: é😀\r\n\r\n"
    "data: [DONE]\r\n\r\n"
).encode()
STREAM_EVENTS = ['{"c": "3×4 ×"}', "a\nb", "c", "é😀", "[DONE]"]


def test_every_single_split_gives_the_same_events():
    assert events(STREAM) == STREAM_EVENTS
    assert b"\r\n" in STREAM and "×".encode() in STREAM
    for i in range(len(STREAM) + 1):
        assert events(STREAM[:i], STREAM[i:]) == STREAM_EVENTS, i


def test_a_split_between_cr_and_lf_is_one_line_end():
    # "a\r" | "\n" must not be read as a line end and then an empty line (which would dispatch early).
    assert events(b"data: a\r", b"\ndata: b\r\n\r\n") == ["a\nb"]
    assert events(b"data: a\r", b"", b"\n", b"\r", b"\n") == ["a"]
    # A CR that is followed by something else ends the line on its own.
    assert events(b"data: a\r", b"data: b\r\r") == ["a\nb"]


def test_a_split_inside_a_multibyte_character():
    times = "×".encode()
    assert len(times) == 2
    assert events(b"data: 3" + times[:1], times[1:] + b"4\n\n") == ["3×4"]
    smile = "😀".encode()
    assert events(b"data: ", *(bytes([b]) for b in smile), b"\n\n") == ["😀"]


def test_random_splits_many_times():
    rng = random.Random(1234)
    for _ in range(500):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 40)))
        pieces = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)])]
        assert events(*pieces) == STREAM_EVENTS, cuts


def test_byte_at_a_time():
    assert events(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == STREAM_EVENTS


# --- the assembler --------------------------------------------------------------


def chunk(content=None, finish_reason=None, *, role=False, **extra):
    delta = ({"role": "assistant"} if role else {}) | ({"content": content} if content is not None else {})
    choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "choices": [choice], **extra})


USAGE = {"prompt_tokens": 90, "completion_tokens": 3, "total_tokens": 93, "prompt_tokens_details": {"cached_tokens": 0}}


def assemble(*payloads, event="message"):
    assembler = CompletionAssembler()
    for payload in payloads:
        assembler.add(payload, event)
    return assembler.finish()


def test_assembles_content_finish_reason_id_model_and_usage_as_given():
    completion = assemble(
        chunk("", role=True, usage=None),  # OpenAI's first chunk: role and empty content
        chunk("A 3×4 "),
        chunk("cat."),
        chunk(None, "stop"),
        json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "choices": [], "usage": USAGE}),
        "[DONE]",
    )
    assert (completion.caption, completion.finish_reason, completion.model, completion.response_id) == ("A 3×4 cat.", "stop", "m", "chatcmpl-1")
    assert completion.usage == USAGE


def test_without_include_usage_the_usage_is_empty():
    assert assemble(chunk("A cat."), chunk(None, "length"), "[DONE]").usage == {}


def test_events_after_done_are_ignored():
    assert assemble(chunk("A cat.", "stop"), "[DONE]", "not json", chunk("more")).caption == "A cat."


def test_empty_data_is_ignored():
    assert assemble("", chunk("A cat.", "stop"), "  ", "[DONE]").caption == "A cat."


def test_time_to_first_token_counts_to_the_first_non_empty_content():
    now = iter([10.0, 10.5, 99.0])
    assembler = CompletionAssembler(clock=lambda: next(now))
    assembler.add(chunk("", role=True))
    assert assembler.time_to_first_token is None
    assembler.add(chunk("A"))
    assembler.add(chunk("B", "stop"))
    assert assembler.time_to_first_token == 0.5 and assembler.first_token_at == 10.5


def test_no_done_but_a_finish_reason_is_accepted():
    assert assemble(chunk("A cat."), chunk(None, "stop")).caption == "A cat."


def test_done_without_finish_reason_is_accepted():
    completion = assemble(chunk("A cat."), "[DONE]")
    assert completion.caption == "A cat." and completion.finish_reason is None


def test_neither_done_nor_finish_reason_is_truncated():
    with pytest.raises(APIResponseError, match=r"ended before it finished \(truncated\).*after 6 characters"):
        assemble(chunk("A cat."))
    with pytest.raises(APIResponseError, match="truncated"):
        assemble()


@pytest.mark.parametrize(
    "payloads",
    [
        [chunk("", role=True), chunk(None, "stop"), "[DONE]"],
        ["[DONE]"],
        # The non-streaming body a broken server might send instead of chunks.
        [json.dumps({"object": "chat.completion", "choices": [{"message": {"content": None}, "finish_reason": "stop"}]}), "[DONE]"],
        [json.dumps({"object": "chat.completion"}), "[DONE]"],
    ],
)
def test_a_stream_without_content_is_an_error(payloads):
    with pytest.raises(APIResponseError, match="no content"):
        assemble(*payloads)


@pytest.mark.parametrize("payload, what", [('{"choices": [{"delta', "not JSON"), ("<html>502</html>", "not JSON"), ("[1, 2]", "not a JSON object")])
def test_a_payload_that_is_not_a_json_object_is_a_bad_response(payload, what):
    with pytest.raises(APIResponseError, match=what):
        assemble(chunk("A"), payload)


@pytest.mark.parametrize(
    "payload, cls, status, code",
    [
        # OpenAI and OpenRouter: no number, but a word that names the status.
        ({"error": {"message": "The server had an error", "type": "server_error", "param": None, "code": None}}, ServerError, 500, "server_error"),
        ({"error": {"message": "Rate limit", "type": "requests", "code": "rate_limit_exceeded"}}, RateLimitError, 429, "rate_limit_exceeded"),
        ({"error": {"code": "server_error", "message": "Provider disconnected unexpectedly"}}, ServerError, 500, "server_error"),
        # No status and no word we know: a bad response (retried).
        ({"error": {"message": "something odd", "type": "weird"}}, APIResponseError, None, None),
        # vLLM: the status is in `code`.
        ({"object": "error", "message": "engine died", "type": "InternalServerError", "param": None, "code": 500}, ServerError, 500, "InternalServerError"),
        ({"object": "error", "message": "overloaded", "type": "ServiceUnavailableError", "code": 503}, ServerError, 503, "ServiceUnavailableError"),
        ({"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}, BadRequestError, 400, "BadRequestError"),
        ({"object": "error", "message": "no code"}, APIResponseError, None, None),
        # Newer vLLM and LiteLLM: OpenAI's shape with a numeric (or numeric string) code.
        ({"error": {"message": "slow down", "type": "rate_limit", "code": "429"}}, RateLimitError, 429, "rate_limit"),
        ({"error": {"message": "bad key", "type": "auth", "code": 401}}, AuthenticationError, 401, "auth"),
        ({"error": {"message": "oops", "status": 502}}, ServerError, 502, None),
    ],
)
def test_errors_inside_the_stream_are_classified_like_status_errors(payload, cls, status, code):
    with pytest.raises(cls) as info:
        assemble(chunk("A "), json.dumps(payload))
    assert type(info.value) is cls
    assert "inside the stream" in str(info.value)
    assert (payload.get("message") or payload["error"]["message"]) in str(info.value)
    if status is not None:
        assert (info.value.status, info.value.code) == (status, code)


def test_an_error_event_type_is_an_error_whatever_the_payload():
    with pytest.raises(APIResponseError, match="inside the stream: overloaded"):
        assemble(json.dumps({"message": "overloaded"}), event="error")


# --- read_completion ------------------------------------------------------------


class FakeBody:
    """readany() returns the given pieces, then b""; `None` in the list means: go silent."""

    def __init__(self, pieces):
        self.pieces = list(pieces)
        self.reads = 0

    async def readany(self):
        self.reads += 1
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if piece is None:
            await asyncio.sleep(3600)
        if isinstance(piece, BaseException):
            raise piece
        return piece


def sse(*payloads, eol="\n"):
    return "".join(f"data: {p}{eol}{eol}" for p in payloads).encode()


def test_read_completion_reads_to_done_and_stops_there():
    body = FakeBody([sse(chunk("A ×"))[:7], sse(chunk("A ×"))[7:], sse(chunk(None, "stop"), "[DONE]"), None])
    completion, ttft = asyncio.run(read_completion(body, stall_timeout=1))
    assert completion.caption == "A ×" and ttft is not None and ttft >= 0
    assert body.reads == 3  # never waited on the silence after [DONE]


def test_read_completion_stall_is_a_timeout():
    body = FakeBody([sse(chunk("A"))[:5], None])
    with pytest.raises(APITimeoutError, match="silent for more than 0.05 s"):
        asyncio.run(read_completion(body, stall_timeout=0.05))


def test_read_completion_lets_an_outer_timeout_through():
    async def go():
        async with asyncio.timeout(0.05):
            await read_completion(FakeBody([None]), stall_timeout=10)

    with pytest.raises(TimeoutError):
        asyncio.run(go())


def test_read_completion_eof_without_finish_reason_is_truncated():
    with pytest.raises(APIResponseError, match="truncated.*in the middle of an event"):
        asyncio.run(read_completion(FakeBody([sse(chunk("A cat")) + b"data: {"]), stall_timeout=None))


def test_read_completion_broken_connection_is_truncated_unless_finished():
    import aiohttp

    broken = aiohttp.ClientPayloadError("Response payload is not completed")
    with pytest.raises(APIResponseError, match=r"truncated\): the connection broke \(ClientPayloadError"):
        asyncio.run(read_completion(FakeBody([sse(chunk("A cat")), broken]), stall_timeout=None))
    completion, _ = asyncio.run(read_completion(FakeBody([sse(chunk("A cat", "stop")), broken]), stall_timeout=None))
    assert completion.caption == "A cat"
