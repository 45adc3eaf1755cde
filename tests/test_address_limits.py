"""Limits that a new cookie does not reset (per client address, X-Forwarded-For only from
trusted proxies), caps that protect the server itself (429 and 503, with Retry-After), and
how leases are given back."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import redis

from app import create_app
from headway.limits import HOLDERS, LimitExceeded, Limits, held
from headway.settings import Settings
from jobs import control, kinds

from .conftest import wait_for, within_one_minute

FORM = {"steps": "3", "delay": "0", "fail_at": "-1"}


def app_with(**config):
    return create_app({"TESTING": True, "WTF_CSRF_ENABLED": False, **config})


def fresh_visitor(app, address="203.0.113.7", forwarded=None):
    """A client with no cookie yet: every request from it starts as a new visitor."""
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    client = app.test_client(use_cookies=False)
    client.environ_base.update(REMOTE_ADDR=address)
    return client, headers


def start_job(app, **kwargs):
    client, headers = fresh_visitor(app, **kwargs)
    return client.post("/jobs/new/steps", data=FORM, headers=headers)


def test_new_cookies_do_not_reset_the_jobs_per_minute_of_an_address(store):
    app = app_with(JOBS_PER_MINUTE_PER_ADDRESS=3, RUNNING_JOBS_PER_ADDRESS=100)
    within_one_minute()
    assert [start_job(app).status_code for _ in range(3)] == [303] * 3
    response = start_job(app)
    assert response.status_code == 429
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert "Too many jobs started from your address this minute (3 at most)." in response.text
    assert start_job(app, address="203.0.113.8").status_code == 303  # another address


def test_new_cookies_do_not_reset_the_running_jobs_of_an_address(store):
    app = app_with(RUNNING_JOBS_PER_ADDRESS=2)
    assert [start_job(app).status_code for _ in range(2)] == [303] * 2
    response = start_job(app)
    assert response.status_code == 429 and response.headers["Retry-After"] == "10"
    assert "Your address already has 2 jobs queued or running (2 at most)" in response.text
    for job_id in store.client.zrange("hw:jobs:addr:203.0.113.7", 0, -1):
        control.cancel(store.get(job_id), store)
    assert start_job(app).status_code == 303  # finished jobs no longer count


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(store):
    untrusted = app_with(JOBS_PER_MINUTE_PER_ADDRESS=1)
    within_one_minute()
    assert start_job(untrusted, forwarded="198.51.100.1").status_code == 303
    # A client cannot claim to be someone else by sending the header itself.
    assert start_job(untrusted, forwarded="198.51.100.2").status_code == 429

    behind = app_with(JOBS_PER_MINUTE_PER_ADDRESS=1, TRUSTED_PROXIES=("10.0.0.0/8",))
    proxy = "10.1.2.3"
    assert start_job(behind, address=proxy, forwarded="198.51.100.3").status_code == 303
    assert start_job(behind, address=proxy, forwarded="198.51.100.4").status_code == 303
    # The rightmost hop that is not a proxy of ours is the client; what it claims is not.
    spoofed = "198.51.100.3, 198.51.100.5, 10.9.9.9"
    assert start_job(behind, address=proxy, forwarded=spoofed).status_code == 303
    assert start_job(behind, address=proxy, forwarded="1.1.1.1, 198.51.100.5").status_code == 429


def test_ipv6_clients_count_by_their_64(store):
    app = app_with(JOBS_PER_MINUTE_PER_ADDRESS=1)
    within_one_minute()
    assert start_job(app, address="2001:db8:1:2::1").status_code == 303
    assert start_job(app, address="2001:db8:1:2::ffff").status_code == 429
    assert start_job(app, address="2001:db8:1:3::1").status_code == 303


def test_streams_per_address_without_cookies(store):
    app = app_with(MAX_STREAMS_PER_ADDRESS=3)
    opened = []
    for _ in range(3):
        client, _ = fresh_visitor(app)
        opened.append(client.get("/live?rows=1", buffered=False))
    assert [r.status_code for r in opened] == [200] * 3
    client, _ = fresh_visitor(app)
    refused = client.get("/live?rows=1")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "from your address (3 at most)" in refused.text
    opened.pop().close()  # a stream that ends frees its slot (a moment later)
    wait_for(lambda: held(store.client, "hw:streams:addr:203.0.113.7") == 2, timeout=5)
    assert client.get("/live?rows=1", buffered=False).status_code == 200


def test_the_process_stream_cap_is_503_even_with_limits_off(store):
    app = app_with(MAX_STREAMS_PER_PROCESS=2, RATE_LIMITS=False)
    opened = [fresh_visitor(app)[0].get("/live?rows=1", buffered=False) for _ in range(2)]
    refused = fresh_visitor(app)[0].get("/live?rows=1")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"
    assert "limit of 2 streams at once" in refused.text
    opened[0].close()
    assert fresh_visitor(app)[0].get("/live?rows=1", buffered=False).status_code == 200


def test_a_stream_never_iterated_still_gives_its_slot_back(store):
    app = app_with(MAX_STREAMS_PER_PROCESS=1)
    fresh_visitor(app)[0].get("/live?rows=1", buffered=False).close()
    assert app.extensions["headway"].caps.held("stream") == 0


@pytest.mark.parametrize("setting", ["MAX_UPLOADS_PER_PROCESS", "UPLOADS_PER_ADDRESS"])
def test_upload_caps_refuse_before_reading_the_body(store, setting):
    response = start_job(app_with(**{setting: 0}))
    status = 503 if setting == "MAX_UPLOADS_PER_PROCESS" else 429
    assert response.status_code == status and "Retry-After" in response.headers
    assert not store.list_for_owner("x")


def test_a_full_queue_is_503(store):
    kind = kinds.get("steps")
    control.submit(kind, job_id="a" * 32, owner="o", title="t", params={}, inputs=[])
    response = start_job(app_with(MAX_QUEUED_JOBS=1, RATE_LIMITS=False))
    assert response.status_code == 503 and response.headers["Retry-After"] == "30"
    assert "jobs waiting to start (1 at most)" in response.text


class _HeldRoundTrips:
    """A holder's release script, with each round trip held until the test lets one go
    (`let_one_go`): slow round trips, on demand. Counts the round trips."""

    def __init__(self, send, fail_first: BaseException | None = None):
        self.send, self.fail_first = send, fail_first
        self.round_trips = 0
        self.entered = threading.Semaphore(0)  # one for each round trip begun
        self.permits = threading.Semaphore(0)

    def let_one_go(self):
        self.permits.release()

    def let_all_go(self):
        for _ in range(100):
            self.permits.release()

    def wait_for_a_round_trip(self):
        assert self.entered.acquire(timeout=10)

    def __call__(self, keys, args):
        self.round_trips += 1
        self.entered.release()
        assert self.permits.acquire(timeout=10)
        if self.fail_first is not None:
            failure, self.fail_first = self.fail_first, None
            raise failure
        return self.send(keys=keys, args=args)


OWNER_SET, ADDRESS_SET = "hw:streams:releasing-owner", "hw:streams:addr:198.51.100.9"
SETS = (OWNER_SET, ADDRESS_SET)


def _stream_leases(store, count, fail_first=None):
    limits = Limits(store.client, Settings.from_env())
    held_trips = _HeldRoundTrips(limits.holder._release, fail_first)
    limits.holder._release = held_trips
    leases = [limits.open_stream("releasing-owner", "198.51.100.9") for _ in range(count)]
    return held_trips, leases


def _held_in_redis(store) -> int:
    """The slots held in both sets, which hold as many (read again if a release that gives
    back one in each came between the two reads)."""
    for _ in range(3):
        owner, address = (held(store.client, key) for key in SETS)
        if owner == address:
            return owner
    raise AssertionError(f"{owner} slots held in the owner's set, {address} in the address's")


def _limits(store, **caps) -> Limits:
    return Limits(store.client, dataclasses.replace(Settings.from_env(), **caps))


def test_a_process_holds_its_slots_with_one_renewal_however_many(store):
    """A process renews its entry in `hw:holders`, and the time to live of each set it holds
    slots in: one ZADD and one EXPIRE per set, however many slots; none while it holds none."""
    limits = _limits(store)
    holder = limits.holder
    holder.LAPSE, holder.RENEW_EVERY = 2.0, 0.2
    leases = [limits.open_stream("releasing-owner", "198.51.100.9") for _ in range(5)]
    assert _held_in_redis(store) == 5
    store.client.config_resetstat()
    time.sleep(3 * holder.LAPSE)  # many renewals later, its slots still count
    assert _held_in_redis(store) == 5
    stats = store.client.info("commandstats")
    renewals = stats["cmdstat_zadd"]["calls"]
    assert renewals >= 5 and stats["cmdstat_expire"]["calls"] == 2 * renewals
    for lease in leases:
        lease.release()
    wait_for(lambda: _held_in_redis(store) == 0, timeout=5)
    assert not store.client.exists(*SETS)  # nothing left behind
    wait_for(lambda: not holder._running, timeout=5)  # it stops renewing, holding nothing
    store.client.config_resetstat()
    time.sleep(3 * holder.RENEW_EVERY)
    assert "cmdstat_zadd" not in store.client.info("commandstats")


def test_the_slots_of_a_process_that_died_stop_counting(store):
    cap = {"max_streams_per_owner": 2, "max_streams_per_address": 2}
    dead, alive = _limits(store, **cap), _limits(store, **cap)
    dead.holder.RENEW_EVERY = 3600  # it never renews: as good as dead, once it lapses
    for _ in range(2):
        dead.open_stream("releasing-owner", "198.51.100.9")
    with pytest.raises(LimitExceeded, match="Too many live streams open"):
        alive.open_stream("releasing-owner", "198.51.100.9")
    store.client.zadd(HOLDERS, {dead.holder.token: time.time() - 1})  # its entry lapsed
    assert _held_in_redis(store) == 0
    alive.open_stream("releasing-owner", "198.51.100.9")  # and drops the dead one's slots
    assert store.client.hkeys(OWNER_SET) == [alive.holder.token]
    assert store.client.zscore(HOLDERS, dead.holder.token) is None


def test_processes_count_their_slots_together(store):
    cap = {"max_streams_per_owner": 3, "max_streams_per_address": 100}
    first, second = _limits(store, **cap), _limits(store, **cap)
    first.open_stream("releasing-owner", "198.51.100.9")
    leases = [second.open_stream("releasing-owner", "198.51.100.9") for _ in range(2)]
    with pytest.raises(LimitExceeded):
        first.open_stream("releasing-owner", "198.51.100.9")
    assert _held_in_redis(store) == 3  # the refused one took no slot in the address's set
    leases[0].release()
    leases[0].release()  # a second release gives nothing back
    wait_for(lambda: _held_in_redis(store) == 2, timeout=5)
    first.open_stream("releasing-owner", "198.51.100.9")
    time.sleep(3 * second.holder.GATHER)
    assert _held_in_redis(store) == 3


def test_slots_given_back_together_go_in_one_round_trip(store):
    held_trips, leases = _stream_leases(store, 4)
    held_trips.let_all_go()
    for lease in leases:
        lease.release()  # returns at once: a thread gives them back a moment later
    wait_for(lambda: _held_in_redis(store) == 0, timeout=5)
    assert held_trips.round_trips == 1


def test_giving_a_slot_back_never_waits_for_redis(store):
    held_trips, (first, *others) = _stream_leases(store, 4)
    try:
        first.release()
        held_trips.wait_for_a_round_trip()  # under way, and held
        for lease in others:
            lease.release()  # returns while the round trip is held: they go in the next
        assert _held_in_redis(store) == 4
        held_trips.let_one_go()
        wait_for(lambda: _held_in_redis(store) == 3, timeout=5)
    finally:
        held_trips.let_all_go()
    wait_for(lambda: _held_in_redis(store) == 0, timeout=5)
    assert held_trips.round_trips == 2


def test_a_failed_release_leaves_later_ones_working(store):
    held_trips, (lost, kept) = _stream_leases(store, 2, fail_first=redis.ConnectionError("gone"))
    held_trips.let_all_go()
    lost.release()  # that slot goes with its set, or with the process
    wait_for(lambda: held_trips.round_trips == 1, timeout=5)
    kept.release()
    wait_for(lambda: _held_in_redis(store) == 1, timeout=5)
    assert held_trips.round_trips == 2
