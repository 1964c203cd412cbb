"""The chat-completions request body, in exactly the provider's documented shape."""

from __future__ import annotations

import json
from typing import Any

from .config import JobConfig


def build_chat_request(config: JobConfig, prompt: str, image_url: str) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if config.system:
        messages.append({"role": "system", "content": config.system})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": image_url}},
            ],
        }
    )
    body: dict[str, Any] = {
        "model": config.model,
        "messages": messages,
        "max_tokens": config.max_tokens,
        "stream": False,
    }
    if config.temperature is not None:
        body["temperature"] = config.temperature
    return body


def encode_body(body: dict[str, Any]) -> bytes:
    """Encoded once per row and re-sent as-is on every retry."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
