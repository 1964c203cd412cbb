"""The review page: escaping and size without a browser, behaviour in headless Chromium over the DevTools protocol."""

import asyncio
import contextlib
import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import make_images
from pipeline import load_config, run_job
from pipeline.report import main, thumbnail_jpeg, write_report
from pipeline.results import OUTPUT_SCHEMA

ARTIFACTS = Path(__file__).parents[1] / "artifacts"
INJECTION = "</script><img src=x onerror=alert(1)>"
BLOB = re.compile(r'<script type="application/json" id="report-data">(.*?)</script>', re.S)


def synthetic_output(path, n, *, errors_every=20, cost=False, caption=lambda i: f"A photo number {i} of a red bicycle."):
    """An output table of n rows without running the job (and without image files)."""
    error = [i % errors_every == 0 for i in range(n)]
    columns = {name: pa.nulls(n, field.type) for name, field in zip(OUTPUT_SCHEMA.names, OUTPUT_SCHEMA)}
    columns.update(
        id=pa.array([f"row-{i:06d}" for i in range(n)]),
        image=pa.array([f"photos/{i:06d}.jpg" for i in range(n)]),
        status=pa.array(["error" if e else "ok" for e in error]),
        caption=pa.array([None if e else caption(i) for i, e in enumerate(error)]),
        prompt_tokens=pa.array([None if e else 1500 + i % 50 for i, e in enumerate(error)], pa.int64()),
        completion_tokens=pa.array([None if e else 40 + i % 30 for i, e in enumerate(error)], pa.int64()),
        total_tokens=pa.array([None if e else 1540 + i % 80 for i, e in enumerate(error)], pa.int64()),
        attempts=pa.array([1 + i % 3 for i in range(n)], pa.int32()),
        latency_ms=pa.array([400.0 + (i * 7919) % 2600 for i in range(n)]),
        error_type=pa.array([("timeout" if i % 3 else "rate_limited") if e else None for i, e in enumerate(error)]),
        error=pa.array([f"gave up after {1 + i % 3} attempts" if e else None for i, e in enumerate(error)]),
    )
    if cost:
        columns["cost_usd"] = pa.array([0.0051 * (not e) for e in error])
    pq.write_table(pa.table(columns), path)
    return path


def blob(page):
    found = BLOB.findall(page)
    assert len(found) == 1
    return json.loads(found[0])


# --- without a browser ---------------------------------------------------------------


