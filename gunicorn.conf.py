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
    """Leave what the worker holds once started (modules, templates, the app) out of every
    garbage collection from now on: with thousands of streams, each full collection would
    scan it all again for nothing."""
    import gc

    gc.freeze()
