"""Where a run's objects go: LocalSink (a folder) and S3Sink (boto3, any S3-compatible store).

Every write is a whole object: LocalSink writes a temporary file and renames it; S3Sink does one
PUT, or a multipart upload that is completed or aborted, never left half done. Keys are relative
to the run's root ("run.json", "shards/000000.tar"). Credentials come from the environment or
boto3's usual chain and never appear in a sink's description, errors or logs.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from accel.api import ArgenError
from pipeline import layout

PROBE_PREFIX = "_argen_probe/"
MiB = 1024 * 1024


@runtime_checkable
class Sink(Protocol):
    uri: str

    def write(self, key: str, data: bytes) -> None: ...
    def read(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, key: str) -> None: ...
    def preflight(self) -> None: ...
    def incomplete_writes(self) -> list[str]: ...
    def clean_incomplete(self) -> int: ...


def is_run_object(key: str) -> bool:
    """What a run writes under output.uri (which may be a bucket's root, shared with other data): the clean-up
    of writes that died half-way touches only these."""
    return key.startswith(layout.RUN_FOLDERS) or key in layout.RUN_FILES


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
    max_attempts: int = 5             # total tries per request, first included (AWS_MAX_ATTEMPTS)
    connect_timeout_s: float = 10
    read_timeout_s: float = 60

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
        return s

    def checksum_mode(self) -> str:
        """'auto' = when_required for a custom endpoint (non-AWS stores), when_supported on AWS."""
        if self.checksum == "auto":
            return "when_required" if self.endpoint_url else "when_supported"
        return self.checksum


def redact_url(url: str | None) -> str | None:
    """Drop user:password@ from a URL."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


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

    # a sink travels to Ray workers; the boto3 client does not
    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            s = self.settings
            style = s.addressing_style
            if style == "auto":
                style = "path" if s.endpoint_url else "virtual"
            mode = s.checksum_mode()
            config = Config(retries={"mode": "standard", "total_max_attempts": int(s.max_attempts)},
                            connect_timeout=s.connect_timeout_s, read_timeout=s.read_timeout_s,
                            s3={"addressing_style": style}, signature_version="s3v4",
                            request_checksum_calculation=mode, response_checksum_validation=mode)
            self._client = boto3.session.Session().client("s3", endpoint_url=s.endpoint_url,
                                                          region_name=s.region, config=config)
        return self._client

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def describe(self) -> str:
        where = redact_url(self.settings.endpoint_url) or "AWS"
        return f"{self.uri} at {where}"

    def write(self, key: str, data: bytes) -> None:
        threshold = int(self.settings.multipart_threshold_mb * MiB)
        if len(data) < max(threshold, 5 * MiB):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        else:
            self._multipart(self._key(key), data)

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
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        cut = len(self.prefix) + 1 if self.prefix else 0
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            out.extend(obj["Key"][cut:] for obj in page.get("Contents", []))
        return sorted(out)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def _uploads(self) -> list[dict]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        out = []
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix):
            out.extend(page.get("Uploads", []))
        return out

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
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
        return len(dead)

    def preflight(self) -> None:
        """Write, read back and delete a probe object: a wrong bucket or missing credentials fail here."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        where = self.describe()
        try:
            self.write(key, b"argen probe")
            ok = self.read(key) == b"argen probe"
            self.delete(key)
        except NoCredentialsError:
            raise ArgenError(f"no S3 credentials for output.uri={where}: set AWS_ACCESS_KEY_ID and "
                             f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment") from None
        except ClientError as e:
            err = e.response.get("Error", {})
            code, msg = err.get("Code", "?"), err.get("Message", "")
            if code == "NoSuchBucket":
                raise ArgenError(f"bucket {self.bucket!r} does not exist ({where}); create it or fix output.uri") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
                raise ArgenError(f"S3 refused a test write to {where} ({code}: {msg}); check the credentials "
                                 f"in the environment and their permissions on the bucket") from None
            raise ArgenError(f"S3 test write to {where} failed ({code}: {msg}); for S3-compatible stores try "
                             f"storage.checksum=when_required and storage.addressing_style=path") from None
        except BotoCoreError as e:
            raise ArgenError(f"cannot reach S3 for output.uri={where}: {e}; check storage.endpoint_url "
                             f"and the network") from None
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
