"""Conditions list -> deterministic shards: ids, conditions and per-sample seeds.

The plan is a pure function of the config. Shard `s` holds samples `[s*shard_size, (s+1)*shard_size)`
of the condition list, and sample `i` gets seed `sample_seed(run_seed, i)`. Class lists are
class-balanced and interleaved: round r holds one sample of every class, so every shard mixes classes.

`plan_settings()` lists, under their config names, every setting a shard's bytes depend on;
`run.json` records them with their hash, and `diff_settings()` names what changed on a resume.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from accel.api import ArgenError, option_int
from pipeline import layout

Condition = int | str
log = logging.getLogger("argen.plan")
SEED_BITS = 63  # torch.Generator.manual_seed takes any non-negative 64-bit value; stay signed-safe


def sample_seed(run_seed: int, index: int) -> int:
    """The seed of sample `index` of a run with seed `run_seed`: hash(run seed, i), stable everywhere."""
    digest = hashlib.sha256(f"argen-sample-seed:{int(run_seed)}:{int(index)}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << SEED_BITS) - 1)


def balanced_conditions(classes: Sequence[int], per_class: int) -> list[int]:
    """`per_class` of each class, interleaved: [c0, c1, ..., cK, c0, c1, ...]."""
    return [int(c) for _ in range(per_class) for c in classes]


MAX_SHARDS = 1_000_000  # shard ids and in-shard indices are written with 6 digits


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: a shard's samples, their conditions and seeds."""

    shard: int
    start: int                      # global index of the shard's first sample
    conditions: tuple[Condition, ...]
    seeds: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.conditions)

    def keys(self) -> list[str]:
        return [layout.sample_key(self.shard, j) for j in range(self.count)]


