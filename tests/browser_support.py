"""Support for the browser tests: live gunicorn (gevent) servers, a worker process, Chromium.

The processes run with the suite's environment (its own Redis, instance folder and test job
kinds). The autouse `clean_state` fixture empties Redis before every test, which they survive
(the web process keeps its subscription; the worker's consumer heartbeat comes back within a
few seconds and is not needed for jobs to run).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .conftest import ROOT, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 30_000  # generous: a slow machine only makes the tests slower, never red
KEEPALIVE_SECONDS = 120  # longer than any wait in the tests (see `live_server` there)
JOB_URL = re.compile(r"/jobs/(?P<id>[0-9a-f]{32})$")

# Installed in every document before its scripts run: records what the job page shows each
# time the DOM changes (the bar's aria-valuenow, the status, the connection text, the title).
RECORDER_JS = """
(() => {
  window.__seen = [];
  const snapshot = () => {
    const bar = document.getElementById("job-bar");
    if (!bar) { return; }
    const progress = document.getElementById("job-progress");
    const conn = document.querySelector("#connection .connection-text");
    const s = {
      value: Number(bar.getAttribute("aria-valuenow")),
      status: progress ? progress.dataset.status : null,
      conn: conn ? conn.textContent.trim() : null,
      title: document.title,
      links: document.querySelectorAll("#downloads a").length,
    };
    const last = window.__seen[window.__seen.length - 1];
    if (!last || Object.keys(s).some((k) => s[k] !== last[k])) { window.__seen.push(s); }
  };
  new MutationObserver(snapshot).observe(document, {
    subtree: true, childList: true, attributes: true, characterData: true,
  });
})();
"""


class _Process:
    """A child process whose output goes to a log file, shown when something goes wrong."""

    stop_signal = signal.SIGTERM

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.log_path = log_dir / f"{name}.log"
        self.argv, self.env = argv, env
        self._launch("wb")

    def _launch(self, log_mode: str) -> None:
        with open(self.log_path, log_mode) as log:
            self.process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class LiveServer(_Process):
    """`gunicorn -c gunicorn.conf.py 'app:create_app()'` on a free loopback port."""

    # Quick shutdown: a graceful one waits out streams whose browsers have gone, as the
    # server only notices a closed connection when it next writes (a keepalive).
    stop_signal = signal.SIGINT

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            f"gunicorn-{self.port}",
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"],
            {**env, "PORT": str(self.port), "HOST": "127.0.0.1"},
            log_dir,
        )

    def start(self) -> None:
        """Start a new server process on the same port, after `stop()`; back when healthy.

        Browsers keep their URLs, as they would across a deployment or a crash and restart.
        """
        if self.process.poll() is None:
            raise RuntimeError("the server is still running; stop() it first")
        self._launch("ab")  # one log for all of the port's lives
        self.wait_ready(need_consumer=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                return json.load(response)
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def wait_ready(self, *, need_consumer: bool, timeout: float = 30.0) -> None:
        """Until /healthz answers with Redis reachable (and a live consumer, if asked)."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if health and health.get("redis") and (health.get("consumers") or not need_consumer):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the live server did not become healthy ({health}):\n{self.log_tail()}"
                )
            time.sleep(0.1)


