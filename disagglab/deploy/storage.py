"""The storage interface the deploy step and the nodes share (a local folder, or S3).

Objects are addressed by exact key and identified by sha256, so a deploy uploads only
what changed and a node can verify every byte it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from disagglab.hashing import atomic_write_bytes, sha256_bytes, sha256_file
from disagglab.paths import UnsafeName, phase_key


def check_key(key: str) -> str:
    """A store key: '/'-separated safe segments under a phase (never absolute, '.', '..' or empty)."""
    try:
        phase, *rest = key.split("/")
        if not rest:
            raise UnsafeName("a key needs a phase and a name")
        phase_key(phase, *rest)
    except (UnsafeName, AttributeError) as exc:
        raise ValueError(f"invalid store key {key!r}: {exc}") from None
    return key


@dataclass(frozen=True)
class PutResult:
    key: str
    sha256: str
    size: int
    uploaded: bool
    """False when the store already held these exact bytes under this key."""


class Storage(Protocol):
    url: str
    """How a node's runner reaches this store (file:///..., s3://...)."""

    def put_file(self, src: Path, key: str) -> PutResult: ...

    def get_file(self, key: str, dest: Path) -> str:
        """Copy an object to dest atomically; returns its sha256."""
        ...

    def exists(self, key: str) -> bool: ...


class LocalStorage:
    """A folder laid out exactly like the bucket: <phase>/scripts/..., <phase>/tasks/...."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = self.root / check_key(key)
        if self.root not in path.resolve().parents:  # e.g. a symlink planted in the store
            raise ValueError(f"invalid store key {key!r}: resolves outside {self.root}")
        return path

    def put_file(self, src: Path, key: str) -> PutResult:
        data = Path(src).read_bytes()
        digest = sha256_bytes(data)
        dest = self._path(key)
        if dest.is_file() and sha256_file(dest) == digest:
            return PutResult(key, digest, len(data), uploaded=False)
        atomic_write_bytes(dest, data)
        return PutResult(key, digest, len(data), uploaded=True)

    def get_file(self, key: str, dest: Path) -> str:
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(f"store {self.url} has no object {key!r}")
        data = src.read_bytes()
        atomic_write_bytes(Path(dest), data)
        return sha256_bytes(data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


class S3Storage:
    """An S3 bucket (or any S3-compatible server via AWS_ENDPOINT_URL).

    Each object carries its sha256 as user metadata (x-amz-meta-sha256): ETags are not
    content hashes under KMS or multipart, so skip-unchanged compares our own hash.
    """

    def __init__(self, bucket: str, prefix: str = "", region: str | None = None, max_attempts: int = 5):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self.max_attempts = max_attempts
        config = Config(retries={"mode": "standard", "total_max_attempts": max_attempts}, signature_version="s3v4")
        self.client = boto3.client("s3", region_name=region, config=config)
        query = f"?region={region}" if region else ""
        self.url = f"s3://{bucket}/{self.prefix}{query}" if self.prefix else f"s3://{bucket}{query}"

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("404", "NoSuchKey", "403"):
                return None
            raise self._explain(exc, "HeadObject", key) from None
        except Exception as exc:  # noqa: BLE001 - connection refused/reset, timeouts (botocore retried them)
            raise self._explain(exc, "HeadObject", key) from None

    def put_file(self, src: Path, key: str) -> PutResult:
        data = Path(src).read_bytes()
        digest = sha256_bytes(data)
        head = self._head(key)
        if head and head.get("Metadata", {}).get("sha256") == digest and head.get("ContentLength") == len(data):
            return PutResult(key, digest, len(data), uploaded=False)
        try:
            # One PUT: S3 stores all of it or nothing, and the sha256 rides with the bytes.
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={"sha256": digest})
        except Exception as exc:  # noqa: BLE001 - ClientError, or a connection error after botocore's retries
            raise self._explain(exc, "PutObject", key) from None
        return PutResult(key, digest, len(data), uploaded=True)

    def get_file(self, key: str, dest: Path) -> str:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            data = obj["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"{self.url} has no object {key!r}") from None
            raise self._explain(exc, "GetObject", key) from None
        except Exception as exc:  # noqa: BLE001 - connection refused/reset, timeouts
            raise self._explain(exc, "GetObject", key) from None
        atomic_write_bytes(Path(dest), data)
        return sha256_bytes(data)

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def _explain(self, exc: Exception, op: str = "", key: str = "") -> StorageError:
        """Say what failed, where, and why: the operation, the object, the endpoint, botocore's
        attempts and the last error. A missing bucket often surfaces as AccessDenied on object calls."""
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in ("AccessDenied", "403", "NoSuchBucket"):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as head_exc:
                if head_exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
                    return StorageError(f"S3 bucket {self.bucket!r} does not exist (set SCRIPTS_BUCKET or s3.bucket to an existing bucket)")
            except Exception:  # noqa: BLE001, S110 - the original error is the one to report
                pass
        err = _explain(exc, self.bucket)
        info = getattr(exc, "response", {}).get("Error", {})
        if not op or info.get("Code") == "NoSuchBucket":
            return err
        code, msg = info.get("Code") or type(exc).__name__, info.get("Message") or str(exc)
        meta = getattr(exc, "response", {}).get("ResponseMetadata", {})
        attempts = int(meta["RetryAttempts"]) + 1 if "RetryAttempts" in meta else self.max_attempts
        http = f" (HTTP {meta['HTTPStatusCode']})" if meta.get("HTTPStatusCode") else ""
        return StorageError(f"S3 {op} s3://{self.bucket}/{self._key(key)} at {self.endpoint} failed after {attempts} attempts"
                            f"{http}: {code}: {msg}")


class StorageError(RuntimeError):
    """The store refused or failed an operation; the message says which and why."""


def _explain(exc: Exception, bucket: str) -> StorageError:
    err = getattr(exc, "response", {}).get("Error", {})
    code, msg = err.get("Code") or type(exc).__name__, err.get("Message") or str(exc)
    if code == "NoSuchBucket":
        return StorageError(f"S3 bucket {bucket!r} does not exist (set SCRIPTS_BUCKET or s3.bucket to an existing bucket)")
    return StorageError(f"S3 bucket {bucket!r}: {code}: {msg}")


def resolve_bucket(cfg: dict[str, Any]) -> str:
    """SCRIPTS_BUCKET (the seed's variable), else s3.bucket, else the CloudFormation stack output."""
    from disagglab.aws import discover_bucket

    return discover_bucket(cfg)


def open_storage(cfg: dict[str, Any]) -> Storage:
    if cfg["storage"] == "local":
        return LocalStorage(Path(cfg["local"]["store_dir"]))
    if cfg["storage"] == "s3":
        s3 = cfg["s3"]
        return S3Storage(resolve_bucket(cfg), s3.get("prefix") or "", s3.get("region"), s3["max_attempts"])
    raise ValueError(f"storage {cfg['storage']!r} is not available")
