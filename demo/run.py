"""Run the closed-loop demo: the cloud up, a charging hub and a home online, then the summary.

The scenario, on embedded defaults (SQLite file, amqtt broker) with no setup:

* the cloud service (REST, dashboard, MQTT ingest, estimator scheduler) on real HTTP;
* a Pillar 1 charging hub and a Pillar 2 home, each a second-life twin pack with a
  virtual BMS, registered with passport data and their own MQTT passwords, running
  ``days`` of twin time side by side as fast as the machine goes;
* the loop: the hub's EIS sweeps -> the cloud's DRT + ECM fit -> ``ecm_update`` to the
  hub -> its EKF estimates with the cloud's ECM; the cloud's SoH (daily) and SoW;
  the home's balancing; the hub's cooling failure -> over-temperature alarm;
* afterwards: the cloud is given time to store everything, then ``summary.json`` and
  ``report.html`` are written to ``out_dir``.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from demo.config import DemoConfig, SiteConfig
from demo.records import read_records, stored_counts
from demo.serve import DEFAULT_PORT, DemoCloud, TwinClock
from demo.sites import DemoBms, SiteAccount, build_site_bms, register_site
from demo.summary import SiteRun, build_summary
from virtual_bms.outbox import Outbox
from virtual_bms.uplink import BrokerEndpoint

__all__ = ["DEMO_USER", "DemoHooks", "DemoOutputs", "run_demo"]

DEMO_USER = "demo"
_FECS_PER_DAY = {1: 1.3, 2: 0.5}  # the sizing records' plans (hub sessions, a household)
_NOMINAL_CELL_V = 3.7


def _nothing(*_: Any) -> None:
    return None


@dataclass(frozen=True)
class DemoOutputs:
    summary_json: Path
    report_html: Path
    database: Path


@dataclass(frozen=True)
class DemoHooks:
    """What the caller sees while the demo runs (the CLI prints; tests need nothing).

    Attributes:
        progress: ``(twin seconds done, twin seconds in all)``, often.
        ready: ``(dashboard URL, login user, password)`` once the cloud is up.
        finished: ``(summary, outputs)`` before ``serve`` keeps the cloud up.
    """

    progress: Callable[[float, float], None] = field(default=_nothing)
    ready: Callable[[str, str, str], None] = field(default=_nothing)
    finished: Callable[[dict[str, Any], DemoOutputs], None] = field(default=_nothing)


def _fresh(out_dir: Path) -> None:
    """Each run starts from an empty database and empty outboxes."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for pattern in ("cloud.db*", "*.outbox.db*"):
        for path in out_dir.glob(pattern):
            path.unlink()


def _register(cloud: DemoCloud, config: DemoConfig, *, password: str) -> dict[str, SiteAccount]:
    from cloud.models import ModelsAccess
    from cloud.users import add_user

    sites = {"hub": config.hub, "home": config.home}
    with cloud.sessions() as session, session.begin():
        add_user(
            session,
            username=DEMO_USER,
            password=password,
            role="admin",
            models_access=ModelsAccess.write,
        )
        return {
            role: register_site(
                session,
                site,
                nominal_voltage_v=_NOMINAL_CELL_V,
                fecs_per_day=_FECS_PER_DAY[site.pillar],
                reporting_interval_s=config.reporting_interval_s,
            )
            for role, site in sites.items()
        }


async def _run_sites(
    bmss: Mapping[str, DemoBms],
    endpoints: Mapping[str, BrokerEndpoint],
    *,
    config: DemoConfig,
    progress: Callable[[float, float], None],
    clock: TwinClock,
) -> dict[str, dict[str, Any]]:
    from virtual_bms.assembly import run_online

    tasks = {
        role: asyncio.create_task(
            run_online(
                bms, endpoint=endpoints[role], duration_s=config.duration_s, speed=config.speed
            ),
            name=f"bms-{role}",
        )
        for role, bms in bmss.items()
    }
    pending: set[asyncio.Task[dict[str, Any]]] = set(tasks.values())
    while pending:
        progress(clock.time_s, config.duration_s)
        _, pending = await asyncio.wait(pending, timeout=0.25)
    progress(config.duration_s, config.duration_s)
    return {role: task.result() for role, task in tasks.items()}


