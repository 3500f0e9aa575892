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


def test_report_html_is_a_self_contained_page_with_every_section():
    run = {"argen": "0.1.0+gabc", "created_at": "2026-12-07T10:00:00+00:00", "output": "/data/run",
           "plan": {"hash": "h", "num_samples": 6, "num_shards": 3,
                    "settings": {"data.classes": [3, 7], "data.per_class": 3}},
           "config": {"model": {"name": "var_toy", "options": {"cfg": 4.0}, "checkpoint": None},
                      "accel": {"name": "fastvar", "options": {"cache_scale": 8}}, "data": {"classes": [3, 7]},
                      "output": {"shard_size": 2}, "batch_size": 2, "seed": 0, "device": "cpu",
                      "ray": {"num_workers": 2, "gpus_per_worker": 0}}}
    records = [{"shard": s, "count": 2, "seconds": 1.0 + s, "images_per_second": 2 / (1.0 + s), "flops": 4e9,
                "worker": f"w{s % 2}@host:1", "attempt": int(s == 2), "finished_at": f"2026-12-07T10:00:0{s}+00:00",
                "counters": {"kept_fraction": 0.5 + 0.1 * s},
                "quality": {"class_consistency": 0.5, "extractor": "toy",
                            "class_consistency_by_class": {"3": [1, 1], "7": [0, 1]}}} for s in range(3)]
    report = {"model": "<b>x</b>", "accel": "fastvar", "images": 6, "planned_images": 6, "shards": 3,
              "planned_shards": 3, "complete": True, "generated_images": 6, "images_per_second": 1.5, "seconds": 4.0,
              "flops": 12e9, "bytes": 3e5, "retries": ["shard 2 attempt 0 on worker w0: OSError: disk"],
              "repaired_shards": [{"shard": 1, "problem": "its tar is missing"}], "fid": 12.5,
              "class_consistency": 0.9, "extractor": "toy",
              "eval": {"feature_dim": 64, "samples": 6, "reference": {"uri": "/ref.npz", "statistics": "stored"}}}
    sheet = contact_sheet([[np.zeros((8, 8, 3), np.uint8)], [np.ones((8, 8, 3), np.uint8)]])
    page = report_html(report, run, records, sheet, ["class 3", "class <7>"])
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # escaped
    assert page.count("data:image/png;base64,") == 2  # the sheet and the speed plot, inline
    for text in ("var_toy", "cfg=4.0", "cache_scale=8", "classes 3, 7 (2) x 3 per class", "3 of 2 samples",
                 "6 / 6", "GFLOP", "FID", "12.5", "/ref.npz", "class 3", "class &lt;7&gt;", "kept_fraction",
                 "0.6", "shard 2 attempt 0 on worker w0: OSError: disk", "shard 1 was damaged (its tar is missing)",
                 "<a href='manifest.parquet'>", "<a href='run.json'>", "w1@host:1"):
        assert text in page, text
    assert "None" not in page.replace("null", "")  # no Python values shown raw
    # the workers' class-consistency, also per class (summed over the shards), before argen evaluate
    workers = report_html({k: v for k, v in report.items() if k not in ("fid", "class_consistency")}, run, records)
    for text in ("the workers&#x27; toy extractor, 6 images", "<td class='n'>3</td><td class='n'>3/3</td>",
                 "<td class='n'>7</td><td class='n'>0/3</td><td class='n'>0.00</td>"):
        assert text in workers, text
    bare = report_html({"images": 0, "complete": False})
    assert "Not evaluated yet" in bare and "No samples yet" in bare and "incomplete" in bare


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
    write_pictures(sink, [{"shard": s} for s in range(12)], {"images": 120}, per_row=8, max_rows=10)
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
    write_pictures(sink, [{"shard": 0}, {"shard": 1}], {"images": 2})
    sheet = np.asarray(Image.open(io.BytesIO(sink.read(SHEET_KEY))))
    assert sheet.shape[:2] == (66 + 2, 66 + 2) and sheet[2, 2, 0] == 101  # shard 1's sample only
    assert sink.exists(HTML_KEY) and "shard 0 could not be read" in caplog.text


def _chromium() -> str | None:
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_renders_in_a_headless_browser(tmp_path):
    """The page as a browser draws it (Debian's chromium, where installed): the inline sheet and speed plot are
    drawn, not broken-image boxes, and the page is not blank."""
    import subprocess

    import pytest

    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    rows = [[np.full((8, 8, 3), (40 * c, 200, 255 - 40 * c), np.uint8)] * 4 for c in range(3)]
    records = [{"shard": s, "count": 2, "seconds": 1.0, "images_per_second": 2.0 + s % 2, "flops": 1e9,
                "worker": "w0@h:1", "finished_at": f"2026-12-07T10:00:0{s}+00:00"} for s in range(4)]
    page = report_html({"model": "var_toy", "accel": "none", "images": 8, "planned_images": 8, "complete": True},
                       {}, records, contact_sheet(rows, cell=48), ["class 0", "class 1", "class 2"])
    (tmp_path / "report.html").write_text(page)
    shot = tmp_path / "shot.png"
    done = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--window-size=1000,1400", f"--screenshot={shot}", (tmp_path / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.exists(), done.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # the sheet's cells: a colour no text or rule on the page has (light blue-green), over their full size
    cell = (np.abs(img - np.array([0, 200, 255])).sum(-1) < 30)
    assert cell.sum() >= 4 * 40 * 40, cell.sum()
    # the speed plot: matplotlib's default line colour, somewhere below the sheet
    line = (np.abs(img - np.array([31, 119, 180])).sum(-1) < 40)
    assert line.sum() > 100 and line.nonzero()[0].min() > cell.nonzero()[0].min()
