"""What tokens cost: prices per model from a TOML file, and a spending budget for --max-cost."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .usage import BilledUsage


@dataclass(frozen=True, slots=True)
class Price:
    input: float  # USD per million prompt tokens
    output: float  # USD per million completion tokens
    cached_input: float | None = None

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        cached = min(cached_tokens or 0, prompt_tokens) if self.cached_input is not None else 0
        total = (prompt_tokens - cached) * self.input + cached * (self.cached_input or 0) + completion_tokens * self.output
        return total / 1_000_000


def row_cost(price: Price | None, billed: BilledUsage) -> float | None:
    """What one answer cost, or None when the model has no price."""
    if price is None:
        return None
    return price.cost(billed.prompt or 0, billed.completion or 0, billed.cached or 0)


def unpriced_note(model: str, prices: Path | None) -> str:
    """How a cost is shown when the model has no price: never as $0."""
    return f"unknown (no price for {model} in {prices.name if prices else 'prices.toml'})"


def show_cost(amount: float | None, unpriced: str | None = None) -> str:
    """$0.0123, or the unpriced note."""
    if unpriced is not None or amount is None:
        return unpriced or "unknown"
    return f"${amount:.4f}"


def worst_case_cost(price: Price | None, tokens: int, max_tokens: int) -> float:
    """The most a request estimated at `tokens` (input plus `max_tokens`) can cost: all of max_tokens answered."""
    return price.cost(tokens - max_tokens, max_tokens) if price else 0.0


def budget_note(cap: float, spent: float, in_flight: float, refused: float, max_tokens: int) -> str:
    """Why --max-cost stopped a run: the cap, what was spent (and is in flight), and what the next request could cost."""
    flight = f", ${in_flight:.4f} in flight" if in_flight > 1e-12 else ""
    return (f"--max-cost ${cap:g}: ${spent:.4f} spent{flight}; "
            f"the next request could cost up to ${refused:.4f} (input plus all of --max-tokens {max_tokens})")


def load_price(path: Path | None, model: str, *, batch: bool = False) -> Price | None:
    """The model's price from the prices file, or None (no file, or the model is not in it: costs stay unknown).

    `batch`: the price of a batch job: batch_input/batch_output/batch_cached_input, else the online price less
    batch_discount, else the online price itself (a batch never costs more than online)."""
    if path is None or not path.exists():
        return None
    try:
        with path.open("rb") as f:
            models = tomllib.load(f).get("models", {})
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read prices from {path}: {e}") from None
    entry = models.get(model)
    if entry is None:
        return None
    try:
        online = Price(float(entry["input"]), float(entry["output"]), float(entry["cached_input"]) if "cached_input" in entry else None)
        if not batch:
            return online
        if "batch_input" in entry:
            cached = entry.get("batch_cached_input")
            return Price(float(entry["batch_input"]), float(entry["batch_output"]), float(cached) if cached is not None else None)
        keep = 1.0 - float(entry.get("batch_discount", 0.0))
        if not 0.0 <= keep <= 1.0:
            raise ValueError
        return Price(online.input * keep, online.output * keep, online.cached_input * keep if online.cached_input is not None else None)
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{path}: [models.\"{model}\"] needs numbers for input and output (USD per million tokens), "
                          "and for batch_input and batch_output, or a batch_discount between 0 and 1") from None


class Budget:
    """--max-cost: spent so far plus the most the requests in flight can still cost must stay under the cap."""

    def __init__(self, limit: float | None):
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0

    def reserve(self, worst_case: float) -> bool:
        """Room for a request that may cost up to `worst_case`? If so, hold it until `settle`."""
        if self.limit is not None and self.spent + self.reserved + worst_case > self.limit:
            return False
        self.reserved += worst_case
        return True

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved -= reserved
        self.spent += actual
