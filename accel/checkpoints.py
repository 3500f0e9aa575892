"""Loading the released checkpoints unchanged: local path or s3://, safetensors or torch files.

torch files are read with `weights_only=True`, so a checkpoint from an untrusted place cannot run code.
Keys are matched strictly; a mismatch is reported with the keys that are missing, unexpected or of the
wrong shape.
"""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import unquote, urlsplit

import torch

from accel.errors import ArgenError

CACHE_DIR = Path(os.environ.get("ARGEN_CACHE", Path.home() / ".cache" / "argen"))


def local_path(uri: str | os.PathLike, what: str = "path") -> Path:
    """A local path, or a file URI as RFC 8089 reads it: file:///abs/path or file://localhost/abs/path (and
    file:/abs/path). file://name/... names a host, so it is refused rather than read as a relative folder."""
    text = str(uri)
    if not text[:5].lower() == "file:":
        return Path(text).expanduser()
    parts = urlsplit(text)
    how = "pass file:///absolute/path, or the plain path without file:"
    if parts.netloc.lower() not in ("", "localhost"):
        raise ArgenError(f"{what}={text!r} is not an absolute file URI: file://{parts.netloc}/ names a host; {how}")
    if not parts.path.startswith("/"):
        raise ArgenError(f"{what}={text!r} is a file URI whose path is not absolute; {how}")
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        raise ArgenError(f"{what}={text!r} has a query or fragment (? or #), which a file URI cannot carry here; "
                         f"percent-encode them (%3F, %23) or pass the plain path")
    return Path(unquote(parts.path))


def local_folder(uri: str | os.PathLike, what: str, how: str) -> Path:
    """local_path(uri) of a model read from a folder (a text encoder, CLIP), which is never downloaded: a URI
    of another scheme (s3://...) is refused, naming the setting; `how` says where to get the folder."""
    text = str(uri)
    if "://" in text and text[:5].lower() != "file:":
        raise ArgenError(f"{what}={text!r}: this is read from a local folder, not a URI; copy it to each "
                         f"worker's disk. {how}")
    return local_path(text, what)


_s3_client_factory: Callable[[], Any] | None = None


def use_s3_client(factory: Callable[[], Any] | None) -> None:
    """Where s3:// inputs are read from in this process: a function making a boto3 S3 client (argen's jobs and
    workers pass the run's storage settings); None = boto3's defaults (AWS_ENDPOINT_URL, the credential chain)."""
    global _s3_client_factory
    _s3_client_factory = factory


def s3_client() -> Any:
    if _s3_client_factory is not None:
        return _s3_client_factory()
    import boto3

    return boto3.client("s3")


def cached_s3_object(uri: str, folder: str = "checkpoints", client: Any = None) -> Path:
    """A local copy of an s3:// object, downloaded once into the cache. The cache entry is keyed by the store's
    endpoint, the bucket and key, and the object's ETag and size (a HEAD request each time): an object replaced
    under the same key is downloaded again, and the same s3://bucket/key on two stores are two entries. The
    file name is a hash, never user text."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket or not key:
        raise ArgenError(f"{uri!r} is not of the form s3://bucket/key")
    client = client or s3_client()
    head = client.head_object(Bucket=bucket, Key=key)
    ident = "\0".join([str(client.meta.endpoint_url), bucket, key, str(head.get("ETag")),
                       str(head.get("ContentLength"))])
    dest = CACHE_DIR / folder / (hashlib.sha256(ident.encode()).hexdigest()[:32] + Path(key).suffix)
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".part{os.getpid()}")
        client.download_file(bucket, key, str(tmp))
        tmp.replace(dest)
    return dest


def existing_file(uri: str | os.PathLike, what: str = "checkpoint") -> Path:
    """local_path(uri), which must be a file: else an error naming the setting."""
    path = local_path(uri, what)
    if not path.is_file():
        raise ArgenError(f"{_setting(what)}={str(uri)!r}: the file {str(path)!r} does not exist; pass the path of the released "
                         f"file or an s3:// URI")
    return path


# where each load_generator() argument is set in argen generate's config
JOB_KEYS = {"checkpoint": "model.checkpoint", "tokenizer_checkpoint": "model.tokenizer_checkpoint",
            "drafter_checkpoint": "accel.options.drafter_checkpoint"}


def _setting(what: str) -> str:
    """A load_generator() argument with its argen generate key, for messages."""
    return what + (f" ({JOB_KEYS[what]} in argen generate)" if what in JOB_KEYS else "")


def read_checkpoint(path_or_uri: str | os.PathLike, what: str = "checkpoint") -> Any:
    """The raw object stored in a checkpoint file (a state dict, or a dict wrapping one). `what` names the
    setting it came from, for the messages."""
    uri = str(path_or_uri)
    if uri.startswith("s3://"):
        try:
            path = cached_s3_object(uri)
        except ArgenError:
            raise
        except Exception as e:  # botocore's errors name neither the setting nor the object
            raise ArgenError(f"{_setting(what)}={uri!r} could not be downloaded ({type(e).__name__}: {str(e)[:200]}); check "
                             f"the bucket and key, the credentials (AWS_* or the instance role) and, for an "
                             f"S3-compatible store, storage.endpoint_url") from None
    else:
        path = existing_file(uri, what)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        # The released MAR and LlamaGen training files carry their argparse.Namespace of training
        # arguments next to the weights; that plain attribute holder is the one class let through.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with code in them are refused here
        raise ArgenError(f"could not read {str(path)!r} as a weights-only torch checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200]}); argen never unpickles arbitrary objects") from e


def unwrap_state_dict(obj: Any, prefer: Iterable[str] = ("model_ema", "model", "state_dict", "module")
                      ) -> dict[str, torch.Tensor]:
    """The weights inside a training checkpoint: the first of `prefer` present, else the dict itself."""
    if not isinstance(obj, Mapping):
        raise ArgenError(f"the checkpoint file holds a {type(obj).__name__}, expected a dict of tensors (a state_dict, "
                         f"or a training checkpoint with one under {list(prefer)}); pass the released weights file")
    for key in prefer:
        if key in obj and isinstance(obj[key], Mapping):
            return dict(obj[key])
    return dict(obj)


def _short(items: list[str], n: int = 12) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def check_keys(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise listing every missing / unexpected / wrong-shape key (strict matching, buffers included)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(f"{k} {tuple(state_dict[k].shape)} (expected {tuple(expected[k].shape)})"
                   for k in set(expected) & set(state_dict) if tuple(state_dict[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_short(unexpected)}")
        if wrong:
            parts.append(f"wrong shapes: {_short(wrong)}")
        raise ArgenError(f"{what} does not match the model: " + "; ".join(parts)
                         + ". Check that the checkpoint is the one released for this model name.")


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    check_keys(module, state_dict, what)
    module.load_state_dict(state_dict, strict=True)


def save_safetensors(module_or_state: torch.nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    state = module_or_state.state_dict() if isinstance(module_or_state, torch.nn.Module) else module_or_state
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path), metadata=metadata)
