"""Manifests forgive and explain: named image/id columns, one clear message for a missing image column in
every format, HEIC and AVIF photos read and converted, and a folder scan that says what it left out."""

import asyncio
import logging

import pillow_heif
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import imageprep
from pipeline.errors import ManifestError
from pipeline.images import ImageLoader
from pipeline.manifest import open_manifest
from pipeline.records import ManifestRow

pillow_heif.register_heif_opener()  # to write the HEIC test files; the job registers it itself when one comes


def test_image_and_id_columns_can_be_named_in_any_case(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("Key,Photo File,image,note\nk1,a.jpg,ignored.jpg,x\n")
    rows = list(open_manifest(path, image_column="photo file", id_column="KEY").rows())
    assert [(r.id, r.image) for r in rows] == [("k1", "a.jpg")]
    assert rows[0].extra == {"image": "ignored.jpg", "note": "x"}  # the usual name is an ordinary column now


@pytest.mark.parametrize("name, text", [
    ("m.csv", "name,picture\na,b.jpg\n"),
    ("m.jsonl", '{"name": "a", "picture": "b.jpg"}\n{"name": "b"}\n'),
    ("m.parquet", None),
])
def test_no_image_column_is_one_exit_2_message_in_every_format(tmp_path, name, text):
    path = tmp_path / name
    if text is None:
        pq.write_table(pa.table({"name": ["a"], "picture": ["b.jpg"]}), path)
    else:
        path.write_text(text)
    with pytest.raises(ManifestError, match=r"has no image column.*found columns 'name', 'picture'; expected a column named image.*--image-column"):
        open_manifest(path)
    assert [r.image for r in open_manifest(path, image_column="Picture").rows()][0] == "b.jpg"


def test_a_named_column_that_is_not_there_is_refused_naming_it(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": 1, "image": "a.jpg"}\n')
    with pytest.raises(ManifestError, match=r"no image column.*--image-column names 'photo'"):
        open_manifest(path, image_column="photo")
    with pytest.raises(ManifestError, match=r"no column 'key' \(--id-column\)"):
        open_manifest(path, id_column="key")
    with pytest.raises(ManifestError, match="name columns of a CSV, JSONL or Parquet manifest"):
        (tmp_path / "m.txt").write_text("a.jpg\n")
        open_manifest(tmp_path / "m.txt", image_column="image")


def test_a_jsonl_manifest_whose_first_rows_lack_the_image_still_opens(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "image": "b.jpg"}\n')
    rows = list(open_manifest(path).rows())
    assert rows[0].problem and rows[1].image == "b.jpg"  # one error row, one good row: not a refusal


def test_a_folder_scan_counts_and_names_the_files_it_skips(tmp_path, caplog):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "clip.mov").write_bytes(b"\0" * 10)
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        manifest = open_manifest(tmp_path)
    assert [r.id for r in manifest.rows()] == ["a.jpg"] and manifest.skipped_files == 2
    assert "skipped 2 files that are not images (clip.mov, notes.txt)" in caplog.text


def test_heic_and_avif_photos_are_read_converted_and_sent(tmp_path, caption, simulator):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(photos / "iphone.heic")
    Image.new("RGB", (48, 64), (30, 200, 30)).save(photos / "android.avif")
    (tmp_path / "m.csv").write_text("image\nphotos/iphone.heic\n")
    summary, rows = caption(photos)
    assert summary.ok == 2 and summary.skipped_files == 0
    assert (rows["iphone.heic"]["width"], rows["android.avif"]["height"]) == (64, 64)
    for name in ("iphone.heic", "android.avif"):  # converted: providers take neither format
        row = ManifestRow(1, name, name, str(photos / name))
        assert asyncio.run(ImageLoader().load(row)).url.startswith(b"data:image/jpeg;base64,")
    summary, rows = caption(tmp_path / "m.csv", output=tmp_path / "m.parquet")
    assert rows["photos/iphone.heic"]["status"] == "ok"


def test_without_pillow_heif_a_heic_row_says_how_to_get_it(tmp_path, caption, monkeypatch):
    Image.new("RGB", (16, 16)).save(tmp_path / "p.heic")
    monkeypatch.setattr(imageprep, "_heif_opener", lambda: False)  # as on an install without the [heic] extra
    summary, rows = caption(tmp_path, output=tmp_path / "o.parquet")
    assert rows["p.heic"]["error_type"] == "image_unreadable" and "pip install 'pipeline[heic]'" in rows["p.heic"]["error"]
