"""The simulator, over real HTTP on loopback: answers, errors, faults, recording and the ways to run it."""

import asyncio
import base64
import email.utils
import hashlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from pipeline.errors import APIError, APIResponseError, APITimeoutError, BadRequestError, ServerError
from pipeline.simulator import SimulatorSettings, build_parser, count_usage, image_key, retry_after_headers, serve_in_thread
from pipeline.simulator.assets import generated_colour
from pipeline.simulator.limits import Limits, SlidingWindow, format_duration
from pipeline.sse import read_completion

PROMPT = "Describe this image in one sentence."
SYSTEM = "You write alt text."
REPO = Path(__file__).resolve().parents[2]


def image_bytes(color, size, fmt="PNG"):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def data_url(data, mime="image/png"):
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


BLUE_PNG = data_url(image_bytes((0, 0, 255), (64, 48)))


def chat_body(url=BLUE_PNG, **extra):
    content = [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": url}}]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]
    return {"model": "test-model", "messages": messages, "max_tokens": 300, **extra}


async def _post(url, body, token, timeout, extra_headers=None):
    headers = ({"Authorization": f"Bearer {token}"} if token is not None else {}) | (extra_headers or {})
    payload = body if isinstance(body, (bytes, str)) else json.dumps(body)
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=payload, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            return response.status, response.headers, await response.text()


def post(sim, body=None, token="sk-test", timeout=5.0, headers=None):
    """(status, headers, text) of one chat completion request."""
    return asyncio.run(_post(sim.base_url + "/chat/completions", chat_body() if body is None else body, token, timeout, headers))


def get_json(url):
    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers={"Authorization": "Bearer sk-test"}) as response:
                return response.status, await response.json()

    return asyncio.run(go())


