"""Share-nothing scale-out on one machine: two web processes and two worker processes.

With S3, each process has an instance folder of its own and they share only Redis and the
bucket; with the local backend, all four point at one instance folder (as NFS would give
them). Either way: a job submitted through web A is watched live through web B's stream and
runs on one of the workers; that worker is killed (SIGKILL) and the job ends `interrupted`;
Retry (through web B) runs it on the other worker from the stored inputs; its results
download through web B; after retention nothing of either attempt is left.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import pytest
import requests

from headway import storage as file_storage
from headway.settings import Settings
from jobs import runner

from .browser_support import LiveServer, _Process
from .conftest import wait_for

pytestmark = pytest.mark.timeout(300)

RETENTION_SECONDS = 15  # room for the retry and the downloads, each a second or two here


class Cluster:
    def __init__(self, backend: str, root: Path, storage_url: str):
        self.backend, self.root, self.storage_url = backend, root, storage_url
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True)
        self.folders: dict[str, Path] = {}
        self.env = {
            "SECRET_KEY": "share-nothing-test-secret",  # every web node signs cookies alike
            "HEADWAY_STORAGE_URL": storage_url,
            "HEADWAY_HEARTBEAT_TIMEOUT": "2",
            "HEADWAY_RETENTION_SECONDS": str(RETENTION_SECONDS),
            "HEADWAY_KEEPALIVE_SECONDS": "1",
            "HEADWAY_WORKERS": "1",
        }
        self.webs = [LiveServer(self._node_env(f"web-{n}"), self.log_dir) for n in "ab"]
        self.workers = [
            _Process(
                f"worker-{n}",
                [sys.executable, "-m", "jobs.worker"],
                self._node_env(f"worker-{n}"),
                self.log_dir,
            )
            for n in "ab"
        ]
        for web in self.webs:
            web.wait_ready(need_consumer=True, timeout=60)

    def _node_env(self, name: str) -> dict[str, str]:
        folder = self.root / (name if self.backend == "s3" else "shared")
        self.folders[name] = folder
        return {**self.env, "HEADWAY_INSTANCE_PATH": str(folder)}

    def storage(self) -> file_storage.Storage:
        instance = self.root / "shared"
        return file_storage.for_settings(
            Settings.from_env(storage_url=self.storage_url, instance_path=instance)
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.log_path.name}\n{p.log_tail()}" for p in (*self.webs, *self.workers)
        )

    def stop(self) -> None:
        for process in (*self.webs, *self.workers):
            process.stop()


@pytest.fixture(params=["s3", "local"])
def cluster(request):
    backend = request.param
    url = request.getfixturevalue("s3_storage_url") if backend == "s3" else ""
    suite_tmp = Path(os.environ["HEADWAY_INSTANCE_PATH"]).parent
    root = Path(tempfile.mkdtemp(prefix=f"share-nothing-{backend}-", dir=suite_tmp))
    nodes = Cluster(backend, root, url)
    try:
        yield nodes
    except BaseException:
        print(nodes.logs())
        raise
    finally:
        nodes.stop()


def csrf_token(session: requests.Session, url: str) -> str:
    page = session.get(url, timeout=10).text
    return re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page)[1]


class StreamWatch(threading.Thread):
    """Reads a job's SSE stream until the server ends it: every event's name and id."""

    def __init__(self, session: requests.Session, url: str):
        super().__init__(daemon=True)
        self.session, self.url = session, url
        self.events: list[tuple[str, int, str]] = []
        self.status = 0

    def run(self) -> None:
        with self.session.get(self.url, stream=True, timeout=60) as response:
            self.status = response.status_code
            event, event_id, data = "", 0, []
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("id:"):
                    event_id = int(line.split(":", 1)[1])
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))  # (one space after the colon)
                elif line == "" and event:
                    self.events.append((event, event_id, "\n".join(data)))
                    event, data = "", []


def test_web_and_worker_nodes_share_only_redis_and_storage(cluster: Cluster, store):
    web_a, web_b = (web.url for web in cluster.webs)
    browser = requests.Session()
    token = csrf_token(browser, f"{web_a}/jobs/new/digest")
    text = b"".join(b"line %d of the input\n" % n for n in range(500_000))  # 12 MB: multipart
    answer = browser.post(
        f"{web_a}/jobs/new/digest",
        data={"csrf_token": token, "steps": 400, "delay": 0.05, "fail_at": -1},
        files=[("files", ("input.txt", text, "text/plain")), ("files", ("b.txt", b"b\n", ""))],
        allow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    job_id = answer.headers["Location"].rsplit("/", 1)[1]

    # Watched live through the other web node's stream.
    watch = StreamWatch(browser, f"{web_b}/jobs/{job_id}/events")
    watch.start()

    def job(base: str, some_id: str) -> dict:
        return browser.get(f"{base}/api/jobs/{some_id}", timeout=10).json()

    running = wait_for(lambda: (j := job(web_b, job_id))["done"] >= 5 and j, timeout=60)
    workers = {f"{file_storage.HOST}:{w.process.pid}": w for w in cluster.workers}
    assert running["worker"] in workers
    if cluster.backend == "s3":
        # The inputs are in the bucket, not on any web node; the attempt's folder is on its
        # worker's disk alone.
        assert not any((cluster.folders[w] / "jobs").exists() for w in ("web-a", "web-b"))
        assert cluster.storage().keys(f"jobs/{job_id}/") == [
            f"jobs/{job_id}/input/b.txt",
            f"jobs/{job_id}/input/input.txt",
        ]
    doomed = workers.pop(running["worker"])
    survivor_name = next(iter(workers))
    wait_for(lambda: len([e for e in watch.events if e[0] in ("progress", "delta")]) >= 2)

    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait(10)
    ended = wait_for(lambda: (j := job(web_b, job_id))["status"] != "running" and j, timeout=30)
    assert ended["status"] == "interrupted"
    watch.join(30)
    assert watch.status == 200 and not watch.is_alive()  # the final event ended the stream
    ids = [event_id for _, event_id, _ in watch.events]
    assert ids == sorted(ids) and len(set(ids)) >= 3
    assert watch.events[-1][0] == "done" and watch.events[-1][2] == "interrupted"
    assert 'data-status="interrupted"' in watch.events[-2][2]

    # Retry, through web B: the new attempt runs on the surviving worker from stored inputs.
    token = csrf_token(browser, f"{web_b}/jobs/{job_id}")
    retried = browser.post(
        f"{web_b}/jobs/{job_id}/retry", data={"csrf_token": token}, allow_redirects=False
    )
    assert retried.status_code == 303, retried.text
    new_id = retried.headers["Location"].rsplit("/", 1)[1]
    assert new_id != job_id
    done = wait_for(lambda: (j := job(web_b, new_id))["status"] == "succeeded" and j, timeout=60)
    assert done["worker"] == survivor_name and done["attempt"] == 2
    assert sorted(f["name"] for f in done["files"]) == ["lines.txt", "sha256.txt"]

    # Results through web B: by presigned redirect (S3) or from the shared folder.
    sums = browser.get(f"{web_b}/jobs/{new_id}/files/sha256.txt", timeout=30)
    assert sums.status_code == 200
    assert sums.headers["Content-Disposition"].startswith("attachment")
    assert sums.text == (
        f"{hashlib.sha256(text).hexdigest()}  input.txt\n"
        f"{hashlib.sha256(b'b' + chr(10).encode()).hexdigest()}  b.txt\n"
    )
    part = browser.get(
        f"{web_b}/jobs/{new_id}/files/lines.txt", headers={"Range": "bytes=0-5"}, timeout=30
    )
    assert part.status_code == 206 and part.content == b"input."
    bundle = browser.get(f"{web_b}/jobs/{new_id}/all-files.zip", timeout=30)
    assert bundle.status_code == 200
    with zipfile.ZipFile(io.BytesIO(bundle.content)) as zf:
        assert sorted(zf.namelist()) == ["lines.txt", "sha256.txt"]
        assert zf.read("lines.txt") == b"input.txt\t500000\nb.txt\t1\n"
    foreign = requests.get(f"{web_b}/jobs/{new_id}/files/sha256.txt", timeout=10)
    assert foreign.status_code == 404  # the owner check comes before any storage

    # The attempts' private folders are gone from the workers' disks (but the killed
    # worker's, which the next worker to start on its machine removes).
    for name in ("worker-a", "worker-b"):
        leftovers = [
            p.name
            for p in (cluster.folders[name] / "work").iterdir()
            if f"-{doomed.process.pid}-" not in p.name
        ]
        assert leftovers == []

    # After retention, the sweep (run by a worker) leaves nothing of either attempt.
    storage = cluster.storage()

    def swept() -> bool:
        runner.sweep()  # enqueued: one of the workers runs it, as its periodic task does
        left = storage.keys(f"jobs/{job_id}/") + storage.keys(f"jobs/{new_id}/")
        return not left and not store.client.exists(f"hw:job:{job_id}", f"hw:job:{new_id}")

    wait_for(swept, timeout=RETENTION_SECONDS + 60, interval=1.0)
    assert storage.keys("jobs/") == []
