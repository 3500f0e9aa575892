"""`argen verify output.uri=... [storage=... storage.endpoint_url=...]`: check a run's shards against their stats.

Read-only. From run.json it takes the plan (shards, samples, shard size, seed, model, classes), then for
every planned shard checks:

  committed   the stats file (the commit marker) exists, is complete, and names this shard and its count
  tar         bytes and sha256 equal the stats; members are exactly `{shard:06d}_{index:06d}.{cls|txt,json,png}`
  samples     every PNG decodes to an RGB image of the run's size; each sample's key, index, seed (and
              class, when the plan lists classes) are the plan's
  features    with eval.features: the features file has one finite row per sample

and that manifest.parquet has exactly one row per committed shard with the same sha256, bytes and count.
It prints one line per problem and exits 1 when anything is wrong, 0 when the output is complete and
consistent, 2 on bad input (no run.json, a bad output.uri). Incomplete writes left by a writer that died
(temporary files, open multipart uploads) are listed as notes: they are invisible to readers, and the next
`argen generate` removes them.
"""
from __future__ import annotations

import io
import json
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from accel.api import ArgenError
from pipeline import layout

MEMBER = re.compile(r"^(\d{6})_(\d{6})\.(cls|txt|json|png)$")
SHOW = 100  # problems printed in full; the rest are counted


@dataclass
class RunInfo:
    """What run.json says the output should hold."""

    num_shards: int
    num_samples: int
    shard_size: int
    seed: int
    model: str
    features: str
    conditions: list[int] | None  # the planned class of every sample, when the plan lists classes

    def count(self, shard: int) -> int:
        return min((shard + 1) * self.shard_size, self.num_samples) - shard * self.shard_size


@dataclass
class Verdict:
    uri: str
    planned_shards: int = 0
    committed_shards: int = 0
    images: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read_run_info(sink: Any) -> RunInfo:
    """The plan recorded in run.json; ArgenError if there is none."""
    if not sink.exists(layout.RUN_JSON):
        raise ArgenError(f"output.uri={sink.uri} has no run.json; pass the output.uri of an argen generate run")
    try:
        run = json.loads(sink.read(layout.RUN_JSON))
        plan, settings = run["plan"], run["plan"]["settings"]
        classes, per_class = settings.get("data.classes"), settings.get("data.per_class")
        conditions = None
        if classes is not None and per_class is not None:
            from pipeline.plan import balanced_conditions

            conditions = balanced_conditions(classes, int(per_class))
        return RunInfo(num_shards=int(plan["num_shards"]), num_samples=int(plan["num_samples"]),
                       shard_size=int(settings["output.shard_size"]), seed=int(settings["seed"]),
                       model=str(settings["model.name"]), features=str(settings.get("eval.features") or "none"),
                       conditions=conditions)
    except (ValueError, KeyError, TypeError) as e:
        raise ArgenError(f"{sink.uri}/run.json is not an argen run record ({type(e).__name__}: {e}); "
                         f"pass the output.uri of an argen generate run") from None


