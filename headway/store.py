"""The job record: one Redis hash per job, written only through one atomic Lua script.

Keys (prefix `hw:`):
    hw:job:<id>          hash: everything a page needs (see JobState)
    hw:job:<id>:log      list: the most recent log lines, capped
    hw:job:<id>:items    hash: per-item progress, field = item index
    hw:job:<id>:itemv    sorted set: item indexes by the version that last changed them
    hw:owner:<owner>     sorted set: the owner's job ids by creation time
    hw:running           sorted set: ids of `running` jobs by last heartbeat (for the reaper)
    hw:retention         sorted set: "<id>:<owner>" of finished jobs by removal time
    hw:queued            sorted set: ids of jobs created `queued`, by creation time (for their
                         place in the queue; headway/queueing.py drops those that left it)
Every change publishes "<id> <owner>" on the channel `hw:changes`, and an update that is not
too big the change itself (`Notice`): a reader that holds the version before applies it, and
any other reads the hash.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import redis

from headway import storage as file_storage
from headway.settings import Settings

log = logging.getLogger("headway.store")

CHANNEL = "hw:changes"
RUNNING = "hw:running"
RETENTION = "hw:retention"
CONSUMERS = "hw:consumers"
QUEUED = "hw:queued"
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
# The most bytes of an update (its fields, log lines and items, as JSON) that its notice
# carries: the readers that hold the version before then apply it without reading. A notice
# goes to every web process, whether it watches the job or not.
NOTICE_MAX = 4096
JOB_ID = re.compile(r"\A[0-9a-f]{32}\Z")

# KEYS: job, log, items, running, retention, item versions
# ARGV: now, fields (JSON object of strings), log lines (JSON list), item pairs (JSON list),
#       channel, log cap, retention seconds, heartbeat cutoff ("" for none), the most bytes
#       of fields, lines and items a notice carries (`Notice`)
# Returns {"ok", version, cancel_requested, status} or {reason, stored, attempted}.
UPDATE_SCRIPT = """
local job, logkey, itemskey, running, retention = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local itemv = KEYS[6]
local now = ARGV[1]
local cur = redis.call('HMGET', job, 'status', 'progress', 'heartbeat', 'attempt', 'owner', 'id',
                      'version', 'cancel_requested')
local status = cur[1]
if not status then return {'missing', '', ''} end
local f = cjson.decode(ARGV[2])
local final = {succeeded=true, failed=true, cancelled=true, interrupted=true}
if final[status] then
  -- the one write a finished job accepts: the link to the attempt that retries it (whole,
  -- or only its failed items)
  local only_link = next(f) ~= nil
  for k, _ in pairs(f) do
    if k ~= 'retried_as' and k ~= 'retried_items_as' then only_link = false end
  end
  if not only_link then return {'final', status, f.status or f.progress or ''} end
end
local cutoff = ARGV[8]
if cutoff ~= '' and (status ~= 'running' or tonumber(cur[3] or '0') >= tonumber(cutoff)) then
  return {'alive', cur[3] or '', cutoff}  -- only a silent running job is reaped
end
if f.attempt and tonumber(f.attempt) < tonumber(cur[4] or '1') then
  return {'stale', cur[4], f.attempt}
end
if f.progress and tonumber(f.progress) < tonumber(cur[2] or '0') then
  return {'regress', cur[2], f.progress}
end
if f.status and f.status ~= status then
  local allowed = {
    queued = {running=true, cancelled=true, failed=true},
    running = {running=true, retrying=true, succeeded=true, failed=true, cancelled=true,
               interrupted=true},
    retrying = {running=true, retrying=true, failed=true, cancelled=true, interrupted=true},
  }
  if not (allowed[status] and allowed[status][f.status]) then
    return {'transition', status, f.status}
  end
