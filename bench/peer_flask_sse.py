"""The peer: what users would build instead, with flask-sse, under the same gunicorn config.

    gunicorn -c gunicorn.conf.py 'bench.peer_flask_sse:create_app()'

`/stream?channel=job-<id>` is flask-sse's own stream view: one Redis pub/sub subscription
(and connection) per client, messages forwarded as published. `/poll/<id>` is the JSON
polling alternative: the job's state from a Redis hash, read through a blocking pool.
`publish_state` is the writer side: one HSET of the state plus flask-sse's message, published.
"""

from __future__ import annotations

import json
import os

import redis
from flask import Flask, jsonify
from flask_sse import sse


def state_key(job: str) -> str:
    return f"peer:job:{job}"


def channel(job: str) -> str:
    return f"job-{job}"


def create_app(redis_url: str | None = None) -> Flask:
    """The minimal app: flask-sse's blueprint and a polling endpoint."""
    app = Flask(__name__)
    app.config["REDIS_URL"] = redis_url or os.environ["REDIS_URL"]
    app.register_blueprint(sse, url_prefix="/stream")
    # redis-py's default pool raises MaxConnectionsError past 100 connections (thousands of
    # errors a run at 1,000 pollers); a blocking pool, like Headway's, waits instead.
    pool = redis.BlockingConnectionPool.from_url(
        app.config["REDIS_URL"], max_connections=64, timeout=10, decode_responses=True
    )
    client = redis.Redis(connection_pool=pool)

    @app.get("/poll/<job>")
    def poll(job: str):
        """The job's state as JSON."""
        return jsonify(client.hgetall(state_key(job)) or {"version": 0, "status": "unknown"})

    return app


def publish_state(client: redis.Redis, job: str, state: dict, payload: str) -> None:
    """Write the state for pollers, then publish it (as `done` once final) for streams.

    flask-sse's own message format (what `sse.publish` sends), through one persistent
    connection in one round trip: `sse.publish` opens a new connection per call, which held
    the writer to 3 of its 10 writes a second per job, so the peer carried less load than
    Headway in the same run.
    """
    event = "done" if state["status"] == "succeeded" else "progress"
    message = json.dumps({"data": payload, "type": event, "id": state["version"]})
    pipe = client.pipeline(transaction=False)
    pipe.hset(state_key(job), mapping=state)
    pipe.publish(channel(job), message)
    pipe.execute()


def publish_ping(client: redis.Redis, job: str) -> None:
    """An event without an id: flask-sse sends no response headers until its first event."""
    client.publish(channel(job), json.dumps({"data": "", "type": "ping"}))
