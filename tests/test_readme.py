"""README's examples run as written: the duckdb queries over a run's manifest.parquet."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.stats import manifest_parquet

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(containing: str) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    return [b for b in blocks if containing in b]


def test_the_manifest_columns_and_the_duckdb_example(tmp_path, monkeypatch):
    pytest.importorskip("duckdb")
    records = [{"shard": s, "count": 4 - (s == 2), "bytes": 1000 + s, "sha256": f"{s:064x}", "seconds": 2.0 + s,
                "generate_seconds": 1.5, "images_per_second": (4 - (s == 2)) / (2.0 + s), "flops": 1e9,
                "worker": f"w{s % 2}@host:1", "attempt": int(s == 1), "finished_at": "2026-12-07T00:00:00+00:00",
                "argen": "0.1.0"} for s in range(3)]
    (tmp_path / "argen_output").mkdir()
    (tmp_path / "argen_output" / "manifest.parquet").write_bytes(manifest_parquet(records))
    import pyarrow.parquet as pq

    columns = pq.read_table(tmp_path / "argen_output" / "manifest.parquet").column_names
    documented = re.findall(r"^\| `([a-z_0-9]+)`(?:, `([a-z_0-9]+)`)? \|", README.read_text(encoding="utf-8"), re.M)
    assert all(c in {name for pair in documented for name in pair} for c in columns), columns

    (block,) = python_blocks("import duckdb")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    shards, images, megabytes, per_second, retries = scope["totals"]
    assert (shards, images, retries) == (3, 11, 1) and megabytes == pytest.approx(3003 / 1e6)
    assert per_second == pytest.approx(11 / 9.0)
    assert [row[0] for row in scope["slowest"]] == [2, 1, 0]
