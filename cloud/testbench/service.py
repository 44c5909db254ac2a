"""The bench service inside the cloud app: accept requests, queue them, run them, report.

Request path (one for both transports)::

    MQTT request topic --parse--> accept() --register--> queue --> bench worker
    POST /api/tests/ --register--> (MQTT on: publish on the request topic;  off: accept())

A bench worker claims the test (``started`` -> ``in_progress``, so it runs once even if
several processes hold the request), builds the twin and runs it in a worker thread, and
emits what the run reports: with MQTT, on the test's results topic, where the collector's
subscription stores it; without, straight to the collector. ``benches`` tests run at
once (default one); the rest wait in the queue, in the order they arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, select

from cloud.models import BenchTest
from cloud.mqtt.commands import MqttEndpoint
from cloud.testbench.collector import (
    Registered,
    StoreOutcome,
    claim_test,
    register_test,
    store_result,
)
from cloud.testbench.handler import MqttLink
from cloud.testbench.messages import (
    VARIABLES,
    DataMessage,
    RequestError,
    StatusMessage,
    TestRequest,
    parse_request,
    parse_result,
)
from cloud.testbench.models_source import ModelError, build_twin, database_fmu_loader
from cloud.testbench.procedures import ABUSE_TESTS, plan_test
from cloud.testbench.runner import Chunk, Finished, Progress, run_test
from cloud.testbench.topics import BenchTopics

__all__ = ["BenchConfig", "BenchCounters", "BenchService"]

_log = logging.getLogger(__name__)
_DONE = object()  # end of a run's stream of reports
_FINAL_WAIT_S = 5.0  # how long a final status waits for the broker at shutdown


class BenchConfig(BaseModel):
    """How the bench service runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topics: BenchTopics = BenchTopics()
    benches: int = Field(default=1, ge=1, le=64)
    """Virtual benches: tests that run at the same time (each in its own thread)."""
    client_id: str = Field(default="batterytwin-bench", min_length=1, max_length=23)
    shared_group: str | None = None
    """Set when several API processes run a bench each (``serve --workers N``): they share
    the bench topics as ``$share/{group}/...`` with a clean session per process. MQTT
    requests published while no process is connected are then not kept; REST requests
    are (the test is recorded first and resumed at the next start)."""
    chunk_samples: int = Field(default=250, ge=1, le=10_000)
    chunk_interval_s: float = Field(default=1.0, gt=0)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    resume: bool = True
    """At start, queue the virtual tests that were accepted but never ran."""


@dataclass
class BenchCounters:
    """What the bench has done since it started."""

    requests: int = 0
    rejected: int = 0
    accepted: int = 0
    runs: int = 0
    results_stored: int = 0
    results_duplicate: int = 0
    results_ignored: int = 0
    results_invalid: int = 0


