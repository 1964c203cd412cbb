"""What an answer was billed, from the provider's usage object, whatever its dialect.

Gemini's OpenAI layer reports thinking tokens only in `total_tokens` (completion 3,
total 671): whatever `total_tokens` holds beyond prompt + completion was billed as
output, so it is counted (and priced) as completion tokens, and as reasoning tokens
when the provider gave no breakdown. A reported 0 stays 0; only a missing value is null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class BilledUsage:
    prompt: int | None
    completion: int | None  # including output counted only in total_tokens
    total: int | None
    cached: int | None
    reasoning: int | None
    image: int | None


def billed_usage(usage: dict[str, Any]) -> BilledUsage:
    prompt, completion, total = (_int(usage.get(name)) for name in ("prompt_tokens", "completion_tokens", "total_tokens"))
    if prompt is None and _int(usage.get("input_tokens")) is not None:  # Anthropic's native Messages API (batches)
        prompt = sum(_int(usage.get(name)) or 0 for name in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))
        completion = _int(usage.get("output_tokens"))
        total = prompt + (completion or 0)
    hidden = 0
    if prompt is not None and total is not None and total > prompt + (completion or 0):
        hidden = total - prompt - (completion or 0)
        completion = (completion or 0) + hidden
    reasoning = _detail(usage, "completion_tokens_details", "reasoning_tokens")
    if hidden and not reasoning:
        reasoning = hidden
    cached = _detail(usage, "prompt_tokens_details", "cached_tokens")
    if cached is None:
        cached = _int(usage.get("cache_read_input_tokens"))  # Anthropic's native name, passed on by some gateways
    return BilledUsage(prompt, completion, total, cached, reasoning, _detail(usage, "prompt_tokens_details", "image_tokens"))


def _detail(usage: dict[str, Any], group: str, name: str) -> int | None:
    details = usage.get(group)
    return _int(details.get(name)) if isinstance(details, dict) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
