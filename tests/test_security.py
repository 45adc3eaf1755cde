"""Who may see what: owner-only routes, CSRF, security headers, per-owner limits, secrets."""

from __future__ import annotations

import re
import time

import pytest

from app import create_app
from headway.limits import HOLDERS
from jobs import control, kinds

from .conftest import within_one_minute

OWNER = "owner-sec"


def client_for(owner: str | None, **config):
    app = create_app({"TESTING": True, **config})
    client = app.test_client()
    if owner:
        with client.session_transaction() as session:
            session["owner"] = owner
    return client


def finished_job(store, owner=OWNER, status="succeeded"):
    job_id = store.create(kind="steps", owner=owner, title="t", stages=["Work"])
    out = store.job_dir(job_id) / "output"
    out.mkdir(parents=True)
    (out / "result.txt").write_text("secret result\n")
    store.update(job_id, {"status": "running", "heartbeat": time.time()})
    store.update(job_id, {"status": status, "files": [{"name": "result.txt", "size": 14}]})
    return job_id


def job_urls(job_id: str) -> list[tuple[str, str]]:
    return [
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/events"),
        ("GET", f"/jobs/{job_id}/progress"),
        ("GET", f"/api/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/files/result.txt"),
        ("GET", f"/jobs/{job_id}/all-files.zip"),
        ("POST", f"/jobs/{job_id}/cancel"),
        ("POST", f"/jobs/{job_id}/retry"),
    ]


def test_every_job_route_is_404_for_anyone_but_the_owner(store):
    job_id = finished_job(store)
    owner = client_for(OWNER, WTF_CSRF_ENABLED=False)
    with owner.get(f"/jobs/{job_id}/files/result.txt") as response:
        assert response.data == b"secret result\n"
    for visitor in (
        client_for("someone-else", WTF_CSRF_ENABLED=False),
        client_for(None, WTF_CSRF_ENABLED=False),
    ):
        for method, url in job_urls(job_id):
            response = visitor.open(url, method=method)
            assert response.status_code == 404, (method, url)
            assert b"secret" not in response.data
    assert store.get(job_id).status == "succeeded" and not store.get(job_id).retried_as


@pytest.mark.parametrize("job_id", ["0" * 32, "nope", "A" * 32, "0" * 31 + "g", "%2e%2e", "0" * 64])
def test_unknown_and_malformed_ids_are_404(job_id):
    client = client_for(OWNER, WTF_CSRF_ENABLED=False)
    for method, url in job_urls(job_id):
        assert client.open(url, method=method).status_code == 404, (method, url)


@pytest.mark.parametrize(
    "name",
    [
        "../secret_key",
        "..%2F..%2Fsecret_key",
        "%2e%2e/x",
        "result.txt/../result.txt",
        "/etc/passwd",
        "..",
        "result.txt%00",
        "RESULT.TXT",
    ],
)
def test_traversal_in_download_names_is_404(store, name):
    job_id = finished_job(store)
    client = client_for(OWNER)
    assert client.get(f"/jobs/{job_id}/files/{name}").status_code == 404


def test_downloads_are_attachments_with_ranges_and_conditional_requests(store):
    job_id = finished_job(store)
    client = client_for(OWNER)
    url = f"/jobs/{job_id}/files/result.txt"
    with client.get(url) as full:
        assert full.headers["Content-Disposition"] == "attachment; filename=result.txt"
        assert full.headers["Content-Type"].startswith("text/plain")
        assert full.headers["Content-Length"] == "14"
    with client.get(url, headers={"Range": "bytes=0-5"}) as partial:
        assert partial.status_code == 206 and partial.data == b"secret"
    with client.get(url, headers={"If-None-Match": full.headers["ETag"]}) as again:
        assert again.status_code == 304


def test_download_all_serves_the_bundle_the_worker_built_and_never_builds_one(store):
    import io
    import zipfile

    from jobs.bundle import build_bundle

    job_id = finished_job(store)
    output = store.job_dir(job_id) / "output"
    (output / "two.txt").write_text("2")
    store.client.hset(
        store.key(job_id),
        "files",
        '[{"name": "result.txt", "size": 14}, {"name": "two.txt", "size": 1}]',
    )
    missing = client_for(OWNER).get(f"/jobs/{job_id}/all-files.zip")
    assert missing.status_code == 404
    assert "This job has no zip of all its files" in missing.text
    assert not (store.job_dir(job_id) / "all-files.zip").exists()  # not built by the request

    build_bundle(store.job_dir(job_id), [output / "result.txt", output / "two.txt"])
    with client_for(OWNER).get(f"/jobs/{job_id}/all-files.zip") as response:
        assert response.status_code == 200
        data = response.data
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert sorted(zf.namelist()) == ["result.txt", "two.txt"]
        assert zf.read("result.txt") == b"secret result\n"


def csrf_token(client) -> str:
    page = client.get("/jobs/new/steps").get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


