"""The twin benchmark reports a part that cannot run as null plus a reason."""

from __future__ import annotations

import pytest

from benches import twin as bench


def test_failing_part_is_reported_not_invented(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> dict[str, object]:
        raise RuntimeError("no network for the venv")

    monkeypatch.setitem(bench.RUNNERS, "blast_lite", broken)
    monkeypatch.setitem(bench.RUNNERS, "ecm", lambda: {"ecm_cell_steps_per_s": 1.0})
    result = bench.run_benchmark(("ecm", "blast_lite"))
    assert result["ecm_cell_steps_per_s"] == 1.0
    assert result["blast_lite_fade_difference_pct"] is None
    assert result["errors"] == {"blast_lite": "RuntimeError: no network for the venv"}
    assert set(result["runtime_s"]) == {"ecm", "blast_lite"}
