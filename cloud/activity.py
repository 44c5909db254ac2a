"""The activity log: who did what, when. Entries queue in memory and a background
thread writes them in batches, so logging never waits on (or blocks) a request's own
transaction."""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

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
