"""Where a run's objects go: LocalSink (a folder) and S3Sink (boto3, any S3-compatible store).

Every write is a whole object: LocalSink writes a temporary file and renames it; S3Sink does one
PUT, or a multipart upload that is completed or aborted, never left half done. Keys are relative
to the run's root ("run.json", "shards/000000.tar"). Credentials come from the environment or
boto3's usual chain and never appear in a sink's description, errors or logs.
"""
from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from accel.api import ArgenError
from pipeline import layout
from pipeline.redaction import add_url_secrets, describe_error, redact, redact_url

log = logging.getLogger("argen.storage")

PROBE_PREFIX = "_argen_probe/"
MiB = 1024 * 1024
PREFLIGHT_BUDGET_S = 20.0  # the probe's retries: a store that is down or never answers fails the start in ~30 s
MAX_BACKOFF_S = 30.0


class StorageUnavailable(RuntimeError):
    """The store did not answer within storage.retry_budget_s. Not bad input: the shard is retried, or the run
    stops with its committed shards kept."""


@runtime_checkable
class Sink(Protocol):
    uri: str

    def write(self, key: str, data: bytes) -> None: ...
    def read(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int | None: ...
    def read_versioned(self, key: str) -> tuple[bytes, str] | None: ...
    def create_if_absent(self, key: str, data: bytes) -> bool: ...
    def replace_if_unchanged(self, key: str, data: bytes, version: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def preflight(self) -> None: ...
    def incomplete_writes(self) -> list[str]: ...
    def clean_incomplete(self) -> int: ...


def is_run_object(key: str) -> bool:
    """What a run writes under output.uri (which may be a bucket's root, shared with other data): the clean-up
    of writes that died half-way touches only these."""
    return key.startswith(layout.RUN_FOLDERS) or key in layout.RUN_FILES


_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                    "ServiceUnavailable", "RequestLimitExceeded"}


def is_transient(e: BaseException) -> bool:
    """A storage error that waiting may cure: no connection, a timeout, a dropped stream, a 5xx or throttling."""
    from botocore.exceptions import (ClientError, ConnectionError, HTTPClientError, IncompleteReadError,
                                     SSLError)

    if isinstance(e, ClientError):
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or e.response.get("Error", {}).get("Code") in _TRANSIENT_CODES
    if isinstance(e, SSLError):
        return False  # a certificate problem does not go away by waiting
    return isinstance(e, (ConnectionError, HTTPClientError, IncompleteReadError))


def backoff_s(attempt: int, cap: float = MAX_BACKOFF_S, first: float = 0.25) -> float:
    """Exponential backoff with jitter: `first` s after the first failure, doubling up to `cap`, each wait between
    half and all of that, so that many workers retrying at once do not hit a recovering store together.
    (botocore's own quick retries have run inside each attempt already.)"""
    ceiling = min(cap, first * 2.0 ** attempt)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"bad object key {key!r}: expected a relative path without '..'")
    return key


# -- local ------------------------------------------------------------------------------------

