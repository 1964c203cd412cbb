import csv
import inspect
import json
import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ManifestError
import pipeline.manifest_files
from pipeline.manifest import open_manifest


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def rows_of(path: Path):
    manifest = open_manifest(path)
    return manifest, list(manifest.rows())


# --- formats ------------------------------------------------------------------


def test_csv_columns_id_prompt_and_extra(tmp_path):
    path = write(tmp_path / "m.csv", "id,image,prompt,caption_hint\na1,cat.jpg,Describe it,x\n,dog.png,,7\n")
    manifest, rows = rows_of(path)
    assert [(r.line, r.id, r.image, r.prompt) for r in rows] == [
        (2, "a1", "cat.jpg", "Describe it"),
        (3, "dog.png", "dog.png", None),
    ]
    assert rows[0].source == str(tmp_path / "cat.jpg")
    assert rows[1].extra == {"caption_hint": "7"}  # CSV values stay strings
    assert all(r.problem is None for r in rows)
    assert manifest.stats.rows == 2 and manifest.stats.problems == 0


def test_tsv_bom_and_header_whitespace(tmp_path):
    path = write(tmp_path / "m.TSV", "\ufeff id \t path \tnote\nk\ta b.jpg\thello, world\n")
    _, [row] = rows_of(path)
    assert (row.id, row.image, row.extra) == ("k", "a b.jpg", {"note": "hello, world"})


@pytest.mark.parametrize(
    "header, expected_image",
    [
        ("path,url", "P"),  # path comes before url in the alias order
        ("url,image_url", "P"),
        ("image_url,file", "P"),
        ("file,other", "P"),
        ("other,image", "Q"),  # image wins wherever it is
    ],
)
def test_image_column_aliases(tmp_path, header, expected_image):
    path = write(tmp_path / "m.csv", f"{header}\nP,Q\n")
    _, [row] = rows_of(path)
    assert row.image == expected_image


def test_csv_line_numbers_with_multiline_field_and_blank_line(tmp_path):
    path = write(tmp_path / "m.csv", 'image,prompt\na.jpg,"two\nlines"\n\nb.jpg,\n')
    _, rows = rows_of(path)
    assert [(r.line, r.image, r.prompt) for r in rows] == [(2, "a.jpg", "two\nlines"), (5, "b.jpg", None)]


def test_jsonl_types_pass_through(tmp_path):
    records = [
        {"id": 17, "url": "https://example.com/a.jpg", "width": 640, "tags": ["x"], "ok": True},
        {"image": "b.jpg", "prompt": "short", "score": 0.5, "meta": None},
    ]
    path = write(tmp_path / "m.NDJSON", "".join(json.dumps(r) + "\n" for r in records))
    _, rows = rows_of(path)
    assert rows[0].id == "17" and rows[0].source == "https://example.com/a.jpg"
    assert rows[0].extra == {"width": 640, "tags": ["x"], "ok": True}
    assert rows[1].id == "b.jpg" and rows[1].prompt == "short"
    assert rows[1].extra == {"score": 0.5, "meta": None}


def test_parquet_types_pass_through(tmp_path):
    table = pa.table({"id": [1, 2], "file": ["a.jpg", "sub/b.jpg"], "n": [10, 20], "prompt": ["p", None]})
    pq.write_table(table, tmp_path / "m.parquet")
    manifest, rows = rows_of(tmp_path / "m.parquet")
    assert [(r.line, r.id, r.source, r.prompt, r.extra) for r in rows] == [
        (1, "1", str(tmp_path / "a.jpg"), "p", {"n": 10}),
        (2, "2", str(tmp_path / "sub" / "b.jpg"), None, {"n": 20}),
    ]
    assert manifest.count() == 2


def test_txt_skips_blank_and_comment_lines(tmp_path):
    path = write(tmp_path / "list.txt", "# images\na.jpg\n\n  # indented comment\n  b.jpg  \nhttp://h/c.png")
    _, rows = rows_of(path)
    assert [(r.line, r.id, r.image) for r in rows] == [(2, "a.jpg", "a.jpg"), (5, "b.jpg", "b.jpg"), (6, "http://h/c.png", "http://h/c.png")]


