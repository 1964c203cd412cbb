"""What a request will count against a tokens-per-minute limit and a budget, before the provider says:
the provider's image formula on the size sent, the text, and the answer's ceiling."""

from __future__ import annotations

import math

from .config import JobConfig
from .records import PreparedImage


def provider_family(model: str) -> str:
    """Whose image-token formula applies: 'anthropic' for Claude models, else 'openai'."""
    return "anthropic" if "claude" in model.lower() else "openai"


def image_tokens(width: int, height: int, *, detail: str | None = None, provider: str = "openai") -> int:
    if width <= 0 or height <= 0:
        return 0
    if provider == "anthropic":
        # Claude first shrinks the image to a 1568 px long edge and ~1.15 MP (1568 tokens).
        scale = min(1.0, 1568 / max(width, height), math.sqrt(1568 * 750 / (width * height)))
        return math.ceil(int(width * scale) * int(height * scale) / 750)
    if detail == "low":
        return 85
    scale = min(1.0, 2048 / max(width, height))  # fit in 2048 x 2048, then shortest side to 768
    w, h = width * scale, height * scale
    scale = min(1.0, 768 / min(w, h))
    w, h = w * scale, h * scale
    return 170 * math.ceil(w / 512) * math.ceil(h / 512) + 85


def estimate_tokens(width: int, height: int, prompt_chars: int, max_tokens: int, *, detail: str | None, provider: str) -> int:
    """Tokens a provider will count against TPM for one request: image + prompt + the answer's ceiling."""
    return image_tokens(width, height, detail=detail, provider=provider) + math.ceil(prompt_chars / 4) + max_tokens


def estimate_input_tokens(config: JobConfig, image: PreparedImage, prompt: str) -> int:
    """Prompt tokens the provider will bill: its image formula on the size sent, plus the text."""
    # A URL the provider fetches has a size we never see: assume a full-size image.
    width, height = (image.width, image.height) if image.width else (config.max_image_side, config.max_image_side * 3 // 4)
    text = len(prompt) + len(config.system or "")
    return estimate_tokens(width, height, text, 0, detail=config.image_detail, provider=provider_family(config.model))


def estimate_request_tokens(config: JobConfig, image: PreparedImage, prompt: str) -> int:
    """Input plus the longest answer: what a provider counts against a tokens-per-minute limit when the request starts."""
    return estimate_input_tokens(config, image, prompt) + config.max_tokens
