"""The official openai SDK as a judge of the simulator: it parses the answers, plain and streamed, and maps
the errors to its own exception classes, as it would a real provider's."""

import base64
from pathlib import Path

import openai
import pytest

SAMPLE = Path(__file__).resolve().parent.parent / "sample_data" / "chelsea.jpg"


@pytest.fixture
def client(simulator):
    return openai.OpenAI(base_url=simulator.base_url, api_key="sk-sdk-test", max_retries=0, timeout=10)


def messages():
    url = "data:image/jpeg;base64," + base64.b64encode(SAMPLE.read_bytes()).decode()
    return [{"role": "user", "content": [{"type": "text", "text": "Describe it."}, {"type": "image_url", "image_url": {"url": url}}]}]


def test_a_plain_answer_parses_as_a_chat_completion(client):
    answer = client.chat.completions.create(model="claude-sonnet-4-20250514", messages=messages(), max_tokens=100)
    assert answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.refusal is None and answer.system_fingerprint
    assert answer.usage.prompt_tokens > 0 and answer.usage.prompt_tokens_details.cached_tokens == 0
    assert answer.usage.completion_tokens_details.reasoning_tokens == 0


def test_a_stream_parses_chunk_by_chunk_with_usage_last(client):
    chunks = list(client.chat.completions.create(model="m", messages=messages(), stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.endswith(".") and all(c.usage is None for c in chunks[:-1]) and chunks[-1].usage.total_tokens > 0


@pytest.mark.parametrize("fault, cls", [
    ("429", openai.RateLimitError), ("quota", openai.RateLimitError), ("401", openai.AuthenticationError),
    ("403", openai.PermissionDeniedError), ("404", openai.NotFoundError), ("400", openai.BadRequestError),
    ("500", openai.InternalServerError), ("503", openai.InternalServerError), ("402", openai.APIStatusError),
])
def test_errors_map_to_the_sdks_classes(simulator, client, fault, cls):
    simulator.configure(fault_script=[fault])
    with pytest.raises(cls) as info:
        client.chat.completions.create(model="m", messages=messages())
    assert info.value.status_code == (429 if fault == "quota" else int(fault))
    assert info.value.message  # the SDK found the error object's message


def test_a_refusal_parses_as_the_sdks_refusal(simulator, client):
    simulator.configure(fault_script=["refusal"])
    answer = client.chat.completions.create(model="m", messages=messages())
    assert answer.choices[0].message.refusal and answer.choices[0].message.content is None


def test_an_in_stream_error_is_raised_by_the_sdk(simulator, client):
    simulator.configure(fault_script=["stream_error_vllm"])
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="m", messages=messages(), stream=True))
