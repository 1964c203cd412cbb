"""--engine ray (issue 15): the same job on a real local Ray cluster, against the simulator."""

import asyncio
import os
import signal
import threading
import time

from pathlib import Path

import pytest

import helpers

ray = pytest.importorskip("ray")

SAME = ("id", "status", "caption", "error_type", "prompt_tokens", "completion_tokens", "image_sha256", "width", "height", "fingerprint", "title")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a cluster already running here
    yield
    ray.shutdown()


def _manifest(tmp_path, n=12):
    images = helpers.make_images(tmp_path / "img", n)
    (tmp_path / "img" / "broken.png").write_bytes(b"not an image")
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image,title\n" + "".join(f"r{i},img/{p.name},t{i}\n" for i, p in enumerate(images)) + "bad,img/broken.png,x\n")
    return manifest


def test_the_ray_engine_writes_the_rows_the_local_engine_writes(simulator, tmp_path):
    manifest = _manifest(tmp_path)
    local, local_rows = helpers.caption(manifest, tmp_path / "local.parquet", simulator.base_url, "sk-ray-0123456789")
    simulator.reset()
    summary, ray_rows = helpers.caption(manifest, tmp_path / "ray.parquet", simulator.base_url, "sk-ray-0123456789", engine="ray")
    assert (summary.ok, summary.error) == (local.ok, local.error) == (12, 1)
    assert simulator.stats()["requests"] == 12 == summary.requests  # the actors' attempts reach the summary
    assert {k: {c: r[c] for c in SAME} for k, r in ray_rows.items()} == {k: {c: r[c] for c in SAME} for k, r in local_rows.items()}
    assert ray_rows["bad"]["error_type"] == "not_an_image"

    simulator.reset()  # resume: the driver filters what is done before Ray sees a row
    summary, _ = helpers.caption(manifest, tmp_path / "ray.parquet", simulator.base_url, "sk-ray-0123456789", engine="ray")
    assert summary.skipped == 12 and simulator.stats()["requests"] == 0  # the broken file is tried again, and costs nothing


def test_provider_errors_are_rows_not_a_failed_dataset(simulator, tmp_path):
    manifest = _manifest(tmp_path, 6)
    simulator.configure(fault_script=["400"])  # every image's request is refused, for good (a 400 is not retried)
    summary, rows = helpers.caption(manifest, tmp_path / "o.parquet", simulator.base_url, "sk-ray-0123456789", engine="ray")
    assert len(rows) == 7 and (summary.ok, summary.error) == (0, 7)
    assert sorted(r["error_type"] for r in rows.values()) == ["bad_request"] * 6 + ["not_an_image"]
    assert all("HTTP 400" in r["error"] for r in rows.values() if r["error_type"] == "bad_request")


def test_caption_dataset_is_a_ray_transform_with_the_local_columns(simulator, tmp_path):
    from pipeline.config import load_config
    from pipeline.engine_ray import caption_dataset
    images = helpers.make_images(tmp_path / "img", 4)
    config = load_config({"manifest": str(tmp_path), "base_url": simulator.base_url}, environ={"ANYFAST_API_KEY": "sk-ray-0123456789"})
    ds = ray.data.from_items([{"id": f"x{i}", "image": str(p)} for i, p in enumerate(images)])
    rows = caption_dataset(ds, config).take_all()
    assert sorted(r["id"] for r in rows) == ["x0", "x1", "x2", "x3"] and all(r["status"] == "ok" and r["caption"] for r in rows)


def _rows(tmp_path, n):
    return helpers.image_manifest(tmp_path, n)


def test_the_cluster_stays_under_a_limit_it_learns_and_counts_the_429s(simulator, tmp_path):
    # 10 requests in any second, not told, two actors: one keeper learns the limit from the 429s for both,
    # as the local engine does. (That actors share the keeper's pace is shown below, with two actors' clocks.)
    simulator.configure(rpm_limit=10, limit_window=1.0, retry_after_form="seconds")
    manifest = _rows(tmp_path, 40)
    started = time.monotonic()
    summary, rows = helpers.caption(manifest, tmp_path / "o.parquet", simulator.base_url, "sk-ray-0123456789", engine="ray",
                                    concurrency=8, max_retries=8)
    assert summary.ok == 40 and len(rows) == 40
    stats = simulator.stats()
    assert stats["rate_limited"] <= 4, stats["by_status"]
    assert summary.rate_limited == stats["rate_limited"]  # the keeper's count reaches the summary
    assert time.monotonic() - started >= 3.0  # 40 requests, 10 in any second: the limit, not the actors, set the pace


@ray.remote
class _Actor:
    """Stands for a Captioner: its requests take permits through a SharedLimiter of the run's keeper."""

    def __init__(self, keeper):
        self.keeper = keeper

    async def send(self, n):
        from pipeline.ray_limits import SharedLimiter
        limiter, started = SharedLimiter(self.keeper, str(id(self))), time.monotonic()

        async def request():
            ticket = await limiter.acquire(0)
            limiter.on_response(200, {}, ticket=ticket)

        await asyncio.gather(*(request() for _ in range(n)))
        await limiter.close()
        return time.monotonic() - started


