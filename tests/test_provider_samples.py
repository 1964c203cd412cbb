"""What real servers send (tests/fixtures/provider-samples, sources in its INDEX.json), through our parsers."""

import json
from pathlib import Path

import pytest

from pipeline.errors import BadRequestError, EmptyAnswerError, RefusedError, ServerError
from pipeline.response import parse_completion, parse_error_body
from pipeline.headers import retry_delay_from_body
from pipeline.sse import CompletionAssembler, SSEParser
from pipeline.usage import billed_usage

SAMPLES = Path(__file__).parent / "fixtures" / "provider-samples"


def body(name):
    return (SAMPLES / name).read_bytes()


def stream(name):
    parser, assembler = SSEParser(), CompletionAssembler()
    raw = body(name)
    for i in range(0, len(raw), 7):  # split anywhere, as a network does
        for event in parser.feed(raw[i : i + 7]):
            assembler.add(event.data, event.event)
            if assembler.done:
                return assembler.finish()
    parser.close()
    return assembler.finish()


def test_every_sample_has_its_source():
    index = json.loads(body("INDEX.json"))
    names = {p.name for p in SAMPLES.iterdir()} - {"INDEX.json", "README.md"}
    assert names == set(index)


@pytest.mark.parametrize("name, caption", [
    ("openai_nonstream.json", "Hello! How can I assist you today?"),
    ("openai_cached.json", "A cat."),
    ("anthropic_compat.json", "A cat on a sofa."),
    ("openrouter_nonstream.json", "Hello! How can I assist you today?"),
    ("vllm_nonstream.json", "Okay, let's break down what Deep Learning is. It's a fascinating"),
    ("ollama_nonstream.json", "I am Qwen."),
    ("llamacpp_nonstream.json", "Ich bin Qwen."),
    ("llamacpp_reasoning.json", "Hello! How can I assist you today?"),  # reasoning_content kept out
    ("gemini_nonstream.json", "The Social Network"),
    ("vllm_think_inline.json", "tokenkaki-vllm-smoke-ok"),  # the <think> block kept out
])
def test_plain_answers_give_the_whole_caption_and_nothing_else(name, caption):
    assert parse_completion(body(name)).caption == caption


@pytest.mark.parametrize("name, caption", [
    ("openai_stream.sse", None),
    ("openrouter_stream.sse", "Bonjour"),
    ("vllm_stream.sse", None),
    ("llamacpp_stream.sse", "Hello! How can I help?"),
    ("gemini_stream.sse", "No, 391 = 17 × 23."),
    ("mistral_stream.sse", "A cat on a sofa."),  # list-of-parts content joined, the thinking part left out
])
def test_streams_give_the_whole_caption(name, caption):
    completion = stream(name)
    assert completion.caption and completion.finish_reason
    if caption is not None:
        assert completion.caption == caption


def test_a_reasoning_model_out_of_tokens_is_an_empty_answer_that_says_what_to_do():
    with pytest.raises(EmptyAnswerError, match="--max-tokens") as info:
        parse_completion(body("openai_reasoning_exhausted.json"))
    assert "reasoning" in str(info.value).lower()
    assert info.value.usage["completion_tokens"] == 300  # billed: the row keeps its tokens


def test_a_caption_cut_at_max_tokens_is_what_the_provider_sent_and_says_so():
    completion = stream("ollama_stream.sse")
    assert (completion.caption, completion.finish_reason) == ("Hello", "length")


def test_a_refusal_keeps_its_words():
    with pytest.raises(RefusedError, match="I'm sorry, I cannot assist with that request."):
        parse_completion(body("openai_refusal.json"))


@pytest.mark.parametrize("name, cls, status", [
    ("llamacpp_stream_error_mid.sse", ServerError, 500),  # `error:` line, then [DONE]
    ("vllm_stream_error.sse", ServerError, 500),
    ("vllm_stream_error_v0_6.sse", BadRequestError, 400),
    ("openrouter_midstream_error.sse", ServerError, 500),
])
def test_errors_inside_streams_are_never_a_cut_off_caption(name, cls, status):
    with pytest.raises(cls) as info:
        stream(name)
    assert type(info.value) is cls and info.value.status == status


@pytest.mark.parametrize("name, message, code", [
    ("openrouter_402.json", "Insufficient credits", "402"),
    ("ollama_error_gif.json", "invalid image input", "invalid_request_error"),
    ("vllm_error_old.json", "does not exist", None),
    ("gemini_error_429.json", "Resource has been exhausted", "429"),
])
def test_error_bodies_give_a_readable_message(name, message, code):
    text, found = parse_error_body(body(name))
    assert message in text and not text.startswith(("[", "{", "'"))
    assert found == code


def test_gemini_429_carries_its_wait_in_the_body():
    assert retry_delay_from_body(json.loads(body("gemini_error_429.json"))) == 7.0


@pytest.mark.parametrize("name, completion, reasoning, cached", [
    ("gemini_nonstream.json", 671 - 18, 671 - 18 - 3, None),  # thinking only in total_tokens: billed as output
    ("openai_cached.json", 300, 0, 1920),
    ("openai_nonstream.json", 10, 0, 0),  # zero stays zero
    ("llamacpp_nonstream.json", 30, None, 0),
])
def test_tokens_as_billed(name, completion, reasoning, cached):
    billed = billed_usage(json.loads(body(name))["usage"])
    assert (billed.completion, billed.reasoning, billed.cached) == (completion, reasoning, cached)
    assert billed.prompt + billed.completion == billed.total


def test_gemini_stream_usage_counts_its_thinking():
    billed = billed_usage(stream("gemini_stream.sse").usage)
    assert billed.completion == 561 - 11