def test_directory_nested_sorted_hidden_and_non_images_skipped(tmp_path):
    root = tmp_path / "imgs"
    for name in ["b.PNG", "a/z.jpg", "a/b/c.webp", "notes.txt", ".hidden.jpg", ".cache/x.jpg", "a-c.tiff"]:
        write(root / name, "x")
    manifest, rows = rows_of(root)
    expected = ["a-c.tiff", "a/b/c.webp", "a/z.jpg", "b.PNG"]
    assert [r.id for r in rows] == expected
    assert [r.image for r in rows] == expected
    assert [r.line for r in rows] == [1, 2, 3, 4]
    assert rows[1].source == str(root / "a" / "b" / "c.webp")
    assert manifest.count() == 4
    assert manifest.path == root


# --- sources ------------------------------------------------------------------


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write(tmp_path / "job" / "m.csv", "image\nsub/a.jpg\n../up.jpg\n")
    _, rows = rows_of(Path("..") / "job" / "m.csv")
    assert [r.source for r in rows] == [str(tmp_path / "job" / "sub" / "a.jpg"), str(tmp_path / "up.jpg")]


def test_urls_file_urls_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write(
        tmp_path / "m.txt",
        "https://example.com/a.jpg?x=1\nHTTP://Example.com/B.jpg\nfile:///data/my%20pic.png\n~/c.jpg\n/abs/d.jpg\nnope://bucket/e.jpg\nS3://bucket/f.jpg\n",
    )
    _, rows = rows_of(path)
    assert [r.source for r in rows[:5]] == [
        "https://example.com/a.jpg?x=1",
        "http://Example.com/B.jpg",
        "/data/my pic.png",
        str(tmp_path / "home" / "c.jpg"),
        "/abs/d.jpg",
    ]
    assert rows[0].is_remote and not rows[2].is_remote
    assert rows[5].problem.startswith("line 6: unsupported URL scheme nope://")
    assert rows[5].id == "nope://bucket/e.jpg" and rows[5].source == ""
    assert rows[6].source == "s3://bucket/f.jpg" and rows[6].problem is None  # a bucket object: read through fsspec


# --- problems -----------------------------------------------------------------


def test_csv_empty_image_cell_becomes_a_problem_row(tmp_path):
    path = write(tmp_path / "m.csv", "id,image\na,a.jpg\nb,\n,  \nd,d.jpg,extra\n")
    manifest, rows = rows_of(path)
    assert [(r.line, r.id, r.image, r.source) for r in rows[1:]] == [(3, "b", "", ""), (4, "line:4", "", ""), (5, "d", "", "")]
    assert rows[1].problem == "line 3: no image value in column 'image'"
    assert rows[2].problem.startswith("line 4: no image value")
    assert rows[3].problem.startswith("line 5: 3 fields, the header has 2")
    assert manifest.stats.rows == 4 and manifest.stats.problems == 3


def test_jsonl_broken_and_non_object_lines(tmp_path):
    lines = ['{"image": "a.jpg"}', '{"image": "b.jpg",, }', "", "[1, 2]", '{"id": "x", "caption": 1}', '{"image": 5}', "\xff"]
    path = tmp_path / "m.jsonl"
    path.write_bytes("\n".join(lines[:-1]).encode() + b"\n\xff\n")
    _, rows = rows_of(path)
    assert [(r.line, r.id) for r in rows] == [(1, "a.jpg"), (2, "line:2"), (4, "line:4"), (5, "x"), (6, "line:6"), (7, "line:7")]
    problems = [r.problem for r in rows]
    assert problems[0] is None
    assert problems[1].startswith("line 2: not valid JSON: ")
    assert problems[2] == "line 4: expected a JSON object, got an array"
    assert problems[3] == "line 5: no image value (expected a column named image, path, url, image_url or file)"
    assert rows[3].extra == {"caption": 1}
    assert problems[4].startswith("line 6: the image value in column 'image' is not a string")
    assert problems[5] == "line 7: not valid UTF-8 text"
    assert all(r.image == "" and r.source == "" for r in rows[1:])


