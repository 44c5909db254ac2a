"""Estimator accuracy against the twins' truth, and message accounting. Pure functions."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from demo.records import EcmFit
    from demo.sites import SweepTruth

__all__ = [
    "ecm_parameter_error",
    "message_tally",
    "soc_rmse_pct",
    "soh_error",
    "soh_trend",
]


def soc_rmse_pct(
    time_s: ArrayLike,
    soc: ArrayLike,
    soc_true: ArrayLike,
    *,
    start_s: float = -math.inf,
    end_s: float = math.inf,
) -> float | None:
    """RMS SoC error in percentage points over every cell and sample in
    ``[start_s, end_s)``; None when there is no sample there.

    Args:
        time_s: Sample times, ``(n,)``.
        soc: Estimates, ``(n, cells)``.
        soc_true: The twin's SoC, ``(n, cells)``.
        start_s: First time counted.
        end_s: First time no longer counted.
    """
    t = np.asarray(time_s, dtype=float)
    keep = (t >= start_s) & (t < end_s)
    if not np.any(keep):
        return None
    err = np.asarray(soc, dtype=float)[keep] - np.asarray(soc_true, dtype=float)[keep]
    return float(np.sqrt(np.mean(err**2)) * 100.0)


def soh_trend(estimates: Sequence[tuple[float, int, float]]) -> list[tuple[float, float]]:
    """(time, mean over the cells) of each batch of cell SoH estimates, in time order."""
    by_time: dict[float, list[float]] = {}
    for time_s, _, soh in estimates:
        by_time.setdefault(time_s, []).append(soh)
    return [(t, float(np.mean(v))) for t, v in sorted(by_time.items())]


def soh_error(
    estimates: Sequence[tuple[float, int, float]],
    *,
    truth_time_s: ArrayLike,
    truth_soh: ArrayLike,
) -> dict[str, Any]:
    """The cloud's SoH against the twin's capacity fraction at the estimate's time.

    Args:
        estimates: (time, cell position, SoH) of every estimate.
        truth_time_s: Times of the truth log, ``(m,)``, increasing.
        truth_soh: True capacity / nominal capacity per cell at those times, ``(m, cells)``.

    Returns:
        ``estimates`` (how many), and over all of them and over the latest batch the mean
        and largest absolute error in SoH points (percent of nominal), the latest batch's
        mean cloud and true SoH; the error fields are None without estimates.
    """
    t = np.asarray(truth_time_s, dtype=float)
    truth = np.asarray(truth_soh, dtype=float)
    out: dict[str, Any] = {
        "estimates": len(estimates),
        "mean_abs_error_pts": None,
        "latest_at_h": None,
        "latest_mean_abs_error_pts": None,
        "latest_max_abs_error_pts": None,
        "latest_cloud_soh": None,
        "latest_true_soh": None,
    }
    if not estimates or t.size == 0:
        return out
    errors: list[float] = []
    for time_s, cell, soh in estimates:
        true = float(np.interp(time_s, t, truth[:, cell]))
        errors.append(abs(soh - true) * 100.0)
    latest = max(e[0] for e in estimates)
    batch = [(k, e) for k, e in enumerate(estimates) if e[0] == latest]
    latest_errors = [errors[k] for k, _ in batch]
    true_latest = [float(np.interp(latest, t, truth[:, e[1]])) for _, e in batch]
    out.update(
        mean_abs_error_pts=float(np.mean(errors)),
        latest_at_h=latest / 3600.0,
        latest_mean_abs_error_pts=float(np.mean(latest_errors)),
        latest_max_abs_error_pts=float(np.max(latest_errors)),
        latest_cloud_soh=float(np.mean([e[2] for _, e in batch])),
        latest_true_soh=float(np.mean(true_latest)),
    )
    return out


def ecm_parameter_error(fits: Sequence[EcmFit], truth: Mapping[str, SweepTruth]) -> dict[str, Any]:
    """The cloud's fitted ECMs against the twin's small-signal parameters of the same cell
    at the moment of its sweep (its SoC and temperature then).

    R0 is compared directly; the RC pairs through the DC resistance ``R0 + sum R_k``,
    since the fit chooses its own number of pairs (the DRT's peaks), which need not be
    the twin's.

    Returns:
        ``fits`` scored, the mean absolute and the mean signed relative error of R0 and
        of the DC resistance in percent (None without fits), and the fitted and true
        R0 of the last sweep in milliohm.
    """
    r0_err: list[float] = []
    dc_err: list[float] = []
    last: dict[str, Any] | None = None
    for fit in fits:
        sweep = truth.get(fit.event_id)
        if sweep is None:
            continue
        r0_true = float(sweep.r0_ohm[fit.position])
        dc_true = r0_true + float(np.sum(sweep.rc_resistance_ohm[:, fit.position]))
        dc_fit = fit.r0_ohm + float(np.sum(fit.rc_resistance_ohm))
        r0_err.append((fit.r0_ohm - r0_true) / r0_true * 100.0)
        dc_err.append((dc_fit - dc_true) / dc_true * 100.0)
        last = {
            "event_id": fit.event_id,
            "cell": fit.position,
            "r0_fit_mohm": fit.r0_ohm * 1000.0,
            "r0_true_mohm": r0_true * 1000.0,
            "n_rc_fit": len(fit.rc_resistance_ohm),
            "n_rc_twin": int(sweep.rc_resistance_ohm.shape[0]),
        }

    def mean(values: list[float], *, absolute: bool) -> float | None:
        if not values:
            return None
        return float(np.mean(np.abs(values) if absolute else values))

    return {
        "fits": len(r0_err),
        "r0_mean_abs_error_pct": mean(r0_err, absolute=True),
        "r0_bias_pct": mean(r0_err, absolute=False),
        "r_dc_mean_abs_error_pct": mean(dc_err, absolute=True),
        "r_dc_bias_pct": mean(dc_err, absolute=False),
        "last": last,
    }


def message_tally(*, sent: int, stored: int) -> dict[str, int]:
    """Sequenced messages the BMS sent, the cloud stored (distinct seqs) and lost."""
    return {"sent": sent, "stored": stored, "lost": max(sent - stored, 0)}
