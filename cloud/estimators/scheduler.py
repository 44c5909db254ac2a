"""D2.3's time scheduler: each cloud estimator runs at its interval, after the job it
follows, or when new data arrives, and on demand; every run is logged.

A :class:`Job` says what it works on (:meth:`Job.targets`: the batteries with something
to do now) and how (:meth:`Job.run`: one battery, in one transaction). The
:class:`Scheduler` asks each job for its due targets, runs them in dependency order and
writes an ``estimator_runs`` row per run with the job's version, a summary of its inputs,
and the outcome or the error. A job that fails for one battery does not stop the others.

Example::

    scheduler = Scheduler(engine, default_jobs())
    runs = scheduler.run_due()                  # what is due now
    run = scheduler.run_now("soh", battery_id=3)  # on demand (REST)
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from cloud.models import EstimatorRun

__all__ = ["Job", "JobResult", "Scheduler", "SchedulerError"]

_log = logging.getLogger(__name__)
_LOCK_KEY = 0x62747363686564  # "btsched": the scheduler's PostgreSQL advisory lock


class SchedulerError(LookupError):
    """An unknown job, or a battery the job cannot work on."""


@dataclass
class JobResult:
    """What one run did: a summary of its inputs and of its outcome (both JSON-able)."""

    inputs: dict[str, Any] = field(default_factory=dict)
    outcome: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    """Why nothing was done (too little data, say); the run is logged as ``skipped``."""


class Job(Protocol):
    """One estimator as the scheduler sees it."""

    name: str
    version: str
    interval_s: float | None
    """Least time between two runs for a battery; None: only when :meth:`targets` says."""
    after: str | None
    """A job whose successful run makes this one due (SoW after SoH)."""

    def targets(self, session: Session, now: dt.datetime) -> Sequence[int]:
        """Batteries with data for this job (the scheduler filters by interval)."""
        ...

    def run(self, session: Session, battery_id: int, now: dt.datetime) -> JobResult:
        """Estimate for one battery and store the results in ``session``."""
        ...


class Scheduler:
    """Runs :class:`Job` s and logs every run (see the module docstring).

    Args:
        engine: The cloud database.
        jobs: The estimators, in any order (``after`` decides the order).
        clock: Now (tests pass their own).
    """

    def __init__(
        self,
        engine: Engine,
        jobs: Sequence[Job],
        *,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self._engine = engine
        self._jobs = {job.name: job for job in _ordered(jobs)}
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))

    @property
    def jobs(self) -> list[str]:
        return list(self._jobs)

    def run_due(self) -> list[EstimatorRun]:
        """Run every job for every battery it is due for; the runs, in order.

        On PostgreSQL a session advisory lock makes one process do a tick: every worker of
        ``cloud serve --workers N`` runs the loop, and two would fit the same sweeps and
        send the same commands. Whoever does not get the lock returns nothing.
        """
        with self._engine.connect() as lock:
            if lock.dialect.name == "postgresql":
                if not lock.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": _LOCK_KEY}):
                    return []
                try:
                    return self._run_due()
                finally:
                    lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
        return self._run_due()

    def _run_due(self) -> list[EstimatorRun]:
        now = self._clock()
        runs: list[EstimatorRun] = []
        for job in self._jobs.values():
            with Session(self._engine) as session:
                candidates = list(job.targets(session, now))
                due = [b for b in candidates if self._due(session, job, b, now)]
            runs += [self._run(job, battery_id, now, trigger="schedule") for battery_id in due]
        return runs

    def run_now(self, name: str, *, battery_id: int) -> EstimatorRun:
        """Run one job for one battery now, whether due or not (on demand)."""
        job = self._jobs.get(name)
        if job is None:
            raise SchedulerError(f"no estimator {name!r}; known: {', '.join(self._jobs)}")
        return self._run(job, battery_id, self._clock(), trigger="request")

    def _due(self, session: Session, job: Job, battery_id: int, now: dt.datetime) -> bool:
        last = _last_run(session, job.name, battery_id, statuses=("ok", "skipped"))
        if job.after is not None:
            upstream = _last_run(session, job.after, battery_id, statuses=("ok",))
            if upstream is not None and (last is None or upstream > last):
                return True
            if job.interval_s is None:
                return False
        if job.interval_s is None:
            return True  # event-driven: targets() only names batteries with new data
        return last is None or (now - last).total_seconds() >= job.interval_s

    def _run(self, job: Job, battery_id: int, now: dt.datetime, *, trigger: str) -> EstimatorRun:
        started = self._clock()
        record = EstimatorRun(
            job=job.name,
            version=job.version,
            battery_id=battery_id,
            trigger=trigger,
            started_at=started,
        )
        try:
            with Session(self._engine) as session, session.begin():
                result = job.run(session, battery_id, now)
                record.status = "skipped" if result.skipped else "ok"
                record.inputs = _jsonable(result.inputs)
                record.outcome = _jsonable(
                    result.outcome | ({"reason": result.skipped} if result.skipped else {})
                )
        except Exception as error:  # logged as a failed run; the other batteries go on
            _log.exception("estimator %s failed for battery %d", job.name, battery_id)
            record.status = "failed"
            record.error = f"{type(error).__name__}: {error}"[:2000]
        record.finished_at = self._clock()
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            session.add(record)
        return record


def _last_run(
    session: Session, job: str, battery_id: int, *, statuses: Sequence[str]
) -> dt.datetime | None:
    last: dt.datetime | None = session.scalar(
        select(func.max(EstimatorRun.started_at)).where(
            EstimatorRun.job == job,
            EstimatorRun.battery_id == battery_id,
            EstimatorRun.status.in_(statuses),
        )
    )
    if last is not None and last.tzinfo is None:  # SQLite returns naive UTC
        last = last.replace(tzinfo=dt.UTC)
    return last


def _ordered(jobs: Sequence[Job]) -> list[Job]:
    """Jobs with every ``after`` before its dependant."""
    by_name = {job.name: job for job in jobs}
    done: list[Job] = []

    def visit(job: Job, seen: tuple[str, ...]) -> None:
        if job in done:
            return
        if job.name in seen:
            raise SchedulerError(f"estimators depend on each other in a loop: {seen}")
        if job.after is not None:
            upstream = by_name.get(job.after)
            if upstream is None:
                raise SchedulerError(f"{job.name} runs after {job.after!r}, which is not a job")
            visit(upstream, (*seen, job.name))
        done.append(job)

    for job in jobs:
        visit(job, ())
    return done


def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy scalars and arrays, datetimes turned into numbers/text)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value
