"""The scheduler: intervals, jobs after jobs, event-driven jobs, failures logged, on demand."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cloud.db import make_engine
from cloud.estimators.scheduler import JobResult, Scheduler, SchedulerError
from cloud.migrate import upgrade
from cloud.models import Battery, EstimatorRun
from tests.cloud.conftest import _postgres_database

T0 = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


@dataclass
class Toy:
    name: str
    interval_s: float | None = None
    after: str | None = None
    version: str = "1.0"
    batteries: list[int] = field(default_factory=list)
    fail_for: int | None = None
    skip: bool = False
    calls: list[tuple[int, dt.datetime]] = field(default_factory=list)

    def targets(self, session: Session, now: dt.datetime) -> Sequence[int]:
        return self.batteries

    def run(self, session: Session, battery_id: int, now: dt.datetime) -> JobResult:
        self.calls.append((battery_id, now))
        if battery_id == self.fail_for:
            raise ValueError("no data for this battery")
        if self.skip:
            return JobResult(inputs={"samples": 3}, skipped="3 samples are too few")
        return JobResult(inputs={"samples": 100, "at": now}, outcome={"soh": 0.81})


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade(engine)
    with Session(engine) as session, session.begin():
        session.add_all([Battery(serial_number=f"S{k}", battery_name=f"b{k}") for k in range(2)])
    yield engine
    engine.dispose()


def _runs(engine: Engine) -> list[EstimatorRun]:
    with Session(engine) as session:
        return list(session.scalars(select(EstimatorRun).order_by(EstimatorRun.id)))


def test_interval_jobs_run_when_due_and_jobs_after_them_follow(engine: Engine) -> None:
    clock = Clock()
    soh = Toy("soh", interval_s=7 * 86_400.0, batteries=[1, 2])
    sow = Toy("sow", after="soh", batteries=[1, 2])
    scheduler = Scheduler(engine, [sow, soh], clock=clock)  # order fixed by `after`
    assert scheduler.jobs == ["soh", "sow"]

    first = scheduler.run_due()
    assert [(r.job, r.battery_id, r.status) for r in first] == [
        ("soh", 1, "ok"),
        ("soh", 2, "ok"),
        ("sow", 1, "ok"),
        ("sow", 2, "ok"),
    ]
    clock.now = T0 + dt.timedelta(days=3)
    assert scheduler.run_due() == []  # neither due: SoH weekly, SoW waits for a new SoH
    clock.now = T0 + dt.timedelta(days=7)
    assert [(r.job, r.battery_id) for r in scheduler.run_due()] == [
        ("soh", 1),
        ("soh", 2),
        ("sow", 1),
        ("sow", 2),
    ]
    logged = _runs(engine)
    assert len(logged) == 8 and logged[0].version == "1.0" and logged[0].trigger == "schedule"
    assert logged[0].inputs == {"samples": 100, "at": T0.isoformat()}
    assert logged[0].outcome == {"soh": 0.81}


def test_a_failure_is_logged_and_the_other_batteries_go_on(engine: Engine) -> None:
    job = Toy("drt", batteries=[1, 2], fail_for=1)
    runs = Scheduler(engine, [job], clock=Clock()).run_due()
    assert [(r.battery_id, r.status) for r in runs] == [(1, "failed"), (2, "ok")]
    assert runs[0].error == "ValueError: no data for this battery"


def test_skipped_runs_say_why_and_count_as_done_for_the_interval(engine: Engine) -> None:
    clock = Clock()
    job = Toy("soh", interval_s=3600.0, batteries=[1], skip=True)
    scheduler = Scheduler(engine, [job], clock=clock)
    (run,) = scheduler.run_due()
    assert run.status == "skipped" and run.outcome == {"reason": "3 samples are too few"}
    clock.now += dt.timedelta(minutes=30)
    assert scheduler.run_due() == []


def test_on_demand_runs_and_unknown_jobs(engine: Engine) -> None:
    job = Toy("soh", interval_s=86_400.0, batteries=[1])
    scheduler = Scheduler(engine, [job], clock=Clock())
    scheduler.run_due()
    run = scheduler.run_now("soh", battery_id=1)  # not due, but asked for
    assert run.status == "ok" and run.trigger == "request" and len(job.calls) == 2
    with pytest.raises(SchedulerError, match="no estimator 'sow'; known: soh"):
        scheduler.run_now("sow", battery_id=1)


def test_dependency_problems_are_named() -> None:
    with pytest.raises(SchedulerError, match="runs after 'ghost'"):
        Scheduler(make_engine("sqlite://"), [Toy("sow", after="ghost")])
    with pytest.raises(SchedulerError, match="loop"):
        Scheduler(make_engine("sqlite://"), [Toy("a", after="b"), Toy("b", after="a")])


@pytest.fixture
def postgres_engine() -> Iterator[Engine]:
    """PostgreSQL only: the advisory lock is PostgreSQL's (SQLite serves one worker)."""
    for url in _postgres_database():
        engine = make_engine(url)
        upgrade(engine)
        with Session(engine) as session, session.begin():
            session.add(Battery(serial_number="S0", battery_name="b0"))
        yield engine
        engine.dispose()


def test_one_process_at_a_time_runs_a_tick_on_postgresql(postgres_engine: Engine) -> None:
    """Every worker of `cloud serve --workers N` has a scheduler; while one holds the
    tick, the others do nothing."""
    from sqlalchemy import text

    engine = postgres_engine

    from cloud.estimators.scheduler import _LOCK_KEY

    job = Toy("soh", interval_s=3600.0, batteries=[1])
    scheduler = Scheduler(engine, [job], clock=Clock())
    with engine.connect() as other_worker:
        assert other_worker.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LOCK_KEY})
        assert scheduler.run_due() == [] and job.calls == []
        other_worker.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
    assert [r.status for r in scheduler.run_due()] == ["ok"]
