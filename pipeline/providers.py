"""What a provider accepts, by its address and model name, where the OpenAI-compatible surface differs.

Ollama's /v1 takes only JPEG, PNG and WebP data URLs ("invalid image input" for a GIF); Gemini's
OpenAI layer takes no GIF either. Others take static GIFs too. `--image-formats` overrides the guess.
"""

from __future__ import annotations

from urllib.parse import urlsplit

ALL_FORMATS = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
NO_GIF = ALL_FORMATS - {"image/gif"}
_NAMES = {"jpeg": "image/jpeg", "jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}


def provider_of(base_url: str, model: str) -> str:
    """'ollama', 'gemini' or 'openai' (everything else speaks OpenAI's image rules)."""
    address = urlsplit(base_url)
    if address.port == 11434 or "ollama" in (address.hostname or ""):
        return "ollama"
    if "generativelanguage.googleapis.com" in (address.hostname or "") or model.lower().removeprefix("google/").startswith("gemini"):
        return "gemini"
    return "openai"


def accepted_image_formats(setting: str, base_url: str, model: str) -> frozenset[str]:
    """The MIME types to send as they are; anything else is converted. `setting`: "auto" or e.g. "jpeg,png,webp"."""
    if setting != "auto":
        return frozenset(_NAMES[name.strip().lower()] for name in setting.split(",") if name.strip())
    return NO_GIF if provider_of(base_url, model) in ("ollama", "gemini") else ALL_FORMATS


def check_formats(setting: str) -> str | None:
    """A message for a bad --image-formats value, or None."""
    if setting == "auto":
        return None
    names = [name.strip().lower() for name in setting.split(",") if name.strip()]
    unknown = [name for name in names if name not in _NAMES]
    if not names or unknown:
        return f"image-formats must be auto or a list of {', '.join(sorted(set(_NAMES) - {'jpg'}))}, got {setting!r}"
    if not {"image/jpeg", "image/png"} & {_NAMES[n] for n in names}:
        return "image-formats must include jpeg or png: converted images are sent as one of those"
    return None


# Who follows response_format {"type": "json_schema", ...} (constrained decoding or the provider's own structured
# outputs), from each provider's reference: OpenAI, vLLM, llama.cpp's server, Ollama, OpenRouter, Gemini's and
# Mistral's OpenAI layers do. Anthropic's OpenAI layer documents response_format as ignored, and a gateway in front
# of a Claude model (anyfast, LiteLLM, OpenRouter for older Claude models) may pass it on to be ignored: for
# Claude the schema goes into the prompt. --schema-mode overrides the guess.
def structured_mode(base_url: str, model: str) -> str:
    """'response_format' or 'prompt': where a --schema goes for this provider and model."""
    host = urlsplit(base_url).hostname or ""
    return "prompt" if "anthropic.com" in host or "claude" in model.lower() else "response_format"
