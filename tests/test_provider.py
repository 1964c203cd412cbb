"""Every image, every OpenAI-compatible provider: preparation, remote images, streaming, request variants."""

import hashlib
import json
import random

import pytest
from PIL import Image

from helpers import caption
from pipeline.records import Completion, ManifestRow, PreparedImage
from pipeline.results import ok_row

KEY = "sk-provider-test"


def run(simulator, manifest, tmp_path, job=None, **flags):
    output = flags.pop("output", tmp_path / "out.parquet")
    return caption(manifest, output, flags.pop("base_url", simulator.base_url), KEY, job=job, **flags)


def noisy_jpeg(path, size):
    rng = random.Random(1)
    Image.frombytes("RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3))).save(path, quality=95)
    return path


def manifest_of(tmp_path, *images):
    m = tmp_path / "m.txt"
    m.write_text("".join(f"{p}\n" for p in images))
    return m


def test_big_photos_are_scaled_down_and_acceptable_ones_sent_unchanged(simulator, tmp_path):
    big = noisy_jpeg(tmp_path / "big.jpg", (3000, 2000))
    small = tmp_path / "small.png"
    Image.new("RGB", (300, 200), (10, 200, 30)).save(small)
    summary, rows = run(simulator, manifest_of(tmp_path, big.name, small.name), tmp_path)
    assert summary.ok == 2
    b, s = rows["big.jpg"], rows["small.png"]
    assert (b["width"], b["height"], b["original_width"], b["original_height"]) == (1568, 1045, 3000, 2000)
    assert "1568×1045" in b["caption"]  # what the provider saw
    assert (s["width"], s["height"]) == (300, 200)
    assert s["image_sha256"] == hashlib.sha256(small.read_bytes()).hexdigest()  # byte for byte


def test_max_image_side_and_bytes_are_options(simulator, tmp_path):
    big = noisy_jpeg(tmp_path / "big.jpg", (1200, 900))
    summary, rows = run(simulator, manifest_of(tmp_path, big.name), tmp_path, max_image_side=400, max_image_bytes=30_000)
    row = rows["big.jpg"]
    assert max(row["width"], row["height"]) <= 400
    assert json.loads(row["usage"])["prompt_tokens"] < 400 * 300 / 750 + 50


def test_a_decompression_bomb_is_an_error_row_not_a_request(simulator, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 12_000)).save(bomb)  # 144 megapixels of nothing, a few KB on disk
    summary, rows = run(simulator, manifest_of(tmp_path, bomb.name), tmp_path)
    assert rows["bomb.png"]["error_type"] == "image_too_large" and "megapixel" in rows["bomb.png"]["error"]
    assert simulator.stats()["requests"] == 0


@pytest.mark.parametrize("style", ["lf", "crlf", "cr", "keepalive", "multiline", "fragmented", "no_done"])
def test_streamed_answers_in_every_style(simulator, tmp_path, style):
    simulator.configure(stream_style=style)
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    summary, rows = run(simulator, manifest_of(tmp_path, image.name), tmp_path, stream=True)
    row = rows["a.png"]
    assert row["status"] == "ok", row["error"]
    assert "64×48 landscape" in row["caption"] and row["finish_reason"] == "stop"
    assert row["total_tokens"] > 0 and row["ttft_ms"] is not None and row["ttft_ms"] >= 0


@pytest.mark.parametrize("fault", ["truncated", "stream_error", "stream_error_vllm", "stall"])
def test_broken_streams_are_retried_never_stored_as_ok(simulator, tmp_path, fault):
    simulator.configure(fault_script=[fault, "ok"], hang_seconds=5)
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (20, 30, 200)).save(image)
    summary, rows = run(simulator, manifest_of(tmp_path, image.name), tmp_path, stream=True, stall_timeout=0.3)
    assert rows["a.png"]["status"] == "ok" and rows["a.png"]["attempts"] == 2


def test_a_stream_that_always_breaks_ends_as_an_error_row(simulator, tmp_path):
    simulator.configure(fault_script=["truncated"] * 3)
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (20, 30, 200)).save(image)
    summary, rows = run(simulator, manifest_of(tmp_path, image.name), tmp_path, stream=True, max_retries=2)
    assert rows["a.png"]["status"] == "error" and rows["a.png"]["error_type"] == "bad_response"
    assert "truncated" in rows["a.png"]["error"] and rows["a.png"]["caption"] is None


def test_usage_details_become_columns():
    usage = {
        "prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
        "prompt_tokens_details": {"cached_tokens": 64, "image_tokens": 85},
        "completion_tokens_details": {"reasoning_tokens": 12},
    }
    row = ok_row(ManifestRow(1, "a", "a.png", "/a.png"), PreparedImage("data:"), Completion("c", "stop", "m", "r", usage), attempts=1, latency_ms=1)
    assert (row["cached_tokens"], row["image_tokens"], row["reasoning_tokens"]) == (64, 85, 12)
    anthropic = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12, "cache_read_input_tokens": 7}
    row = ok_row(ManifestRow(1, "a", "a.png", "/a.png"), PreparedImage("data:"), Completion("c", "stop", "m", "r", anthropic), attempts=1, latency_ms=1)
    assert row["cached_tokens"] == 7 and row["reasoning_tokens"] is None


def _sim_root(simulator):
    return simulator.base_url[: -len("/v1")]


def test_remote_images_pass_through_by_default(simulator, tmp_path):
    url = f"{_sim_root(simulator)}/_sim/images/120x90.png"
    summary, rows = run(simulator, manifest_of(tmp_path, url), tmp_path)
    assert rows[url]["status"] == "ok" and "120×90" in rows[url]["caption"]
    assert rows[url]["width"] is None  # we never saw the image: the provider fetched it
    assert simulator.stats()["bodies"][0]["detail"] is None