def test_duplicates_keep_the_first_and_are_counted(tmp_path, caplog):
    body = "".join(f"{i % 3},img{i}.jpg\n" for i in range(30))
    path = write(tmp_path / "m.csv", "id,image\n" + body)
    manifest = open_manifest(path)
    with caplog.at_level(logging.WARNING, logger="pipeline.manifest"):
        rows = list(manifest.rows())
    assert [(r.id, r.image) for r in rows] == [("0", "img0.jpg"), ("1", "img1.jpg"), ("2", "img2.jpg")]
    stats = manifest.stats
    assert stats.rows == 3 and stats.duplicates == 27
    assert len(stats.duplicate_examples) == 20 and stats.duplicate_examples[0] == (5, "0")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 21  # 20 individual warnings, then one note
    assert "line 5" in messages[0] and "'0'" in messages[0]


def test_bad_id_and_prompt_types(tmp_path):
    path = write(tmp_path / "m.jsonl", '{"id": [1], "image": "a.jpg"}\n{"id": "b", "image": "b.jpg", "prompt": 3}\n')
    _, rows = rows_of(path)
    assert (rows[0].id, rows[0].problem) == ("line:1", "line 1: the id must be a string or a number, got [1]")
    assert (rows[1].id, rows[1].problem) == ("b", "line 2: the prompt must be a string, got 3")


def test_problem_rows_take_part_in_dedup(tmp_path):
    path = write(tmp_path / "m.jsonl", '{"id": "a"}\n{"id": "a", "image": "x.jpg"}\n')
    manifest, rows = rows_of(path)
    assert len(rows) == 1 and rows[0].problem and manifest.stats.duplicates == 1


