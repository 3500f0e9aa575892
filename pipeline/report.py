"""The run's pictures: a contact sheet of generated samples and report.html (totals, quality, the sheet).

The sheet is built from the first committed shards, read one at a time until its rows are full (classes
are interleaved across shards, so large shards fill it from shard 0): one row per class (the smallest
class ids) for class-conditional runs, in plan order for prompts.
"""
from __future__ import annotations

import io
import json
import logging
from typing import Any, Sequence

import numpy as np
from PIL import Image

from pipeline import layout
from pipeline.redaction import describe_error
from pipeline.report_page import report_html
from pipeline.shards import decode_png, read_shard

log = logging.getLogger("argen.pipeline")

SHEET_KEY, HTML_KEY = layout.CONTACT_SHEET, layout.REPORT_HTML


def thumbnail(img: np.ndarray, cell: int) -> np.ndarray:
    """An image resized to cell x cell (nearest when enlarging, so small images stay sharp)."""
    tile = Image.fromarray(img)
    if tile.size != (cell, cell):
        tile = tile.resize((cell, cell), Image.NEAREST if tile.size[0] < cell else Image.LANCZOS)
    return np.asarray(tile)


class SheetRows:
    """The sheet's images, picked one sample at a time: per_row of each of the max_rows smallest class ids seen
    (for prompts: the first per_row x max_rows), decoded and shrunk to cell x cell as they come, so memory
    stays at one sheet whatever the number and size of the shards read."""

    def __init__(self, per_row: int, max_rows: int, cell: int | None = 64):
        self.per_row, self.max_rows, self.cell = per_row, max_rows, cell
        self.by_class: dict[int, list[np.ndarray]] = {}
        self.in_order: list[np.ndarray] = []
        self.prompts: list[str] = []  # prompt runs: the text of each image in in_order

    def _image(self, png: bytes) -> np.ndarray:
        img = decode_png(png)
        return img if self.cell is None else thumbnail(img, self.cell)

    def add(self, sample: dict[str, Any]) -> None:
        label = sample.get("cls")
        if label is None:  # prompts: plan order
            if len(self.in_order) < self.per_row * self.max_rows:
                self.in_order.append(self._image(sample["png"]))
                self.prompts.append(str(sample.get("txt", "")))
            return
        row = self.by_class.get(label)
        if row is None:
            if len(self.by_class) >= self.max_rows:
                largest = max(self.by_class)
                if label > largest:
                    return
                del self.by_class[largest]
            row = self.by_class[label] = []
        if len(row) < self.per_row:
            row.append(self._image(sample["png"]))

    def full(self) -> bool:
        if self.in_order:
            return len(self.in_order) >= self.per_row * self.max_rows
        return len(self.by_class) >= self.max_rows and all(len(r) >= self.per_row for r in self.by_class.values())

    def labels(self) -> list[str]:
        """What each row shows: its class id, or for prompts the first prompt of the row."""
        if self.in_order:
            return [self.prompts[i] for i in range(0, len(self.in_order), self.per_row)]
        return [f"class {k}" for k in sorted(self.by_class)]

    def rows(self) -> list[list[np.ndarray]]:
        if self.in_order:
            return [self.in_order[i:i + self.per_row] for i in range(0, len(self.in_order), self.per_row)]
        return [self.by_class[k] for k in sorted(self.by_class)]


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], cell: int = 64, pad: int = 2) -> bytes:
    """PNG bytes of a grid of images, each resized to cell x cell."""
    n_cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (n_cols * (cell + pad) + pad, len(rows) * (cell + pad) + pad), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            sheet.paste(Image.fromarray(thumbnail(img, cell)), (pad + c * (cell + pad), pad + r * (cell + pad)))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()


def build_sheet(sink: Any, committed_shards: Sequence[int], per_row: int = 8, max_rows: int = 10,
                max_shards: int = 16) -> tuple[bytes | None, list[str]]:
    """The contact sheet's PNG from the first committed shards (read one at a time until the rows are full, at most
    max_shards: small shards hold only a few samples of each class) and each row's label."""
    picker = SheetRows(per_row, max_rows)
    for shard in sorted(committed_shards)[:max_shards]:
        try:
            for sample in read_shard(sink.read(layout.tar_key(shard))):
                picker.add(sample)
        except Exception as e:  # a shard damaged since it was checked: the sheet is made of the others
            log.warning("contact sheet: shard %d could not be read (%s); skipped", shard, describe_error(e))
            continue
        if picker.full():
            break
    rows = picker.rows()
    return (contact_sheet(rows) if rows else None), picker.labels()


def write_pictures(sink: Any, records: Sequence[dict[str, Any]], report: dict[str, Any], per_row: int = 8,
                   max_rows: int = 10, max_shards: int = 16) -> None:
    """contact_sheet.png, then report.html (which shows it inline, rows labelled)."""
    sheet, labels = build_sheet(sink, [int(r["shard"]) for r in records], per_row, max_rows, max_shards)
    if sheet is not None:
        sink.write(SHEET_KEY, sheet)
    write_report_html(sink, report, records, sheet, labels)


def write_report_html(sink: Any, report: dict[str, Any], records: Sequence[dict[str, Any]] | None = None,
                      sheet: bytes | None = None, labels: Sequence[str] | None = None) -> None:
    """report.html from report.json's content and what the output holds (run.json, the manifest's rows and the
    contact sheet, read from the sink where not given)."""
    def read_json(key: str) -> dict[str, Any] | None:
        try:
            return json.loads(sink.read(key)) if sink.exists(key) else None
        except Exception:
            return None

    run = read_json(layout.RUN_JSON)
    if records is None:
        try:
            import pyarrow.parquet as pq

            records = pq.read_table(io.BytesIO(sink.read(layout.MANIFEST))).to_pylist()
        except Exception:
            records = []
    if sheet is None and sink.exists(SHEET_KEY):
        sheet = sink.read(SHEET_KEY)
    if labels is None:
        labels = report.get("contact_sheet_rows") or []
    sink.write(HTML_KEY, report_html(report, run, records, sheet, labels).encode("utf-8"))
