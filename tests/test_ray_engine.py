"""--engine ray (issue 15, first step): the same job on a real local Ray cluster, against the simulator."""

import pytest

import helpers

ray = pytest.importorskip("ray")

SAME = ("id", "status", "caption", "error_type", "prompt_tokens", "completion_tokens", "image_sha256", "width", "height", "fingerprint", "title")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
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



def test_without_ray_installed_the_engine_says_what_to_install(tmp_path, monkeypatch):
    import sys
    from pipeline.engine_ray import run_on_ray
    from pipeline.errors import ConfigError
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"--engine ray needs Ray: pip install 'pipeline\[ray\]'"):
        run_on_ray([], None, None, None)