def test_actors_share_the_keepers_permits():
    from pipeline.ray_limits import LimitKeeper
    keeper = ray.remote(LimitKeeper).remote(600, None, None)  # 10 a second, a burst of one second's worth
    actors = [_Actor.remote(keeper) for _ in range(2)]
    ray.get([keeper.state.remote()] + [a.send.remote(0) for a in actors])  # all started: only the pace is timed
    took = ray.get([a.send.remote(30) for a in actors])
    # 60 permits at 9.9 a second, 10 of them at once: 5 s for the later actor (each with a keeper of its own: 2 s).
    assert max(took) >= 4.0, took


def test_max_cost_holds_for_the_cluster_and_the_rerun_pays_only_for_the_rest(simulator, tmp_path):
    # Two actors with one request in flight each, and a worst case near the real cost: actors that each
    # kept the cap would spend nearly twice it.
    manifest = _rows(tmp_path, 40)
    out = tmp_path / "o.parquet"
    flags = {"engine": "ray", "concurrency": 2, "max_tokens": 40}
    summary, rows = helpers.caption(manifest, out, simulator.base_url, "sk-ray-0123456789", max_cost=0.006, **flags)

    assert summary.stopped_by == "max-cost" and summary.exit_code == 4
    assert 0.003 < summary.cost_usd <= 0.006 and 0 < len(rows) < 40, (summary.cost_usd, len(rows))
    assert "--max-cost $0.006" in summary.budget
    assert simulator.stats()["requests"] == len(rows)  # every request paid for has its row
    summary, rows = helpers.caption(manifest, out, simulator.base_url, "sk-ray-0123456789", **flags)
    assert summary.exit_code == 0 and len(rows) == 40 and all(r["status"] == "ok" for r in rows.values())
    assert simulator.stats()["requests"] == 40  # nothing asked twice


def _map_workers():
    """This test process's Ray map actors (the cluster's processes are its descendants), from /proc."""
    parents, titles = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                titles[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue

    def ours(pid):
        while pid > 1:
            if pid == os.getpid():
                return True
            pid = parents.get(pid, 1)
        return False

    return [pid for pid, title in titles.items() if "MapWorker" in title and ours(pid)]


def test_an_actor_killed_mid_batch_loses_no_row(simulator, tmp_path):
    simulator.configure(latency=0.5)
    manifest = _rows(tmp_path, 24)
    done = {}

    def caption():
        try:
            done["result"] = helpers.caption(manifest, tmp_path / "o.parquet", simulator.base_url, "sk-ray-0123456789",
                                             engine="ray", concurrency=4)
        except BaseException as e:  # for the assertion below to show
            done["error"] = e

    run = threading.Thread(target=caption)
    run.start()
    deadline = time.monotonic() + 60
    while not (simulator.stats()["in_flight"] and _map_workers()):
        assert time.monotonic() < deadline, "no request ever went out"
        time.sleep(0.05)
    victim = _map_workers()[0]
    os.kill(victim, signal.SIGKILL)  # mid-batch: its answers not yet handed back are lost with it
    run.join(180)
    assert "result" in done, done
    summary, rows = done["result"]
    assert sorted(rows) == sorted(f"img/img{i:03d}.png" for i in range(24)) and summary.ok == 24  # Ray's retry did the dead actor's rows
    # Asked twice at most for what the dead actor had under way: 4 batches of 2 rows.
    assert 24 <= simulator.stats()["requests"] <= 24 + 8


def test_without_ray_installed_the_engine_says_what_to_install(tmp_path, monkeypatch):
    import sys
    from pipeline.engine_ray import run_on_ray
    from pipeline.errors import ConfigError
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"--engine ray needs Ray: pip install 'pipeline\[ray\]'"):
        run_on_ray([], None, None, None, None)


def test_tasks_on_ray_write_the_rows_the_local_engine_writes(simulator, tmp_path):
    import json

    from pipeline.outputs import Output

    manifest = _manifest(tmp_path, 4)
    (tmp_path / "tags.json").write_text(json.dumps({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}},
                                                    "required": ["tags"], "additionalProperties": False}))
    job = tmp_path / "job.toml"
    job.write_text('model = "gpt-4.1-mini"\n[tasks.short]\nprompt = "One sentence."\n[tasks.tags]\nprompt = "Tags."\nschema = "tags.json"\n')

    def rows(out):
        return {(r["id"], r["task"]): {c: r[c] for c in (*SAME, "task", "tags")} for b in Output(out).batches() for r in b.to_pylist()}

    local, _ = helpers.caption(manifest, tmp_path / "local.parquet", simulator.base_url, "sk-ray-0123456789", job=job)
    summary, _ = helpers.caption(manifest, tmp_path / "ray.parquet", simulator.base_url, "sk-ray-0123456789", job=job, engine="ray")
    assert (summary.ok, summary.error) == (local.ok, local.error) == (8, 2)
    assert rows(tmp_path / "ray.parquet") == rows(tmp_path / "local.parquet")
    simulator.reset()
    summary, _ = helpers.caption(manifest, tmp_path / "ray.parquet", simulator.base_url, "sk-ray-0123456789", job=job, engine="ray")
    assert summary.skipped == 8 and simulator.stats()["requests"] == 0
