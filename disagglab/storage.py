"""The storage interface the deploy step and the nodes share (a local folder now, S3 later).

Objects are addressed by exact key and identified by sha256, so a deploy uploads only
what changed and a node can verify every byte it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .hashing import atomic_write_bytes, sha256_bytes, sha256_file


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
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid store key {key!r}")
        return self.root / key

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


def open_storage(cfg: dict[str, Any]) -> Storage:
    if cfg["storage"] == "local":
        return LocalStorage(Path(cfg["local"]["store_dir"]))
    raise ValueError(f"storage {cfg['storage']!r} is not available")
