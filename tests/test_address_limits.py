"""Limits that a new cookie does not reset (per client address, X-Forwarded-For only from
trusted proxies), caps that protect the server itself (429 and 503, with Retry-After), and
how leases are given back."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from app import create_app
from headway.limits import Lease, Limits, Releases
from headway.settings import Settings
from jobs import control, kinds

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
    opened.pop().close()  # a stream that ends frees its slot
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
    """The suite's Redis client, with each lease release's round trip held until the test
    lets one go (`let_one_go`): slow round trips, on demand. Counts the round trips."""

    def __init__(self, client, fail_first: BaseException | None = None):
        self.client, self.fail_first = client, fail_first
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

    def pipeline(self, **kwargs):
        real, outer = self.client.pipeline(**kwargs), self

        class Held:
            def zrem(self, *args):
                real.zrem(*args)

            def execute(self):
                outer.round_trips += 1
                outer.entered.release()
                assert outer.permits.acquire(timeout=10)
                if outer.fail_first is not None:
                    failure, outer.fail_first = outer.fail_first, None
                    raise failure
                return real.execute()

        return Held()


OWNER_SET, ADDRESS_SET = "hw:streams:releasing-owner", "hw:streams:addr:198.51.100.9"
SETS = (OWNER_SET, ADDRESS_SET)


def _stream_leases(store, held, count):
    limits = Limits(store.client, Settings.from_env())
    limits.releases = Releases(held)
    return [limits.open_stream("releasing-owner", "198.51.100.9") for _ in range(count)]


def _held_in_redis(store) -> set[str]:
    owner, address = (set(store.client.zrange(key, 0, -1)) for key in (OWNER_SET, ADDRESS_SET))
    assert owner == address
    return owner


def test_leases_that_share_their_sets_are_renewed_with_one_command_per_set(store):
    """The fan-out renews the slots of all the streams that wait, in one round trip: a
    visitor's streams share their sets, and each set takes one ZADD and one EXPIRE."""
    limits = Limits(store.client, Settings.from_env())
    leases = [limits.open_stream("releasing-owner", "198.51.100.9") for _ in range(5)]
    before = {key: dict(store.client.zrange(key, 0, -1, withscores=True)) for key in SETS}
    for key in SETS:
        store.client.expire(key, 5)
    store.client.config_resetstat()
    time.sleep(0.01)  # every lease's expiry moves on
    Lease.renew_all(leases)
    stats = store.client.info("commandstats")
    assert stats["cmdstat_zadd"]["calls"] == 2 and stats["cmdstat_expire"]["calls"] == 2
    for key in SETS:
        after = dict(store.client.zrange(key, 0, -1, withscores=True))
        assert after.keys() == before[key].keys() == {lease.token for lease in leases}
        assert all(after[token] > before[key][token] for token in after)
        assert store.client.ttl(key) > 5


def test_leases_given_back_during_a_round_trip_go_together_in_the_next(store):
    held = _HeldRoundTrips(store.client)
    first, *others = _stream_leases(store, held, 4)
    sender = threading.Thread(target=first.release)
    try:
        sender.start()
        held.wait_for_a_round_trip()  # the first lease's round trip is under way
        for lease in others:
            lease.release()  # returns at once: the sender takes it along
        assert len(_held_in_redis(store)) == 4
    finally:
        held.let_all_go()
        sender.join(10)
    assert not sender.is_alive()
    assert _held_in_redis(store) == set()
    assert held.round_trips == 2  # four leases, two round trips


def test_a_caller_sends_two_round_trips_at_most_and_a_thread_sends_the_rest(store):
    held = _HeldRoundTrips(store.client)
    first, second, third = _stream_leases(store, held, 3)
    late = third.token
    sender = threading.Thread(target=first.release)
    try:
        sender.start()
        held.wait_for_a_round_trip()
        second.release()  # queued behind the first round trip
        held.let_one_go()
        held.wait_for_a_round_trip()  # the sender's second, with the second lease
        third.release()  # queued behind that: more than the sender will take
        held.let_one_go()
        sender.join(10)
        assert not sender.is_alive()  # it handed the third lease on and returned
        held.wait_for_a_round_trip()  # which a thread of its own is sending
        assert _held_in_redis(store) == {late}
    finally:
        held.let_all_go()
    for _ in range(100):  # until that thread's round trip has landed
        if not _held_in_redis(store):
            break
        time.sleep(0.05)
    assert _held_in_redis(store) == set()
    assert held.round_trips == 3


@pytest.mark.parametrize(
    "failure", [redis.ConnectionError("gone"), KeyboardInterrupt()], ids=["redis", "killed"]
)
def test_a_failed_release_leaves_later_ones_working(store, failure):
    held = _HeldRoundTrips(store.client, fail_first=failure)
    held.let_all_go()
    lost, kept = _stream_leases(store, held, 2)
    lost_token = lost.token
    if isinstance(failure, redis.RedisError):
        lost.release()  # that lease expires by itself
    else:
        with pytest.raises(KeyboardInterrupt):  # as a killed greenlet, it goes on up
            lost.release()
    kept.release()
    assert _held_in_redis(store) == {lost_token}