def _check_png(data: bytes) -> tuple[str | None, tuple[int, int] | None]:
    """(problem or None, (width, height)) of one PNG member."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            im.verify()  # structure and chunk CRCs
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # every pixel decodes
            mode, size = im.mode, im.size
    except Exception as e:
        return f"unreadable PNG ({type(e).__name__}: {str(e)[:120]})", None
    if fmt != "PNG":
        return f"not a PNG ({fmt})", size
    if mode != "RGB":
        return f"PNG mode {mode}, expected RGB", size
    return None, size


def check_tar(data: bytes, shard: int, info: RunInfo) -> list[str]:
    """Problems with one shard's tar: member names, PNGs, per-sample metadata."""
    from pipeline.plan import sample_seed
    from pipeline.shards import iter_tar

    count = info.count(shard)
    problems: list[str] = []
    members: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    try:
        for name, payload in iter_tar(data):
            m = MEMBER.match(name)
            if m is None or int(m.group(1)) != shard:
                problems.append(f"unexpected tar member {name[:80]!r} (expected {layout.shard_name(shard)}_NNNNNN.cls|txt|json|png)")
                continue
            key = f"{m.group(1)}_{m.group(2)}"
            if key not in members:
                members[key] = {}
                order.append(key)
            if m.group(3) in members[key]:
                problems.append(f"tar member {name} appears twice")
            members[key][m.group(3)] = payload
    except Exception as e:  # truncated or not a tar
        return [f"unreadable tar ({type(e).__name__}: {str(e)[:120]})"]
    expected = [layout.sample_key(shard, j) for j in range(count)]
    if order != expected:
        missing = sorted(set(expected) - set(order))
        extra = sorted(set(order) - set(expected))
        what = []
        if missing:
            what.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if extra:
            what.append(f"extra {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
        if not missing and not extra:
            what.append("out of order")
        problems.append(f"tar holds {len(order)} samples, expected {count} ({'; '.join(what)})")
    size = None
    for j, key in enumerate(order):
        parts = members[key]
        exts = set(parts)
        if exts not in ({"cls", "json", "png"}, {"txt", "json", "png"}):
            problems.append(f"sample {key} has members {sorted(exts)}, expected png, json and cls or txt")
            continue
        bad, wh = _check_png(parts["png"])
        if bad:
            problems.append(f"sample {key}: {bad}")
        try:
            meta = json.loads(parts["json"])
        except ValueError as e:
            problems.append(f"sample {key}: unreadable {key}.json ({e})")
            continue
        index = shard * info.shard_size + int(key[7:])
        want = {"key": key, "index": index, "seed": sample_seed(info.seed, index), "model": info.model}
        for field_name, value in want.items():
            if meta.get(field_name) != value:
                problems.append(f"sample {key}: {field_name}={meta.get(field_name)!r}, the plan says {value!r}")
        if "cls" in parts:
            try:
                cls = int(parts["cls"].decode("ascii"))
            except ValueError:
                problems.append(f"sample {key}: {key}.cls is not an integer class id")
                cls = None
            if cls is not None and meta.get("condition") != cls:
                problems.append(f"sample {key}: class {cls} in .cls but {meta.get('condition')!r} in .json")
            if cls is not None and info.conditions is not None and index < len(info.conditions) \
                    and cls != info.conditions[index]:
                problems.append(f"sample {key}: class {cls}, the plan says {info.conditions[index]}")
        elif meta.get("condition") != parts["txt"].decode("utf-8", errors="replace"):
            problems.append(f"sample {key}: the prompt in .txt differs from the condition in .json")
        if wh is not None:
            side = meta.get("image_size")
            if side is not None and wh != (side, side):
                problems.append(f"sample {key}: image {wh[0]}x{wh[1]}, expected {side}x{side}")
            if size is None:
                size = wh
            elif wh != size:
                problems.append(f"sample {key}: image {wh[0]}x{wh[1]}, other samples are {size[0]}x{size[1]}")
    return problems


def check_shard(sink: Any, shard: int, info: RunInfo, present: set[str]) -> tuple[dict[str, Any] | None, list[str]]:
    """(stats record if committed, problems) of one planned shard."""
    import numpy as np

    from pipeline.shards import sha256_hex
    from pipeline.stats import check_stats

    stats_key, tar_key = layout.stats_key(shard), layout.tar_key(shard)
    if stats_key not in present:
        why = "a tar without stats: its write did not finish" if tar_key in present else "no tar either"
        return None, [f"not committed (no {stats_key}; {why}); run argen generate again to finish it"]
    try:
        record = json.loads(sink.read(stats_key))
    except Exception as e:
        return None, [f"{stats_key} is unreadable ({type(e).__name__}: {str(e)[:120]})"]
    problems = [f"{stats_key}: {p}" for p in check_stats(record)] if isinstance(record, dict) else \
        [f"{stats_key} holds a {type(record).__name__}, expected a stats record"]
    if problems:
        return None, problems
    count = info.count(shard)
    if record["shard"] != shard or record["count"] != count:
        problems.append(f"{stats_key} says shard {record['shard']} with {record['count']} samples, "
                        f"expected shard {shard} with {count}")
    if tar_key not in present:
        return record, problems + [f"committed but {tar_key} is missing"]
    data = sink.read(tar_key)
    if len(data) != record["bytes"]:
        problems.append(f"{tar_key} has {len(data)} bytes, stats say {record['bytes']}")
    digest = sha256_hex(data)
    if digest != record["sha256"]:
        problems.append(f"{tar_key} sha256 {digest[:16]}..., stats say {record['sha256'][:16]}...")
    problems += [f"{tar_key}: {p}" for p in check_tar(data, shard, info)]
    if info.features != "none":
        fkey = layout.features_key(shard)
        if fkey not in present:
            problems.append(f"{fkey} is missing (the run has eval.features={info.features})")
        else:
            try:
                feats = np.load(io.BytesIO(sink.read(fkey)), allow_pickle=False)
                if feats.ndim != 2 or feats.shape[0] != count:
                    problems.append(f"{fkey} has shape {feats.shape}, expected ({count}, dim)")
                elif not np.isfinite(feats).all():
                    problems.append(f"{fkey} holds non-finite values")
            except Exception as e:
                problems.append(f"{fkey} is unreadable ({type(e).__name__}: {str(e)[:120]})")
    return record, problems


def check_manifest(sink: Any, records: dict[int, dict[str, Any]], present: set[str]) -> list[str]:
    import pyarrow.parquet as pq

    if layout.MANIFEST not in present:
        return ["manifest.parquet is missing; run argen generate again to write it"]
    try:
        rows = pq.read_table(io.BytesIO(sink.read(layout.MANIFEST))).to_pylist()
    except Exception as e:
        return [f"manifest.parquet is unreadable ({type(e).__name__}: {str(e)[:120]})"]
    problems = []
    seen: dict[int, dict[str, Any]] = {}
    for row in rows:
        s = row.get("shard")
        if s in seen:
            problems.append(f"manifest.parquet lists shard {s} twice")
        seen[s] = row
    for s in sorted(set(seen) - set(records)):
        problems.append(f"manifest.parquet lists shard {s}, which is not committed")
    missing = sorted(set(records) - set(seen))
    if missing:
        problems.append(f"manifest.parquet lacks {len(missing)} committed shard(s) ({', '.join(map(str, missing[:10]))}"
                        f"{' ...' if len(missing) > 10 else ''}); run argen generate again to rewrite it")
    for s in sorted(set(seen) & set(records)):
        row, rec = seen[s], records[s]
        for col in ("sha256", "bytes", "count"):
            if row.get(col) != rec[col]:
                problems.append(f"manifest.parquet shard {s}: {col}={row.get(col)!r}, stats say {rec[col]!r}")
    return problems


def verify_output(sink: Any, threads: int = 8) -> Verdict:
    """Check every planned shard of the run at `sink`, then its manifest. Reads only."""

    info = read_run_info(sink)
    verdict = Verdict(uri=sink.uri, planned_shards=info.num_shards)
    present = set(sink.list())
    records: dict[int, dict[str, Any]] = {}

    def one(s: int) -> tuple[int, dict[str, Any] | None, list[str]]:
        try:
            record, problems = check_shard(sink, s, info, present)
        except Exception as e:  # a read that failed: report it, go on with the others
            record, problems = None, [f"could not be checked ({type(e).__name__}: {str(e)[:160]})"]
        return s, record, problems

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for s, record, problems in pool.map(one, range(info.num_shards)):
            if record is not None:
                records[s] = record
            verdict.problems += [f"shard {layout.shard_name(s)}: {p}" for p in problems]
    verdict.committed_shards = len(records)
    verdict.images = sum(int(r["count"]) for r in records.values())
    for key in sorted(present):
        s = layout.shard_of_stats_key(key)
        if s is not None and s >= info.num_shards:
            verdict.problems.append(f"{key}: a stats file for shard {s}, but the plan has {info.num_shards} shards")
    verdict.problems += check_manifest(sink, records, present)
    verdict.notes += [f"incomplete write {k} (a writer died; invisible to readers; the next argen generate "
                      f"removes it)" for k in sink.incomplete_writes()]
    return verdict


def print_verdict(v: Verdict, where: str) -> None:
    head = (f"argen verify: {where}: {v.committed_shards} of {v.planned_shards} planned shards committed, "
            f"{v.images} images")
    if v.ok:
        print(f"{head}; every shard matches its stats (count, sha256, readable PNGs) and the manifest: OK", flush=True)
    else:
        print(f"{head}; {len(v.problems)} problem(s):", flush=True)
        for p in v.problems[:SHOW]:
            print(f"  {p}", flush=True)
        if len(v.problems) > SHOW:
            print(f"  ... and {len(v.problems) - SHOW} more", flush=True)
    for n in v.notes[:SHOW]:
        print(f"  note: {n}", flush=True)


def _verify(cfg: DictConfig) -> int:
    from pipeline.redaction import describe_error, redact_url
    from pipeline.sinks import S3Sink, open_sink

    where = redact_url(str(cfg.output.uri))
    try:
        sink = open_sink(str(cfg.output.uri), cfg.get("storage"))
        where = sink.describe() if isinstance(sink, S3Sink) else sink.uri
        verdict = verify_output(sink)
    except ArgenError:
        raise
    except Exception as e:  # storage unreachable, credentials refused ...
        print(f"argen verify: error: cannot read output.uri={where}: {describe_error(e)}", file=sys.stderr,
              flush=True)
        return 2
    print_verdict(verdict, where)
    return 0 if verdict.ok else 1


def main() -> int:
    from jobs.common import run_job

    sys.exit(run_job("verify", _verify))  # 0, 1 or 2, always as the exit status


if __name__ == "__main__":
    from jobs.cli import entry

    entry(main)