@pytest.mark.parametrize("token", [None, "", "wrong", "IjEyMyI.forged.token"])
def test_state_changes_need_a_valid_csrf_token(store, token):
    running = store.create(kind="steps", owner=OWNER, title="t", stages=["Work"])
    failed = finished_job(store, status="failed")
    client = client_for(OWNER)
    csrf_token(client)  # the session has a token; the requests below don't carry it
    data = {} if token is None else {"csrf_token": token}
    # (but the entry that says the web process lives, which its first upload slot makes)
    before = sorted(set(store.client.keys("*")) - {HOLDERS})
    for url in ("/jobs/new/steps", f"/jobs/{running}/cancel", f"/jobs/{failed}/retry"):
        response = client.post(url, data=data)
        assert response.status_code == 400, url
        assert "Form expired or forged" in response.get_data(as_text=True)
    assert sorted(set(store.client.keys("*")) - {HOLDERS}) == before
    assert store.get(running).status == "queued" and not store.get(failed).retried_as


def test_htmx_requests_send_the_token_as_a_header(store):
    job_id = store.create(kind="steps", owner=OWNER, title="t", stages=["Work"])
    client = client_for(OWNER)
    token = csrf_token(client)
    page = client.get("/").get_data(as_text=True)
    assert f'hx-headers=\'{{"X-CSRFToken": "{token}"}}\'' in page
    response = client.post(
        f"/jobs/{job_id}/cancel", headers={"X-CSRFToken": token, "HX-Request": "true"}
    )
    assert response.status_code == 200 and 'id="job-progress"' in response.text
    assert store.get(job_id).status == "cancelled"


def test_security_headers_and_cookie_flags():
    response = client_for(None).get("/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "<script>" not in response.text  # no inline script anywhere


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def test_every_response_carries_the_security_headers_once_and_keeps_its_own_caching(store):
    job_id = finished_job(store)
    owner, stranger = client_for(OWNER), client_for("someone-else")
    responses = {
        "page": (owner.get(f"/jobs/{job_id}"), "no-store"),
        "poll": (owner.get(f"/api/jobs/{job_id}"), "no-store"),
        "stream": (owner.get(f"/jobs/{job_id}/events"), "no-store"),
        "download": (owner.get(f"/jobs/{job_id}/files/result.txt"), "no-cache, max-age=0"),
        "static": (owner.get("/static/headway.css"), "no-cache"),
        "404": (stranger.get(f"/api/jobs/{job_id}"), "no-store"),
        "405": (owner.get(f"/jobs/{job_id}/cancel"), "no-store"),
    }
    for what, (response, caching) in responses.items():
        with response:
            headers = response.headers
            for name, value in (*SECURITY_HEADERS.items(), ("Cache-Control", caching)):
                assert headers.getlist(name) == [value], (what, name, headers.getlist(name))
            assert len(headers.getlist("Content-Security-Policy")) == 1, what


def test_jobs_per_minute_limit_is_429_with_retry_after(store):
    client = client_for(
        OWNER, WTF_CSRF_ENABLED=False, JOBS_PER_MINUTE=2, RUNNING_JOBS_PER_OWNER=100
    )
    within_one_minute()
    form = {"steps": "3", "delay": "0", "fail_at": "-1"}
    assert [client.post("/jobs/new/steps", data=form).status_code for _ in range(2)] == [303] * 2
    response = client.post("/jobs/new/steps", data=form)
    assert response.status_code == 429
    assert 0 < int(response.headers["Retry-After"]) <= 60
    assert "Too many jobs started this minute (2 at most)." in response.text
    assert len(store.list_for_owner(OWNER)) == 2


def test_running_jobs_limit_is_429(store):
    client = client_for(OWNER, WTF_CSRF_ENABLED=False, RUNNING_JOBS_PER_OWNER=1)
    form = {"steps": "3", "delay": "0", "fail_at": "-1"}
    assert client.post("/jobs/new/steps", data=form).status_code == 303
    response = client.post("/jobs/new/steps", data=form)
    assert response.status_code == 429 and response.headers["Retry-After"] == "10"
    assert "You already have 1 jobs queued or running (1 at most)" in response.text


def test_limits_can_be_turned_off(store):
    client = client_for(
        OWNER,
        WTF_CSRF_ENABLED=False,
        RATE_LIMITS=False,
        JOBS_PER_MINUTE=1,
        RUNNING_JOBS_PER_OWNER=1,
        MAX_STREAMS_PER_OWNER=0,
    )
    form = {"steps": "3", "delay": "0", "fail_at": "-1"}
    assert [client.post("/jobs/new/steps", data=form).status_code for _ in range(3)] == [303] * 3


def test_production_requires_a_secret_key(monkeypatch):
    monkeypatch.setenv("HEADWAY_ENV", "production")
    monkeypatch.delenv("SECRET_KEY", raising=False)
    with pytest.raises(RuntimeError, match="SECRET_KEY must be set"):
        create_app()
    monkeypatch.setenv("SECRET_KEY", "x" * 32)
    assert create_app().config["SESSION_COOKIE_SECURE"] is True


def test_cancel_and_retry_answer_409_when_they_cannot_apply(store):
    client = client_for(OWNER, WTF_CSRF_ENABLED=False)
    done = finished_job(store)
    assert client.post(f"/jobs/{done}/cancel").status_code == 409
    assert client.post(f"/jobs/{done}/retry").status_code == 409
    kind = kinds.get("steps")
    queued = control.submit(kind, job_id="f" * 32, owner=OWNER, title="t", params={}, inputs=[])
    assert client.post(f"/jobs/{queued}/retry").status_code == 409
