"""Prometheus metrics of the service (text exposition format)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from sqlalchemy import func, select

from cloud.models import Device


def render_metrics(app: Any) -> bytes:
    """Ingest counters (messages in, stored, dead-lettered, lag) and devices online."""
    registry = CollectorRegistry()
    ingest = app.state.ingest
    if ingest is not None:
        c = ingest.counters
        for name, value, doc in (
            ("messages_in", c.messages_in, "MQTT messages received"),
            ("messages_stored", c.stored, "telemetry and EIS messages stored"),
            ("messages_duplicate", c.duplicates, "redeliveries stored nothing"),
            ("messages_dead_lettered", c.dead_lettered, "invalid messages kept as dead letters"),
            ("measurement_rows", c.measurement_rows, "measurement rows written"),
            ("eis_rows", c.eis_rows, "EIS rows written"),
            ("reconnects", c.reconnects, "broker reconnects"),
        ):
            Gauge(f"batterytwin_ingest_{name}", doc, registry=registry).set(value)
        lag = Gauge(
            "batterytwin_ingest_lag_seconds", "commit time minus device time", registry=registry
        )
        lag.set(c.last_lag_s if c.last_lag_s is not None else float("nan"))
        up = Gauge(
            "batterytwin_broker_connected", "1 when the ingest is subscribed", registry=registry
        )
        up.set(1.0 if ingest.subscribed else 0.0)
    with app.state.sessions() as session:
        online = session.scalar(select(func.count()).select_from(Device).where(Device.online)) or 0
    Gauge("batterytwin_devices_online", "devices reporting online", registry=registry).set(online)
    return bytes(generate_latest(registry))