def test_a_caption_cannot_break_out_of_the_page(tmp_path):
    out = synthetic_output(tmp_path / "out.parquet", 3, caption=lambda i: INJECTION + f" <!--<script> & {i}")
    write_report(out, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert page.count("</script>") == 2  # the data blob's and the page script's own
    data_text = BLOB.search(page).group(1)
    assert "<" not in data_text and ">" not in data_text
    captions = [r[3] for r in blob(page)["rows"]]
    assert captions[1] == INJECTION + " <!--<script> & 1"  # the same text once parsed back
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page


def test_summary_counts_tokens_latency_and_error_types(tmp_path):
    out = synthetic_output(tmp_path / "out.parquet", 200)
    stats = write_report(out, tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert (stats.rows, stats.ok, stats.error) == (200, 190, 10)
    total = sum(1540 + i % 80 for i in range(200) if i % 20)
    assert f"{total:,}" in page
    assert "p50 <b>" in page and '<svg class="hist"' in page
    assert 'data-error-type="timeout"' in page and 'data-error-type="rate_limited"' in page
    # Billed tokens with no cost_usd values: the cost is unknown, not $0, and there is no cost column.
    assert '<div class="value">unknown</div><div class="detail">(no price for this model in prices.toml)</div>' in page
    assert "<th class=\"num\">cost</th>" not in page and blob(page)["has_cost"] is False
    assert "200 images were not found on this machine" in page  # photos/… does not exist here


def test_cost_is_shown_when_the_column_exists(tmp_path):
    out = synthetic_output(tmp_path / "out.parquet", 100, cost=True)
    page = (write_report(out, tmp_path / "r.html").html_path).read_text()
    assert "$0.48" in page and "<th class=\"num\">cost</th>" in page  # 95 ok rows * 0.0051
    assert blob(page)["has_cost"] is True


def test_thumbnails_stay_under_the_byte_cap_and_keep_their_shape(tmp_path):
    noisy = tmp_path / "noise.png"
    Image.frombytes("RGB", (1600, 1200), os.urandom(1600 * 1200 * 3)).save(noisy)  # noise: the worst case for JPEG
    jpeg = thumbnail_jpeg(noisy, 96, 6000)
    assert jpeg is not None and len(jpeg) <= 6000
    with Image.open(io.BytesIO(jpeg)) as im:
        assert max(im.size) <= 96 and im.size[0] > im.size[1]


def test_the_thumbnail_cap_keeps_error_rows_and_says_so(tmp_path):
    make_images(tmp_path / "photos", 1)
    n = 40
    out = synthetic_output(tmp_path / "out.parquet", n, errors_every=7)
    table = pq.read_table(out)
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array(["photos/img000.png"] * n))
    pq.write_table(table, out)
    stats = write_report(out, tmp_path / "r.html", max_thumbnails=5)
    page = (tmp_path / "r.html").read_text()
    refs = [r[-1] for r in blob(page)["rows"]]
    errors = [i for i in range(n) if i % 7 == 0]
    assert {i for i, ref in enumerate(refs) if isinstance(ref, int)} == set(range(5)) | set(errors)
    assert len(blob(page)["thumbs"]) == 1  # one image, embedded once
    assert stats.thumbnails == len(set(range(5)) | set(errors)) and stats.not_embedded == n - stats.thumbnails
    assert "Thumbnails are embedded for the first 5 rows" in page


def test_100000_rows_make_one_blob_and_a_reasonable_page(tmp_path):
    out = synthetic_output(tmp_path / "big.parquet", 100_000)
    started = time.monotonic()
    stats = write_report(out, tmp_path / "big.html")
    elapsed = time.monotonic() - started
    page = (tmp_path / "big.html").read_text()
    assert page.count('type="application/json"') == 1 and len(blob(page)["rows"]) == 100_000
    assert stats.bytes < 25_000_000, f"{stats.bytes / 1e6:.1f} MB"
    assert page.count("<tr") == 1  # only the header row: the rows are rendered by the page, 100 at a time
    assert elapsed < 30, f"{elapsed:.1f} s"
    print(f"\n100,000 rows: {stats.bytes / 1e6:.1f} MB in {elapsed:.1f} s")


def test_cli_default_path_and_exit_codes(tmp_path, capsys):
    out = synthetic_output(tmp_path / "out.parquet", 5)
    assert main([str(out)]) == 0
    assert (tmp_path / "out.parquet.html").is_file() and "5 rows" in capsys.readouterr().out
    assert main([str(tmp_path / "missing.parquet")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "junk.parquet").write_text("not parquet")
    assert main([str(tmp_path / "junk.parquet"), "-o", str(tmp_path / "x.html")]) == 2
    assert "not a readable Parquet file" in capsys.readouterr().err and not (tmp_path / "x.html").exists()


# --- in headless Chromium ----------------------------------------------------------------


@pytest.fixture
def chromium():
    path = shutil.which("chromium")
    if path is None:
        why = "chromium is not installed: run scripts/ensure-chromium (as root it installs Debian's chromium)"
        if os.environ.get("CI"):  # `make test` installs it; in CI a skip would hide a page nobody checked
            pytest.fail(why)
        pytest.skip(why)
    return path


class DevTools:
    """Just enough of the Chrome DevTools protocol: commands by id, everything else kept as events."""

    def __init__(self, ws):
        self.ws, self.next_id, self.pending, self.events = ws, 0, {}, []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self):
        async for msg in self.ws:
            message = json.loads(msg.data)
            if "id" in message and message["id"] in self.pending:
                self.pending.pop(message["id"]).set_result(message)
            else:
                self.events.append(message)

    async def send(self, method, **params):
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        reply = await future
        if "error" in reply:
            raise AssertionError(f"{method}: {reply['error']}")
        return reply["result"]

    async def js(self, expression):
        reply = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in reply:
            raise AssertionError(f"{expression}: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    async def wait_for(self, method):
        while not any(e.get("method") == method for e in self.events):
            await asyncio.sleep(0.02)

    def problems(self):
        """Console errors, uncaught exceptions, failed loads and dialogs (an alert() would mean injection)."""
        bad = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown" or m == "Page.javascriptDialogOpening":
                bad.append(e)
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                bad.append(e)
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                bad.append(e)
        return bad


def start_chromium(binary, profile):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "--window-size=1280,1000", "about:blank"]
    process = subprocess.Popen([binary, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 15
    while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_chromium(process)
            pytest.fail(f"chromium did not start (exit code {process.poll()})")
        time.sleep(0.05)
    return process, int(port_file.read_text().split()[0])


def in_chromium(binary, profile, drive, html_path):
    """`drive(port, html_path)` against a fresh headless Chromium, stopped afterwards whatever happens."""
    process, port = start_chromium(binary, profile)
    try:
        asyncio.run(asyncio.wait_for(drive(port, html_path), timeout=25))
    finally:
        stop_chromium(process)


def stop_chromium(process):
    # Chromium's helper processes share its process group (we started it in a new session).
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(5)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def captioned_output(simulator, tmp_path):
    """A real run: four ok rows, a missing file, a non-image, and an id that tries HTML injection."""
    images = make_images(tmp_path / "img", 4, size=(120, 80))
    (tmp_path / "img" / "notes.png").write_text("not an image")
    rows = [(f"photo-{i}", f"img/{p.name}") for i, p in enumerate(images)]
    rows += [("gone", "img/missing.png"), ("text", "img/notes.png"), ("<img src=x onerror=alert(1)>", f"img/{images[0].name}")]
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image\n" + "".join(f"{i},{p}\n" for i, p in rows))
    config = load_config({"manifest": manifest, "output": tmp_path / "out" / "out.parquet", "base_url": simulator.base_url},
                         environ={"ANYFAST_API_KEY": "sk-test-report-0123456789"})
    summary = run_job(config)
    assert (summary.ok, summary.error) == (5, 2)
    return config.output


def test_the_page_in_headless_chromium(simulator, tmp_path, chromium):
    output = captioned_output(simulator, tmp_path)
    html_path = tmp_path / "report.html"
    stats = write_report(output, html_path, images_root=tmp_path)
    assert stats.thumbnails == 5  # both error rows have no usable image: placeholders
    assert "not found on this machine" not in html_path.read_text()  # only the job's own image_missing row
    in_chromium(chromium, tmp_path / "profile", drive, html_path)


@contextlib.asynccontextmanager
async def page_at(port, html_path):
    """The browser's first tab, driven over the DevTools protocol, with `html_path` loaded."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as reply:
            page = next(t for t in await reply.json() if t["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = DevTools(ws)
            for domain in ("Runtime", "Log", "Page"):
                await cdp.send(f"{domain}.enable")
            await cdp.send("Page.navigate", url=html_path.as_uri())
            await cdp.wait_for("Page.loadEventFired")
            yield cdp


async def drive(port, html_path):
    async with page_at(port, html_path) as cdp:
        shown = "[...document.querySelectorAll('#rows tr')].map(tr => [tr.dataset.id, tr.dataset.status])"
        rows = await cdp.js(shown)
        assert len(rows) == 7
        assert await cdp.js("document.querySelectorAll('#rows td.thumb img').length") == 5
        assert await cdp.js("document.querySelectorAll('#rows .ph').length") == 2
        assert "7 of 7 rows match (5 ok, 2 error)" in await cdp.js("document.getElementById('count').textContent")
        # The injected id is text on the page, not an element.
        assert await cdp.js("[...document.querySelectorAll('.rid')].some(d => d.textContent === '<img src=x onerror=alert(1)>')")
        assert await cdp.js("document.querySelectorAll('img:not([src^=\"data:image/jpeg\"])').length") == 0

        await cdp.js("const s = document.getElementById('f-status'); s.value = 'error'; s.dispatchEvent(new Event('change'))")
        rows = await cdp.js(shown)
        assert sorted(r[0] for r in rows) == ["gone", "text"] and {r[1] for r in rows} == {"error"}
        assert "2 of 7 rows match" in await cdp.js("document.getElementById('count').textContent")
        errors = await cdp.js("[...document.querySelectorAll('#rows .etype')].map(e => e.textContent).sort()")
        assert errors == ["image_missing", "not_an_image"]

        await cdp.js("const t = document.getElementById('f-type'); t.value = 'not_an_image'; t.dispatchEvent(new Event('change'))")
        assert [r[0] for r in await cdp.js(shown)] == ["text"]

        await cdp.js("""for (const [id, v] of [['f-status', 'all'], ['f-type', '']]) {
                          const s = document.getElementById(id); s.value = v; s.dispatchEvent(new Event('change')); }""")
        search = "q => { const s = document.getElementById('f-search'); s.value = q; s.dispatchEvent(new Event('input')); }"
        await cdp.js(f"({search})('photo-2')")
        assert [r[0] for r in await cdp.js(shown)] == ["photo-2"]
        await cdp.js(f"({search})('120×80 LANDSCAPE')")  # in every simulator caption, any case
        assert sorted(r[0] for r in await cdp.js(shown)) == sorted(["photo-0", "photo-1", "photo-2", "photo-3", "<img src=x onerror=alert(1)>"])
        await cdp.js(f"({search})('no such words anywhere')")
        assert await cdp.js(shown) == []
        assert await cdp.js("document.getElementById('page').textContent") == "no rows match"

        # Clicking an error type in the summary chart lists its rows.
        await cdp.js(f"({search})('')")
        await cdp.js("document.querySelector('[data-error-type=\"image_missing\"]').dispatchEvent(new MouseEvent('click'))")
        assert [r[0] for r in await cdp.js(shown)] == ["gone"]

        await cdp.js("""for (const [id, v] of [['f-status', 'all'], ['f-type', '']]) {
                          const s = document.getElementById(id); s.value = v; s.dispatchEvent(new Event('change')); }
                        window.scrollTo(0, 0)""")
        assert len(await cdp.js(shown)) == 7
        shot = await cdp.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "report.png").write_bytes(base64.b64decode(shot["data"]))

        await asyncio.sleep(0.2)  # let late console messages arrive
        assert cdp.problems() == []
        cdp.reader.cancel()


def test_the_page_at_phone_width_and_its_state_in_the_url_in_chromium(simulator, tmp_path, chromium):
    output = captioned_output(simulator, tmp_path)
    html_path = tmp_path / "report.html"
    write_report(output, html_path, images_root=tmp_path)
    in_chromium(chromium, tmp_path / "profile", drive_widths_and_hash, html_path)


async def load(cdp, url):
    """A fresh document at `url` (by way of about:blank: a change of hash alone would not load the page again)."""
    for target in ("about:blank", url):
        cdp.events[:] = [e for e in cdp.events if e.get("method") != "Page.loadEventFired"]
        await cdp.send("Page.navigate", url=target)
        await cdp.wait_for("Page.loadEventFired")


async def screenshot(cdp, name, width):
    # A window as tall as the page, not captureBeyondViewport: that one lays the page out again, without the scrollbar.
    height = await cdp.js("document.documentElement.scrollHeight")
    await cdp.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
    shot = await cdp.send("Page.captureScreenshot", format="png")
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / name).write_bytes(base64.b64decode(shot["data"]))


async def drive_widths_and_hash(port, html_path):
    layout = """(() => { const tr = document.querySelector('#rows tr'), rid = document.querySelector('.rid');
                 return {scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth, inner: window.innerWidth,
                         display: getComputedStyle(tr).display, idLines: Math.round(rid.getBoundingClientRect().height /
                         parseFloat(getComputedStyle(rid).lineHeight)), labels: [...tr.querySelectorAll('td.num')].map(
                         td => getComputedStyle(td, '::before').content)}; })()"""
    async with page_at(port, html_path) as cdp:
        for width in (1280, 500):
            await cdp.send("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
            await load(cdp, html_path.as_uri())
            seen = await cdp.js(layout)
            assert seen["scroll"] <= seen["client"] and seen["inner"] == width, f"sideways scroll at {width} px: {seen}"
            assert seen["idLines"] == 1, f"the id wraps at {width} px: {seen}"  # not letter by letter
            if width == 500:  # rows as cards, each number with its label
                assert seen["display"] == "grid" and seen["labels"][0].startswith('"tokens'), seen
            else:
                assert seen["display"] == "table-row" and seen["labels"][0] in ("none", "normal")
            await screenshot(cdp, f"report-{width}px.png", width)

        shown = "[...document.querySelectorAll('#rows tr')].map(tr => tr.dataset.id).sort()"
        pick = "(id, v) => { const s = document.getElementById(id); s.value = v; s.dispatchEvent(new Event('change')); }"
        await cdp.js(f"({pick})('f-status', 'error')")
        assert await cdp.js("location.hash") == "#status=error"
        await cdp.js(f"({pick})('f-type', 'not_an_image')")
        assert await cdp.js("location.hash") == "#status=error&type=not_an_image"
        await cdp.js("const s = document.getElementById('f-search'); s.value = 'notes'; s.dispatchEvent(new Event('input'))")
        assert await cdp.js("location.hash") == "#status=error&type=not_an_image&q=notes"
        assert await cdp.js(shown) == ["text"]

        await cdp.js("history.back()")  # the search replaced its entry: Back undoes the type
        await asyncio.sleep(0.3)
        assert await cdp.js("location.hash") == "#status=error"
        assert await cdp.js("[document.getElementById('f-type').value, document.getElementById('f-search').value]") == ["", ""]
        assert await cdp.js(shown) == ["gone", "text"]

        # A shared link opens on the same view.
        await load(cdp, html_path.as_uri() + "#status=error&q=missing")
        assert await cdp.js("document.getElementById('f-status').value") == "error"
        assert await cdp.js(shown) == ["gone"]
        await load(cdp, html_path.as_uri() + "#type=no_such_type&page=9")  # a link from another output: ignored, not broken
        assert len(await cdp.js(shown)) == 7
        await asyncio.sleep(0.2)
        assert cdp.problems() == []
        cdp.reader.cancel()


def test_paging_100000_rows_in_chromium(tmp_path, chromium):
    out = synthetic_output(tmp_path / "big.parquet", 100_000)
    html_path = tmp_path / "big.html"
    write_report(out, html_path)
    in_chromium(chromium, tmp_path / "profile", drive_big, html_path)


async def drive_big(port, html_path):
    async with page_at(port, html_path) as cdp:
        assert await cdp.js("document.querySelectorAll('#rows tr').length") == 100
        assert await cdp.js("document.querySelectorAll('tr').length") == 101
        assert "page 1 of 1,000" in await cdp.js("document.getElementById('page').textContent")
        await cdp.js("document.getElementById('next').click()")
        assert await cdp.js("document.querySelector('#rows tr').dataset.id") == "row-000100"
        took = await cdp.js("""(() => { const t = performance.now(), s = document.getElementById('f-search');
                                s.value = 'number 99999 '; s.dispatchEvent(new Event('input'));
                                return performance.now() - t; })()""")
        assert await cdp.js("[...document.querySelectorAll('#rows tr')].map(tr => tr.dataset.id)") == ["row-099999"]
        assert took < 2000, f"search over 100,000 rows took {took:.0f} ms"
        await asyncio.sleep(0.2)
        assert cdp.problems() == []
        cdp.reader.cancel()


def test_the_page_runs_only_the_shipped_script_its_csp_hash_is_computed_from_the_file(tmp_path):
    import hashlib
    import re as regex

    from pipeline.report.render import page_file

    script = page_file("report.js")
    output = tmp_path / "o.parquet"
    pq.write_table(pa.table({"id": ["a"], "image": ["a.png"], "status": ["ok"], "caption": ["A cat."]}), output)
    page = (tmp_path / "o.html")
    write_report(output, page)
    text = page.read_text()
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in regex.search(r'Content-Security-Policy" content="([^"]+)"', text)[1]
    assert script in text and page_file("report.css") in text


def test_an_images_tasks_are_shown_together_in_chromium(simulator, tmp_path, chromium):
    make_images(tmp_path / "img", 3, size=(120, 80))
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,image\n" + "".join(f"p{i},img/img{i:03d}.png\n" for i in range(3)))
    job = tmp_path / "job.toml"
    job.write_text('[tasks.short]\nprompt = "One sentence."\n[tasks.long]\nprompt = "A paragraph."\n')
    config = load_config({"manifest": manifest, "output": tmp_path / "out.parquet", "base_url": simulator.base_url},
                         environ={"ANYFAST_API_KEY": "sk-test-report-0123456789"}, job_file=job)
    assert run_job(config).ok == 6
    html_path = tmp_path / "report.html"
    assert write_report(config.output, html_path, images_root=tmp_path).thumbnails == 6  # rows with one (the same per image)

    async def drive_tasks(port, html_path):
        async with page_at(port, html_path) as cdp:
            rows = await cdp.js("[...document.querySelectorAll('#rows tr')].map(tr => [tr.dataset.id, tr.dataset.task, "
                                "tr.classList.contains('same-image'), tr.querySelectorAll('td.thumb img').length, "
                                "tr.querySelector('.task').textContent])")
            # Images in the order their first answer came; within one, its tasks by name, the thumbnail on the first only.
            images = [r[0] for r in rows[::2]]
            assert sorted(images) == ["p0", "p1", "p2"]
            assert rows == [[image, task, task == "short", 0 if task == "short" else 1, task]
                            for image in images for task in ("long", "short")]
            search = "q => { const s = document.getElementById('f-search'); s.value = q; s.dispatchEvent(new Event('input')); }"
            await cdp.js(f"({search})('short')")  # the task's name is searchable
            assert await cdp.js("[...document.querySelectorAll('#rows tr')].map(tr => tr.dataset.task)") == ["short"] * 3
            await asyncio.sleep(0.2)
            assert cdp.problems() == []
            cdp.reader.cancel()

    in_chromium(chromium, tmp_path / "profile", drive_tasks, html_path)
