"""The storage layer against a real S3-compatible server (SeaweedFS): uploads that stream in as
multipart uploads and leave nothing when refused, server-side copies, retention and the
orphan sweep, and downloads by presigned redirect or streamed with ranges."""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

import pytest
import requests

from app import create_app
from headway import storage as file_storage
from headway.settings import Settings
from headway.store import JobStore, new_job_id

from .seaweed import BUCKET
from .upload_helpers import post_form

OWNER = "owner-s3"
MiB = 1024 * 1024


def s3_for(url: str) -> file_storage.S3Storage:
    storage = file_storage.for_settings(Settings.from_env(storage_url=url))
    assert isinstance(storage, file_storage.S3Storage)
    return storage


def full_keys(seaweed, url: str) -> list[str]:
    return seaweed.keys(url.removeprefix(f"s3://{BUCKET}/") + "/")


def test_storage_url_is_checked_at_start():
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        Settings.from_env(storage_url="http://example.invalid/bucket")
    assert Settings.from_env(storage_url="").storage_url == ""
    assert file_storage.parse_url("s3://headway/prod/eu") == ("headway", "prod/eu")


def test_a_large_upload_goes_out_part_by_part_and_lands_whole(s3_storage_url, seaweed, tmp_path):
    storage = s3_for(s3_storage_url)
    spool = tmp_path / "spool"
    key = file_storage.input_key(new_job_id(), "big.bin")
    upload = storage.new_upload(key, spool, keep_local=False)
    digest = hashlib.sha256()
    block = os.urandom(MiB)
    biggest_spool = 0
    for _ in range(20):
        upload.write(block)
        digest.update(block)
        biggest_spool = max(biggest_spool, sum(p.stat().st_size for p in spool.iterdir()))
    upload.write(b"tail")
    digest.update(b"tail")
    upload.close()
    # Parts are out before the end: the object is a multipart upload in progress, invisible.
    assert seaweed.unfinished_uploads(f"{storage.prefix}/") == [storage.full_key(key)]
    assert storage.info(key) is None
    assert biggest_spool <= file_storage.PART_SIZE  # the node's disk holds one part at most
    upload.commit()
    assert storage.info(key).size == 20 * MiB + 4
    assert seaweed.unfinished_uploads(f"{storage.prefix}/") == []
    assert list(spool.iterdir()) == []
    fetched = tmp_path / "fetched.bin"
    storage.fetch(key, fetched)
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == digest.hexdigest()


def test_an_aborted_upload_leaves_nothing_anywhere(s3_storage_url, seaweed, tmp_path):
    storage = s3_for(s3_storage_url)
    spool = tmp_path / "spool"
    upload = storage.new_upload(
        file_storage.input_key(new_job_id(), "x.bin"), spool, keep_local=True
    )
    for _ in range(10):
        upload.write(os.urandom(MiB))
    assert upload.local_path.stat().st_size == 10 * MiB  # kept whole for a content check
    upload.abort()
    assert full_keys(seaweed, s3_storage_url) == []
    assert seaweed.unfinished_uploads(f"{storage.prefix}/") == []
    assert list(spool.iterdir()) == []


def test_copy_retention_and_orphans(s3_storage_url, seaweed, store, tmp_path):
    storage = s3_for(s3_storage_url)
    source = tmp_path / "a.txt"
    source.write_bytes(b"alpha\n")
    kept, orphan = new_job_id(), new_job_id()
    storage.put(source, file_storage.input_key(kept, "a.txt"))
    storage.copy(file_storage.input_key(kept, "a.txt"), file_storage.input_key(orphan, "a.txt"))
    with pytest.raises(KeyError):
        storage.copy(file_storage.input_key(orphan, "gone.txt"), "jobs/x/input/y")
    fetched = tmp_path / "copy.txt"
    storage.fetch(file_storage.input_key(orphan, "a.txt"), fetched)
    assert fetched.read_bytes() == b"alpha\n"
    # An upload its web process never finished, and a job record for `kept` only.
    unfinished = storage.client.create_multipart_upload(
        Bucket=storage.bucket, Key=storage.full_key(file_storage.input_key(orphan, "b.bin"))
    )
    assert unfinished["UploadId"]
    s3_store = JobStore(store.client, Settings.from_env(storage_url=s3_storage_url))
    s3_store.create(kind="steps", owner=OWNER, title="t", job_id=kept)

    assert s3_store.remove_orphans(grace=3600) == 0  # too young to be judged
    assert s3_store.remove_orphans(grace=0, now=time.time() + 5) == 1
    assert storage.keys() == [file_storage.input_key(kept, "a.txt")]
    assert seaweed.unfinished_uploads(f"{storage.prefix}/") == []

    s3_store.remove(kept, OWNER)  # retention: the record and the job's objects go together
    assert full_keys(seaweed, s3_storage_url) == []
    assert s3_store.get(kept) is None


# -- the web side, with the bucket as its storage -------------------------------------------------


def web_client(url: str, **config):
    app = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False, "STORAGE_URL": url, **config})
    client = app.test_client()
    with client.session_transaction() as session:
        session["owner"] = OWNER
    return app, client


def post(client, slug: str, files, **fields):
    fields = {"steps": "3", "delay": "0", "fail_at": "-1", **fields}
    return post_form(client, slug, files, **fields)