class BenchService:
    """Test request handler, virtual benches and data collector.

    Use it as an async context manager in the app's lifespan.

    Args:
        engine: The database.
        endpoint: The broker (None: no MQTT; REST requests run in-process).
        config: Topics, number of benches, chunking.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        endpoint: MqttEndpoint | None,
        config: BenchConfig | None = None,
    ) -> None:
        self._engine = engine
        self._config = config or BenchConfig()
        self._topics = self._config.topics
        self._link: MqttLink | None = None
        if endpoint is not None:
            self._link = MqttLink(
                endpoint=endpoint,
                topics=self._topics,
                client_id=self._config.client_id,
                shared_group=self._config.shared_group,
                on_message=self._on_message,
                connect_timeout_s=self._config.connect_timeout_s,
            )
        self._queue: asyncio.Queue[TestRequest] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._stopping = threading.Event()  # read by the runner threads
        self._stop = asyncio.Event()  # wakes idle benches
        self._fmu_loader = database_fmu_loader(engine)
        self.counters = BenchCounters()

    @property
    def topics(self) -> BenchTopics:
        return self._topics

    @property
    def mqtt(self) -> bool:
        """Whether requests and results go over MQTT."""
        return self._link is not None

    async def __aenter__(self) -> Self:
        self._stopping.clear()
        self._stop.clear()
        self._workers = [
            asyncio.create_task(self._worker(), name=f"testbench-{i}")
            for i in range(self._config.benches)
        ]
        if self._link is not None:
            try:
                await self._link.start()
            except BaseException:
                await self._stop_workers()
                raise
        if self._config.resume:
            for request in await asyncio.to_thread(self._waiting):
                self._queue.put_nowait(request)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop_workers()
        if self._link is not None:
            await self._link.stop()

    async def _stop_workers(self) -> None:
        """Let each bench finish: a running test ends as failed (aborted) and reports it;
        queued tests stay ``started`` and are resumed at the next start."""
        self._stopping.set()
        self._stop.set()
        if self._workers:
            _, late = await asyncio.wait(self._workers, timeout=2 * _FINAL_WAIT_S + 5.0)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._workers = []

    # ----------------------------------------------------------------- requests
    async def submit(self, request: TestRequest, *, requested_by_id: int | None = None) -> int:
        """A request from the REST API: record it, then hand it to the bench. Returns its id.

        With MQTT it goes out on the request topic (the handler picks it up, as any
        other request); without, it is accepted here.
        """
        request = request.completed()
        registered = await asyncio.to_thread(
            register_test, self._engine, request, requested_by_id=requested_by_id
        )
        sent = False
        if self._link is not None:
            payload = request.model_dump_json(exclude_none=True).encode()
            sent = await self._link.publish(self._topics.requests, payload, wait_s=10.0)
        if not sent:  # no MQTT, or the broker is away: run it here all the same
            await self.accept(request)
        return registered.id

    async def accept(self, request: TestRequest) -> Registered:
        """Record a valid request (once) and queue it, announcing it with ``started``."""
        registered = await asyncio.to_thread(register_test, self._engine, request)
        if registered.status == "started":
            self.counters.accepted += 1
            started = StatusMessage(
                uuid=registered.uuid,
                status="started",
                ts=_now(),
                test=request,
                variables=list(VARIABLES),
            )
            await self._emit(started)
            self._queue.put_nowait(request)
        return registered

    async def _on_message(self, topic: str, payload: bytes) -> None:
        if topic == self._topics.requests:
            await self._on_request(payload)
        elif self._topics.uuid_of(topic) is not None:
            await self._on_result(topic, payload)

    async def _on_request(self, payload: bytes) -> None:
        self.counters.requests += 1
        try:
            request = parse_request(payload)
        except RequestError as error:
            self.counters.rejected += 1
            _log.warning("test request rejected: %s", error)
            answer = StatusMessage(
                uuid=error.uuid, status="rejected", ts=_now(), errors=error.errors
            )
            topic = self._topics.results(error.uuid) if error.uuid else self._topics.errors
            assert self._link is not None
            await self._link.publish(topic, answer.model_dump_json().encode(), wait_s=10.0)
            return
        await self.accept(request)

    async def _on_result(self, topic: str, payload: bytes) -> None:
        try:
            message = parse_result(payload)
        except RequestError as error:
            self.counters.results_invalid += 1
            _log.warning("result on %s not stored: %s", topic, error)
            return
        if message.uuid is not None and message.uuid != self._topics.uuid_of(topic):
            self.counters.results_invalid += 1
            _log.warning("result on %s names test %s: not stored", topic, message.uuid)
            return
        self._count(await asyncio.to_thread(store_result, self._engine, message))

    def _count(self, outcome: StoreOutcome) -> None:
        if outcome == "stored":
            self.counters.results_stored += 1
        elif outcome == "duplicate":
            self.counters.results_duplicate += 1
        else:
            self.counters.results_ignored += 1

    async def _emit(self, message: StatusMessage | DataMessage, *, final: bool = False) -> None:
        """Report: on the results topic with MQTT, else straight to the collector."""
        if self._link is None:
            self._count(await asyncio.to_thread(store_result, self._engine, message))
            return
        assert message.uuid is not None
        wait = _FINAL_WAIT_S if self._stopping.is_set() else None
        sent = await self._link.publish(
            self._topics.results(message.uuid),
            message.model_dump_json(exclude_none=True).encode(),
            wait_s=wait,
        )
        if final and (not sent or self._stopping.is_set()):
            # the broker is gone, or the collector's subscription is about to be: keep the
            # end of the test anyway (a copy that also arrives over MQTT changes nothing)
            self._count(await asyncio.to_thread(store_result, self._engine, message))

    def _waiting(self) -> list[TestRequest]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(BenchTest.request)
                .where(BenchTest.status == "started", BenchTest.bench == "virtual")
                .order_by(BenchTest.id)
            ).all()
        waiting = []
        for (data,) in rows:
            try:
                waiting.append(TestRequest.model_validate(data))
            except ValueError as error:
                _log.warning("stored test request no longer valid, not resumed: %s", error)
        return waiting

    # ------------------------------------------------------------------ benches
    async def _next(self) -> TestRequest | None:
        """The next queued request; None when the service stops."""
        get = asyncio.ensure_future(self._queue.get())
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not get.done():
                get.cancel()
        if get.done() and not get.cancelled():
            if self._stop.is_set():
                self._queue.put_nowait(get.result())  # left for the next start (resume)
                return None
            return get.result()
        return None

    async def _worker(self) -> None:
        while (request := await self._next()) is not None:
            assert request.uuid is not None
            try:
                if request.bench != "virtual":
                    continue  # a physical bench's test runs elsewhere; its results come in
                if not await asyncio.to_thread(claim_test, self._engine, request.uuid):
                    continue  # already run, or running elsewhere
                self.counters.runs += 1
                await self._execute(request)
            except Exception:
                _log.exception("bench run of test %s failed", request.uuid)

    async def _execute(self, request: TestRequest) -> None:
        uuid = request.uuid
        assert uuid is not None
        loop = asyncio.get_running_loop()
        reports: asyncio.Queue[Any] = asyncio.Queue()

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(reports.put_nowait, item)

        def work() -> None:
            try:
                built = build_twin(
                    request.model,
                    ambient_c=request.ambient_c,
                    ageing=request.test_type not in ABUSE_TESTS,
                    fmu_loader=self._fmu_loader,
                )
            except ModelError as error:
                put(_failed(str(error)))
                return
            except Exception as error:  # e.g. a PyBaMM solver error while setting up
                put(_failed(f"cannot build the {request.model.kind} model: {error}"))
                return
            try:
                plan = plan_test(request, built.ratings)
                for item in run_test(
                    built.twin,
                    plan,
                    cancelled=self._stopping.is_set,
                    chunk_samples=self._config.chunk_samples,
                    chunk_interval_s=self._config.chunk_interval_s,
                ):
                    if isinstance(item, Finished):
                        item.outcome["model"] = built.describe
                    put(item)
            except Exception as error:  # a plan the model cannot take
                put(_failed(str(error)))
            finally:
                built.close()

        def run() -> None:
            try:
                work()
            finally:
                put(_DONE)

        thread = asyncio.create_task(asyncio.to_thread(run))
        try:
            while (item := await reports.get()) is not _DONE:
                await self._emit(_message(uuid, item), final=isinstance(item, Finished))
        finally:
            await asyncio.shield(thread)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _failed(error: str) -> Finished:
    return Finished("failed", {"end": "error", "summary": error, "error": error})


def _message(uuid: str, item: Progress | Chunk | Finished) -> StatusMessage | DataMessage:
    if isinstance(item, Chunk):
        return DataMessage.model_validate({"uuid": uuid, "seq": item.seq, **item.columns})
    if isinstance(item, Progress):
        return StatusMessage(uuid=uuid, status="in_progress", ts=_now(), progress=item.as_dict())
    status: Any = item.status
    return StatusMessage(uuid=uuid, status=status, ts=_now(), outcome=item.outcome)
