"""JSON for scripts, and the health endpoint for operators."""

from __future__ import annotations

import time

import redis
from flask import Blueprint, Response, current_app, jsonify, request, url_for

from headway.store import CONSUMERS
from headway.web import load_view, services

bp = Blueprint("api", __name__)

CONSUMER_LIVE_SECONDS = 15.0


@bp.get("/api/jobs/<job_id>")
def job_json(job_id: str):
    """The job's state as JSON: encoded once per version (and host, for the links), like
    every other view of a job, so polling it costs a lookup."""
    view = load_view(job_id)
    body = view.once(("json", request.scheme, request.host), lambda: _job_json(view.state))
    return Response(body, mimetype="application/json")


def _job_json(job) -> bytes:
    return (
        current_app.json.dumps(
            {
                "id": job.id,
                "kind": job.kind,
                "title": job.title,
                "status": job.status,
                "progress": round(job.progress, 2),
                "stage": job.stage,
                "message": job.message,
                "done": job.done,
                "total": job.total,
                "failed": job.failed,
                "current": job.current,
                "eta_seconds": job.eta,
                "attempt": job.attempt,
                "worker": job.worker or None,
                "error": job.error or None,
                "created_at": job.created_at,
                "started_at": job.started_at,
                "finished_at": job.finished_at,
                "version": job.version,
                "queue_ahead": job.queue_ahead,
                "queue_eta_seconds": job.queue_eta,
                "problems": [
                    {"index": p.index, "name": p.name, "reason": p.reason} for p in job.problems
                ],
                "files": [
                    {
                        "name": f["name"],
                        "size": f["size"],
                        "url": url_for(
                            "files.download", job_id=job.id, name=f["name"], _external=True
                        ),
                    }
                    for f in job.files
                ],
            }
        ).encode()
        + b"\n"
    )


@bp.get("/healthz")
def healthz():
    """Redis reachability, live consumers (by their own heartbeats) and queue length."""
    from jobs.queue import huey

    client = services().store.client
    try:
        client.ping()
        consumers = client.zcount(CONSUMERS, time.time() - CONSUMER_LIVE_SECONDS, "+inf")
        queued = huey.pending_count()
    except redis.RedisError as exc:
        return jsonify(
            status="unavailable", redis=False, consumers=None, queue_length=None, error=str(exc)
        ), 503
    return jsonify(
        status="ok" if consumers else "degraded",
        redis=True,
        consumers=consumers,
        queue_length=queued,
        # This process's time from a change's notice to its last direct write to a stream.
        fanout=services().hub.fanout.timing(),
    )