def test_uploads_land_in_the_bucket_and_refusals_leave_nothing(s3_storage_url, seaweed, store):
    app, client = web_client(s3_storage_url)
    instance = Path(app.instance_path)
    big = b"0123456789abcdef" * (MiB // 16) * 9  # more than one part
    accepted = post(client, "digest", [("a.txt", b"one\ntwo\n"), ("b.txt", big)])
    assert accepted.status_code == 303, accepted.get_data(as_text=True)
    job_id = re.fullmatch(r"/jobs/([0-9a-f]{32})", accepted.headers["Location"])[1]
    storage = s3_for(s3_storage_url)
    assert storage.keys() == [
        file_storage.input_key(job_id, "a.txt"),
        file_storage.input_key(job_id, "b.txt"),
    ]
    assert storage.info(file_storage.input_key(job_id, "b.txt")).size == len(big)
    assert not (instance / "jobs").exists()  # nothing of the job on the web node's disk
    assert list((instance / "uploads").iterdir()) == []

    # Refused by the kind's content check after both files went out: nothing stays.
    refused = post(client, "digest", [("c.txt", big), ("d.txt", b"\x00binary")])
    assert refused.status_code == 400
    assert "“d.txt” was refused" in refused.get_data(as_text=True)
    # Refused mid-body, past the kind's file count.
    too_many = post(client, "digest", [(f"{n}.txt", b"x\n") for n in range(6)])
    assert too_many.status_code == 400 and "Too many files" in too_many.get_data(as_text=True)
    assert storage.keys() == [
        file_storage.input_key(job_id, "a.txt"),
        file_storage.input_key(job_id, "b.txt"),
    ]
    assert seaweed.unfinished_uploads(f"{storage.prefix}/") == []
    assert list((instance / "uploads").iterdir()) == []
    assert len(store.client.keys("hw:job:*")) == 1


def finished_job_in_bucket(store, url: str, tmp_path: Path) -> tuple[str, bytes]:
    storage = s3_for(url)
    job_id = store.create(kind="steps", owner=OWNER, title="t", stages=["Work"])
    content = os.urandom(300_000)
    (tmp_path / "r.bin").write_bytes(content)
    (tmp_path / "s.txt").write_text("second\n")
    storage.put(tmp_path / "r.bin", file_storage.output_key(job_id, "résultat.bin"))
    storage.put(tmp_path / "s.txt", file_storage.output_key(job_id, "s.txt"))
    files = [{"name": "résultat.bin", "size": len(content)}, {"name": "s.txt", "size": 7}]
    store.update(job_id, {"status": "running", "heartbeat": time.time()})
    store.update(job_id, {"status": "succeeded", "files": files})
    return job_id, content


def test_downloads_redirect_to_a_short_lived_presigned_url(s3_storage_url, store, tmp_path):
    job_id, content = finished_job_in_bucket(store, s3_storage_url, tmp_path)
    _, client = web_client(s3_storage_url)
    _, stranger = web_client(s3_storage_url)
    with stranger.session_transaction() as session:
        session["owner"] = "someone-else"
    url = f"/jobs/{job_id}/files/résultat.bin"
    assert stranger.get(url).status_code == 404  # the owner check comes first

    answer = client.get(url)
    assert answer.status_code == 302
    target = answer.headers["Location"]
    assert "X-Amz-Expires=60" in target and "X-Amz-Signature" in target
    whole = requests.get(target, timeout=30)
    assert whole.status_code == 200 and whole.content == content
    disposition = whole.headers["Content-Disposition"]
    assert disposition.startswith("attachment;") and "UTF-8''r%C3%A9sultat.bin" in disposition
    part = requests.get(target, headers={"Range": "bytes=1000-1999"}, timeout=30)
    assert part.status_code == 206 and part.content == content[1000:2000]

    assert client.get(f"/jobs/{job_id}/all-files.zip").status_code == 404  # none was built
    assert "no zip of all its files" in client.get(f"/jobs/{job_id}/all-files.zip").text


def test_downloads_stream_through_the_web_with_ranges(s3_storage_url, store, tmp_path):
    job_id, content = finished_job_in_bucket(store, s3_storage_url, tmp_path)
    _, client = web_client(s3_storage_url, DOWNLOADS="stream")
    url = f"/jobs/{job_id}/files/résultat.bin"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.data == content
    assert whole.headers["Content-Length"] == str(len(content))
    assert "UTF-8''r%C3%A9sultat.bin" in whole.headers["Content-Disposition"]
    part = client.get(url, headers={"Range": "bytes=-500"})
    assert part.status_code == 206 and part.data == content[-500:]
    assert part.headers["Content-Range"] == f"bytes {len(content) - 500}-{len(content) - 1}/300000"
    stale_if_range = client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale_if_range.status_code == 200 and stale_if_range.data == content
    outside = client.get(url, headers={"Range": "bytes=400000-"})
    assert outside.status_code == 416
    again = client.get(url, headers={"If-None-Match": whole.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""


def test_an_unreachable_bucket_gets_503_and_leaves_nothing(seaweed, monkeypatch, store):
    from .conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, seaweed.env[name])
    app, client = web_client(f"s3://{BUCKET}/unreachable-{os.urandom(3).hex()}")
    answer = post(client, "digest", [("a.txt", b"one\n")])
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    assert "cannot store uploads right now" in answer.get_data(as_text=True)
    assert store.client.keys("hw:job:*") == []
    assert list((Path(app.instance_path) / "uploads").iterdir()) == []
