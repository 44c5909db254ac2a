"""The activity log: who did what, when. Entries queue in memory and a background
thread writes them in batches, so logging never waits on (or blocks) a request's own
transaction."""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.models import ActivityLog

log = logging.getLogger("batterytwin.cloud.activity")


class ActivityRecorder:
    def __init__(self, sessions: sessionmaker[Session], *, interval_s: float = 0.2) -> None:
        self._sessions = sessions
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="activity-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def record(self, **entry: Any) -> None:
        self._queue.put(entry)

    def flush(self) -> None:
        """Write everything queued so far."""
        rows: list[dict[str, Any]] = []
        while True:
            try:
                rows.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not rows:
            return
        try:
            with self._sessions() as session, session.begin():
                session.execute(insert(ActivityLog), rows)
        except Exception:  # the log must never take the service down
            log.exception("could not write %d activity log entries", len(rows))

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()


class ActivityMiddleware:
    """Records every ``/api/`` request (who, method, path, status; never bodies or headers).

    A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` costs a task and a stream
    per request, a noticeable share of a fast endpoint's time.
    """

    def __init__(self, app: ASGIApp, *, recorder: ActivityRecorder) -> None:
        self._app = app
        self._recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        logged = path.startswith("/api/") and not path.startswith("/api/schema")
        if scope["type"] != "http" or not logged:
            await self._app(scope, receive, send)
            return
        status_code = 500  # unless a response starts

        async def send_and_note(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, send_and_note)
        finally:
            user_id, username = scope.get("state", {}).get("user_ref", (None, None))
            client = scope.get("client")
            self._recorder.record(
                at=dt.datetime.now(dt.UTC),
                user_id=user_id,
                username=username,
                client=client[0] if client else None,
                method=scope["method"],
                path=path[:500],
                status_code=status_code,
            )