# --- answers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "color, size, fmt, mime, words",
    [
        ((0, 0, 255), (512, 384), "PNG", "image/png", ["512×384", "landscape", "blue"]),
        ((220, 20, 20), (300, 600), "JPEG", "image/jpeg", ["300×600", "portrait", "red"]),
        ((250, 250, 250), (100, 100), "PNG", "image/png", ["square", "white", "bright"]),
        ((10, 10, 10), (100, 50), "PNG", "image/png", ["black", "dark"]),
    ],
)
def test_caption_describes_the_pixels_and_usage_follows_the_formula(simulator, color, size, fmt, mime, words):
    body = chat_body(data_url(image_bytes(color, size, fmt), mime))
    status, headers, text = post(simulator, body)
    assert status == 200, text
    answer = json.loads(text)
    caption = answer["choices"][0]["message"]["content"]
    assert all(word in caption for word in words), caption
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["model"] == "test-model" and answer["object"] == "chat.completion"
    assert answer["id"].startswith("chatcmpl-sim-") and headers["x-request-id"].startswith("req-sim-")
    width, height = size
    prompt = math.ceil(width * height / 750) + math.ceil((len(SYSTEM) + len(PROMPT)) / 4)
    completion = math.ceil(len(caption) / 4)
    counts = {k: answer["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert counts == {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    assert answer["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # the fields real OpenAI sends
    assert answer["choices"][0]["message"]["refusal"] is None and answer["system_fingerprint"]
    # Deterministic: the same image gets the same caption.
    assert json.loads(post(simulator, body)[2])["choices"][0]["message"]["content"] == caption


def test_two_colour_image_names_both():
    image = Image.new("RGB", (200, 100), (0, 0, 255))
    image.paste((255, 255, 255), (120, 0, 200, 100))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    with serve_in_thread() as sim:
        caption = json.loads(post(sim, chat_body(data_url(buffer.getvalue())))[2])["choices"][0]["message"]["content"]
    assert "mostly blue and white" in caption


@pytest.mark.parametrize("limit_key", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_the_caption(simulator, limit_key):
    body = chat_body()
    del body["max_tokens"]
    answer = json.loads(post(simulator, {**body, limit_key: 3})[2])
    assert len(answer["choices"][0]["message"]["content"]) == 12
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 3


def test_streaming_is_well_formed_sse_with_usage(simulator):
    plain = json.loads(post(simulator)[2])
    status, headers, text = post(simulator, chat_body(stream=True, stream_options={"include_usage": True}))
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert text.endswith("data: [DONE]\n\n")
    events = [block for block in text.split("\n\n") if block]
    assert all(block.startswith("data: ") for block in events)
    chunks = [json.loads(block[len("data: "):]) for block in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    deltas = [chunk["choices"][0] for chunk in chunks if chunk["choices"]]
    assert len(deltas) >= 3
    assert "".join(d["delta"].get("content", "") for d in deltas) == plain["choices"][0]["message"]["content"]
    assert [d["finish_reason"] for d in deltas[-2:]] == [None, "stop"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_streaming_without_include_usage_has_no_usage_chunk(simulator):
    text = post(simulator, chat_body(stream=True))[2]
    assert "usage" not in text and text.endswith("data: [DONE]\n\n")


def test_models_lists_the_configured_model(simulator):
    assert get_json(simulator.base_url + "/models")[1]["data"][0]["id"] == "claude-sonnet-4-20250514"
    simulator.configure(model="my-model")
    assert get_json(simulator.base_url + "/models") == (200, {"object": "list", "data": [{"id": "my-model", "object": "model", "owned_by": "simulator"}]})


# --- requests it refuses ------------------------------------------------------


def test_undecodable_image_is_invalid_image(simulator):
    status, _, text = post(simulator, chat_body(data_url(b"\x89PNG\r\n\x1a\n this is not a png")))
    assert status == 400
    assert json.loads(text) == {"error": {"message": "Could not process image", "type": "invalid_request_error", "code": "invalid_image"}}
    assert post(simulator, chat_body("data:image/png;base64,@@not base64@@"))[0] == 400


@pytest.mark.parametrize(
    "body, code",
    [
        (b"{not json", "invalid_json"),
        ({"model": "m"}, "missing_required_parameter"),
        ({"model": "m", "messages": [{"role": "user", "content": "just text"}]}, "missing_image"),
        ({"messages": chat_body()["messages"]}, "missing_required_parameter"),
        (chat_body(max_tokens=0), "invalid_value"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}, "invalid_value"),
    ],
)
def test_malformed_requests_are_400_in_openai_shape(simulator, body, code):
    status, _, text = post(simulator, body)
    assert status == 400
    error = json.loads(text)["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == code and error["message"]


def test_auth_requires_the_exact_key_and_never_echoes_it(simulator):
    simulator.configure(api_key="sk-right-key-123")
    unauthorized = {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error", "code": "invalid_api_key"}}
    for token in ("sk-wrong-key-456", "sk-right-key-1234", None):
        status, _, text = post(simulator, token=token)
        assert status == 401 and json.loads(text) == unauthorized
        assert "sk-" not in text
    assert post(simulator, token="sk-right-key-123")[0] == 200


def test_without_a_configured_key_any_bearer_token_passes_but_not_an_empty_one(simulator):
    assert post(simulator, token="anything")[0] == 200
    assert post(simulator, token="")[0] == 401
    assert post(simulator, token=None)[0] == 401


def test_image_urls_are_fetched_from_loopback_only(simulator):
    png = image_bytes((0, 0, 255), (40, 30))

    async def go():
        app = web.Application()
        async def cat(request):
            return web.Response(body=png, content_type="image/png")

        app.router.add_get("/cat.png", cat)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            url = simulator.base_url + "/chat/completions"
            ok = await _post(url, chat_body(f"http://127.0.0.1:{port}/cat.png"), "sk-test", 5)
            missing = await _post(url, chat_body(f"http://localhost:{port}/nope.png"), "sk-test", 5)
            return ok, missing
        finally:
            await runner.cleanup()

    (status, _, text), (missing_status, _, missing_text) = asyncio.run(go())
    assert status == 200 and "40×30 landscape image, mostly blue" in json.loads(text)["choices"][0]["message"]["content"]
    assert missing_status == 400 and json.loads(missing_text)["error"]["code"] == "invalid_image_url"
    for remote in ("http://example.com/cat.png", "https://10.0.0.1/cat.png", "file:///etc/hostname"):
        status, _, text = post(simulator, chat_body(remote))
        assert status == 400
        assert json.loads(text)["error"] == {"message": "Unable to download the image from the URL", "type": "invalid_request_error", "code": "invalid_image_url"}


# --- faults -------------------------------------------------------------------


@pytest.mark.parametrize(
    "form, header, check",
    [
        ("seconds", "Retry-After", lambda value: value == "2"),
        ("ms", "retry-after-ms", lambda value: value == "2000"),
        ("http-date", "Retry-After", lambda value: 1 <= email.utils.parsedate_to_datetime(value).timestamp() - time.time() <= 3.1),
        ("none", None, None),
    ],
)
def test_scripted_429_says_when_to_come_back(simulator, form, header, check):
    simulator.configure(fault_script=["429"], retry_after=2, retry_after_form=form)
    status, headers, text = post(simulator)
    assert status == 429
    error = json.loads(text)["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded" and "Rate limit reached" in error["message"]
    if header is None:
        assert "Retry-After" not in headers and "retry-after-ms" not in headers
    else:
        assert check(headers[header]), headers[header]
    assert post(simulator)[0] == 200  # past the end of the script
    assert simulator.stats()["images"][image_key(BLUE_PNG)] == {"requests": 2, "ok": 1}


@pytest.mark.parametrize(
    "fault, error_type",
    [("500", "server_error"), ("502", "server_error"), ("503", "server_error"), ("529", "overloaded_error"),
     ("400", "invalid_request_error"), ("401", "invalid_request_error"), ("408", "timeout_error"), ("409", "conflict_error")],
)
def test_scripted_status_faults_have_a_proper_error_body(simulator, fault, error_type):
    simulator.configure(fault_script=[fault])
    status, headers, text = post(simulator)
    assert status == int(fault)
    assert json.loads(text)["error"]["type"] == error_type
    assert ("Retry-After" in headers) == (fault == "503")
    assert simulator.stats()["by_status"] == {fault: 1}


def test_script_is_per_image_and_ok_means_a_normal_answer(simulator):
    other = data_url(image_bytes((0, 255, 0), (10, 10)))
    simulator.configure(fault_script=["500", "ok", "429"])
    assert [post(simulator)[0] for _ in range(4)] == [500, 200, 429, 200]
    assert post(simulator, chat_body(other))[0] == 500
    images = simulator.stats()["images"]
    assert images[image_key(BLUE_PNG)] == {"requests": 4, "ok": 2} and images[image_key(other)] == {"requests": 1, "ok": 0}
    assert image_key(BLUE_PNG) == hashlib.sha256(BLUE_PNG.encode()).hexdigest()


def test_reset_drops_the_connection(simulator):
    simulator.configure(fault_script=["reset"])
    with pytest.raises(aiohttp.ClientConnectionError):
        post(simulator)
    assert post(simulator)[0] == 200
    assert simulator.stats()["by_status"] == {"reset": 1, "200": 1}


def test_malformed_cycles_through_unusable_bodies(simulator):
    simulator.configure(fault_script=["malformed"] * 4)
    answers = [post(simulator) for _ in range(4)]
    assert {status for status, _, _ in answers} == {200}
    with pytest.raises(json.JSONDecodeError):
        json.loads(answers[0][2])
    error_object, no_choices, null_content = (json.loads(text) for _, _, text in answers[1:])
    assert error_object["error"]["message"]
    assert "choices" not in no_choices and no_choices["object"] == "chat.completion"
    assert null_content["choices"][0]["message"]["content"] is None
    assert set(simulator.stats()["faults"]) == {"malformed:not_json", "malformed:error_object", "malformed:no_choices", "malformed:null_content"}


def test_hang_never_answers_and_the_client_gives_up(simulator):
    simulator.configure(fault_script=["hang"])
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        post(simulator, timeout=0.3)
    assert time.monotonic() - started < 2
    assert simulator.stats()["by_status"] == {"hang": 1}
    deadline = time.monotonic() + 2  # the hung handler is cancelled once the client hangs up
    while simulator.stats()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert simulator.stats()["in_flight"] == 0


def test_random_faults_are_seeded_and_repeatable(simulator):
    simulator.configure(rate_429=0.3, rate_5xx=0.3, seed=7)
    first = [post(simulator)[0] for _ in range(12)]
    simulator.reset()
    assert [post(simulator)[0] for _ in range(12)] == first
    assert {200, 429} <= set(first) and set(first) <= {200, 429, 500, 502, 503, 529}


@pytest.mark.parametrize(
    "knobs",
    [{"fault_script": ["teapot"]}, {"rate_429": 1.5}, {"rate_429": 0.6, "rate_5xx": 0.6}, {"retry_after_form": "weeks"}, {"colour": "red"}],
)
def test_bad_knobs_are_refused(simulator, knobs):
    with pytest.raises(ValueError):
        simulator.configure(**knobs)
    with pytest.raises(ValueError):
        SimulatorSettings(**knobs) if "colour" not in knobs else SimulatorSettings().update(**knobs)


def test_pure_helpers():
    assert count_usage(750, 2, ["abcd", "e"], "x" * 9) == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert retry_after_headers(0.25, "seconds") == {"Retry-After": "0.25"}
    assert retry_after_headers(1.5, "ms") == {"retry-after-ms": "1500"}
    assert retry_after_headers(1, "http-date", now=0) == {"Retry-After": "Thu, 01 Jan 1970 00:00:01 GMT"}


# --- recording and control ----------------------------------------------------


def test_peak_in_flight_is_recorded_under_latency(simulator):
    simulator.configure(latency=0.3)

    async def burst():
        url = simulator.base_url + "/chat/completions"
        return await asyncio.gather(*(_post(url, chat_body(), "sk-test", 5) for _ in range(8)))

    assert [status for status, _, _ in asyncio.run(burst())] == [200] * 8
    stats = simulator.stats()
    assert stats["peak_in_flight"] == 8 and stats["in_flight"] == 0 and stats["requests"] == 8
    assert {key: stats["bodies"][0][key] for key in ("model", "max_tokens", "text")} == {"model": "test-model", "max_tokens": 300, "text": PROMPT}


def test_control_endpoints(simulator):
    root = simulator.base_url.removesuffix("/v1")

    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.post(root + "/_sim/config", json={"fault_script": "429,ok", "latency": 0}) as response:
                configured = response.status, await response.json()
            async with session.post(root + "/_sim/config", json={"nope": 1}) as response:
                refused = response.status
            await _post(simulator.base_url + "/chat/completions", chat_body(), "sk-test", 5)
            async with session.get(root + "/_sim/stats") as response:
                stats = await response.json()
            async with session.post(root + "/_sim/reset") as response:
                after_reset = await response.json()
        return configured, refused, stats, after_reset

    (status, configured), refused, stats, after_reset = asyncio.run(go())
    assert status == 200 and configured["settings"]["fault_script"] == ["429", "ok"]
    assert refused == 400
    assert stats["requests"] == 1 and stats["by_status"] == {"429": 1}
    assert set(stats) == {"requests", "in_flight", "peak_in_flight", "by_status", "faults", "rate_limited", "images", "bodies", "connections", "batches", "repeat_images"}
    assert after_reset == {"requests": 0, "in_flight": 0, "peak_in_flight": 0, "by_status": {}, "faults": {}, "rate_limited": 0,
                           "images": {}, "bodies": [], "connections": 0, "batches": {}, "repeat_images": 0}
    assert post(simulator)[0] == 429  # the script starts over after a reset


# --- ways to run it -----------------------------------------------------------


def test_stopping_does_not_wait_for_hanging_requests(caplog):
    outcome = {}

    def hung_client(url):
        try:
            outcome["result"] = asyncio.run(_post(url, chat_body(), "sk-test", 10))
        except Exception as exc:  # noqa: BLE001 - the point is which exception
            outcome["error"] = exc

    with serve_in_thread(SimulatorSettings(rate_hang=1.0)) as sim:
        client = threading.Thread(target=hung_client, args=(sim.base_url + "/chat/completions",))
        client.start()
        deadline = time.monotonic() + 3
        while sim.stats()["in_flight"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sim.stats()["in_flight"] == 1
        started = time.monotonic()
    assert time.monotonic() - started < 1.0  # not hang_seconds, not aiohttp's shutdown timeout
    client.join(timeout=5)
    assert isinstance(outcome.get("error"), aiohttp.ClientConnectionError)
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert not [t for t in threading.enumerate() if t.name == "pipeline-simulator"]


def test_main_prints_the_listening_line_and_exits_0_on_sigterm(tmp_path):
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.simulator", "--port", "0", "--ready-file", str(ready), "--fault-script", "429,ok"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        match = re.fullmatch(r"simulator listening on (http://127\.0\.0\.1:(\d+)/v1)\n", line)
        assert match, line
        assert ready.read_text() == match[1]
        assert asyncio.run(_post(match[1] + "/chat/completions", chat_body(), "sk-test", 5))[0] == 429
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    assert out == "" and err == ""


# --- streaming dialects and stream faults, read by the pipeline's own SSE reader --


STREAM_BODY = chat_body(stream=True, stream_options={"include_usage": True})


async def _read_stream(url, body, stall_timeout=2.0):
    """POST a streaming request and read it with read_completion: (completion, time to first token)."""
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": "Bearer sk-test"}
        async with session.post(url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
            return await read_completion(response.content, stall_timeout=stall_timeout)


def read_stream(sim, body=STREAM_BODY, stall_timeout=2.0):
    return asyncio.run(_read_stream(sim.base_url + "/chat/completions", body, stall_timeout))


def raw_stream(sim, body=STREAM_BODY):
    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.post(sim.base_url + "/chat/completions", json=body, headers={"Authorization": "Bearer sk-test"}) as response:
                return await response.read()

    return asyncio.run(go())


@pytest.mark.parametrize("style", ["lf", "crlf", "cr", "keepalive", "multiline", "fragmented", "no_done"])
def test_every_stream_style_reads_as_the_plain_answer(simulator, style):
    plain = json.loads(post(simulator)[2])
    simulator.configure(stream_style=style)
    completion, ttft = read_stream(simulator)
    assert "×" in completion.caption
    assert completion.caption == plain["choices"][0]["message"]["content"]
    assert completion.usage == plain["usage"] and completion.finish_reason == "stop"
    assert completion.model == "test-model" and completion.response_id.startswith("chatcmpl-sim-")
    assert ttft is not None and ttft >= 0


@pytest.mark.parametrize(
    "style, check",
    [
        ("lf", lambda raw: b"\r" not in raw and raw.endswith(b"data: [DONE]\n\n")),
        ("crlf", lambda raw: raw.count(b"\r\n\r\n") >= 5 and raw.endswith(b"data: [DONE]\r\n\r\n")),
        ("cr", lambda raw: b"\n" not in raw and raw.endswith(b"data: [DONE]\r\r")),
        ("keepalive", lambda raw: raw.startswith(b": keep-alive\n\n") and raw.count(b": keep-alive") >= 6),
        ("multiline", lambda raw: re.search(rb'\ndata:  "choices": \[\n', raw) is not None),
        ("fragmented", lambda raw: raw.endswith(b"data: [DONE]\r\n\r\n")),
        ("no_done", lambda raw: b"[DONE]" not in raw and b'"finish_reason": "stop"' in raw),
    ],
)
def test_stream_styles_look_as_promised_on_the_wire(simulator, style, check):
    simulator.configure(stream_style=style)
    raw = raw_stream(simulator)
    assert check(raw), raw[:300]
    assert "×".encode() in raw  # raw UTF-8, not \u00d7


def test_fragmented_really_arrives_in_pieces(simulator):
    simulator.configure(stream_style="fragmented")

    class Recording:
        def __init__(self, content):
            self.content, self.pieces = content, []

        async def readany(self):
            self.pieces.append(await self.content.readany())
            return self.pieces[-1]

    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.post(simulator.base_url + "/chat/completions", json=STREAM_BODY, headers={"Authorization": "Bearer sk-test"}) as response:
                body = Recording(response.content)
                return (await read_completion(body, stall_timeout=2))[0], body.pieces

    completion, pieces = asyncio.run(go())
    assert "×" in completion.caption
    assert len(pieces) > 20  # not one read per event
    # The hard cases reached the client as separate reads at least once.
    assert any(piece.endswith(b"\r") for piece in pieces)
    assert any(after[:1] and after[0] & 0xC0 == 0x80 for after in pieces[1:])


@pytest.mark.parametrize("fault, error, status", [
    ("stream_error", ServerError, 500), ("stream_error_vllm", ServerError, 500), ("stream_error_vllm_old", BadRequestError, 400),
    ("stream_error_llamacpp", ServerError, 500), ("stream_error_openrouter", ServerError, 500),
])
def test_an_error_inside_the_stream_raises_the_matching_class(simulator, fault, error, status):
    simulator.configure(fault_script=[fault])
    with pytest.raises(error, match="inside the stream") as info:
        read_stream(simulator)
    assert type(info.value) is error and getattr(info.value, "status", None) == status
    stats = simulator.stats()
    assert stats["faults"] == {fault: 1} and stats["by_status"] == {"200": 1}
    assert stats["images"][image_key(BLUE_PNG)] == {"requests": 1, "ok": 0}
    assert read_stream(simulator)[0].caption  # past the end of the script


def test_a_truncated_stream_is_a_bad_response_not_a_caption(simulator):
    simulator.configure(fault_script=["truncated"])
    with pytest.raises(APIResponseError, match=r"truncated\): the connection broke"):
        read_stream(simulator)
    assert simulator.stats()["by_status"] == {"truncated": 1}


def test_a_stalled_stream_times_out(simulator):
    simulator.configure(fault_script=["stall"], hang_seconds=30)
    started = time.monotonic()
    with pytest.raises(APITimeoutError, match="silent for more than 0.3 s"):
        read_stream(simulator, stall_timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 2
    assert simulator.stats()["by_status"] == {"stall": 1}


def test_stream_faults_on_a_plain_request(simulator):
    simulator.configure(fault_script=["stream_error", "stream_error_vllm", "stall", "truncated"])
    assert [post(simulator)[0] for _ in range(3)] == [200, 200, 200]
    with pytest.raises(aiohttp.ClientConnectionError):
        post(simulator)
    stats = simulator.stats()
    assert stats["faults"] == {"reset": 1} and stats["images"][image_key(BLUE_PNG)] == {"requests": 4, "ok": 3}


def test_malformed_answers_are_streamed_in_the_chosen_style(simulator):
    simulator.configure(fault_script=["malformed"] * 4, stream_style="crlf")
    for fragment in ("not JSON", "inside the stream", "no content", "no content"):
        with pytest.raises(APIError, match=fragment):
            read_stream(simulator)


def test_random_stream_faults_are_seeded(simulator):
    simulator.configure(rate_stream_error=0.4, rate_truncated=0.3, seed=3)

    def outcomes():
        kinds = []
        for _ in range(10):
            try:
                read_stream(simulator)
                kinds.append("ok")
            except (APIResponseError, ServerError) as exc:
                kinds.append(type(exc).__name__ + ("/truncated" if "truncated" in str(exc) else ""))
        return kinds

    first = outcomes()
    simulator.reset()
    assert outcomes() == first
    assert {"ok", "APIResponseError/truncated"} <= set(first) and set(first) <= {"ok", "APIResponseError", "ServerError", "APIResponseError/truncated"}


def test_stream_settings_are_checked():
    with pytest.raises(ValueError, match="stream_style"):
        SimulatorSettings(stream_style="lines")
    with pytest.raises(ValueError, match="add up"):
        SimulatorSettings(rate_stall=0.6, rate_truncated=0.6)
    assert SimulatorSettings(fault_script="stall,truncated,stream_error_vllm").fault_script == ["stall", "truncated", "stream_error_vllm"]
    args = build_parser().parse_args(["--stream-style", "fragmented", "--rate-stream-error", "0.1", "--rate-stall", "0.2"])
    assert (args.stream_style, args.rate_stream_error, args.rate_stall, args.rate_truncated) == ("fragmented", 0.1, 0.2, 0.0)


# --- test images and files over HTTP ------------------------------------------


def fetch(url, follow=False, timeout=5.0):
    """(status, headers, body, redirects followed) of a plain GET, no auth."""
    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.get(url, allow_redirects=follow, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
                return response.status, response.headers, await response.read(), len(response.history)

    return asyncio.run(go())


def raw_get(sim, path):
    """(status, raw response) for a request line sent exactly as given: no client normalizes '..' away."""
    parts = urlsplit(sim.root_url)

    async def go():
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
        writer.close()
        return data

    data = asyncio.run(go())
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.parametrize(
    "size, extension, pillow_format, mime",
    [((64, 48), "png", "PNG", "image/png"), ((300, 600), "jpg", "JPEG", "image/jpeg"),
     ((17, 17), "gif", "GIF", "image/gif"), ((1000, 10), "webp", "WEBP", "image/webp")],
)
def test_generated_images_have_the_asked_size_format_and_content_type(simulator, size, extension, pillow_format, mime):
    status, headers, body, _ = fetch(simulator.image_url(*size, extension))
    assert status == 200 and headers["Content-Type"] == mime
    image = Image.open(io.BytesIO(body))
    assert image.format == pillow_format and image.size == size
    assert fetch(simulator.image_url(*size, extension))[2] == body  # deterministic
    assert simulator.stats()["requests"] == 0 and simulator.stats()["by_status"] == {}  # not API traffic


def test_the_simulator_captions_its_own_generated_image(simulator):
    status, _, text = post(simulator, chat_body(simulator.image_url(64, 48)))
    caption = json.loads(text)["choices"][0]["message"]["content"]
    assert status == 200 and f"64×48 landscape image, mostly {generated_colour(64, 48)}" in caption
    assert len({generated_colour(w, h) for w in range(1, 8) for h in range(1, 8)}) > 6  # sizes tell images apart


@pytest.mark.parametrize(
    "name, status",
    [("0x10.png", 400), ("10000x5001.png", 400), ("7072x7072.jpg", 400), ("20000x10.webp", 400),
     ("10x10.bmp", 404), ("cat.png", 404), ("10x10", 404)],
)
def test_impossible_test_images_are_refused(simulator, name, status):
    assert fetch(f"{simulator.root_url}/_sim/images/{name}")[0] == status


def test_redirects_chain_before_the_image(simulator):
    url = simulator.image_url(20, 10, "png", redirect=3, v=7)
    hops = []
    while True:
        status, headers, body, _ = fetch(url)
        if status != 302:
            break
        hops.append(url := headers["Location"])
    assert status == 200 and Image.open(io.BytesIO(body)).size == (20, 10)
    assert hops == [simulator.image_url(20, 10, "png", redirect=2, v=7), simulator.image_url(20, 10, "png", redirect=1, v=7),
                    simulator.image_url(20, 10, "png", v=7)]
    assert fetch(simulator.image_url(20, 10, redirect=2), follow=True)[::3] == (200, 2)


def test_status_html_and_bad_parameters(simulator):
    assert fetch(simulator.image_url(8, 8, status=404))[0] == 404
    assert fetch(simulator.image_url(8, 8, status=503, redirect=1), follow=True)[0] == 503
    status, headers, body, _ = fetch(simulator.image_url(8, 8, "jpg", html=1))
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"<html>" in body
    for bad in ({"status": 99}, {"redirect": -1}, {"slow": "soon"}):
        assert fetch(simulator.image_url(8, 8, **bad))[0] == 400


def test_slow_images_take_their_time(simulator):
    started = time.monotonic()
    assert fetch(simulator.image_url(8, 8, slow=0.3))[0] == 200
    assert time.monotonic() - started >= 0.3
    with pytest.raises(asyncio.TimeoutError):
        fetch(simulator.image_url(8, 8, slow=2), timeout=0.1)


def test_files_come_from_image_dir_and_never_from_outside_it(simulator, tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    png = image_bytes((0, 255, 0), (5, 5))
    (folder / "cat.png").write_bytes(png)
    (folder / "sub" / "note.txt").write_text("hello")
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    (folder / "link.txt").symlink_to(tmp_path / "secret.txt")
    assert fetch(simulator.root_url + "/_sim/files/cat.png")[0] == 404  # no image_dir yet
    simulator.configure(image_dir=str(folder))
    status, headers, body, _ = fetch(simulator.root_url + "/_sim/files/cat.png")
    assert (status, headers["Content-Type"], body) == (200, "image/png", png)
    assert fetch(simulator.root_url + "/_sim/files/sub/note.txt")[2] == b"hello"
    assert fetch(simulator.root_url + "/_sim/files/cat.png?status=404")[0] == 404
    for path in ("/_sim/files/../secret.txt", "/_sim/files/%2E%2E/secret.txt", "/_sim/files/..%2Fsecret.txt",
                 "/_sim/files/sub/..%2F..%2Fsecret.txt", "/_sim/files/%2F" + str(tmp_path / "secret.txt").lstrip("/"),
                 "/_sim/files/link.txt", "/_sim/files/missing.png", "/_sim/files/sub"):
        status, raw = raw_get(simulator, path)
        assert status == 404 and b"TOP SECRET" not in raw, path
    with pytest.raises(ValueError, match="image_dir"):
        simulator.configure(image_dir=str(tmp_path / "nope"))
    assert simulator.stats()["requests"] == 0


# --- url_timeout and recorded requests ----------------------------------------


def test_url_timeout_is_openais_400_quoting_the_url_shortened(simulator):
    long_url = "http://127.0.0.1:9/photos/2024/holiday/beach-sunset-with-the-whole-family.jpg"
    simulator.configure(fault_script=["url_timeout"])
    status, _, text = post(simulator, chat_body(long_url))
    assert status == 400
    assert json.loads(text) == {"error": {"message": f"Timeout while downloading {long_url[:57]}....", "type": "invalid_request_error",
                                          "param": None, "code": "invalid_image_url"}}
    assert simulator.stats()["faults"] == {"url_timeout": 1}
    # A real slow download gives the same answer.
    simulator.configure(fault_script=[], fetch_timeout=0.2)
    slow = simulator.image_url(8, 8, slow=2)
    assert json.loads(post(simulator, chat_body(slow))[2])["error"]["message"] == f"Timeout while downloading {slow}."


def test_each_request_is_recorded_with_its_options_and_x_headers(simulator):
    body = chat_body(stream=True, stream_options={"include_usage": True}, temperature=0.2, n=1, seed=5)
    body["max_completion_tokens"] = body.pop("max_tokens")
    body["messages"][1]["content"][1]["image_url"]["detail"] = "low"
    sent = {"X-Trace-Id": "abc", "x-api-key": "sk-secret", "X-Stainless-Retry-Count": "0"}
    assert post(simulator, body, headers=sent)[0] == 200
    post(simulator, {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": BLUE_PNG}}]}]})
    recorded, bare = simulator.stats()["bodies"]
    assert recorded == {
        "model": "test-model", "max_tokens": None, "max_completion_tokens": 300, "text": PROMPT, "stream": True,
        "stream_options": {"include_usage": True}, "temperature": 0.2, "detail": "low", "system": SYSTEM, "extra": ["n", "seed"],
        "response_format": None, "headers": {"x-trace-id": "abc", "x-api-key": "***", "x-stainless-retry-count": "0"},
    }
    assert bare == {"model": "m", "max_tokens": None, "max_completion_tokens": None, "text": None, "stream": None, "stream_options": None,
                    "temperature": None, "detail": None, "system": None, "extra": [], "response_format": None, "headers": {}}
    assert "sk-" not in json.dumps(simulator.stats())


# --- rate limits --------------------------------------------------------------


def test_rpm_limit_admits_n_per_window_then_429_with_the_exact_wait(simulator):
    simulator.configure(rpm_limit=5, limit_window=1.0)
    answers = [post(simulator) for _ in range(6)]
    assert [status for status, _, _ in answers] == [200] * 5 + [429]
    assert [h["x-ratelimit-remaining-requests"] for _, h, _ in answers] == ["4", "3", "2", "1", "0", "0"]
    assert {h["x-ratelimit-limit-requests"] for _, h, _ in answers} == {"300"}  # 5 a second, stated per minute
    assert "x-ratelimit-limit-tokens" not in answers[0][1]  # the TPM limit is off
    _, headers, text = answers[-1]
    assert json.loads(text)["error"]["code"] == "rate_limit_exceeded" and json.loads(text)["error"]["type"] == "requests"
    wait = float(headers["retry-after"])
    assert re.fullmatch(r"\d+\.\d{3}", headers["retry-after"]) and 0 < wait <= 1.0
    assert headers["retry-after-ms"] == str(round(wait * 1000))
    assert re.fullmatch(r"\d+ms|1s", headers["x-ratelimit-reset-requests"])
    stats = simulator.stats()
    assert stats["rate_limited"] == 1 and stats["by_status"] == {"200": 5, "429": 1} and stats["faults"] == {}
    time.sleep(wait)
    assert post(simulator)[0] == 200
    assert simulator.stats()["images"][image_key(BLUE_PNG)] == {"requests": 6, "ok": 6}  # the 429 never reached the model


def test_a_minute_window_advises_up_to_a_minute_and_reset_starts_over(simulator):
    simulator.configure(rpm_limit=1)
    assert post(simulator)[0] == 200
    status, headers, _ = post(simulator)
    assert status == 429 and 59 < float(headers["retry-after"]) <= 60
    assert re.fullmatch(r"59\.\d+s|1m0s", headers["x-ratelimit-reset-requests"])
    simulator.reset()
    assert post(simulator)[0] == 200


def test_tpm_limit_counts_prompt_and_max_tokens_up_front(simulator):
    # 64x48 image: 5 tokens; system + prompt text: 14 tokens; so 19 + max_tokens per request.
    simulator.configure(tpm_limit=700, limit_window=1.0)
    answers = [post(simulator, chat_body(max_tokens=300)) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 429]
    assert [h["x-ratelimit-remaining-tokens"] for _, h, _ in answers] == ["381", "62", "62"]
    assert json.loads(answers[2][2])["error"]["type"] == "tokens" and float(answers[2][1]["retry-after"]) <= 1.0
    small = chat_body()
    del small["max_tokens"]
    assert post(simulator, {**small, "max_completion_tokens": 43})[0] == 200  # 62 tokens: fits exactly
    status, headers, text = post(simulator, chat_body(max_tokens=1000))  # can never fit: no advice to wait
    assert status == 429 and "Request too large" in json.loads(text)["error"]["message"] and "retry-after" not in headers
    assert simulator.stats()["rate_limited"] == 2


def test_anthropic_and_no_limit_headers(simulator):
    simulator.configure(rpm_limit=2, tpm_limit=10_000, limit_headers="anthropic")
    before = datetime.now(timezone.utc)
    _, headers, _ = post(simulator)
    assert (headers["anthropic-ratelimit-requests-limit"], headers["anthropic-ratelimit-requests-remaining"]) == ("2", "1")
    assert (headers["anthropic-ratelimit-tokens-limit"], headers["anthropic-ratelimit-tokens-remaining"]) == ("10000", str(10_000 - 319))
    for kind in ("requests", "tokens"):
        reset = headers[f"anthropic-ratelimit-{kind}-reset"]
        assert reset.endswith("Z") and 59 < (datetime.fromisoformat(reset) - before).total_seconds() <= 61
    assert not [name for name in headers if name.lower().startswith("x-ratelimit")]
    simulator.configure(limit_headers="none")
    post(simulator)
    status, headers, _ = post(simulator)
    assert status == 429 and "retry-after" in headers and not [name for name in headers if "ratelimit" in name.lower()]


@pytest.mark.parametrize(
    "seconds, text",
    [(0, "0s"), (-1, "0s"), (0.0001, "1ms"), (0.012, "12ms"), (0.5, "500ms"), (0.9999, "1s"), (1, "1s"), (1.5, "1.5s"),
     (59.013, "59.013s"), (60, "1m0s"), (61.25, "1m1.25s"), (360, "6m0s"), (3600, "1h0m0s"), (3723.5, "1h2m3.5s")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_sliding_window_waits_are_exact():
    window = SlidingWindow()
    rpm = Limits(rpm=2, tpm=0, window=10)
    assert [window.admit(1, rpm, now=t).admitted for t in (0, 1)] == [True, True]
    refused = window.admit(1, rpm, now=2.5)
    assert (refused.admitted, refused.wait, refused.limit) == (False, 7.5, "requests")
    # The limit is stated per minute, as providers do: 2 per 10 s is 12 a minute.
    assert refused.headers == {"x-ratelimit-limit-requests": "12", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "7.5s"}
    assert window.admit(1, rpm, now=10).admitted  # the first one left the window at exactly t=10
    window.clear()
    tpm = Limits(rpm=0, tpm=100, window=10)
    assert window.admit(60, tpm, now=0).admitted and window.admit(30, tpm, now=1).admitted
    assert window.admit(50, tpm, now=2).wait == 8  # the 60 must leave
    assert window.admit(10, tpm, now=2).admitted  # 100 exactly
    assert window.admit(101, tpm, now=3).wait == math.inf
    assert window.admit(85, tpm, now=4).wait == 7  # the 60 and the 30 must leave, not the 10


@pytest.mark.parametrize("knobs", [{"rpm_limit": -1}, {"tpm_limit": 1.5}, {"limit_window": 0}, {"limit_headers": "x"}, {"fetch_timeout": 0}])
def test_bad_limit_knobs_are_refused(knobs):
    with pytest.raises(ValueError):
        SimulatorSettings(**knobs)


def test_limit_and_image_flags(tmp_path):
    args = build_parser().parse_args(["--rpm-limit", "5", "--tpm-limit", "9000", "--limit-window", "1", "--limit-headers", "anthropic",
                                      "--image-dir", str(tmp_path), "--fetch-timeout", "2", "--fault-script", "url_timeout"])
    assert (args.rpm_limit, args.tpm_limit, args.limit_window, args.limit_headers, args.image_dir, args.fetch_timeout) == (
        5, 9000, 1.0, "anthropic", str(tmp_path), 2.0)


def test_header_decode_captions_from_the_size_alone_and_still_refuses_non_images(simulator):
    jpeg = image_bytes((220, 20, 20), (300, 600), "JPEG")
    truncated = jpeg[: len(jpeg) // 2]  # the header is intact, the pixels are not
    assert post(simulator, chat_body(data_url(truncated, "image/jpeg")))[0] == 400  # full decode: a provider refuses it
    simulator.configure(decode="header")
    status, _, text = post(simulator, chat_body(data_url(truncated, "image/jpeg")))
    assert status == 200, text
    answer = json.loads(text)
    assert answer["choices"][0]["message"]["content"] == "A 300×600 portrait image."
    assert answer["usage"]["prompt_tokens"] == math.ceil(300 * 600 / 750) + math.ceil((len(SYSTEM) + len(PROMPT)) / 4)
    assert post(simulator, chat_body(data_url(b"\x89PNG\r\n\x1a\n this is not a png")))[0] == 400
    # A header longer than the slice decoded first (a big ICC profile before the size) is read in full.
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (0, 0, 255)).save(buffer, "JPEG", icc_profile=os.urandom(100_000))
    answer = json.loads(post(simulator, chat_body(data_url(buffer.getvalue(), "image/jpeg")))[2])
    assert answer["choices"][0]["message"]["content"] == "A 64×48 landscape image."
    assert build_parser().parse_args(["--decode", "header"]).decode == "header"
    with pytest.raises(ValueError):
        SimulatorSettings(decode="pixels")
