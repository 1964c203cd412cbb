"""Through a real LiteLLM proxy (the most used OpenAI-compatible gateway), started here on loopback in front
of the simulator: answers exact, plain and streamed; the server's wait honoured though the gateway renames
it; a quota, a wrong key and no credits end the run at once."""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import caption, free_port, image_manifest
from pipeline.simulator import SimulatorSettings, serve_in_thread

MASTER_KEY = "sk-litellm-master-0123456789"
MODEL = "claude-sonnet-4-20250514"


@pytest.fixture(scope="module")
def upstream():
    with serve_in_thread(SimulatorSettings()) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    folder = tmp_path_factory.mktemp("litellm")
    config = folder / "config.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream.base_url}\n"
        "      api_key: sk-upstream-key\n"
        "litellm_settings:\n"
        "  num_retries: 0\n"  # the job retries; a gateway retrying too would double every wait
        "  telemetry: false\n"
        "general_settings:\n"
        f"  master_key: {MASTER_KEY}\n"
    )
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "NO_PROXY": "*"}
    litellm = Path(sys.executable).with_name("litellm")
    process = subprocess.Popen([litellm, "--config", config, "--host", "127.0.0.1", "--port", str(port)],
                               cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "log", "w"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(base + "/health/liveliness", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("LiteLLM's proxy did not start:\n" + (folder / "log").read_text()[-3000:])
        time.sleep(0.3)
    yield base + "/v1"
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture
def sim(upstream):
    upstream.configure(fault_script=[], retry_after=1.0)
    upstream.reset()
    return upstream


def run(base_url, tmp_path, n=3, key=MASTER_KEY, **flags):
    return caption(image_manifest(tmp_path, n), tmp_path / "out.parquet", base_url, key, concurrency=1, **flags)


@pytest.mark.parametrize("stream", [False, True])
def test_answers_through_the_gateway_are_exactly_the_providers(gateway, sim, tmp_path, stream):
    direct_summary, direct = run(sim.base_url, tmp_path / "direct", stream=stream)
    summary, rows = run(gateway, tmp_path / "gateway", stream=stream)
    assert summary.exit_code == 0 and summary.ok == 3
    for row_id, row in rows.items():
        assert row["caption"] == direct[row_id]["caption"]
        assert (row["prompt_tokens"], row["completion_tokens"]) == (direct[row_id]["prompt_tokens"], direct[row_id]["completion_tokens"])
        assert row["cost_usd"] == direct[row_id]["cost_usd"]


def test_the_servers_retry_after_is_honoured_though_the_gateway_renames_it(gateway, sim, tmp_path):
    sim.configure(fault_script=["429", "ok"], retry_after=1.5)
    started = time.monotonic()
    summary, rows = run(gateway, tmp_path, n=1)
    assert [r["attempts"] for r in rows.values()] == [2] and summary.ok == 1
    assert time.monotonic() - started >= 1.4  # llm_provider-retry-after, not our own shorter backoff


def test_an_error_inside_a_stream_through_the_gateway_is_retried_not_stored(gateway, sim, tmp_path):
    sim.configure(fault_script=["stream_error_vllm", "ok"], retry_after=0)
    summary, rows = run(gateway, tmp_path, n=1, stream=True)
    [row] = rows.values()
    assert (row["status"], row["attempts"]) == ("ok", 2) and row["caption"].endswith(".")


@pytest.mark.parametrize("script, key, error_type", [
    (["quota"], MASTER_KEY, "quota_exhausted"),  # the gateway flattens insufficient_quota to code "429"
    (["402"], MASTER_KEY, "payment_required"),
    (["401"], MASTER_KEY, "auth_failed"),  # the provider refuses the gateway's key
    ([], "sk-not-the-master-key-000", "auth_failed"),  # the gateway (no database) refuses ours, as a 400
])
def test_account_failures_through_the_gateway_end_the_run_at_once(gateway, sim, tmp_path, script, key, error_type):
    sim.configure(fault_script=script)
    summary, rows = run(gateway, tmp_path, n=5, key=key)
    assert summary.exit_code == 3
    assert summary.error_types == {error_type: 1} and summary.rows == 1  # one row, not the manifest
