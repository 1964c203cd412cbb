"""The API key: a value that never shows itself, and masking of it (and of any long piece of it) in text.

A provider or proxy may echo the Authorization header in an error page; whatever
is kept of that text (a row's `error`, a log line, the run record) is masked
first and cut after, so no 12-character piece of the key survives anywhere.
"""

from __future__ import annotations

import re

# Shorter "keys" (a placeholder like "x" or "test" for a local server) are not masked:
# replacing every "test" in every path and message would make logs unreadable.
MIN_SECRET_LENGTH = 8
# The longest piece of a key that may survive in a text; any longer run is masked.
FRAGMENT = 12
MASK = "***"


class Secret:
    """A string that never shows itself: repr, str and f-strings print stars."""

    __slots__ = ("_value", "_pattern")

    def __init__(self, value: str):
        self._value = value
        self._pattern = _pattern(value)

    def reveal(self) -> str:
        return self._value

    def mask(self, text: str) -> str:
        """`text` with the key, and every piece of it of FRAGMENT or more characters, replaced by ***."""
        return text if self._pattern is None else self._pattern.sub(MASK, text)

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def _pattern(key: str) -> re.Pattern[str] | None:
    if len(key) < MIN_SECRET_LENGTH:
        return None
    if len(key) <= FRAGMENT:
        return re.compile(re.escape(key))
    # The whole key first, then any FRAGMENT-long window of it (a text cut mid-key, or a key split by a proxy).
    windows = dict.fromkeys(key[i : i + FRAGMENT] for i in range(len(key) - FRAGMENT + 1))
    return re.compile("|".join(map(re.escape, [key, *windows])))


# A value that looks like a key, not like the name of an environment variable.
_KEY_LIKE = re.compile(r"^(sk|pk|rk|gsk|xai|key)[-_]|^AIza|[^A-Za-z0-9_]|^(?=.*[a-z])(?=.*[A-Z])(?=.*\d).{24,}$")


def looks_like_a_key(value: str) -> bool:
    """For --api-key-env: a variable name is letters, digits and underscores; a pasted key usually is not."""
    return bool(_KEY_LIKE.search(value))
