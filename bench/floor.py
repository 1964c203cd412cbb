"""The floor: the least a client can do for the same job, to measure the pipeline against.

Read each image, base64 it, build the same JSON body the pipeline sends, POST it
with N concurrent workers over one aiohttp session, parse the JSON answer, and
write a Parquet table at the end. Nothing else: no retries, no journal, no image
checks, no rate limiting, no progress. Deliberately independent of `pipeline`.

    python bench/floor.py MANIFEST.csv -o OUT.parquet --base-url URL [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import os
import sys

import aiohttp
import pyarrow as pa
import pyarrow.parquet as pq

DEFAULT_MODEL = "claude-sonnet-4-20250514"
DEFAULT_PROMPT = "Describe this image in one or two sentences for a dataset caption."


def build_body(data: bytes, *, model: str = DEFAULT_MODEL, prompt: str = DEFAULT_PROMPT, max_tokens: int = 300) -> bytes:
    """Byte for byte the body `pipeline` sends for a local image with default settings."""
    mime = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "stream": False}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def read_manifest(path: str) -> list[tuple[str, str]]:
    """(id, absolute path) per row of a CSV with an `image` column of paths relative to it."""
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8") as f:
        return [(row["image"], os.path.join(base, row["image"])) for row in csv.DictReader(f)]


async def caption_all(rows: list[tuple[str, str]], url: str, key: str, concurrency: int) -> list[dict]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    results: list[dict] = []
    todo = iter(rows)

    async def worker(session: aiohttp.ClientSession) -> None:
        for row_id, path in todo:  # one shared iterator: each row goes to exactly one worker
            with open(path, "rb") as f:
                body = build_body(f.read())
            async with session.post(url, data=body, headers=headers) as response:
                answer = json.loads(await response.read())
            if response.status == 200:
                usage = answer["usage"]
                results.append({"id": row_id, "status": "ok", "caption": answer["choices"][0]["message"]["content"],
                                "prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"]})
            else:
                results.append({"id": row_id, "status": "error", "caption": None, "prompt_tokens": None, "completion_tokens": None})

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    rows = read_manifest(args.manifest)
    results = asyncio.run(caption_all(rows, args.base_url.rstrip("/") + "/chat/completions", os.environ.get("ANYFAST_API_KEY", "bench"), args.concurrency))
    pq.write_table(pa.Table.from_pylist(results), args.output, compression="zstd")
    ok = sum(r["status"] == "ok" for r in results)
    print(f"floor: {len(results)} rows, {ok} ok -> {args.output}")
    return 0 if ok == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
