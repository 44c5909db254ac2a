"""One sweep point: run a scenario and return its KPIs (a top-level, picklable function)."""

from __future__ import annotations

from typing import Any

from scenarios.config import Scenario


def run_kpis(scenario: Scenario) -> dict[str, Any]:
    """Simulate ``scenario`` without writing files; KPIs plus the SoH trajectory."""
    from scenarios.engine import simulate

    summary = simulate(scenario).summary
    return {
        k: (float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
        for k, v in summary.items()
        if k not in ("scenario", "kind")
    }