def _wait_for_ingest(
    cloud: DemoCloud,
    *,
    accounts: Mapping[str, SiteAccount],
    sent: Mapping[str, int],
    events: Mapping[str, int],
    timeout_s: float,
) -> None:
    """Until the cloud has stored every sequenced message and event, or ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with cloud.sessions() as session:
            counts = {r: stored_counts(session, a.device_id) for r, a in accounts.items()}
        if all(counts[r][0] >= sent[r] and counts[r][1] >= events[r] for r in accounts):
            return
        time.sleep(0.2)


def run_demo(
    config: DemoConfig, *, hooks: DemoHooks | None = None
) -> tuple[dict[str, Any], DemoOutputs]:
    """Run the demo of ``config``; its summary and where the files went.

    Raises:
        DemoError: If the cloud cannot start (a taken port, say).
    """
    from demo.report import write_report_html, write_summary_json

    hooks = hooks or DemoHooks()
    started = time.monotonic()
    out_dir = config.out_dir
    _fresh(out_dir)
    database = out_dir / "cloud.db"
    clock = TwinClock()
    port = config.port if config.port is not None else (DEFAULT_PORT if config.serve else 0)
    password = secrets.token_urlsafe(12)
    roles: dict[str, SiteConfig] = {"hub": config.hub, "home": config.home}
    with contextlib.ExitStack() as stack:
        cloud = stack.enter_context(
            DemoCloud(
                database=database,
                port=port,
                clock=clock,
                soh_interval_s=config.soh_interval_s,
                estimator_tick_wall_s=config.estimator_tick_wall_s,
            )
        )
        accounts = _register(cloud, config, password=password)
        mqtt = cloud.mqtt
        endpoints = {
            role: BrokerEndpoint(
                host=mqtt.host,
                port=mqtt.port,
                username=site.name,
                password=SecretStr(accounts[role].mqtt_password),
            )
            for role, site in roles.items()
        }
        outboxes = {
            role: Outbox(out_dir / f"{site.name}.outbox.db") for role, site in roles.items()
        }
        for box in outboxes.values():
            stack.callback(box.close)
        bmss = {
            role: build_site_bms(site, config=config, outbox=outboxes[role], seed=config.seed + k)
            for k, (role, site) in enumerate(roles.items())
        }
        clock.watch([bms.twin for bms in bmss.values()])
        hooks.ready(f"{cloud.url}/ui/", DEMO_USER, password)
        seq0 = {role: box.next_seq for role, box in outboxes.items()}
        online = asyncio.run(
            _run_sites(bmss, endpoints, config=config, progress=hooks.progress, clock=clock)
        )
        sent = {role: outboxes[role].next_seq - seq0[role] for role in roles}
        _wait_for_ingest(
            cloud,
            accounts=accounts,
            sent=sent,
            events={role: bms.counters.events for role, bms in bmss.items()},
            timeout_s=config.ingest_timeout_wall_s,
        )
        with cloud.sessions() as session:
            records = {
                role: read_records(
                    session,
                    device_id=a.device_id,
                    battery_id=a.battery_id,
                    positions=a.cell_positions,
                )
                for role, a in accounts.items()
            }
        runs = {
            role: SiteRun(
                site=roles[role],
                bms=bmss[role],
                account=accounts[role],
                records=records[role],
                sent=sent[role],
                online=online[role],
            )
            for role in roles
        }
        summary = build_summary(
            config=config,
            runs=runs,
            wall_time_s=time.monotonic() - started,
            cloud_url=cloud.url,
        )
        outputs = DemoOutputs(
            summary_json=write_summary_json(summary, out_dir / "summary.json"),
            report_html=write_report_html(summary, runs, out_dir / "report.html"),
            database=database,
        )
        hooks.finished(summary, outputs)
        if config.serve:
            cloud.wait_until_interrupted()
    return summary, outputs
