"""client.py: each answer classified once, at the edge: status -> error class, hint, the server's word on retrying."""

import asyncio

import aiohttp
import pytest

from pipeline.client import ChatClient
from pipeline.errors import (
    AuthenticationError,
    BadRequestError,
    LongWaitError,
    NotFoundError,
    PaymentRequiredError,
    QuotaExhaustedError,
    RateLimitError,
    ServerError,
)
from pipeline.request import encode_chat_request
from pipeline.config import JobConfig
from pipeline.secret import Secret

PIXEL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def complete(simulator, **kwargs):
    async def go():
        async with aiohttp.ClientSession() as session:
            client = ChatClient(session, simulator.base_url, Secret("sk-client-test-0123456789"), 10)
            body = encode_chat_request(JobConfig(stream=kwargs.get("stream", False)), "Describe.", PIXEL)
            return await client.complete(body, **kwargs)

    return asyncio.run(go())


@pytest.mark.parametrize("fault, cls, hint", [
    ("400", BadRequestError, None),
    ("401", AuthenticationError, "--api-key-env"),
    ("402", PaymentRequiredError, "no credits"),
    ("403", AuthenticationError, "not allowed"),
    ("404", NotFoundError, "--base-url"),
    ("429", RateLimitError, None),
    ("quota", QuotaExhaustedError, "quota or credit"),
    ("500", ServerError, None),
    ("529", ServerError, None),
])
def test_status_to_error_class_and_hint(simulator, fault, cls, hint):
    simulator.configure(fault_script=[fault])
    with pytest.raises(cls) as info:
        complete(simulator)
    assert type(info.value) is cls and info.value.request_id and info.value.request_id.startswith("req-sim-")
    if hint:
        assert hint in str(info.value)


def test_a_retry_after_of_a_day_is_a_long_wait(simulator):
    simulator.configure(fault_script=["429"], retry_after=86400)
    with pytest.raises(LongWaitError, match="24.0 h"):
        complete(simulator)


def test_a_plain_and_a_streamed_answer_give_the_same_caption(simulator):
    plain = complete(simulator)
    simulator.reset()
    streamed = complete(simulator, stream=True)
    assert plain.caption == streamed.caption and streamed.time_to_first_token is not None
