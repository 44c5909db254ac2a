"""The data collector on both databases: each chunk stored once, statuses never go back,
results of a physical bench make their own record, rejected answers leave none."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select

from cloud.db import make_engine
from cloud.migrate import upgrade
from cloud.models import BenchTest, BenchTestChunk
from cloud.testbench.collector import claim_test, register_test, store_result
from cloud.testbench.messages import DataMessage, StatusMessage, TestRequest

T0 = dt.datetime(2025, 3, 1, 8, 0, tzinfo=dt.UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def _request(**fields: object) -> TestRequest:
    body = {"unit_under_test": "Cell-07", "test_type": "capacity", **fields}
    return TestRequest.model_validate(body).completed()


def _chunk(test: str, seq: int, n: int = 3) -> DataMessage:
    t = [10.0 * (seq * n + i + 1) for i in range(n)]
    return DataMessage(
        uuid=test,
        seq=seq,
        time_s=t,
        step=[0] * n,
        current_a=[1.0] * n,
        voltage_v=[3.7] * n,
        temperature_c=[25.0] * n,
        soc=[None] * n,
    )


def _test(engine: Engine, test: str) -> BenchTest:
    with engine.connect() as conn:
        row = conn.execute(select(BenchTest).where(BenchTest.uuid == test)).one()
    return BenchTest(**row._mapping)


def _chunks(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(BenchTestChunk)).scalar_one())


def test_a_redelivered_chunk_is_stored_once(engine: Engine) -> None:
    request = _request()
    assert request.uuid is not None
    first = register_test(engine, request)
    again = register_test(engine, request)
    assert first.created and not again.created and again.id == first.id
    assert store_result(engine, _chunk(request.uuid, 0)) == "stored"
    assert store_result(engine, _chunk(request.uuid, 1)) == "stored"
    assert store_result(engine, _chunk(request.uuid, 0)) == "duplicate"
    assert _chunks(engine) == 2 and _test(engine, request.uuid).n_samples == 6
    assert store_result(engine, _chunk(str(uuid.uuid4()), 0)) == "ignored"  # unknown test
    assert _chunks(engine) == 2


def test_statuses_only_move_forward(engine: Engine) -> None:
    request = _request()
    assert request.uuid is not None
    register_test(engine, request)
    assert claim_test(engine, request.uuid) and not claim_test(engine, request.uuid)
    progress = {"step_index": 2, "n_steps": 5, "step": "Rest", "cycle": 0, "time_s": 60.0}
    moving = StatusMessage(uuid=request.uuid, status="in_progress", ts=T0, progress=progress)
    assert store_result(engine, moving) == "stored"
    assert _test(engine, request.uuid).progress == progress
    outcome = {"end": "completed", "summary": "measured capacity 4.5 Ah"}
    done = StatusMessage(uuid=request.uuid, status="completed", ts=T0, outcome=outcome)
    assert store_result(engine, done) == "stored"
    late = StatusMessage(uuid=request.uuid, status="started", ts=T0)
    assert store_result(engine, late) == "duplicate"
    assert store_result(engine, moving) == "duplicate"
    failed = StatusMessage(uuid=request.uuid, status="failed", ts=T0, outcome={"end": "error"})
    assert store_result(engine, failed) == "duplicate"  # a final status is final
    test = _test(engine, request.uuid)
    assert test.status == "completed" and test.outcome == outcome
    assert test.finished_at is not None and test.started_at is not None


def test_a_physical_benchs_results_make_their_own_record(engine: Engine) -> None:
    request = _request(bench="physical", test_type="overcharge", level="module")
    assert request.uuid is not None
    started = StatusMessage(uuid=request.uuid, status="started", ts=T0, test=request)
    assert store_result(engine, started) == "stored"
    assert store_result(engine, started) == "duplicate"
    assert store_result(engine, _chunk(request.uuid, 0, n=5)) == "stored"
    test = _test(engine, request.uuid)
    assert (test.bench, test.level, test.status) == ("physical", "module", "started")
    assert test.n_samples == 5
    assert {v["name"]: v["unit"] for v in test.variables}["voltage_v"] == "V"
    anonymous = StatusMessage(uuid=str(uuid.uuid4()), status="started", ts=T0)
    assert store_result(engine, anonymous) == "ignored"  # no request: nothing to record
    rejected = StatusMessage(
        uuid=str(uuid.uuid4()), status="rejected", ts=T0, errors=[{"loc": "x", "msg": "y"}]
    )
    assert store_result(engine, rejected) == "ignored"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(BenchTest)).scalar_one() == 1