class LocalSink:
    """A local folder; writes go to a temporary file in the same folder, then an atomic rename."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600; outputs are meant to be shared
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ArgenError(self._full_message(key, len(data), e)) from None
            raise

    def _full_message(self, key: str, size: int, e: OSError) -> str:
        try:
            free = f"{shutil.disk_usage(self.root).free} bytes free"
        except OSError:
            free = "free space unknown"
        return (f"output.uri={self.uri!r} is full ({e.strerror}) writing {key} ({size} bytes, {free}); nothing "
                f"half-written was kept. Free space there or pass another output.uri, then run the same command "
                f"again: committed shards are kept")

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int | None:
        """The file's size in bytes, None when it does not exist."""
        try:
            path = self._path(key)
            return path.stat().st_size if path.is_file() else None
        except FileNotFoundError:
            return None

    # compare-and-swap, for the lease: under an exclusive lock on the folder itself (flock: one machine, or a
    # shared filesystem that implements it), so that no lock file is left among the outputs
    def _locked(self):
        import contextlib
        import fcntl

        @contextlib.contextmanager
        def hold():
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock

        return hold()

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and a version token (their sha256), None when absent."""
        import hashlib

        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def create_if_absent(self, key: str, data: bytes) -> bool:
        with self._locked():
            if self.exists(key):
                return False
            self.write(key, data)
            return True

    def replace_if_unchanged(self, key: str, data: bytes, version: str) -> bool:
        with self._locked():
            current = self.read_versioned(key)
            if current is None or current[1] != version:
                return False
            self.write(key, data)
            return True

    def list(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix.endswith("/") or not prefix else (self.root / prefix).parent
        if not base.is_dir():
            return []
        out = []
        for p in base.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                key = p.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    out.append(key)
        return sorted(out)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def _dead_writes(self) -> list[Path]:
        """Temporary files (".<name>.<random>.tmp" beside <name>) of this run's objects (is_run_object): a
        writer that finishes renames its file, so these were left by writers that died."""
        out = []
        for folder in [self.root] + [self.root / f for f in layout.RUN_FOLDERS]:
            for p in folder.glob(".*.tmp") if folder.is_dir() else []:
                name = p.name[1:].rsplit(".", 2)[0]  # .manifest.parquet.k3j2.tmp -> manifest.parquet
                if p.is_file() and is_run_object((p.parent / name).relative_to(self.root).as_posix()):
                    out.append(p)
        return out

    def incomplete_writes(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self._dead_writes())

    def clean_incomplete(self) -> int:
        """Delete the temporary files that writers of this run's objects left when they died; returns how many.
        Other files under the folder are not touched."""
        dead = self._dead_writes()
        for p in dead:
            p.unlink(missing_ok=True)
        return len(dead)

    def preflight(self) -> None:
        """Make the folder and write, read back and delete a probe file."""
        try:
            if self.root.exists() and not self.root.is_dir():
                raise ArgenError(f"output.uri={self.uri!r} is a file, not a folder; pass a folder path")
            self.root.mkdir(parents=True, exist_ok=True)
            key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
            self.write(key, b"argen probe")
            ok = self.read(key) == b"argen probe"
            self.delete(key)
            try:
                (self.root / PROBE_PREFIX).rmdir()
            except OSError:
                pass
        except OSError as e:
            raise ArgenError(f"cannot write to output.uri={self.uri!r}: {e.strerror or e}; "
                             f"pass a writable folder") from None
        if not ok:
            raise ArgenError(f"output.uri={self.uri!r}: a probe file read back different bytes")


# -- S3 ---------------------------------------------------------------------------------------

@dataclass
class S3Settings:
    """S3 client settings (config group `storage`); no credentials here, ever."""

    endpoint_url: str | None = None
    region: str | None = None
    checksum: str = "auto"            # auto | when_required | when_supported
    addressing_style: str = "auto"    # auto | path | virtual
    multipart_threshold_mb: float = 64
    multipart_chunksize_mb: float = 16
    max_concurrency: int = 4
    max_attempts: int = 3             # botocore's tries per request, first included (its own quick retries)
    connect_timeout_s: float = 5
    read_timeout_s: float = 30
    retry_budget_s: float = 300       # argen's retries of a storage operation (backoff with jitter) over this time

    @classmethod
    def from_config(cls, storage: Any) -> "S3Settings":
        known = cls.__dataclass_fields__
        values = {k: storage[k] for k in known if storage is not None and k in storage and storage[k] is not None}
        s = cls(**values)
        if s.checksum not in ("auto", "when_required", "when_supported"):
            raise ArgenError(f"storage.checksum={s.checksum!r}; expected auto, when_required or when_supported "
                             f"(when_required for S3-compatible stores that reject CRC checksums)")
        if s.addressing_style not in ("auto", "path", "virtual"):
            raise ArgenError(f"storage.addressing_style={s.addressing_style!r}; expected auto, path or virtual")
        if s.multipart_chunksize_mb < 5:
            raise ArgenError(f"storage.multipart_chunksize_mb={s.multipart_chunksize_mb}; S3 parts are at least 5 MiB")
        for name in ("connect_timeout_s", "read_timeout_s", "retry_budget_s"):
            value = getattr(s, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or \
                    (value == 0 and name != "retry_budget_s"):
                raise ArgenError(f"storage.{name}={value!r}; expected seconds > 0 (retry_budget_s may be 0: no "
                                 f"retries beyond botocore's own)")
        if isinstance(s.max_attempts, bool) or not isinstance(s.max_attempts, int) or s.max_attempts < 1:
            raise ArgenError(f"storage.max_attempts={s.max_attempts!r}; expected an integer >= 1")
        add_url_secrets(s.endpoint_url)
        return s

    def checksum_mode(self) -> str:
        """'auto' = when_required for a custom endpoint (non-AWS stores), when_supported on AWS."""
        if self.checksum == "auto":
            return "when_required" if self.endpoint_url else "when_supported"
        return self.checksum


def make_s3_client(settings: S3Settings, connect_timeout_s: float | None = None, read_timeout_s: float | None = None,
                   max_attempts: int | None = None):
    """A boto3 S3 client with these storage settings (endpoint, region, addressing, checksums, timeouts)."""
    import boto3
    from botocore.config import Config

    s = settings
    style = s.addressing_style
    if style == "auto":
        style = "path" if s.endpoint_url else "virtual"
    mode = s.checksum_mode()
    config = Config(retries={"mode": "standard", "total_max_attempts": int(max_attempts or s.max_attempts)},
                    connect_timeout=connect_timeout_s or s.connect_timeout_s,
                    read_timeout=read_timeout_s or s.read_timeout_s,
                    s3={"addressing_style": style}, signature_version="s3v4",
                    request_checksum_calculation=mode, response_checksum_validation=mode)
    return boto3.session.Session().client("s3", endpoint_url=s.endpoint_url, region_name=s.region, config=config)


def read_inputs_with(storage: Any) -> None:
    """s3:// inputs of this process (checkpoints, Inception weights, references) are read through the run's
    storage settings (storage.endpoint_url and the rest), like its outputs."""
    from accel import checkpoints

    settings = S3Settings.from_config(storage)
    checkpoints.use_s3_client(lambda: make_s3_client(settings))


class S3Sink:
    """s3://bucket/prefix through boto3; works with AWS and S3-compatible stores (endpoint_url)."""

    def __init__(self, uri: str, settings: S3Settings | None = None):
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise ArgenError(f"output.uri={uri!r} is not s3://bucket/prefix")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.settings = settings or S3Settings()
        self._client = None
        self._said_no_conditional = False

    # a sink travels to Ray workers; the boto3 client does not
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self):
        if self._client is None:
            s = self.settings
            self._client = self._make_client(s.connect_timeout_s, s.read_timeout_s, s.max_attempts)
        return self._client

    def _make_client(self, connect_timeout_s: float, read_timeout_s: float, max_attempts: int):
        return make_s3_client(self.settings, connect_timeout_s, read_timeout_s, max_attempts)

    def _retrying(self, what: str, call, budget_s: float | None = None):
        """call() again while it fails with a transient error, backing off, for at most storage.retry_budget_s;
        then StorageUnavailable. Other errors go through at once."""
        budget = self.settings.retry_budget_s if budget_s is None else budget_s
        deadline = time.monotonic() + budget
        for attempt in range(10_000):  # bounded by the deadline long before this
            try:
                return call()
            except Exception as e:
                if not is_transient(e):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StorageUnavailable(f"{what} at {self.describe()}: the store did not answer for {budget:.0f} s "
                                             f"(storage.retry_budget_s): {describe_error(e)}") from None
                wait = min(left, backoff_s(attempt))
                log.warning("storage: %s at %s failed (%s); retrying in %.1f s (%.0f s of storage.retry_budget_s "
                            "left)", what, self.describe(), describe_error(e), wait, left)
                time.sleep(wait)
        raise StorageUnavailable(f"{what} at {self.describe()}: too many retries")

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def describe(self) -> str:
        where = redact_url(self.settings.endpoint_url) or "AWS"
        return f"{self.uri} at {where}"

    def write(self, key: str, data: bytes) -> None:
        threshold = int(self.settings.multipart_threshold_mb * MiB)
        full = self._key(key)
        if len(data) < max(threshold, 5 * MiB):
            self._retrying(f"writing {key}", lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=data))
        else:
            self._retrying(f"writing {key}", lambda: self._multipart(full, data))

    def _multipart(self, full_key: str, data: bytes) -> None:
        """Upload in parts; complete, or abort so no incomplete upload is left behind."""
        chunk = int(self.settings.multipart_chunksize_mb * MiB)
        view = memoryview(data)
        client = self.client
        upload_id = client.create_multipart_upload(Bucket=self.bucket, Key=full_key)["UploadId"]
        try:
            def put(n: int) -> dict:
                body = view[(n - 1) * chunk: n * chunk]
                r = client.upload_part(Bucket=self.bucket, Key=full_key, UploadId=upload_id, PartNumber=n,
                                       Body=bytes(body))
                return {"PartNumber": n, "ETag": r["ETag"]}

            numbers = range(1, -(-len(data) // chunk) + 1)
            with ThreadPoolExecutor(max_workers=max(1, int(self.settings.max_concurrency))) as pool:
                parts = list(pool.map(put, numbers))
            client.complete_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id,
                                             MultipartUpload={"Parts": parts})
        except BaseException:
            try:
                client.abort_multipart_upload(Bucket=self.bucket, Key=full_key, UploadId=upload_id)
            except Exception:
                pass  # the original error matters more; a bucket lifecycle rule cleans up the rest
            raise

    def read(self, key: str) -> bytes:
        full = self._key(key)
        return self._retrying(f"reading {key}",
                              lambda: self.client.get_object(Bucket=self.bucket, Key=full)["Body"].read())

    def size(self, key: str) -> int | None:
        """The object's size in bytes (a HEAD request), None when it does not exist."""
        from botocore.exceptions import ClientError

        full = self._key(key)

        def head() -> int | None:
            try:
                return int(self.client.head_object(Bucket=self.bucket, Key=full)["ContentLength"])
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

        return self._retrying(f"checking {key}", head)

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    # conditional writes, for the lease (S3's If-None-Match / If-Match on PUT)
    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        """The object's bytes and its ETag, None when absent."""
        from botocore.exceptions import ClientError

        full = self._key(key)

        def get() -> tuple[bytes, str] | None:
            try:
                r = self.client.get_object(Bucket=self.bucket, Key=full)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            return r["Body"].read(), r["ETag"]

        return self._retrying(f"reading {key}", get)

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> bool:
        """PUT with a condition; False when the store says it does not hold (412, or 409 for a concurrent
        conditional write). A store without conditional writes (501 / NotImplemented): the condition is
        checked by a read first, a best effort that two writers in the same instant can both pass."""
        from botocore.exceptions import ClientError

        full = self._key(key)
        try:
            self._retrying(f"writing {key}", lambda: self.client.put_object(Bucket=self.bucket, Key=full, Body=data,
                                                                            **condition))
            return True
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = e.response.get("Error", {}).get("Code")
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            if status != 501 and code not in ("NotImplemented", "InvalidArgument"):
                raise
        if not self._said_no_conditional:  # once per sink: the lease's heartbeat comes here every ttl/3
            log.warning("storage: %s does not support conditional writes; %s is checked by a read first (best "
                        "effort)", self.describe(), key)
            self._said_no_conditional = True
        current = self.read_versioned(key)
        if ("IfNoneMatch" in condition and current is not None) or \
                ("IfMatch" in condition and (current is None or current[1] != condition["IfMatch"])):
            return False
        self.write(key, data)
        return True

    def create_if_absent(self, key: str, data: bytes) -> bool:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def replace_if_unchanged(self, key: str, data: bytes, version: str) -> bool:
        return self._conditional_put(key, data, IfMatch=version)

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        cut = len(self.prefix) + 1 if self.prefix else 0

        def listing() -> list[str]:
            out = []
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                out.extend(obj["Key"][cut:] for obj in page.get("Contents", []))
            return sorted(out)

        return self._retrying(f"listing {prefix or 'the output'}", listing)

    def delete(self, key: str) -> None:
        full = self._key(key)
        self._retrying(f"deleting {key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=full))

    def _uploads(self) -> list[dict]:
        prefix = f"{self.prefix}/" if self.prefix else ""

        def listing() -> list[dict]:
            out = []
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                      Prefix=prefix):
                out.extend(page.get("Uploads", []))
            return out

        return self._retrying("listing multipart uploads", listing)

    def incomplete_uploads(self) -> list[str]:
        """Keys with multipart uploads in progress under this prefix (for checks and clean-up)."""
        return [u["Key"] for u in self._uploads()]

    def _dead_uploads(self) -> list[dict]:
        """Open multipart uploads of this run's objects (is_run_object); not those of other keys under the prefix
        (a bucket's root, say)."""
        cut = len(self.prefix) + 1 if self.prefix else 0
        return [u for u in self._uploads() if is_run_object(u["Key"][cut:])]

    def incomplete_writes(self) -> list[str]:
        return sorted(u["Key"] for u in self._dead_uploads())

    def clean_incomplete(self) -> int:
        """Abort the multipart uploads that writers of this run's objects left when they died; returns how many."""
        dead = self._dead_uploads()
        for u in dead:
            self._retrying(f"aborting an upload of {u['Key']}", lambda u=u: self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"]))
        return len(dead)

    def preflight(self) -> None:
        """Write, read back and delete a probe object: a wrong bucket or missing credentials fail here, and a store
        that is down or never answers within ~PREFLIGHT_BUDGET_S (short timeouts, few retries)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        where = self.describe()
        s = self.settings
        quick = self._make_client(min(s.connect_timeout_s, 5.0), min(s.read_timeout_s, 5.0), 1)
        full = self._key(key)
        budget = min(s.retry_budget_s, PREFLIGHT_BUDGET_S)
        try:
            self._retrying("a test write", lambda: quick.put_object(Bucket=self.bucket, Key=full, Body=b"argen probe"),
                           budget)
            ok = self._retrying("a test read", lambda: quick.get_object(Bucket=self.bucket, Key=full)["Body"].read(),
                                budget) == b"argen probe"
            self._retrying("a test delete", lambda: quick.delete_object(Bucket=self.bucket, Key=full), budget)
        except StorageUnavailable as e:
            raise ArgenError(f"cannot reach S3 for output.uri: {e}; check storage.endpoint_url and the "
                             f"network") from None
        except NoCredentialsError:
            raise ArgenError(f"no S3 credentials for output.uri={where}: set AWS_ACCESS_KEY_ID and "
                             f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment") from None
        except ClientError as e:
            err = e.response.get("Error", {})
            code, msg = err.get("Code", "?"), err.get("Message", "")
            if code == "NoSuchBucket":
                raise ArgenError(f"bucket {self.bucket!r} does not exist ({where}); create it or fix output.uri") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise ArgenError(redact(f"S3 refused a test write to {where} ({code}: {msg}); check the credentials "
                                    f"in the environment and their permissions on the bucket")) from None
            raise ArgenError(redact(f"S3 test write to {where} failed ({code}: {msg}); for S3-compatible stores "
                                    f"try storage.checksum=when_required and storage.addressing_style=path")) from None
        except BotoCoreError as e:
            raise ArgenError(f"cannot reach S3 for output.uri={where}: {describe_error(e)}; check "
                             f"storage.endpoint_url and the network") from None
        if not ok:
            raise ArgenError(f"S3 test object at {where} read back different bytes")


def open_sink(uri: str, storage: Any = None) -> LocalSink | S3Sink:
    """The sink for output.uri: a local path, file://path, or s3://bucket/prefix."""
    uri = str(uri)
    if not uri.strip():
        raise ArgenError("output.uri is empty; pass a folder, file://folder or s3://bucket/prefix")
    scheme = urlsplit(uri).scheme
    if scheme == "s3":
        return S3Sink(uri, S3Settings.from_config(storage))
    if scheme.lower() == "file":
        from accel.checkpoints import local_path

        return LocalSink(str(local_path(uri, "output.uri")))
    if scheme in ("", ) or (len(scheme) == 1 and os.name == "nt"):
        return LocalSink(uri)
    raise ArgenError(f"output.uri={redact_url(uri)!r} has scheme {scheme!r}; expected a local folder, "
                     f"file://folder or s3://bucket/prefix")
