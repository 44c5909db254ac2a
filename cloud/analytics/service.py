"""Uploaded bytes to the response: read, analyse, plot. In memory; nothing is stored."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cloud.analytics.analysis import AnalysisConfig, analyse
from cloud.analytics.formats import AnalyticsInputError, read_upload

__all__ = [
    "MAX_FILE_BYTES",
    "SEED_SECTIONS",
    "FileTooLargeError",
    "analyse_upload",
    "without_plots",
]

MAX_FILE_BYTES = 50 * 1024 * 1024  # per file, as the seed's API
SEED_SECTIONS = (
    "metadata",
    "capacity_fade",
    "voltage_profile",
    "temperature_analysis",
    "statistical_metrics",
    "battery_health",
)
"""The seed API's response sections; ``data_quality`` follows them."""


class FileTooLargeError(AnalyticsInputError):
    """A file is larger than :data:`MAX_FILE_BYTES` (HTTP 413)."""


def analyse_upload(
    files: Sequence[tuple[str, bytes]],
    *,
    config: AnalysisConfig | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """The analysis of one cell from ``(filename, content)`` pairs, as a JSON-ready dict.

    Args:
        files: one ``.pkl``, or the CSV set ``<cell>_cycles.csv`` (+ ``_metadata``,
            ``_metrics``).
        config: thresholds and resolutions (defaults: :class:`AnalysisConfig`).
        plots: False leaves every ``*_plot`` key None (faster; for storage or tests).

    Raises:
        FileTooLargeError: a file beyond :data:`MAX_FILE_BYTES`.
        AnalyticsInputError: anything else wrong with the files; the message says what.
    """
    for name, data in files:
        if len(data) > MAX_FILE_BYTES:
            raise FileTooLargeError(
                f"{name} is {len(data) / 2**20:.1f} MB; files may be at most "
                f"{MAX_FILE_BYTES // 2**20} MB"
            )
    result = analyse(read_upload(files), config)
    if plots:
        from cloud.analytics.plots import render_plots

        render_plots(result.plot_data, result.sections)
    return result.sections


def without_plots(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with every ``*_plot`` value dropped (what the passport stores)."""
    return {
        section: {k: v for k, v in values.items() if not k.endswith("_plot")}
        if isinstance(values, dict)
        else values
        for section, values in result.items()
    }
