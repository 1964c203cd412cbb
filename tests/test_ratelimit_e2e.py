"""The rate limiter against the simulator's sliding-window limit, over real HTTP (short windows keep it quick)."""

import pyarrow.parquet as pq
from PIL import Image

from pipeline import load_config, run_job
from pipeline.config import JobConfig
from pipeline.simulator.vision import count_usage


def job(simulator, tmp_path, n, **flags):
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 13 % 256, 90, 40)).save(tmp_path / f"{i}.png")
    manifest = tmp_path / "m.txt"
    manifest.write_text("".join(f"{i}.png\n" for i in range(n)))
    config = load_config(
        {"manifest": manifest, "output": tmp_path / "o.parquet", "base_url": simulator.base_url, **flags},
        environ={"ANYFAST_API_KEY": "k"},
    )
    summary = run_job(config)
    return summary, pq.read_table(config.output).to_pylist()


def test_a_given_rpm_is_held_without_429s(simulator, tmp_path):
    simulator.configure(rpm_limit=8, limit_window=4.0)  # 8 per sliding 4 s: 120 a minute
    summary, rows = job(simulator, tmp_path, 16, rpm=120, concurrency=4)
    assert summary.ok == 16 and all(r["attempts"] == 1 for r in rows)
    assert simulator.stats()["rate_limited"] == 0


def test_without_a_limit_the_pool_holds_on_429_instead_of_storming(simulator, tmp_path):
    simulator.configure(rpm_limit=8, limit_window=4.0, retry_after_form="seconds")
    summary, rows = job(simulator, tmp_path, 16, concurrency=4, max_retries=8)
    assert summary.ok == 16  # every row ends ok
    stats = simulator.stats()
    # Only the requests already in flight when the limit was hit (at most the pool) are refused per wave;
    # the pool then waits for Retry-After together instead of each worker retrying on its own.
    assert stats["rate_limited"] <= 2 * 4
    assert stats["requests"] == 16 + stats["rate_limited"]


def test_a_given_tpm_is_held_without_429s_though_answers_are_shorter_than_max_tokens(simulator, tmp_path):
    # The simulator, like OpenAI, counts prompt + max_tokens when a request starts. Our answers are far
    # shorter than max_tokens; refunding the difference would run past the limit.
    per_request = count_usage(16, 16, [JobConfig().prompt], "")["prompt_tokens"] + 300
    simulator.configure(tpm_limit=8 * per_request, limit_window=4.0)  # 8 requests' worth per 4 s
    summary, rows = job(simulator, tmp_path, 16, tpm=15 * 8 * per_request, max_tokens=300, concurrency=4)
    assert summary.ok == 16 and all(r["attempts"] == 1 for r in rows)
    assert simulator.stats()["rate_limited"] == 0


def test_an_unknown_per_second_limit_sees_no_storm_at_the_start(simulator, tmp_path):
    # 5 a second, enforced over 1 s; the job is not told and may have 16 in flight. Without the gentle
    # start its first 16 requests went at once and 12 came back 429.
    simulator.configure(rpm_limit=5, limit_window=1.0, retry_after_form="seconds")
    summary, rows = job(simulator, tmp_path, 30, concurrency=16, max_retries=8)
    assert summary.ok == 30
    assert simulator.stats()["rate_limited"] <= 1  # ≤ 2 % of requests would be 0.6; one stray is tolerated