def test_csv_rows_follow_the_same_rules_as_other_formats(tmp_path):
    # The usual CSV row is judged inline, without the shared rules: it must come out as they would make it.
    images = ["http://h/a.jpg", " https://h/b.jpg ", "HTTP://h/c.jpg", "d.jpg", "  sub/e.png  ", "", "   ", "s3://b/f",
              "file:///tmp/g.png", "odd name://h", "\u00a0http://h/i.jpg", "~/j.jpg", "/abs/k.jpg"]
    ids, prompts = ["", " k ", "id3"], ["", "  ", "Describe"]
    cells = [(ids[i % 3] and f"{ids[i % 3]}{i}", image, prompts[i % 3], f"note {i}") for i, image in enumerate(images)]
    with (tmp_path / "m.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("id", "image", "prompt", "note"), *cells])
    names = ("id", "image", "prompt", "note")
    write(tmp_path / "m.jsonl", "\n" + "".join(json.dumps(dict(zip(names, c))) + "\n" for c in cells))  # same line numbers

    def seen(path):
        manifest, rows = rows_of(path)
        return [(r.line, r.id, r.image, r.source, r.prompt, r.extra, r.problem) for r in rows], manifest.stats

    assert seen(tmp_path / "m.csv") == seen(tmp_path / "m.jsonl")


def test_skipped_rows_are_counted_but_not_yielded(tmp_path):
    path = write(tmp_path / "m.csv", "id,image,prompt\na,a.jpg,P\nb,b.jpg,\nc,,P\na,a2.jpg,\nd,d.jpg,\n")
    asked = []

    def skip(row_id, prompt, source):
        asked.append((row_id, prompt))
        return row_id in ("a", "c")

    manifest = open_manifest(path)
    assert [r.id for r in manifest.rows(skip=skip)] == ["b", "d"]
    assert asked == [("a", "P"), ("b", None), ("c", None), ("d", None)]  # a problem row is asked with no prompt; the duplicate a not at all
    assert (manifest.stats.rows, manifest.stats.problems, manifest.stats.duplicates) == (4, 1, 1)


# --- manifest errors ----------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        open_manifest(tmp_path / "nope.csv")


def test_unsupported_extension_lists_the_supported_ones(tmp_path):
    with pytest.raises(ManifestError, match=r"'\.xlsx'.*\.csv, \.tsv, \.jsonl, \.ndjson, \.parquet or \.txt"):
        open_manifest(write(tmp_path / "m.xlsx", "x"))


def test_unreadable_file(tmp_path, monkeypatch):
    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    path = write(tmp_path / "m.txt", "a.jpg\n")
    monkeypatch.setattr(pipeline.manifest_files, "open", denied, raising=False)  # works as root too
    with pytest.raises(ManifestError, match="cannot read manifest .*m.txt: Permission denied"):
        open_manifest(path)


def test_csv_without_image_column_names_what_it_found(tmp_path):
    with pytest.raises(ManifestError, match=r"found columns 'name', 'Picture'; expected a column named image, path"):
        open_manifest(write(tmp_path / "m.csv", "name,Picture\nx,y\n"))


@pytest.mark.parametrize("header", ["ID,Image,Prompt", "id,IMAGE,prompt", " Id , URL ,PROMPT"])
def test_column_names_match_whatever_their_case(tmp_path, header):
    manifest = open_manifest(write(tmp_path / "m.csv", header + "\na, pic.jpg ,Say it.\n"))
    [row] = list(manifest.rows())
    assert (row.id, row.image.strip(), row.prompt, row.extra) == ("a", "pic.jpg", "Say it.", {})


def test_parquet_without_image_column(tmp_path):
    pq.write_table(pa.table({"name": ["x"]}), tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="found columns 'name'"):
        open_manifest(tmp_path / "m.parquet")


def test_not_a_parquet_file(tmp_path):
    with pytest.raises(ManifestError, match="cannot read Parquet manifest"):
        open_manifest(write(tmp_path / "m.parquet", "image\na.jpg\n"))


@pytest.mark.parametrize("text", ["", "\n", ",,\n"])
def test_csv_without_header(tmp_path, text):
    with pytest.raises(ManifestError, match="has no header row"):
        open_manifest(write(tmp_path / "m.csv", text))


def test_csv_with_undecodable_header(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"ima\xffge\na.jpg\n")
    with pytest.raises(ManifestError, match="m.csv.*not valid UTF-8"):
        open_manifest(path)


def test_csv_undecodable_mid_file_names_the_file(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(b"image\n" + b"a.jpg\n" * 5000 + b"caf\xe9.jpg\n")  # Latin-1, past the first read chunk
    manifest = open_manifest(path)
    with pytest.raises(ManifestError, match=r"m\.csv after line \d+: not valid UTF-8"):
        for _ in manifest.rows():
            pass


def test_csv_with_repeated_column_names(tmp_path):
    with pytest.raises(ManifestError, match="repeats column names.*image"):
        open_manifest(write(tmp_path / "m.csv", "image, image\na,b\n"))


# --- count and streaming ------------------------------------------------------


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("m.csv", "image\na\nb\nc\n", 3),
        ("m.csv", "image\na\nb\nc", 3),  # no final newline
        ("m.csv", "image\n", 0),
        ("m.tsv", "image\ta\nx\ty\n", 1),
        ("m.jsonl", '{"image": "a"}\n{"image": "b"}\n', 2),
        ("m.txt", "a\nb\nc\nd", 4),
        ("m.txt", "", 0),
    ],
)
def test_count(tmp_path, name, text, expected):
    assert open_manifest(write(tmp_path / name, text)).count() == expected


def test_large_csv_streams(tmp_path):
    n = 200_000
    path = tmp_path / "big.csv"
    with path.open("w") as f:
        f.write("image,caption\n")
        f.writelines(f"images/{i:07d}.jpg,some passthrough text {i}\n" for i in range(n))
    manifest = open_manifest(path)
    assert manifest.count() == n
    rows = manifest.rows()
    assert inspect.isgenerator(rows)
    # tracemalloc slows this loop about 7x (10 s here), so memory is watched through the
    # interpreter's count of live blocks: the ids seen are kept as hashes in one array (no
    # block per row), while rows kept somewhere would cost about seven (row, dict, strings).
    baseline, growth, last = sys.getallocatedblocks(), 0, None
    for last in rows:
        if last.line % 1000 == 0:
            growth = max(growth, sys.getallocatedblocks() - baseline)
    assert last.line == n + 1 and manifest.stats.rows == n
    assert growth < n / 100
