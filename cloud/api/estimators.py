"""``POST /api/estimators/{name}/run/?battery=ID``: run a cloud estimator now (on demand)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from cloud.api.deps import CurrentUser, SessionDep
from cloud.api.resources import ANALYTICS_WRITERS
from cloud.estimators.scheduler import Scheduler, SchedulerError
from cloud.estimators.service import publish_pending
from cloud.models import Battery, EstimatorRun

router = APIRouter(prefix="/api/estimators", tags=["Estimators"])


def _public(run: EstimatorRun) -> dict[str, Any]:
    return {
        "id": run.id,
        "job": run.job,
        "version": run.version,
        "battery_id": run.battery_id,
        "trigger": run.trigger,
        "status": run.status,
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "inputs": run.inputs,
        "outcome": run.outcome,
        "error": run.error,
    }


@router.get("/")
def list_estimators(request: Request, user: CurrentUser) -> list[str]:
    """The estimators the scheduler runs."""
    scheduler: Scheduler = request.app.state.scheduler
    return scheduler.jobs


@router.post("/{name}/run/")
async def run_estimator(
    name: str,
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    battery: Annotated[int, Query(description="Battery id")],
) -> dict[str, Any]:
    """Run ``name`` for one battery now; the run as logged (its commands are sent)."""
    if user.role not in ANALYTICS_WRITERS:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"role '{user.role.value}' may not run estimators"
        )
    if session.scalar(select(Battery.id).where(Battery.id == battery)) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"batteries {battery} not found")
    scheduler: Scheduler = request.app.state.scheduler
    try:
        run = await run_in_threadpool(scheduler.run_now, name, battery_id=battery)
    except SchedulerError as error:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from None
    await publish_pending(request.app.state.engine, request.app.state.mqtt)
    return _public(run)
