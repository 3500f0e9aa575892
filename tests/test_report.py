"""The run's pictures: contact sheet rows by class, report.html."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.report import SheetRows, contact_sheet, report_html
from pipeline.shards import encode_png


def _sample(label, value, text=None):
    img = np.full((8, 8, 3), value, np.uint8)
    s = {"png": encode_png(img)}
    if text is None:
        s["cls"] = label
    else:
        s["txt"] = text
    return s


def _rows(samples, per_row, max_rows):
    picker = SheetRows(per_row, max_rows, cell=None)  # unresized, as decoded
    for s in samples:
        picker.add(s)
    return picker.rows()


def test_rows_are_classes_in_order_and_capped():
    samples = [_sample(c, 10 * c + i) for i in range(5) for c in (3, 1, 2)]
    rows = _rows(samples, per_row=4, max_rows=2)
    assert len(rows) == 2 and all(len(r) == 4 for r in rows)
    assert [int(r[0][0, 0, 0]) for r in rows] == [10, 20]  # classes 1 then 2; class 3 cut by max_rows
    sheet = Image.open(io.BytesIO(contact_sheet(rows, cell=16, pad=2)))
    assert sheet.size == (4 * 18 + 2, 2 * 18 + 2)
    assert sheet.getpixel((2, 2)) == (10, 10, 10) and sheet.getpixel((2, 20)) == (20, 20, 20)


def test_prompt_samples_fill_rows_in_plan_order():
    rows = _rows([_sample(None, v, text=f"p{v}") for v in range(10)], per_row=4, max_rows=5)
    assert [len(r) for r in rows] == [4, 4, 2]
    assert [int(img[0, 0, 0]) for r in rows for img in r] == list(range(10))


def test_report_html_escapes_and_links_the_sheet():
    page = report_html({"images": 40, "model": "<b>x</b>", "eval": {"fid": 1.5}}, has_sheet=True)
    assert "contact_sheet.png" in page and "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert "contact_sheet.png" not in report_html({"images": 1}, has_sheet=False)


def test_sheet_reads_small_shards_until_every_row_is_full(tmp_path):
    """Shards of 10 samples (one per class) fill 8 per row only after 8 shards; the sheet reads them."""
    from pipeline.report import SHEET_KEY, write_pictures
    from pipeline.shards import ShardTarWriter
    from pipeline.sinks import LocalSink
    from pipeline.layout import tar_key

    sink = LocalSink(str(tmp_path))
    for shard in range(12):
        writer = ShardTarWriter()
        for c in range(10):
            writer.add(f"{shard:05d}{c:02d}", np.full((8, 8, 3), 20 * c + shard, np.uint8), {"condition": c})
        sink.write(tar_key(shard), writer.finish())
    write_pictures(sink, list(range(12)), {"images": 120}, per_row=8, max_rows=10)
    sheet = np.asarray(Image.open(io.BytesIO(sink.read(SHEET_KEY))))
    assert sheet.shape[:2] == (10 * 66 + 2, 8 * 66 + 2)  # 10 full rows of 8 cells of 64 + 2 px padding
    assert sheet[2 + 9 * 66, 2 + 7 * 66, 0] == 20 * 9 + 7  # class 9's eighth image comes from shard 7


def test_a_damaged_shard_is_left_out_of_the_sheet_not_fatal(tmp_path, caplog):
    from pipeline.layout import tar_key
    from pipeline.report import HTML_KEY, SHEET_KEY, write_pictures
    from pipeline.shards import ShardTarWriter
    from pipeline.sinks import LocalSink

    sink = LocalSink(str(tmp_path))
    for shard in range(2):
        writer = ShardTarWriter()
        writer.add(f"{shard:06d}_000000", np.full((8, 8, 3), 100 + shard, np.uint8), {"condition": shard})
        sink.write(tar_key(shard), writer.finish())
    sink.write(tar_key(0), sink.read(tar_key(0))[:300])  # truncated after it was checked
    write_pictures(sink, [0, 1], {"images": 2})
    sheet = np.asarray(Image.open(io.BytesIO(sink.read(SHEET_KEY))))
    assert sheet.shape[:2] == (66 + 2, 66 + 2) and sheet[2, 2, 0] == 101  # shard 1's sample only
    assert sink.exists(HTML_KEY) and "shard 0 could not be read" in caplog.text
