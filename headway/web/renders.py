"""One read and one render per change per web process, shared by every stream that needs it.

A thousand browsers watching one job must not mean a thousand reads and renders of the
same state. Streams ask for a job's rendered message no older than a moment: the moment
their watcher was last told the job changed. A render whose read began after that moment
holds the change (the notification is published after the write commits), so it can be
shared; an older one is refreshed first, by one stream while the others wait for it.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A job's state as one ready-to-send message."""

    read_at: float  # monotonic time the read of the record began
    version: int
    status: str
    finished: bool
    message: bytes  # encoded once, sent to every watcher as it is
    notice: bytes = b""  # for list pages: the "job finished" message, once it has


class SharedRenders:
    """Rendered messages by (purpose, job id), newest first to stay, bounded in number."""

    def __init__(self, max_entries: int = 1024):
        self.max_entries = max_entries
        self._entries: collections.OrderedDict[tuple[str, str], Rendered] = (
            collections.OrderedDict()
        )
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def get(
        self,
        purpose: str,
        job_id: str,
        not_before: float,
        render: Callable[[float], Rendered | None],
    ) -> Rendered | None:
        """The message for `job_id`, read no earlier than `not_before` (monotonic).

        `render(read_at)` reads the record and renders it; None means the job is gone.
        """
        key = (purpose, job_id)
        entry = self._entries.get(key)
        if entry is not None and entry.read_at >= not_before:
            return entry
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one render at a time per job; those waiting reuse its result
            entry = self._entries.get(key)
            if entry is not None and entry.read_at >= not_before:
                return entry
            entry = render(time.monotonic())
            with self._lock:
                if entry is None:  # the job is gone: so is all we kept for it
                    self._entries.pop(key, None)
                    self._locks.pop(key, None)
                else:
                    self._entries[key] = entry
                    self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    old, _ = self._entries.popitem(last=False)
                    self._locks.pop(old, None)
            return entry
