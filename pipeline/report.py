"""The run's pictures: a contact sheet of generated samples and report.html (totals, quality, the sheet).

The sheet is built from the first committed shards only (classes are interleaved across shards, so
shard 0 already mixes them): one row per class for class-conditional runs, in plan order for prompts.
"""
from __future__ import annotations

import html
import io
import json
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pipeline.shards import decode_png, read_shard
from pipeline.stats import shard_tar_key

SHEET_KEY, HTML_KEY = "contact_sheet.png", "report.html"


def pick_samples(samples: Sequence[dict[str, Any]], per_row: int, max_rows: int) -> list[list[np.ndarray]]:
    """Rows of decoded images: by class when samples carry a class id, else in order."""
    rows: dict[Any, list[np.ndarray]] = {}
    for s in samples:
        label = s.get("cls", "all")
        row = rows.setdefault(label, [])
        if len(row) < (per_row if label != "all" else per_row * max_rows):
            row.append(decode_png(s["png"]))
    ordered = [rows[k] for k in sorted(rows, key=lambda k: (isinstance(k, str), k))][:max_rows]
    if ordered and ordered[0] is rows.get("all"):  # prompts: cut the one long row into rows
        flat = ordered[0]
        ordered = [flat[i:i + per_row] for i in range(0, len(flat), per_row)][:max_rows]
    return ordered


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], cell: int = 64, pad: int = 2) -> bytes:
    """PNG bytes of a grid of images, each resized to cell x cell."""
    n_cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (n_cols * (cell + pad) + pad, len(rows) * (cell + pad) + pad), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            tile = Image.fromarray(img)
            if tile.size != (cell, cell):
                tile = tile.resize((cell, cell), Image.NEAREST if tile.size[0] < cell else Image.LANCZOS)
            sheet.paste(tile, (pad + c * (cell + pad), pad + r * (cell + pad)))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def rows_are_full(samples: Sequence[dict[str, Any]], per_row: int, max_rows: int) -> bool:
    """Whether pick_samples would fill max_rows rows of per_row images from these samples."""
    if any("cls" not in s for s in samples):
        return len(samples) >= per_row * max_rows
    counts: dict[Any, int] = {}
    for s in samples:
        counts[s["cls"]] = counts.get(s["cls"], 0) + 1
    first = sorted(counts)[:max_rows]  # the classes pick_samples shows
    return len(first) == max_rows and all(counts[k] >= per_row for k in first)


def write_pictures(sink: Any, committed_shards: Sequence[int], report: dict[str, Any], per_row: int = 8,
                   max_rows: int = 10, max_shards: int = 16) -> None:
    """contact_sheet.png from the first committed shards (as many as fill the rows, at most max_shards: small
    shards hold only a few samples of each class), then report.html."""
    samples: list[dict[str, Any]] = []
    for shard in sorted(committed_shards)[:max_shards]:
        samples.extend(read_shard(sink.read(shard_tar_key(shard))))
        if rows_are_full(samples, per_row, max_rows):
            break
    rows = pick_samples(samples, per_row, max_rows)
    if rows:
        sink.write(SHEET_KEY, contact_sheet(rows))
    sink.write(HTML_KEY, report_html(report, has_sheet=bool(rows)).encode("utf-8"))


def report_html(report: dict[str, Any], has_sheet: bool) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in sorted(report.items()) if not isinstance(v, (dict, list)))
    sheet = f'<h2>Samples</h2><img src="{SHEET_KEY}" alt="contact sheet">' if has_sheet else ""
    details = html.escape(json.dumps({k: v for k, v in report.items() if isinstance(v, (dict, list))},
                                     indent=1, sort_keys=True))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>argen run report</title></head><body>"
            f"<h1>argen run report</h1><table>{rows}</table>{sheet}<h2>Details</h2><pre>{details}</pre>"
            f"</body></html>\n")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
