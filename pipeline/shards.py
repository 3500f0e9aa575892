"""WebDataset tar writing and reading of one shard.

A shard's tar holds, for each sample, `<key>.cls` (class id; `<key>.txt` for a prompt, UTF-8, as
written in the conditions file), `<key>.json` (condition, seed, model, accel, options; "prompt" too
for prompts) and `<key>.png`, with keys `{shard:06d}_{index:06d}`: member names never hold any part
of a prompt. Member metadata is fixed (mtime, owner, mode), and PNG encoding is
deterministic, so the same pixels always give the same tar bytes.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
from PIL import Image
from webdataset import TarWriter

TAR_MTIME = 0  # fixed member mtime: reproducible bytes
TAR_USER = TAR_GROUP = "argen"


def encode_png(image: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (lossless, deterministic for a given compress_level)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {tuple(image.shape)}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def sample_metadata(key: str, index: int, condition: int | str, seed: int, model: str, accel: str,
                    options: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The `<key>.json` record of one sample (a prompt also under "prompt", as written in the conditions file)."""
    meta = {"key": key, "index": index, "condition": condition, "seed": seed, "model": model,
            "accel": accel, "options": options, "image_size": image_size}
    if isinstance(condition, str):
        meta["prompt"] = condition
    return meta


@dataclass
class ShardTarWriter:
    """Builds one shard's tar in memory, one sample at a time (in order)."""

    png_compress_level: int = 1
    count: int = 0
    _buf: io.BytesIO = field(default_factory=io.BytesIO)
    _writer: TarWriter | None = None

    def __post_init__(self) -> None:
        self._writer = TarWriter(self._buf, user=TAR_USER, group=TAR_GROUP, mode=0o444, mtime=TAR_MTIME,
                                 encoder=False)

    def add(self, key: str, image: np.ndarray, meta: dict[str, Any]) -> None:
        condition = meta["condition"]
        sample = {
            "__key__": key,
            "png": encode_png(image, self.png_compress_level),
            "json": json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8"),
        }
        if isinstance(condition, str):
            sample["txt"] = condition.encode("utf-8")
        else:
            sample["cls"] = str(int(condition)).encode("ascii")
        self._writer.write(sample)
        self.count += 1

    def finish(self) -> bytes:
        """Close the tar and return its bytes (the writer cannot be used afterwards)."""
        self._writer.close()
        data = self._buf.getvalue()
        self._buf = io.BytesIO()
        return data


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def iter_tar(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of a tar, in order."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            if member.isfile():
                yield member.name, tar.extractfile(member).read()


def read_shard(data: bytes) -> list[dict[str, Any]]:
    """A shard's samples as dicts {"__key__", "png": bytes, "json": dict, "cls": int | "txt": str}."""
    samples: dict[str, dict[str, Any]] = {}
    for name, payload in iter_tar(data):
        key, _, ext = name.partition(".")
        s = samples.setdefault(key, {"__key__": key})
        if ext == "json":
            s[ext] = json.loads(payload)
        elif ext == "cls":
            s[ext] = int(payload.decode("ascii"))
        elif ext == "txt":
            s[ext] = payload.decode("utf-8")
        else:
            s[ext] = payload
    return list(samples.values())


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))
