"""What the simulator can play of real providers' answers beyond a plain caption (see ../shared/provider-samples).

Answer faults change a well-formed 200 (plain or streamed):
- empty: a reasoning model that spent max_tokens thinking (content "", finish_reason length, reasoning tokens);
- refusal: OpenAI's `message.refusal` with no content;
- parts: content as a list of parts, a `thinking` part first (Mistral's magistral);
- think: a `<think>...</think>` block inline before the caption (Qwen3 on vLLM without a reasoning parser);
- hidden_reasoning: thinking tokens only in total_tokens (Gemini's OpenAI layer).
Stream error faults, each followed by `data: [DONE]` as the servers send it, in the shape of:
- stream_error_llamacpp: llama.cpp's `error: {...}` line; stream_error_openrouter: OpenRouter's error chunk;
- stream_error_vllm: today's vLLM `{"error": {..., "code": 500}}`; stream_error_vllm_old: vLLM 0.4-0.10.
Status faults: gemini_429 (a JSON list with RetryInfo, no header), 402 (OpenRouter: no credits), echo_key (a
proxy page quoting the Authorization header), huge (a 12 MB answer with no Content-Length).
`header_style = "litellm"` renames the provider's headers as LiteLLM's proxy does (llm_provider-*).
"""

from __future__ import annotations

import copy
import math
from typing import Any

from aiohttp import web

ANSWER_FAULTS = ("empty", "refusal", "parts", "think", "hidden_reasoning")
DIALECT_STREAM_FAULTS = ("stream_error_llamacpp", "stream_error_openrouter", "stream_error_vllm_old")
HEADER_STYLES = ("plain", "litellm")
REFUSAL = "I'm sorry, I can't help with describing this image."
THINKING = "The user wants a caption. Let me look at the colours first."
GATEWAY_RENAMED = ("retry-after", "retry-after-ms", "x-ratelimit-", "anthropic-ratelimit-")


def play_answer(fault: str, completion: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    completion = copy.deepcopy(completion)
    message = completion["choices"][0]["message"]
    usage = completion["usage"]
    caption = message["content"]
    if fault == "empty":
        spent = max_tokens or 300
        message["content"] = ""
        completion["choices"][0]["finish_reason"] = "length"
        usage.update(completion_tokens=spent, total_tokens=usage["prompt_tokens"] + spent)
        usage["completion_tokens_details"] = {**usage.get("completion_tokens_details", {}), "reasoning_tokens": spent}
    elif fault == "refusal":
        message["content"] = None
        message["refusal"] = REFUSAL
    elif fault == "parts":
        message["content"] = [{"type": "thinking", "thinking": [{"type": "text", "text": THINKING}]},
                              {"type": "text", "text": caption}]
    elif fault == "think":
        message["content"] = f"<think>\n{THINKING}\n</think>\n\n{caption}"
    elif fault == "hidden_reasoning":
        hidden = 5 * usage["completion_tokens"]
        usage["total_tokens"] += hidden
        usage.pop("completion_tokens_details", None)
    return completion


def stream_error_frame(fault: str) -> tuple[str, dict[str, Any]]:
    """(SSE field, payload) of an in-stream error in the named server's shape."""
    if fault == "stream_error_llamacpp":
        return "error", {"code": 500, "message": "Failed to decode the batch", "type": "server_error"}
    if fault == "stream_error_openrouter":
        return "data", {"id": "gen-sim", "object": "chat.completion.chunk", "model": "sim",
                        "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
                        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}
    if fault == "stream_error_vllm_old":
        return "data", {"error": {"object": "error", "message": "This model's maximum context length is 4096 tokens.",
                                  "type": "BadRequestError", "param": None, "code": 400}}
    return "data", {"error": {"message": "CUDA out of memory (simulated)", "type": "InternalServerError", "param": None, "code": 500}}


def gemini_429_body(retry_after: float) -> list[dict[str, Any]]:
    return [{"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED",
                       "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{math.ceil(retry_after)}s"}]}}]


def content_deltas(message: dict[str, Any], step_parts: int = 4) -> list[dict[str, Any]]:
    """The deltas a provider streams for a message: text pieces, list parts one by one, or a refusal."""
    if message.get("refusal"):
        return [{"role": "assistant", "content": None, "refusal": message["refusal"]}]
    content = message["content"]
    if isinstance(content, list):
        return [{"content": [part]} | ({"role": "assistant"} if i == 0 else {}) for i, part in enumerate(content)]
    if not content:
        return [{"role": "assistant", "content": ""}]
    step = max(1, math.ceil(len(content) / step_parts))
    return [{"content": content[i : i + step]} | ({"role": "assistant"} if i == 0 else {}) for i in range(0, len(content), step)]


def rename_like_a_gateway(request: web.BaseRequest, response: web.StreamResponse, style: str) -> None:
    """LiteLLM's proxy passes the provider's rate-limit and retry headers on as llm_provider-<name> only."""
    if style != "litellm":
        return
    for name in [n for n in response.headers if n.lower().startswith(GATEWAY_RENAMED)]:
        response.headers["llm_provider-" + name.lower()] = response.headers.pop(name)


async def play_fault_dialect(fault: str, request: web.BaseRequest, headers: dict[str, str], retry_after: float) -> web.StreamResponse | None:
    """The fault entries that play a provider's or proxy's own way of failing; None for any other fault."""
    if fault == "echo_key":  # a proxy's error page that quotes the request, Authorization included
        page = ("<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1><p>upstream failed; "
                f"request was: POST /v1/chat/completions Authorization: {request.headers.get('Authorization', '')} "
                "Content-Type: application/json</p></body></html>")
        return web.Response(text=page, status=502, content_type="text/html", headers=headers)
    if fault == "huge":  # a broken endpoint that never stops talking: 12 MB, chunked, no Content-Length
        response = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"choices": [{"message": {"content": "')
        for _ in range(12):
            await response.write(b"x" * (1024 * 1024))
        await response.write(b'"}}]}')
        await response.write_eof()
        return response
    if fault == "gemini_429":  # a JSON list, the wait only in the body's RetryInfo
        return web.json_response(gemini_429_body(retry_after), status=429, headers=headers)
    return None