def test_fetch_remote_downloads_prepares_and_sends_inline(simulator, tmp_path):
    url = f"{_sim_root(simulator)}/_sim/images/3000x1000.jpg?redirect=2"
    summary, rows = run(simulator, manifest_of(tmp_path, url), tmp_path, fetch_remote=True, allow_private_urls=True)
    row = rows[url]
    assert row["status"] == "ok", row["error"]
    assert (row["width"], row["height"], row["original_width"]) == (1568, 523, 3000)
    assert row["image_sha256"] and "1568×523" in row["caption"]


@pytest.mark.parametrize(
    "query, error_type, fragment",
    [("", "url_blocked", "loopback address"), ("?status=404", "remote_image_error", "HTTP 404"), ("?html=1", "remote_image_error", "is a web page")],
)
def test_fetch_remote_failures_are_error_rows_without_a_request(simulator, tmp_path, query, error_type, fragment):
    url = f"{_sim_root(simulator)}/_sim/images/40x40.png{query}"
    flags = {"fetch_remote": True, "allow_private_urls": bool(query)}
    summary, rows = run(simulator, manifest_of(tmp_path, url), tmp_path, **flags)
    assert rows[url]["error_type"] == error_type and fragment in rows[url]["error"]
    assert simulator.stats()["requests"] == 0


def test_a_provider_timeout_downloading_the_url_is_retried(simulator, tmp_path):
    simulator.configure(fault_script=["url_timeout", "ok"])
    url = f"{_sim_root(simulator)}/_sim/images/50x50.png"
    summary, rows = run(simulator, manifest_of(tmp_path, url), tmp_path)
    assert rows[url]["status"] == "ok" and rows[url]["attempts"] == 2


def test_request_variants_reach_the_provider(simulator, tmp_path):
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 48), (20, 30, 200)).save(image)
    job = tmp_path / "job.toml"
    job.write_text('[extra_body]\ntop_p = 0.9\n\n[extra_headers]\nX-Team = "vision"\n')
    run(simulator, manifest_of(tmp_path, image.name), tmp_path, job=job, model="o3-mini", image_detail="low", stream=True, max_tokens=50)
    body = simulator.stats()["bodies"][0]
    assert body["max_completion_tokens"] == 50 and body["max_tokens"] is None
    assert body["detail"] == "low" and body["extra"] == ["top_p"] and body["headers"]["x-team"] == "vision"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("url", ["data:image/png;base64,iVBORw0KGgo+/=", "https://example.com/a \"quoted\" path.png"])
def test_the_spliced_body_is_exactly_what_json_dumps_would_send(url):
    from pipeline.config import JobConfig
    from pipeline.request import build_chat_request, encode_chat_request

    config = JobConfig(system="Be brief.", extra_body={"top_p": 0.5})
    prompt = 'Describe "this" – image-slot-0 \\ ok'
    assert json.loads(encode_chat_request(config, prompt, url)) == build_chat_request(config, prompt, url)


def test_a_truncated_jpeg_is_caught_locally_and_costs_no_request(simulator, tmp_path):
    whole = noisy_jpeg(tmp_path / "whole.jpg", (200, 150)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    (tmp_path / "padded.jpg").write_bytes(whole + b"\0" * 4096)  # data after the end marker, as some phones write
    summary, rows = run(simulator, manifest_of(tmp_path, "cut.jpg", "padded.jpg"), tmp_path)
    assert rows["cut.jpg"]["error_type"] == "image_unreadable" and "truncated" in rows["cut.jpg"]["error"]
    assert rows["cut.jpg"]["attempts"] == 0
    assert rows["padded.jpg"]["status"] == "ok"
    assert simulator.stats()["requests"] == 1


def test_a_gif_is_converted_for_a_provider_that_refuses_gifs(simulator, tmp_path):
    simulator.configure(refuse_formats="gif")
    Image.new("P", (60, 40), 3).save(tmp_path / "a.gif")
    summary, rows = run(simulator, manifest_of(tmp_path, "a.gif"), tmp_path / "sent-as-is")
    assert rows["a.gif"]["error_type"] == "bad_request" and "invalid image input" in rows["a.gif"]["error"]
    summary, rows = run(simulator, manifest_of(tmp_path, "a.gif"), tmp_path, image_formats="jpeg,png,webp")
    assert rows["a.gif"]["status"] == "ok" and (rows["a.gif"]["width"], rows["a.gif"]["height"]) == (60, 40)


@pytest.mark.parametrize("base_url, model, gif", [
    ("http://localhost:11434/v1", "llava", False),  # Ollama
    ("https://generativelanguage.googleapis.com/v1beta/openai", "gemini-2.5-flash", False),
    ("https://openrouter.ai/api/v1", "google/gemini-2.5-pro", False),
    ("https://api.openai.com/v1", "gpt-4o", True),
    ("https://www.anyfast.ai/v1", "claude-sonnet-4-20250514", True),
])
def test_which_providers_take_gifs(base_url, model, gif):
    from pipeline.providers import accepted_image_formats

    assert ("image/gif" in accepted_image_formats("auto", base_url, model)) is gif


@pytest.mark.parametrize("stream", [False, True])
def test_connections_are_reused_streamed_or_not(simulator, images, caption, tmp_path, stream):
    summary, rows = caption(manifest_of(tmp_path, *(f"img/{p.name}" for p in images(40))), concurrency=4, stream=stream)
    assert summary.ok == 40
    assert simulator.stats()["connections"] <= 5  # 4 workers: a stream left before its end would cost one each
