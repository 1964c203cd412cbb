"""Small things several test files need; conftest.py offers them as fixtures too."""

import pyarrow.parquet as pq
from PIL import Image

from pipeline import load_config, run_job


def make_images(folder, n, size=(40, 30)):
    """n distinct solid-colour PNGs in `folder`: img000.png, img001.png, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        Image.new("RGB", size, ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)).save(p)
        paths.append(p)
    return paths


def image_manifest(folder, n, size=(40, 30)):
    """A .txt manifest of n fresh images in folder/img/."""
    images = make_images(folder / "img", n, size)
    manifest = folder / "m.txt"
    manifest.write_text("".join(f"img/{p.name}\n" for p in images))
    return manifest


def caption(manifest, output, base_url, key, *, job=None, **flags):
    """The job in-process, as a notebook runs it: (summary, {id: row}) of the output it wrote."""
    config = load_config({"manifest": manifest, "output": output, "base_url": base_url, **flags},
                         environ={"ANYFAST_API_KEY": key}, job_file=job)
    summary = run_job(config)
    rows = pq.read_table(config.output).to_pylist() if config.output.exists() else []
    return summary, {r["id"]: r for r in rows}


def free_port():
    """A port nobody listens on now, on 127.0.0.1 (for servers the tests start)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_batch_with_the_openai_sdk(base_url, key, requests):
    """Run a batch requests file "elsewhere": uploaded and polled with the official openai SDK; the results file's bytes."""
    import time

    import openai

    client = openai.OpenAI(base_url=base_url, api_key=key)
    batch = client.batches.create(input_file_id=client.files.create(file=requests.open("rb"), purpose="batch").id,
                                  endpoint="/v1/chat/completions", completion_window="24h")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    return client.files.content(batch.output_file_id).content
