"""Headway's web application: `create_app()` builds it (gunicorn: `app:create_app()`)."""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from datetime import timedelta
from pathlib import Path

from flask import Flask, request
from flask_wtf.csrf import CSRFProtect

from headway.connection import redis_client, resolve_redis_url
from headway.settings import Settings
from headway.web.sessions import CheckedCookieSessions

log = logging.getLogger("headway.app")
csrf = CSRFProtect()


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app; `test_config` keys override Flask config and, by name, Settings."""
    test_config = dict(test_config or {})
    fields = {f.name for f in dataclasses.fields(Settings)}
    overrides = {k.lower(): test_config.pop(k) for k in list(test_config) if k.lower() in fields}
    settings = Settings.from_env(**overrides)
    if not logging.getLogger().handlers:  # gunicorn configures only its own loggers
        logging.basicConfig(
            level=os.environ.get("HEADWAY_LOG_LEVEL", "info").upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )

    app = Flask(__name__, instance_path=str(settings.instance_path))
    app.session_interface = CheckedCookieSessions()
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("SECRET_KEY"),
        MAX_CONTENT_LENGTH=settings.max_upload_bytes,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.production,
        PERMANENT_SESSION_LIFETIME=timedelta(days=365),
        # The owner cookie is signed once, when it is made; re-signing it on every poll
        # would cost each request an HMAC and each response a Set-Cookie, for nothing.
        SESSION_REFRESH_EACH_REQUEST=False,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        WTF_CSRF_SSL_STRICT=False,
        WTF_CSRF_CHECK_DEFAULT=False,  # `check_csrf` below checks, as the extension would
    )
    app.config.update(test_config)
    Path(app.instance_path).mkdir(parents=True, exist_ok=True)
    if not app.config["SECRET_KEY"]:
        if settings.production:
            raise RuntimeError("SECRET_KEY must be set when HEADWAY_ENV=production")
        app.config["SECRET_KEY"] = _instance_secret(Path(app.instance_path))

    settings = dataclasses.replace(settings, redis_url=resolve_redis_url(settings))
    from headway.web import init_app

    init_app(app, settings, redis_client(settings.redis_url))
    csrf.init_app(app)
    # Uploads check their token themselves, before the first file byte is spooled: the
    # extension would read (and spool) the whole body to find the token.
    csrf.exempt("headway.web.uploads.new_job")

    @app.before_request  # after the web's own checks, which must run before it reads a form
    def check_csrf():
        """The extension's own check, for the methods it protects (POST and the like). Its
        default hook looks up the view's exemption first, on every request: 17 µs of
        each GET here, a poll among them, for nothing."""
        if app.config["WTF_CSRF_ENABLED"] and request.method in app.config["WTF_CSRF_METHODS"]:
            csrf.protect(apply_exemptions=True)

    return app


def _instance_secret(instance: Path) -> str:
    """A secret generated once and kept in the instance folder (development and `make run`)."""
    path = instance / "secret_key"
    if not path.exists():
        tmp = instance / f".secret_key.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)  # atomic: a concurrent start keeps whichever came first
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