class ServerPool:
    """Live servers by environment, sharing one worker process; `get(**env)` starts or reuses.

    The servers all use the suite's Redis and queue, so one worker runs every server's jobs.
    """

    def __init__(self, worker_env: dict[str, str] | None = None):
        # Beside the suite's instance folder, so that the suite's clean-up removes the logs.
        suite_tmp = Path(os.environ["HEADWAY_INSTANCE_PATH"]).parent
        self.log_dir = Path(tempfile.mkdtemp(prefix="browser-logs-", dir=suite_tmp))
        self.worker = _Process(
            "worker",
            [sys.executable, "-m", "jobs.worker"],
            {"HEADWAY_WORKERS": "4", **(worker_env or {})},
            self.log_dir,
        )
        self.servers: dict[tuple, LiveServer] = {}

    def get(self, **env: object) -> LiveServer:
        key = tuple(sorted((k, str(v)) for k, v in env.items()))
        if key not in self.servers:
            first = not self.servers
            server = self.servers[key] = LiveServer(dict(key), self.log_dir)
            try:
                # The worker's heartbeat shows once; later servers need only Redis (an emptied
                # database loses the heartbeat for a few seconds, not the worker).
                server.wait_ready(need_consumer=first)
            except RuntimeError as exc:
                server.stop()
                del self.servers[key]
                raise RuntimeError(f"{exc}\n--- worker:\n{self.worker.log_tail()}") from None
        return self.servers[key]

    def kill_worker(self) -> None:
        """Kill the worker process at once, as a crash or an OOM kill would."""
        self.worker.process.kill()
        self.worker.process.wait()

    def start_worker(self) -> None:
        """Start the worker again after `kill_worker()`."""
        if self.worker.process.poll() is None:
            raise RuntimeError("the worker is still running; kill it first")
        self.worker._launch("ab")

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.worker.stop()


def launch_chromium(playwright):
    """Debian's Chromium, headless; never a downloaded browser."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def job_id_of(url: str) -> str:
    match = JOB_URL.search(url.split("?", 1)[0])
    assert match, f"not a job page: {url}"
    return match["id"]


def start_job_with_form(page, base: str, *, steps: int, delay: float) -> str:
    """Fill in the `steps` form and press Start, as a person would; returns the job id."""
    page.goto(f"{base}/jobs/new/steps")
    page.fill("#steps", str(steps))
    page.fill("#delay", str(delay))
    page.click("#job-form button[type=submit]")
    page.wait_for_url(JOB_URL)
    return job_id_of(page.url)


def post_job(
    context, base: str, csrf_token: str, *, steps: int, delay: float, fail_at: int = -1
) -> str:
    """Submit the form's fields directly (with the context's cookies); returns the job id."""
    response = context.request.post(
        f"{base}/jobs/new/steps",
        multipart={
            "csrf_token": csrf_token,
            "steps": str(steps),
            "delay": str(delay),
            "fail_at": str(fail_at),
        },
        max_redirects=0,
    )
    assert response.status == 303, response.text()
    return job_id_of(response.headers["location"])


def job_json(context, base: str, job_id: str) -> dict:
    response = context.request.get(f"{base}/api/jobs/{job_id}")
    assert response.ok, response.text()
    return response.json()


def wait_for_job(context, base: str, job_id: str, status: str, timeout: float = 30.0) -> dict:
    """Poll the JSON API (as the job's owner) until the job has `status`."""
    deadline = time.monotonic() + timeout
    while True:
        job = job_json(context, base, job_id)
        if job["status"] == status:
            return job
        assert job["status"] not in {"succeeded", "failed", "cancelled", "interrupted"}, job
        assert time.monotonic() < deadline, f"job still {job['status']} after {timeout} s"
        time.sleep(0.05)


def seen(page) -> list[dict]:
    """What the recorder saw on the current document, oldest first."""
    return page.evaluate("window.__seen")


def bar_value_in_html(html: str) -> int:
    """The server-rendered `aria-valuenow` of the overall bar."""
    match = re.search(r'id="job-bar"[^>]*aria-valuenow="(\d+)"', html)
    assert match, "no #job-bar in the page"
    return int(match[1])


def status_in_html(html: str) -> str:
    match = re.search(r'id="job-progress"[^>]*data-status="(\w+)"', html)
    assert match, "no #job-progress in the page"
    return match[1]


def live_stream_count() -> int:
    """Streams the server holds open right now, for every visitor (their stream slots)."""
    import redis

    from headway.limits import held

    client = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    owners = [k for k in client.scan_iter("hw:streams:*") if not k.startswith("hw:streams:addr:")]
    return sum(held(client, key) for key in owners)


def throttle_uploads(page, bytes_per_second: int) -> None:
    """Chromium's own network throttling, so that an upload lasts long enough to watch."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": bytes_per_second,
        },
    )
