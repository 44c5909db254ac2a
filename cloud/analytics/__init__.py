"""Battery analytics of uploaded cycling data (BatteryLife/BatteryML pickles, CSV sets).

Entry point: :func:`analyse_upload` (files in, the response dict out); the REST adapter is
:mod:`cloud.api.analytics`, the command ``batterytwin analyze`` is :mod:`cloud.analytics.cli`.
"""

from cloud.analytics.analysis import AnalysisConfig
from cloud.analytics.formats import AnalyticsInputError
from cloud.analytics.service import (
    MAX_FILE_BYTES,
    SEED_SECTIONS,
    FileTooLargeError,
    analyse_upload,
    without_plots,
)

__all__ = [
    "MAX_FILE_BYTES",
    "SEED_SECTIONS",
    "AnalysisConfig",
    "AnalyticsInputError",
    "FileTooLargeError",
    "analyse_upload",
    "without_plots",
]
