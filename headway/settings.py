"""Configuration read from the environment, in one place, for web and worker alike."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclasses.dataclass(frozen=True)
class Settings:
    """The settings web and worker share, each from its environment variable (`from_env`);
    the README lists these and the few read elsewhere (SECRET_KEY, PORT, log level)."""

    redis_url: str | None = None
    instance_path: Path = ROOT / "instance"
    production: bool = False
    retention_seconds: float = 24 * 3600
    heartbeat_timeout: float = 30.0
    report_interval: float = 0.1
    log_lines: int = 50
    max_items: int = 500
    jobs_per_page: int = 20
    transport: str = "auto"
    keepalive_seconds: float = 15.0
    stream_max_seconds: float = 600.0
    max_streams_per_owner: int = 20
    rate_limits: bool = True
    jobs_per_minute: int = 30
    running_jobs_per_owner: int = 10
    max_upload_bytes: int = 4 * 1024**3
    workers: int = 2
    # (kind slug or "" for every kind, limit name) -> value, from HEADWAY_JOB_LIMITS
    job_limits: tuple[tuple[str, str, float], ...] = ()
    # Limits per client address, which a new cookie does not reset.
    trusted_proxies: tuple[str, ...] = ()
    max_streams_per_address: int = 32
    jobs_per_minute_per_address: int = 60
    running_jobs_per_address: int = 20
    uploads_per_address: int = 4
    # Global caps.
    max_streams_per_process: int = 9000
    max_uploads_per_process: int = 64
    max_queued_jobs: int = 1000
    # Upload bodies and their checks.
    upload_min_rate: int = 8192
    upload_rate_window: float = 30.0
    check_processes: int = 2
    check_seconds: float = 10.0
    check_memory_mb: int = 1024
    check_wait_seconds: float = 30.0
    # Where job files live: "" for the instance folder, or s3://bucket/prefix.
    storage_url: str = ""
    downloads: str = "redirect"  # S3 only: "redirect" to a presigned URL, or "stream"
    download_url_seconds: float = 60.0

    @property
    def heartbeat_interval(self) -> float:
        """Workers beat several times per timeout, so one late beat never looks like a death."""
        return max(self.heartbeat_timeout / 6, 0.05)

    @property
    def jobs_dir(self) -> Path:
        return self.instance_path / "jobs"

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = dict(
            redis_url=os.environ.get("REDIS_URL") or None,
            instance_path=Path(os.environ.get("HEADWAY_INSTANCE_PATH", ROOT / "instance")),
            production=os.environ.get("HEADWAY_ENV", "development") == "production",
            retention_seconds=_float("HEADWAY_RETENTION_SECONDS", cls.retention_seconds),
            heartbeat_timeout=_float("HEADWAY_HEARTBEAT_TIMEOUT", cls.heartbeat_timeout),
            report_interval=_float("HEADWAY_REPORT_INTERVAL", cls.report_interval),
            log_lines=_int("HEADWAY_LOG_LINES", cls.log_lines),
            max_items=_int("HEADWAY_MAX_ITEMS", cls.max_items),
            jobs_per_page=max(1, _int("HEADWAY_JOBS_PER_PAGE", cls.jobs_per_page)),
            transport=os.environ.get("HEADWAY_TRANSPORT", cls.transport),
            keepalive_seconds=_float("HEADWAY_KEEPALIVE_SECONDS", cls.keepalive_seconds),
            stream_max_seconds=_float("HEADWAY_STREAM_MAX_SECONDS", cls.stream_max_seconds),
            max_streams_per_owner=_int("HEADWAY_MAX_STREAMS_PER_OWNER", cls.max_streams_per_owner),
            rate_limits=os.environ.get("HEADWAY_RATE_LIMITS", "on") != "off",
            jobs_per_minute=_int("HEADWAY_JOBS_PER_MINUTE", cls.jobs_per_minute),
            running_jobs_per_owner=_int(
                "HEADWAY_RUNNING_JOBS_PER_OWNER", cls.running_jobs_per_owner
            ),
            max_upload_bytes=_int("HEADWAY_MAX_UPLOAD_BYTES", cls.max_upload_bytes),
            workers=_int("HEADWAY_WORKERS", cls.workers),
            job_limits=parse_job_limits(os.environ.get("HEADWAY_JOB_LIMITS", "")),
            trusted_proxies=tuple(
                p.strip()
                for p in os.environ.get("HEADWAY_TRUSTED_PROXIES", "").split(",")
                if p.strip()
            ),
            max_streams_per_address=_int(
                "HEADWAY_MAX_STREAMS_PER_ADDRESS", cls.max_streams_per_address
            ),
            jobs_per_minute_per_address=_int(
                "HEADWAY_JOBS_PER_MINUTE_PER_ADDRESS", cls.jobs_per_minute_per_address
            ),
            running_jobs_per_address=_int(
                "HEADWAY_RUNNING_JOBS_PER_ADDRESS", cls.running_jobs_per_address
            ),
            uploads_per_address=_int("HEADWAY_UPLOADS_PER_ADDRESS", cls.uploads_per_address),
            max_streams_per_process=_int(
                "HEADWAY_MAX_STREAMS_PER_PROCESS", cls.max_streams_per_process
            ),
            max_uploads_per_process=_int(
                "HEADWAY_MAX_UPLOADS_PER_PROCESS", cls.max_uploads_per_process
            ),
            max_queued_jobs=_int("HEADWAY_MAX_QUEUED_JOBS", cls.max_queued_jobs),
            upload_min_rate=_int("HEADWAY_UPLOAD_MIN_RATE", cls.upload_min_rate),
            upload_rate_window=_float("HEADWAY_UPLOAD_RATE_WINDOW", cls.upload_rate_window),
            check_processes=_int("HEADWAY_CHECK_PROCESSES", cls.check_processes),
            check_seconds=_float("HEADWAY_CHECK_SECONDS", cls.check_seconds),
            check_memory_mb=_int("HEADWAY_CHECK_MEMORY_MB", cls.check_memory_mb),
            check_wait_seconds=_float("HEADWAY_CHECK_WAIT_SECONDS", cls.check_wait_seconds),
            storage_url=os.environ.get("HEADWAY_STORAGE_URL", "").strip(),
            downloads=os.environ.get("HEADWAY_DOWNLOADS", cls.downloads),
            download_url_seconds=_float("HEADWAY_DOWNLOAD_URL_SECONDS", cls.download_url_seconds),
        )
        values.update(overrides)
        if values["transport"] not in ("auto", "sse", "poll"):
            raise ValueError("HEADWAY_TRANSPORT must be auto, sse or poll")
        if values["downloads"] not in ("redirect", "stream"):
            raise ValueError("HEADWAY_DOWNLOADS must be redirect or stream")
        from headway.storage import parse_url

        parse_url(values["storage_url"])  # a clear error at start, not at the first upload
        return cls(**values)


_SIZES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_TIMES = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600}
LIMIT_UNITS = {
    "memory": _SIZES,
    "output": _SIZES,
    "cpu": _TIMES,
    "wall": _TIMES,
    "open_files": {"": 1},
}
_LIMIT = re.compile(
    r"(?:(?P<kind>[\w-]+)\.)?(?P<name>\w+)=(?P<number>\d+(?:\.\d+)?)(?P<unit>[a-z]*)"
)


def parse_job_limits(text: str) -> tuple[tuple[str, str, float], ...]:
    """`memory=4G,cpu=2h,spreadsheet.wall=30m` as (kind, limit, value) triples, "" for
    every kind. Sizes take K, M, G, T (decimal, a trailing B allowed); times s, m, h."""
    limits = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = _LIMIT.fullmatch(part.lower())
        units = LIMIT_UNITS.get(match["name"], {}) if match else {}
        unit = match["unit"] if match else ""
        if units is _SIZES:
            unit = unit.removesuffix("b")
        if unit not in units:
            raise ValueError(
                f"HEADWAY_JOB_LIMITS: cannot read {part!r}; write e.g. memory=4G, cpu=2h, "
                "wall=30m, output=20G, open_files=512, or spreadsheet.memory=1G"
            )
        limits.append((match["kind"] or "", match["name"], float(match["number"]) * units[unit]))
    return tuple(limits)
