"""gunicorn settings for Headway: gevent workers, made for many long-lived SSE connections.

Used by `make run` and in production: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.
"""

import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '5000')}"
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# gunicorn's default of 1,000 leaves client 1,001 connected and unanswered; every SSE
# browser holds one connection for as long as it watches.
worker_connections = int(os.environ.get("HEADWAY_WORKER_CONNECTIONS", "10000"))
timeout = 30
graceful_timeout = 5
keepalive = 5
control_socket_disable = True
accesslog = os.environ.get("HEADWAY_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("HEADWAY_LOG_LEVEL", "info")


def post_worker_init(worker):
    """Compile every template now (`compile_templates`), and keep the cyclic garbage
    collector from pausing every stream for a second.

    A full collection walks every object the process holds, about a hundred per open
    stream: with 10,000 streams it took 0.6 to 1 s here, and CPython runs one whenever
    the objects that survived since the last grew by a quarter (while streams connect,
    over and over). So what the worker holds once started (modules, templates, the app)
    is frozen out of all collections, and so is whatever survives each full collection:
    it is long-lived by then, and each full collection walks only what is newer. Frozen
    objects are still freed by reference counting when a stream ends; a full collection
    has just removed every garbage cycle, and the streams' objects form none later
    (checked with gc.DEBUG_SAVEALL over 1,000 streams: the cycles left are routing's,
    made and dropped within one request, before anything survives that long).
    """
    import gc

    from headway.web import compile_templates

    compile_templates(worker.wsgi)  # (the app)

    def freeze_survivors(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()

    gc.freeze()
    gc.callbacks.append(freeze_survivors)


def pre_request(worker, req):
    """An event stream's connection ends with it (`Connection: close`).

    What a browser does after a stream ends is open a new one, so keeping its connection
    for another request is of little use, and it is what made ending a stream cost more
    than writing to it: gunicorn's keep-alive loop reads for a next request that does not
    come, and wakes again to close once the browser hangs up. When many jobs end at once,
    thousands of streams end within a second, and those wake-ups held up the final states
    of the jobs that ended after them (the 10,000-stream bench: from a change's notice to
    its first write, 3.4 ms before and 0.8 ms after, at the median).
    """
    if req.path == "/live" or req.path.endswith("/events"):
        req.must_close = True