end
local version = tonumber(cur[7] or '0') + 1
local args = {}
for k, v in pairs(f) do args[#args + 1] = k; args[#args + 1] = v end
args[#args + 1] = 'updated_at'; args[#args + 1] = now
args[#args + 1] = 'version'; args[#args + 1] = version
redis.call('HSET', job, unpack(args))
local lines = cjson.decode(ARGV[3])
if #lines > 0 then
  redis.call('RPUSH', logkey, unpack(lines))
  redis.call('LTRIM', logkey, -tonumber(ARGV[6]), -1)
  redis.call('HINCRBY', job, 'log_total', #lines)  -- readers ask for the lines after theirs
end
local items = cjson.decode(ARGV[4])
if #items > 0 then
  redis.call('HSET', itemskey, unpack(items))
  local stamps = {}  -- which items this version changed, for readers that hold the rest
  for i = 1, #items, 2 do stamps[#stamps + 1] = version; stamps[#stamps + 1] = items[i] end
  redis.call('ZADD', itemv, unpack(stamps))
end
local new_status = f.status or status
if final[new_status] and not final[status] then
  local ttl = math.max(1, math.ceil(tonumber(ARGV[7])))
  redis.call('ZREM', running, cur[6])
  redis.call('EXPIRE', job, ttl)
  redis.call('EXPIRE', logkey, ttl)
  redis.call('EXPIRE', itemskey, ttl)
  redis.call('EXPIRE', itemv, ttl)
  redis.call('ZADD', retention, tonumber(now) + tonumber(ARGV[7]), cur[6] .. ':' .. cur[5])
elseif new_status == 'running' and f.heartbeat then
  redis.call('ZADD', running, f.heartbeat, cur[6])
elseif new_status == 'retrying' then
  redis.call('ZREM', running, cur[6])  -- waiting in Huey's schedule: no heartbeat to watch
end
local notice = cur[6] .. ' ' .. cur[5]
if #ARGV[2] + #ARGV[3] + #ARGV[4] <= tonumber(ARGV[9]) then
  notice = notice .. ' ' .. version .. '\\n' .. now .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3]
    .. '\\n' .. ARGV[4]
end
redis.call('PUBLISH', ARGV[5], notice)
return {'ok', version, f.cancel_requested or cur[8] or '0', new_status}
"""


# What changed since a reader's version: the record, the items changed after that version
# (all of them for a reader with none), and the log lines after the reader's count.
# KEYS: job, log, items, item versions. ARGV: version ("" for all), log lines seen.
READ_SINCE_SCRIPT = """
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return {} end
if ARGV[1] == '' then
  return {h, redis.call('HGETALL', KEYS[3]), redis.call('LRANGE', KEYS[2], 0, -1)}
end
local items = {}
local changed = redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. ARGV[1], '+inf')
if #changed > 0 then
  local values = redis.call('HMGET', KEYS[3], unpack(changed))
  for i, index in ipairs(changed) do
    if values[i] then items[#items + 1] = index; items[#items + 1] = values[i] end
  end
end
local total = tonumber(redis.call('HGET', KEYS[1], 'log_total') or '0')
local new = total - tonumber(ARGV[2])
local lines = {}
if new > 0 then lines = redis.call('LRANGE', KEYS[2], -new, -1) end
return {h, items, lines}
"""


class UpdateResult(NamedTuple):
    ok: bool
    reason: str
    version: int = 0
    cancel_requested: bool = False
    status: str = ""


@dataclasses.dataclass(frozen=True)
class ItemProgress:
    name: str
    percent: float
    status: str  # "pending", "running", "done", "failed"
    index: int = 0  # its place among the job's items (set when read)
    reason: str = ""  # why it failed, when it did

    @classmethod
    def parse(cls, index: str, raw: str) -> ItemProgress:
        name, percent, status, *rest = json.loads(raw)
        return cls(name, percent, status, int(index), rest[0] if rest else "")

    def encode(self) -> str:
        fields = [self.name, round(self.percent, 1), self.status]
        return json.dumps([*fields, self.reason] if self.reason else fields)


@dataclasses.dataclass
class Problem:
    """A failed item as the job's record names it: its index, name and reason."""

    index: int
    name: str
    reason: str


@dataclasses.dataclass
class Changes:
    """A job as read since a version: its state, the items changed after that version (all,
    for a reader with none), and the log lines after the reader's count (oldest first); and
    its hash as it is now (`record`), to apply the next notice to."""

    state: JobState
    items: list[ItemProgress]
    log_lines: list[dict]
    record: dict[str, str]

    def then(self, later: Changes) -> Changes:
        """This change and a later one, as one."""
        items = {item.index: item for item in (*self.items, *later.items)}
        return Changes(
            later.state,
            [items[index] for index in sorted(items)],
            self.log_lines + later.log_lines,
            later.record,
        )


@dataclasses.dataclass(frozen=True)
class Notice:
    """A job's change notice, as the hub hears it: "<id> <owner>", and for an update of at
    most `NOTICE_MAX` bytes, " <version>" and the update itself, as the script applied it:
    "\n<now>\n<fields>\n<log lines>\n<item pairs>" (JSON never holds a raw line break)."""

    job_id: str
    owner: str
    version: int | None = None  # None: the notice carries no change (read the record)
    change: str = ""

    @classmethod
    def parse(cls, data: str) -> Notice:
        head, _, change = data.partition("\n")
        job_id, _, rest = head.partition(" ")
        owner, _, version = rest.partition(" ")
        if not (change and version.isdigit()):
            return cls(job_id, owner)
        return cls(job_id, owner, int(version), change)

    def apply(self, state: JobState, record: dict[str, str]) -> Changes:
        """The change, applied to the job at the version before (its `state`, parsed from
        its hash, `record`) exactly as the update script applied it to the hash in Redis."""
        now, fields, lines, pairs = self.change.split("\n")
        fields = {**json.loads(fields), "updated_at": now, "version": str(self.version)}
        log_lines = [json.loads(line) for line in json.loads(lines)]
        if log_lines:
            before = fields.get("log_total", record.get("log_total"))
            fields["log_total"] = str(int(before or 0) + len(log_lines))
        record = {**record, **fields}
        pairs = json.loads(pairs)
        items = sorted(
            (ItemProgress.parse(i, v) for i, v in zip(pairs[::2], pairs[1::2], strict=True)),
            key=lambda item: item.index,
        )
        return Changes(state.updated(fields), items, log_lines, record)


@dataclasses.dataclass
class JobState:
    """A job as every view sees it, parsed from its hash."""

    id: str
    kind: str
    owner: str
    title: str
    status: str
    progress: float
    stage: str
    stages: list[str]
    stage_index: int
    message: str
    done: int
    total: int
    failed: int
    current: str
    rate: float
    rate_unit: str
    eta: float | None
    created_at: float
    started_at: float | None
    updated_at: float
    finished_at: float | None
    heartbeat: float | None
    attempt: int
    error: str
    files: list[dict]
    version: int
    cancel_requested: bool
    retry_of: str
    retried_as: str
    params: dict
    inputs: list[str]
    log_total: int = 0  # log lines ever written (the list keeps the newest few)
    worker: str = ""  # "host:pid" of the worker running (or that ran) the latest attempt
    queue_ahead: int | None = None  # while queued: jobs ahead of it in the queue
    queue_eta: float | None = None  # while queued: seconds until it likely starts
    problems: list[Problem] = dataclasses.field(default_factory=list)  # failed items
    retried_items_as: str = ""  # the attempt that retries only the failed items

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES

    def owned_by(self, owner: str | None) -> bool:
        return bool(owner) and secrets.compare_digest(self.owner, owner)

    @property
    def elapsed(self) -> int:
        """Whole seconds since it started (until it finished), as the page shows them: a
        part that reads it changes once a second, not on every read."""
        if not self.started_at:
            return 0
        return round((self.finished_at or time.time()) - self.started_at)

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> JobState:
        return cls(id=h["id"], **{name: parse(h.get(name)) for name, parse in FIELDS.items()})

    def updated(self, fields: dict[str, str]) -> JobState:
        """This state with some of its hash's fields set anew (the others parsed once)."""
        state = object.__new__(type(self))  # a copy, without copy.copy's generic walk
        state.__dict__ = {
            **self.__dict__,
            **{name: FIELDS[name](value) for name, value in fields.items() if name in FIELDS},
        }
        return state


def _text(default: str = "") -> Callable[[str | None], str]:
    return lambda value: default if value is None else value


def _number(default: float = 0.0) -> Callable[[str | None], float]:
    return lambda value: float(value) if value not in ("", None) else default


def _whole(default: int = 0) -> Callable[[str | None], int]:
    return lambda value: int(float(value)) if value not in ("", None) else default


def _optional(value: str | None) -> float | None:
    return float(value) if value else None


def _json(empty: str) -> Callable[[str | None], Any]:
    return lambda value: json.loads(value or empty)


# How each field of a job's hash (by the JobState attribute it fills) is parsed; a missing
# field (None) takes the default.
FIELDS: dict[str, Callable[[str | None], Any]] = {
    "kind": _text(),
    "owner": _text(),
    "title": _text(),
    "status": _text("queued"),
    "progress": _number(),
    "stage": _text(),
    "stages": _json("[]"),
    "stage_index": _whole(),
    "message": _text(),
    "done": _whole(),
    "total": _whole(),
    "failed": _whole(),
    "current": _text(),
    "rate": _number(),
    "rate_unit": _text("items"),
    "eta": _optional,
    "created_at": _number(),
    "started_at": _optional,
    "updated_at": _number(),
    "finished_at": _optional,
    "heartbeat": _optional,
    "attempt": _whole(1),
    "error": _text(),
    "files": _json("[]"),
    "version": _whole(),
    "cancel_requested": lambda value: value == "1",
    "retry_of": _text(),
    "retried_as": _text(),
    "params": _json("{}"),
    "inputs": _json("[]"),
    "log_total": _whole(),
    "worker": _text(),
    "queue_ahead": lambda value: int(value) if value else None,
    "queue_eta": _optional,
    "problems": lambda value: [Problem(*p) for p in json.loads(value or "[]")],
    "retried_items_as": _text(),
}


def new_job_id() -> str:
    """128 random bits, hex: unguessable and safe in URLs, keys and SSE event names."""
    return secrets.token_hex(16)


def _str(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1e15 else str(int(value))
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "" if value is None else str(value)


class JobStore:
    """Reads and writes job records; every write is one atomic script call."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.client = client
        self.settings = settings
        self._update = client.register_script(UPDATE_SCRIPT)
        self._read_since = client.register_script(READ_SINCE_SCRIPT)

    # -- keys ---------------------------------------------------------------
    @staticmethod
    def key(job_id: str) -> str:
        return f"hw:job:{job_id}"

    @staticmethod
    def owner_key(owner: str) -> str:
        return f"hw:owner:{owner}"

    def job_dir(self, job_id: str) -> Path:
        """The job's folder when files live in the instance folder (the local backend)."""
        return self.settings.jobs_dir / job_id

    @property
    def storage(self) -> file_storage.Storage:
        """Where the job's files live (headway/storage.py)."""
        return file_storage.for_settings(self.settings)

    # -- writes -------------------------------------------------------------
    def create(
        self,
        *,
        kind: str,
        owner: str,
        title: str,
        stages: list[str] = (),
        params: dict | None = None,
        inputs: list[str] = (),
        attempt: int = 1,
        retry_of: str = "",
        job_id: str | None = None,
    ) -> str:
        """Write a new `queued` record and index it under its owner; returns the id."""
        job_id = job_id or new_job_id()
        now = time.time()
        record = {
            "id": job_id,
            "kind": kind,
            "owner": owner,
            "title": title,
            "status": "queued",
            "progress": 0.0,
            "stage": "",
            "stages": list(stages),
            "stage_index": 0,
            "message": "Waiting for a worker",
            "done": 0,
            "total": 0,
            "failed": 0,
            "created_at": now,
            "updated_at": now,
            "attempt": attempt,
            "version": 1,
            "cancel_requested": False,
            "retry_of": retry_of,
            "params": params or {},
            "inputs": list(inputs),
            "files": [],
        }
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.key(job_id), mapping={k: _str(v) for k, v in record.items()})
        pipe.zadd(self.owner_key(owner), {job_id: now})
        pipe.zadd(QUEUED, {job_id: now})
        pipe.publish(CHANNEL, f"{job_id} {owner}")
        pipe.execute()
        log.info("job %s: created kind=%s owner=%s attempt=%s", job_id, kind, owner[:8], attempt)
        return job_id

    def update(
        self,
        job_id: str,
        fields: dict[str, Any] | None = None,
        *,
        log_lines: list[str] = (),
        items: dict[int, ItemProgress] | None = None,
        heartbeat_cutoff: float | None = None,
    ) -> UpdateResult:
        """Apply one atomic change; rejected writes come back with `ok=False` and a reason."""
        fields = {k: _str(v) for k, v in (fields or {}).items()}
        item_pairs: list[str] = []
        for index, item in (items or {}).items():
            item_pairs += [str(index), item.encode()]
        key = self.key(job_id)
        raw = self._update(
            keys=[key, f"{key}:log", f"{key}:items", RUNNING, RETENTION, f"{key}:itemv"],
            args=[
                f"{time.time():.3f}",
                json.dumps(fields),
                json.dumps(list(log_lines)),
                json.dumps(item_pairs),
                CHANNEL,
                self.settings.log_lines,
                self.settings.retention_seconds,
                "" if heartbeat_cutoff is None else f"{heartbeat_cutoff:.3f}",
                NOTICE_MAX,
            ],
        )
        if raw[0] == "ok":
            result = UpdateResult(True, "ok", int(raw[1]), raw[2] == "1", raw[3])
            if "status" in fields:
                log.info("job %s: status %s (version %s)", job_id, result.status, result.version)
            return result
        reason, stored, attempted = raw
        if reason == "regress":
            log.warning("job %s: rejected progress %s below stored %s", job_id, attempted, stored)
        elif reason in ("final", "transition", "stale"):
            log.info(
                "job %s: rejected %s write (stored %s, attempted %s)",
                job_id,
                reason,
                stored,
                attempted,
            )
        return UpdateResult(
            False, reason, status=stored if reason in ("final", "transition") else ""
        )

    def log(self, job_id: str, message: str, level: str = "info") -> UpdateResult:
        """Append one log line (a change like any other: it bumps the version)."""
        return self.update(job_id, log_lines=[format_log_line(message, level)])

    def remove(self, job_id: str, owner: str) -> None:
        """Delete a job's keys, index entries and files."""
        key = self.key(job_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key, f"{key}:log", f"{key}:items", f"{key}:itemv")
        pipe.zrem(self.owner_key(owner), job_id)
        pipe.zrem(RUNNING, job_id)
        pipe.zrem(QUEUED, job_id)
        pipe.zrem(RETENTION, f"{job_id}:{owner}")
        # A change like any other: every web process forgets what it held of the job.
        pipe.publish(CHANNEL, f"{job_id} {owner}")
        pipe.execute()
        self.storage.remove_job(job_id)
        log.info("job %s: removed with its files", job_id)

    def remove_expired(self, now: float | None = None) -> int:
        """Remove every finished job whose retention has ended; returns how many."""
        due = self.client.zrangebyscore(RETENTION, "-inf", now or time.time())
        for member in due:
            job_id, _, owner = member.partition(":")
            self.remove(job_id, owner)
        return len(due)

    def remove_orphans(self, grace: float, now: float | None = None) -> int:
        """Remove files of jobs that have no record, once older than `grace` seconds."""
        return file_storage.sweep_orphans(
            self.storage, lambda job_id: bool(self.client.exists(self.key(job_id))), grace, now
        )

    # -- reads --------------------------------------------------------------
    def get(self, job_id: str) -> JobState | None:
        if not JOB_ID.match(job_id or ""):
            return None
        h = self.client.hgetall(self.key(job_id))
        return JobState.from_hash(h) if h else None

    def get_detail(self, job_id: str) -> tuple[JobState | None, list[ItemProgress], list[dict]]:
        """The record, its item bars and its log lines, read in one round trip."""
        if not JOB_ID.match(job_id or ""):
            return None, [], []
        key = self.key(job_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(key)
        pipe.hgetall(f"{key}:items")
        pipe.lrange(f"{key}:log", 0, -1)
        h, raw_items, lines = pipe.execute()
        if not h:
            return None, [], []
        items = [ItemProgress.parse(k, raw_items[k]) for k in sorted(raw_items, key=int)]
        return JobState.from_hash(h), items, [json.loads(line) for line in lines]

    def read_since(self, since: dict[str, tuple[int, int] | None]) -> dict[str, Changes | None]:
        """For each job id, what changed since (version, log lines seen), or everything for
        None: all of them read in one round trip. None for a job that is gone."""

        def read() -> list:
            pipe = self.client.pipeline(transaction=False)
            for job_id, seen in since.items():
                key = self.key(job_id)
                # By its hash: a pipeline that runs a script object asks SCRIPT EXISTS
                # first, a second round trip on every read.
                pipe.evalsha(
                    self._read_since.sha,
                    4,
                    *(key, f"{key}:log", f"{key}:items", f"{key}:itemv"),
                    *(("", 0) if seen is None else seen),
                )
            return pipe.execute()

        try:
            replies = read()
        except redis.exceptions.NoScriptError:  # Redis restarted, or its scripts were flushed
            self.client.script_load(READ_SINCE_SCRIPT)
            replies = read()
        changes: dict[str, Changes | None] = {}
        for job_id, raw in zip(since, replies, strict=True):
            if not raw:
                changes[job_id] = None
                continue
            h, pairs, lines = raw
            h = dict(zip(h[::2], h[1::2], strict=True))
            items = sorted(
                (ItemProgress.parse(i, v) for i, v in zip(pairs[::2], pairs[1::2], strict=True)),
                key=lambda item: item.index,
            )
            changes[job_id] = Changes(
                JobState.from_hash(h), items, [json.loads(line) for line in lines], h
            )
        return changes

    def get_owned(self, job_id: str, owner: str | None) -> JobState | None:
        """The job if `owner` owns it; None for unknown, malformed and foreign ids alike."""
        job = self.get(job_id)
        return job if job is not None and job.owned_by(owner) else None

    def get_many(self, job_ids: list[str]) -> list[JobState]:
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.key(job_id))
        return [JobState.from_hash(h) for h in pipe.execute() if h]

    def list_for_owner(self, owner: str, limit: int = 100) -> list[JobState]:
        """The owner's newest jobs, read through the index: no key scans."""
        ids = self.client.zrevrange(self.owner_key(owner), 0, limit - 1)
        jobs = self.get_many(ids)
        if len(jobs) < len(ids):  # expired records whose index entry is not yet swept
            present = {job.id for job in jobs}
            self.client.zrem(self.owner_key(owner), *[i for i in ids if i not in present])
        return jobs

    def page_for_owner(
        self, owner: str, statuses: frozenset[str] | None, offset: int, limit: int
    ) -> tuple[list[JobState], bool]:
        """One page of the owner's jobs, newest first, only those in `statuses` (all for
        None), and whether more follow. Reads statuses alone, a chunk at a time, until the
        page is full: no key scans, and no whole records but the page's."""
        wanted: list[str] = []
        gone: list[str] = []
        start, chunk = 0, 500
        while len(wanted) <= offset + limit:
            ids = self.client.zrevrange(self.owner_key(owner), start, start + chunk - 1)
            if not ids:
                break
            pipe = self.client.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(self.key(job_id), "status")
            for job_id, status in zip(ids, pipe.execute(), strict=True):
                if status is None:
                    gone.append(job_id)
                elif statuses is None or status in statuses:
                    wanted.append(job_id)
            start += chunk
        if gone:  # expired records whose index entry is not yet swept
            self.client.zrem(self.owner_key(owner), *gone)
        return self.get_many(wanted[offset : offset + limit]), len(wanted) > offset + limit

    def log_lines(self, job_id: str) -> list[dict]:
        return [json.loads(line) for line in self.client.lrange(f"{self.key(job_id)}:log", 0, -1)]

    def items(self, job_id: str) -> list[ItemProgress]:
        raw = self.client.hgetall(f"{self.key(job_id)}:items")
        return [ItemProgress.parse(k, raw[k]) for k in sorted(raw, key=int)]

    def stale_running(self, cutoff: float) -> list[str]:
        return self.client.zrangebyscore(RUNNING, "-inf", f"({cutoff}")

    def mark_interrupted_if_stale(self, job_id: str, now: float | None = None) -> bool:
        """Mark a running job `interrupted` if its heartbeat is older than the timeout."""
        now = now or time.time()
        cutoff = now - self.settings.heartbeat_timeout
        result = self.update(
            job_id,
            {
                "status": "interrupted",
                "finished_at": now,
                "error": "The worker stopped responding; the job was interrupted.",
                "message": "Interrupted: the worker stopped responding",
            },
            log_lines=[format_log_line("Worker heartbeat lost; job interrupted", "error")],
            heartbeat_cutoff=cutoff,
        )
        if result.ok:
            log.warning("job %s: interrupted (no heartbeat since before %.0f)", job_id, cutoff)
        elif result.reason != "alive":
            self.client.zrem(RUNNING, job_id)  # finished or gone: nothing to watch
        return result.ok

    def stop_wanted(self, job_id: str) -> bool:
        """Whether a running attempt must stop: cancelled, finished (reaped), or gone."""
        status, cancel = self.client.hmget(self.key(job_id), "status", "cancel_requested")
        return status is None or cancel == "1" or status not in ("running", "retrying")

    def owner_running_count(self, owner: str) -> int:
        return sum(1 for job in self.list_for_owner(owner) if not job.finished)


def format_log_line(message: str, level: str = "info") -> str:
    return json.dumps({"t": round(time.time(), 3), "level": level, "msg": message[:500]})