@dataclass(frozen=True)
class Plan:
    conditions: tuple[Condition, ...]
    seed: int
    shard_size: int
    settings: dict[str, Any]        # config name -> value; what the shards' bytes depend on
    hash: str

    @property
    def num_samples(self) -> int:
        return len(self.conditions)

    @property
    def num_shards(self) -> int:
        return -(-self.num_samples // self.shard_size)

    def shard(self, s: int) -> ShardTask:
        if not 0 <= s < self.num_shards:
            raise ArgenError(f"shard {s} is outside this plan's shards [0, {self.num_shards})")
        lo, hi = s * self.shard_size, min((s + 1) * self.shard_size, self.num_samples)
        return ShardTask(shard=s, start=lo, conditions=tuple(self.conditions[lo:hi]),
                         seeds=tuple(sample_seed(self.seed, i) for i in range(lo, hi)))

    def shards(self) -> list[ShardTask]:
        return [self.shard(s) for s in range(self.num_shards)]

    def count(self, s: int) -> int:
        return min((s + 1) * self.shard_size, self.num_samples) - s * self.shard_size


# -- conditions -------------------------------------------------------------------------------

def _parse_condition(value: Any, where: str) -> Condition:
    if isinstance(value, bool):
        raise ArgenError(f"{where}: {value!r} is neither a class id (integer) nor a prompt (text)")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ArgenError(f"{where}: empty condition; write one class id or prompt per entry")
        try:
            return int(text)
        except ValueError:
            return text
    raise ArgenError(f"{where}: {value!r} is neither a class id (integer) nor a prompt (text)")


def _read_utf8(p: Path) -> str:
    """The file as text; a clear error naming the line of the first byte that is not UTF-8."""
    data = p.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ArgenError(f"{p}:{line}: byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8; save the file "
                         f"as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {p.name} > fixed{p.suffix}`)") from None
    return text[1:] if text.startswith("\ufeff") else text  # a byte-order mark is not part of the first line


def _parse_prompt(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ArgenError(f"{where}: {value!r} is not a prompt; a text-to-image model takes one text prompt per "
                         f"sample (a JSON string, or an object with a \"prompt\" field)")
    text = value.strip()
    if not text:
        raise ArgenError(f"{where}: empty prompt; write a description of the image or remove the entry (an empty "
                         f"prompt is not taken as an unconditional sample)")
    return text


def read_conditions_file(path: str | Path, prompts: bool = False, locations: list[str] | None = None
                         ) -> list[Condition]:
    """Class ids or prompts, one sample per entry, from a .txt, .jsonl or .parquet file (UTF-8).

    Class ids (prompts=False):
      txt: one per line (an integer is a class id, other text a prompt; blank lines are skipped).
      jsonl: one JSON value per line (integer or string), or an object with "class", "condition" or "prompt".
      parquet: a column named "condition", "class" or "prompt", or a single column.
    Prompts (prompts=True, for text-to-image models): every entry is text, taken as written (outer
    whitespace stripped; "1984" stays the prompt "1984").
      txt: one prompt per line; blank lines are skipped (and counted in the log).
      jsonl: per line a JSON string, or an object with a "prompt" field.
      parquet: a "prompt" column, or a single column of strings.
    An empty prompt, a non-text value or a file that is not UTF-8 is an error naming its line or row.
    `locations`, when given, receives "file:line" (or "file row n") of each condition, for later checks' errors.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ArgenError(f"data.conditions_file={str(path)!r} does not exist or is not a file; "
                         f"pass a .txt, .jsonl or .parquet file of {'prompts' if prompts else 'class ids or prompts'}")
    suffix = p.suffix.lower()
    out: list[Condition] = []
    where: list[str] = [] if locations is None else locations
    _parse = _parse_prompt if prompts else _parse_condition

    def parse(value: Any, at: str) -> Condition:
        where.append(at)
        return _parse(value, at)
    fields = ("prompt",) if prompts else ("condition", "class", "prompt")
    if suffix == ".txt":
        blank = 0
        for n, line in enumerate(_read_utf8(p).splitlines(), 1):
            if line.strip():
                out.append(parse(line, f"{p}:{n}"))
            else:
                blank += 1
        if blank and prompts and out:
            log.info("%s: %d blank line(s) skipped; every other line is one prompt", p, blank)
    elif suffix == ".jsonl":
        for n, line in enumerate(_read_utf8(p).splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                shape = '"a prompt" string or {"prompt": "..."} object' if prompts else \
                    'integer, string or {"class": id} object'
                raise ArgenError(f"{p}:{n}: not valid JSON ({e.msg}): {line[:80]!r}; write one {shape} per line"
                                 ) from None
            if isinstance(value, dict):
                field = next((k for k in fields if k in value), None)
                if field is None:
                    names = " or ".join(f'"{k}"' for k in fields)
                    raise ArgenError(f"{p}:{n}: object without a {names} field: {line[:80]!r}")
                value = value[field]
            out.append(parse(value, f"{p}:{n}"))
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(p)
        except Exception as e:  # pyarrow raises several types for a broken file
            raise ArgenError(f"{p}: cannot be read as parquet ({type(e).__name__}: {e})") from None
        names = table.column_names
        column = next((c for c in fields if c in names), None)
        if column is None and len(names) == 1:
            column = names[0]
        if column is None:
            wanted = '"prompt"' if prompts else '"condition", "class" or "prompt"'
            raise ArgenError(f"{p}: no column named {wanted} among {names}; rename the column or write a "
                             f"single-column file")
        for n, value in enumerate(table.column(column).to_pylist()):
            out.append(parse(value, f"{p} row {n}"))
    else:
        raise ArgenError(f"data.conditions_file={str(path)!r} has suffix {suffix!r}; expected .txt, .jsonl or .parquet")
    if not out:
        raise ArgenError(f"data.conditions_file={str(path)!r} holds no conditions; write one "
                         f"{'prompt' if prompts else 'class id or prompt'} per entry")
    return out


def check_conditions(conditions: Sequence[Condition], num_classes: int | None, takes_prompts: bool,
                     model: str, locations: Sequence[str] | None = None) -> None:
    """Every condition is a class id in [0, num_classes), or a prompt for a text model. `locations`: where each
    came from (read_conditions_file's "file:line"), named in the error."""
    for i, c in enumerate(conditions):
        at = f"{locations[i]}: " if locations else ""
        if isinstance(c, str):
            if not takes_prompts:
                raise ArgenError(f"{at}condition {i} is the prompt {c[:60]!r}, but {model} is class-conditional; "
                                 f"pass class ids (integers)")
            continue
        if num_classes is not None and not 0 <= c < num_classes:
            raise ArgenError(f"{at}class id {c} (condition {i}) is outside [0, {num_classes}) for {model}; "
                             f"pass class ids from 0 to {num_classes - 1}")


# -- the plan ---------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """OmegaConf containers -> plain Python, for hashing and JSON."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return value


def _select(cfg: Any, key: str, default: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, default=default) if OmegaConf.is_config(cfg) else default


def conditions_digest(conditions: Sequence[Condition]) -> str:
    return hashlib.sha256(json.dumps(list(conditions), separators=(",", ":")).encode("utf-8")).hexdigest()


def settings_hash(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def build_plan(cfg: Any, num_classes: int | None, takes_prompts: bool = False) -> Plan:
    """The run's plan from its config (`seed`, `batch_size`, `data.*`, `output.shard_size`, `model`, `accel`).

    `num_classes`: the model's number of classes (None if not known); class ids are checked against it.
    """
    data = cfg.data
    shard_size = option_int("output.shard_size", cfg.output.shard_size, 1, hint="samples per shard, e.g. 1000")
    batch_size = option_int("batch_size", cfg.batch_size, 1, hint="samples per generate() call, e.g. 32")
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ArgenError(f"seed={seed!r}; expected a non-negative integer")
    model = str(cfg.model.name)

    settings: dict[str, Any] = {
        "seed": seed,
        "batch_size": batch_size,
        "output.shard_size": shard_size,
        "output.png_compress_level": int(cfg.output.png_compress_level),
        "model.name": model,
        "model.checkpoint": cfg.model.get("checkpoint"),
        "model.tokenizer_checkpoint": cfg.model.get("tokenizer_checkpoint"),
        "model.random_init": bool(cfg.model.get("random_init", False)),
        "model.options": _plain(cfg.model.get("options")) or {},
        "accel.name": str(cfg.accel.name),
        "accel.options": _plain(cfg.accel.get("options")) or {},
        # which per-shard objects exist (features.npy, logits.npy) depends on the extractor
        "eval.features": str(_select(cfg, "eval.features", "none") or "none"),
    }
    if str(cfg.get("precision", "auto")) != "auto":  # the output bits depend on it; auto: older plans unchanged
        settings["precision"] = str(cfg.get("precision"))
    if _select(cfg, "eval.image_size", None) is not None:  # only when set: older runs' plans stay the same
        settings["eval.image_size"] = _select(cfg, "eval.image_size", None)
    if not 0 <= settings["output.png_compress_level"] <= 9:
        raise ArgenError(f"output.png_compress_level={settings['output.png_compress_level']}; expected 0 to 9")

    locations: list[str] | None = None
    if data.get("conditions_file"):
        locations = []
        conditions = read_conditions_file(data.conditions_file, prompts=takes_prompts, locations=locations)
        settings["data.conditions_file"] = conditions_digest(conditions)  # the contents, not the path
    elif takes_prompts:
        raise ArgenError(f"{model} is a text-to-image model: pass data.conditions_file=<a .txt, .jsonl or .parquet "
                         f"file of prompts>; data.classes / data.per_class apply to class-conditional models")
    else:
        n = data.get("num_classes")
        if n is not None:
            n = option_int("data.num_classes", n, 1, hint="the number of classes to draw from")
            if num_classes is not None and n > num_classes:
                raise ArgenError(f"data.num_classes={n} but {model} has {num_classes} classes; "
                                 f"pass at most {num_classes} or leave it null")
        else:
            n = num_classes
        classes = _plain(data.get("classes"))
        if classes is None:
            if n is None:
                raise ArgenError(f"data.classes is null and the number of classes of {model} is not known; "
                                 f"set data.num_classes or data.classes")
            classes = list(range(n))
        if isinstance(classes, (int, str)) or not isinstance(classes, Sequence) or not classes:
            raise ArgenError(f"data.classes={classes!r}; expected a non-empty list of class ids, or null for all")
        parsed = []
        for c in classes:
            if isinstance(c, bool) or not isinstance(c, int):
                raise ArgenError(f"data.classes holds {c!r}; expected integer class ids")
            if n is not None and not 0 <= c < n:
                raise ArgenError(f"class id {c} in data.classes is outside [0, {n}); pass ids from 0 to {n - 1}")
            parsed.append(c)
        if len(set(parsed)) != len(parsed):
            raise ArgenError(f"data.classes repeats class ids {sorted({c for c in parsed if parsed.count(c) > 1})}; "
                             f"list each class once and set data.per_class")
        per_class = option_int("data.per_class", data.per_class, 1, hint="samples per class, e.g. 50 for FID-50k")
        check_shard_count(len(parsed) * per_class, shard_size)  # before listing that many conditions
        conditions = balanced_conditions(parsed, per_class)
        settings["data.classes"] = parsed
        settings["data.per_class"] = per_class
    check_conditions(conditions, num_classes, takes_prompts, model, locations)
    check_shard_count(len(conditions), shard_size)
    settings["num_samples"] = len(conditions)
    return Plan(conditions=tuple(conditions), seed=seed, shard_size=shard_size, settings=settings,
                hash=settings_hash(settings))


def check_shard_count(num_samples: int, shard_size: int) -> None:
    """Shard ids and in-shard sample indices are written with 6 digits (pipeline.layout)."""
    num_shards = -(-num_samples // shard_size)
    if num_shards > MAX_SHARDS or shard_size > MAX_SHARDS:
        raise ArgenError(f"{num_samples} samples in shards of output.shard_size={shard_size} make {num_shards} "
                         f"shards; shard ids and sample indices have 6 digits, so both must stay below "
                         f"{MAX_SHARDS:,}: use a shard size between {-(-num_samples // MAX_SHARDS)} and "
                         f"{MAX_SHARDS:,}")


def diff_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable lines for every setting that differs, by config name."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a != b:
            if key == "data.conditions_file":
                lines.append("data.conditions_file: the file's contents differ")
            else:
                sa, sb = json.dumps(a), json.dumps(b)
                if len(sa) > 80:
                    sa = sa[:77] + "..."
                if len(sb) > 80:
                    sb = sb[:77] + "..."
                lines.append(f"{key}: {sa} in the output, {sb} now")
    return lines
