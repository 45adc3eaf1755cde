"""The owner cookie's check is remembered for a moment (headway/web/sessions.py): never at the
cost of trusting a cookie that does not pass it, or of one request's session leaking into
the next."""

from __future__ import annotations

import time

from app import create_app


def owner_client(owner: str):
    client = create_app({"TESTING": True}).test_client()
    with client.session_transaction() as session:
        session["owner"] = owner
    return client


def cookie_of(client) -> str:
    return client.get_cookie("session").value


def owner_seen(client) -> str | None:
    with client.session_transaction() as session:
        return session.get("owner")


def test_a_checked_cookie_opens_the_same_session_again(store):
    client = owner_client("owner-a")
    job_id = store.create(kind="steps", owner="owner-a", title="t", stages=["Work"])
    for _ in range(3):  # checked once, then remembered: the same owner every time
        assert client.get(f"/api/jobs/{job_id}").status_code == 200
    # Remembered by the whole Cookie header: another cookie beside it is another header,
    # checked again, and the session cookie within it still opens the owner's session.
    client.set_cookie("theme", "dark")
    for _ in range(2):
        assert client.get(f"/api/jobs/{job_id}").status_code == 200
    assert len(client.application.session_interface._checked) == 2


def test_a_cookie_with_a_wrong_signature_is_refused_even_after_the_right_one(store):
    client = owner_client("owner-b")
    job_id = store.create(kind="steps", owner="owner-b", title="t", stages=["Work"])
    good = cookie_of(client)
    assert client.get(f"/api/jobs/{job_id}").status_code == 200
    payload, _, signature = good.rpartition(".")
    forged = f"{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    client.set_cookie("session", forged)
    assert client.get(f"/api/jobs/{job_id}").status_code == 404  # a new visitor, not owner-b
    client.set_cookie("session", good)
    assert client.get(f"/api/jobs/{job_id}").status_code == 200


def test_what_one_request_changes_in_its_session_stays_its_own():
    app = create_app({"TESTING": True})
    interface = app.session_interface
    client = app.test_client()
    with client.session_transaction() as session:
        session["owner"] = "owner-c"
        session["tags"] = ["x"]
    with app.test_request_context(headers={"Cookie": f"session={cookie_of(client)}"}):
        from flask import request

        first = interface.open_session(app, request)
        first["owner"] = "someone-else"
        first["tags"].append("y")
        again = interface.open_session(app, request)
    assert again["owner"] == "owner-c" and again["tags"] == ["x"]
    assert not again.modified
    # Headway's own sessions hold only strings and flags: those are copied shallowly.
    with client.session_transaction() as session:
        session.pop("tags")
    with app.test_request_context(headers={"Cookie": f"session={cookie_of(client)}"}):
        first = interface.open_session(app, request)
        first["owner"] = "someone-else"
        again = interface.open_session(app, request)
    assert again["owner"] == "owner-c"


def test_a_remembered_cookie_is_checked_again_after_its_moment(store):
    client = owner_client("owner-d")
    app = client.application
    job_id = store.create(kind="steps", owner="owner-d", title="t", stages=["Work"])
    assert client.get(f"/api/jobs/{job_id}").status_code == 200
    # The cookie expires (its age limit is checked on the next real check); past the
    # moment a check is remembered, it is checked again and refused.
    app.permanent_session_lifetime = 0.5
    app.session_interface.ttl = 0.2
    time.sleep(1.1)
    assert client.get(f"/api/jobs/{job_id}").status_code == 404
