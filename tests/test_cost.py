"""What a run costs: prices, the cost column, --max-cost, and the dry-run estimate."""

import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import load_config, run_job
from pipeline.cost import Budget, Price, load_price
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "price, prompt, completion, cached, expected",
    [
        (Price(3.0, 15.0), 1_000_000, 0, 0, 3.0),
        (Price(3.0, 15.0), 1000, 100, 0, 0.0045),
        (Price(3.0, 15.0, 0.3), 1000, 100, 400, (600 * 3 + 400 * 0.3 + 100 * 15) / 1e6),
        (Price(3.0, 15.0), 1000, 100, 400, 0.0045),  # no cached price: cached tokens cost full price
    ],
)
def test_price_arithmetic(price, prompt, completion, cached, expected):
    assert price.cost(prompt, completion, cached) == pytest.approx(expected)


def test_prices_file(tmp_path):
    assert load_price(ROOT / "pipeline" / "defaults" / "prices.toml", "claude-sonnet-4-20250514") == Price(3.0, 15.0, 0.3)
    assert load_price(ROOT / "pipeline" / "defaults" / "prices.toml", "no-such-model") is None
    assert load_price(tmp_path / "missing.toml", "m") is None
    bad = tmp_path / "bad.toml"
    bad.write_text('[models."m"]\ninput = "cheap"\noutput = 1\n')
    with pytest.raises(ConfigError, match="needs numbers"):
        load_price(bad, "m")


def test_budget_counts_what_is_in_flight():
    budget = Budget(1.0)
    assert budget.reserve(0.4) and budget.reserve(0.4)
    assert not budget.reserve(0.4)  # 0.8 in flight + 0.4 would pass the limit
    budget.settle(0.4, 0.1)
    assert budget.reserve(0.4)  # spent 0.1 + one still in flight 0.4 + this 0.4 = 0.9
    assert budget.spent == pytest.approx(0.1)


def _images(tmp_path, n):
    for i in range(n):
        Image.new("RGB", (300, 200), (i * 20 % 256, 100, 50)).save(tmp_path / f"{i}.png")
    manifest = tmp_path / "m.txt"
    manifest.write_text("".join(f"{i}.png\n" for i in range(n)))
    return manifest


def _config(simulator, manifest, tmp_path, **flags):
    return load_config(
        {"manifest": manifest, "output": tmp_path / "o.parquet", "base_url": simulator.base_url, **flags},
        environ={"ANYFAST_API_KEY": "k"},
    )


def test_each_row_costs_its_tokens_at_the_models_price(simulator, tmp_path):
    summary = run_job(_config(simulator, _images(tmp_path, 3), tmp_path))
    rows = pq.read_table(tmp_path / "o.parquet").to_pylist()
    for row in rows:
        assert row["cost_usd"] == pytest.approx((row["prompt_tokens"] * 3 + row["completion_tokens"] * 15) / 1e6)
    assert summary.cost_usd == pytest.approx(sum(r["cost_usd"] for r in rows), abs=1e-6)
    record = json.loads((tmp_path / "o.parquet.runs.jsonl").read_text().splitlines()[-1])
    assert record["cost_usd"] == pytest.approx(summary.cost_usd)


def test_a_model_without_a_price_has_no_cost_and_max_cost_refuses_it(simulator, tmp_path):
    manifest = _images(tmp_path, 1)
    run_job(_config(simulator, manifest, tmp_path, model="unpriced-model"))
    assert pq.read_table(tmp_path / "o.parquet").column("cost_usd").to_pylist() == [None]
    summary = run_job(_config(simulator, manifest, tmp_path, model="unpriced-model", redo=True))
    assert summary.cost_usd is None and "cost unknown (no price for unpriced-model in prices.toml)" in summary.line()
    with pytest.raises(ConfigError, match="needs a price for unpriced-model"):
        run_job(_config(simulator, manifest, tmp_path, model="unpriced-model", max_cost=1.0, redo=True))


def test_max_cost_stops_before_spending_more_and_a_rerun_continues(simulator, tmp_path):
    manifest = _images(tmp_path, 12)
    # Worst case per request: ~100 input tokens at $3/M + 300 output at $15/M = ~$0.0048; a row really
    # costs ~$0.0005. With two in flight, a $0.012 cap lets a few rows through, then stops short of it.
    summary = run_job(_config(simulator, manifest, tmp_path, max_cost=0.012, concurrency=2))
    assert summary.exit_code == 4 and summary.stopped_by == "max-cost"
    assert 0 < summary.ok < 12 and summary.cost_usd <= 0.012
    ending = summary.line()
    assert f"--max-cost $0.012: ${summary.cost_usd:.4f} spent; the next request could cost up to $0.00" in ending
    left = 12 - summary.rows
    assert f"{left} row{'s' * (left != 1)} left: raise --max-cost, then rerun the same command to continue" in ending
    summary = run_job(_config(simulator, manifest, tmp_path))
    assert summary.exit_code == 0 and summary.skipped > 0
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 12


def test_dry_run_estimate_is_within_10_percent_of_what_is_billed(simulator, tmp_path, capsys):
    sample = tmp_path / "sample"
    shutil.copytree(ROOT / "sample_data", sample)
    manifest = sample / "manifest.csv"
    estimate = run_job(_config(simulator, manifest, tmp_path, dry_run=True))
    printed = capsys.readouterr().out
    assert "estimated input tokens" in printed and "estimated cost: $" in printed
    assert simulator.stats()["requests"] == 0
    run_job(_config(simulator, manifest, tmp_path))
    billed = sum(r["prompt_tokens"] or 0 for r in pq.read_table(tmp_path / "o.parquet").to_pylist())
    assert billed > 0
    assert abs(estimate.estimated_input_tokens - billed) <= 0.10 * billed


def test_the_dry_run_cost_range_is_grounded_in_the_answers_this_output_already_has(simulator, tmp_path, capsys):
    manifest = _images(tmp_path, 8)
    guess = run_job(_config(simulator, manifest, tmp_path, dry_run=True))
    assert "a guess from --max-tokens" in capsys.readouterr().out and guess.exit_code == 0
    run_job(_config(simulator, manifest, tmp_path, limit=4))
    real = sum(r["cost_usd"] for r in pq.read_table(tmp_path / "o.parquet").to_pylist())
    run_job(_config(simulator, manifest, tmp_path, dry_run=True, redo=True))
    printed = capsys.readouterr().out
    assert "percentile of 4 earlier answers in o.parquet" in printed
    low, high = (float(v) for v in re.search(r"estimated cost: \$([\d.]+) to \$([\d.]+)", printed).groups())
    # Eight rows like the four billed: about twice their cost, and the range holds it (the input estimate is within 10 %).
    assert low <= 2 * real * 1.1 and high >= 2 * real * 0.9 and high < 3 * real


def test_max_cost_without_a_price_is_refused_before_the_lock_or_any_file(simulator, tmp_path):
    from pipeline import load_config, run_job
    from pipeline.errors import ConfigError

    manifest = tmp_path / "m.txt"
    manifest.write_text("a.png\n")
    out = tmp_path / "out" / "o.parquet"
    config = load_config({"manifest": manifest, "output": out, "base_url": simulator.base_url, "model": "no-price-model",
                          "max_cost": 1.0}, environ={"ANYFAST_API_KEY": "sk-cost-test-1234"})
    with pytest.raises(ConfigError, match="needs a price"):
        run_job(config)
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.parquet.runs.jsonl"]  # no lock, no journal left behind
