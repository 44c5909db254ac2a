"""Cell SoC: a vectorised extended Kalman filter on the BMS's ECM, and the Pillar 2 three steps.

**EKF** (Pillar 1 and the second Pillar 2 step). State per cell ``x = [SoC, v_1..v_k]``
(k = 1..4 RC voltages), all cells at once. Over a step of ``dt`` the measured current ``I``
(positive = discharge) is held constant, and the state is advanced with the exact
zero-order-hold solution of the ECM (the twin's own discretisation)::

    SoC+ = SoC - eta I dt / (3600 Q)                         eta = efficiency when charging
    v_k+ = a_k v_k + R_k (1 - a_k) I,    a_k = exp(-dt / (R_k C_k))

and corrected with the terminal voltage at the end of the step,
``V = OCV(SoC+, T) - R0 I - sum_k v_k+``, linearised as ``H = [dOCV/dSoC, -1, ..., -1]``.
The covariance update uses Joseph's form, which stays symmetric positive definite.

Noise (:class:`EkfNoise`): the current sensor's noise enters the state through the same
input vector as the current (``Q = sigma_I^2 B B^T``); a random walk on SoC stands for
capacity and offset errors; a random walk on the RC voltages for R/C errors. The voltage
measurement variance is the sensor's plus a term growing with ``|I|``, because a wrong
resistance shows up as a voltage error proportional to the current: under heavy load the
filter leans on Coulomb counting, at low current and rest on the voltage.

**Temperature** enters through the model: build it with
:func:`~virtual_bms.estimators.ecm_model.ecm_model_from_parameters` at the measured cell
temperatures (R, C and the entropic OCV shift), as often as every step.

**Wrong initial SoC.** Start with a large ``soc_std`` (0.2-0.3 if the SoC is unknown):
the filter then trusts the voltage and converges within minutes on a sloped OCV (NMC);
on a flat OCV plateau (LFP) the slope is small and convergence waits for the plateau's
ends.

**Current sensor offset.** An offset ``dI`` makes Coulomb counting drift by
``dI / (3600 Q)`` per second (50 mA on a 100 Ah cell: 0.05 %/h, 1.2 % per day) without
bound. The EKF bounds it: in steady state its voltage correction balances the drift, which
leaves a bias of about ``dI dt / (3600 Q K_soc dOCV/dSoC)`` (``K_soc`` the SoC gain per
step), i.e. the drift accumulated over one filter time constant. Across ``R0`` the offset
is a voltage error of only ``R0 dI`` (micro- to millivolts), so the voltage side barely
notices it. A larger ``soc_drift_per_sqrt_h`` shortens the time constant and the bias, at
the price of more voltage noise in the SoC.

**Three steps (Pillar 2, D1.2 section 3.3.1.8).** (1) The ECM-based SoC:
Coulomb counting through the model's capacity, with a variance that only grows.
(2) The EKF-corrected SoC. (3) Their per-cell combination, see :func:`combine_soc`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from twin.models.base import FloatArray
from virtual_bms.estimators.ecm_model import EcmModel

__all__ = [
    "CoulombState",
    "EkfNoise",
    "EkfState",
    "SocEstimate",
    "ThreeStepSocState",
    "combine_soc",
    "coulomb_step",
    "ekf_step",
    "initial_ekf_state",
    "three_step_soc",
]

_RC_VARIANCE_FLOOR_V2 = 1e-8  # a re-shaped RC state starts at least this uncertain (0.1 mV)


@dataclass(frozen=True)
class EkfNoise:
    """Noise the filter assumes (standard deviations).

    Attributes:
        voltage_std_v: Cell-voltage measurement plus OCV-curve error, per sample.
        resistance_rel_std: Relative error of the model's R0 + sum R_k; adds
            ``(resistance_rel_std * |I| * R_total)^2`` to the voltage variance. The
            default (50 %) is for second-life cells whose per-cell resistance the BMS
            does not know (spread, ageing) and whose R depends on SoC and current
            direction more than one value per cell captures. On the twin's 16-cell
            second-life packs it cut the worst cell's SoC error after convergence by
            about 40 % against 20 % (okane 3.5 -> 2.0 %, ecm_example 2.9 -> 1.7 %) and
            lowered the RMSE a little.
        current_std_a: Current-measurement noise per sample (in A, per cell).
        soc_drift_per_sqrt_h: Random walk of SoC (capacity and current-offset errors),
            in SoC per square-root hour.
        rc_drift_v_per_sqrt_h: Random walk of each RC voltage, in V per square-root hour.

    Raises:
        ValueError: If a value is negative or not finite, or ``voltage_std_v`` is zero.
    """

    voltage_std_v: float = 0.005
    resistance_rel_std: float = 0.5
    current_std_a: float = 0.1
    soc_drift_per_sqrt_h: float = 0.01
    rc_drift_v_per_sqrt_h: float = 0.005

    def __post_init__(self) -> None:
        for name in (
            "voltage_std_v",
            "resistance_rel_std",
            "current_std_a",
            "soc_drift_per_sqrt_h",
            "rc_drift_v_per_sqrt_h",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"EkfNoise.{name} must be finite and >= 0, got {value!r}")
        if self.voltage_std_v == 0:
            raise ValueError(
                "EkfNoise.voltage_std_v must be > 0 (a perfect voltage would make the filter "
                "singular); use the sensor's noise plus the OCV-curve error, e.g. 0.005"
            )


def _frozen(value: ArrayLike) -> FloatArray:
    arr = np.array(value, dtype=np.float64)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class EkfState:
    """The filter's estimate for ``n`` cells with ``k`` RC pairs.

    Attributes:
        soc: SoC estimate, ``(n,)``. It may leave 0..1 by up to the OCV table's extent.
        rc_voltage_v: RC-pair voltages, ``(k, n)``.
        covariance: State covariance, ``(n, k + 1, k + 1)``, order ``[SoC, v_1..v_k]``.
        innovation_v: Measured minus predicted voltage of the last step (NaN where no
            voltage was given), ``(n,)``.
    """

    soc: FloatArray
    rc_voltage_v: FloatArray
    covariance: FloatArray
    innovation_v: FloatArray

    def __post_init__(self) -> None:
        for name in ("soc", "rc_voltage_v", "covariance", "innovation_v"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        n = self.soc.shape[0] if self.soc.ndim == 1 else -1
        k = self.rc_voltage_v.shape[0] if self.rc_voltage_v.ndim == 2 else -1
        if n < 1 or k < 1 or self.rc_voltage_v.shape != (k, n):
            raise ValueError(
                f"EkfState: soc must be (n,) and rc_voltage_v (k, n) with n, k >= 1, got "
                f"{self.soc.shape} and {self.rc_voltage_v.shape}"
            )
        if self.covariance.shape != (n, k + 1, k + 1) or self.innovation_v.shape != (n,):
            raise ValueError(
                f"EkfState: covariance must be ({n}, {k + 1}, {k + 1}) and innovation_v ({n},), "
                f"got {self.covariance.shape} and {self.innovation_v.shape}"
            )

    @property
    def n_cells(self) -> int:
        return int(self.soc.shape[0])

    @property
    def n_rc(self) -> int:
        return int(self.rc_voltage_v.shape[0])

    @property
    def soc_std(self) -> FloatArray:
        """Standard deviation of the SoC estimate, ``(n,)``."""
        return np.sqrt(np.maximum(self.covariance[:, 0, 0], 0.0))


def initial_ekf_state(
    soc: ArrayLike,
    *,
    n_rc: int,
    soc_std: float = 0.1,
    rc_voltage_std_v: float = 0.01,
) -> EkfState:
    """A filter state at ``soc`` (one value per cell) with relaxed RC pairs.

    Args:
        soc: Initial SoC guess per cell, ``(n,)``.
        n_rc: Number of RC pairs of the model the filter will run on (a different model
            later is fine: :func:`ekf_step` re-shapes the state).
        soc_std: How wrong the guess may be (0.2-0.3 when nothing is known).
        rc_voltage_std_v: How far from relaxed the cells may be.

    Raises:
        ValueError: If ``soc`` is not a non-empty 1-D array or a deviation is not positive.
    """
    s = np.array(soc, dtype=np.float64)
    if s.ndim != 1 or s.size < 1 or not np.all(np.isfinite(s)):
        raise ValueError(f"soc must be a finite 1-D array with one value per cell, got {s!r}")
    if not 1 <= n_rc <= 4:
        raise ValueError(f"n_rc must be within 1..4, got {n_rc}")
    if not (soc_std > 0 and rc_voltage_std_v > 0):
        raise ValueError(
            f"soc_std and rc_voltage_std_v must be > 0, got {soc_std} and {rc_voltage_std_v}"
        )
    n = s.size
    cov = np.zeros((n, n_rc + 1, n_rc + 1))
    cov[:, 0, 0] = soc_std**2
    idx = np.arange(1, n_rc + 1)
    cov[:, idx, idx] = rc_voltage_std_v**2
    return EkfState(
        soc=s, rc_voltage_v=np.zeros((n_rc, n)), covariance=cov, innovation_v=np.full(n, np.nan)
    )


def _cell_array(value: ArrayLike, *, n: int, name: str, allow_nan: bool = False) -> FloatArray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim > 1 or arr.size not in (1, n):
        raise ValueError(
            f"{name} must be a scalar or have one value per cell ({n}), got {arr.shape}"
        )
    arr = np.broadcast_to(arr.reshape(-1), (n,))
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must be finite, got {arr[i]} for cell {i}")
    return arr


def _check_dt(dt_s: float) -> float:
    dt = float(dt_s)
    if not (math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt_s must be finite and > 0, got {dt_s!r}")
    return dt


def _reshape_rc(state: EkfState, model: EcmModel) -> EkfState:
    """Fit the state to a model with another number of RC pairs (after an ECM update).

    The total polarisation ``sum_k v_k`` is kept and shared in proportion to the new
    R_k, so the predicted terminal voltage does not jump; the RC states lose their
    correlations with SoC and take the old pairs' mean variance.
    """
    k = model.n_rc
    if state.n_rc == k:
        return state
    r = model.rc_resistance_ohm
    v = r / r.sum(axis=0) * state.rc_voltage_v.sum(axis=0)
    old = np.arange(1, state.n_rc + 1)
    rc_var = np.maximum(state.covariance[:, old, old].mean(axis=1), _RC_VARIANCE_FLOOR_V2)
    cov = np.zeros((model.n_cells, k + 1, k + 1))
    cov[:, 0, 0] = state.covariance[:, 0, 0]
    new = np.arange(1, k + 1)
    cov[:, new, new] = rc_var[:, None]
    return EkfState(soc=state.soc, rc_voltage_v=v, covariance=cov, innovation_v=state.innovation_v)


def _soc_input_gain(model: EcmModel, current: FloatArray, dt: float) -> FloatArray:
    """d SoC / d I over the step (negative), with the coulombic efficiency on charge."""
    eta = np.where(current < 0, model.coulombic_efficiency, 1.0)
    return np.asarray(-eta * dt / (3600.0 * model.capacity_ah))


def ekf_step(
    state: EkfState,
    model: EcmModel,
    *,
    current_a: ArrayLike,
    voltage_v: ArrayLike,
    dt_s: float,
    noise: EkfNoise,
    iterations: int = 3,
) -> EkfState:
    """One predict-and-correct step of the SoC filter for every cell.

    Args:
        state: The estimate at the start of the step. If its number of RC pairs differs
            from ``model``'s (an ECM update changed it), it is re-shaped first, so an
            update takes effect in this very step.
        model: The BMS's ECM for this step (at the measured temperatures).
        current_a: Cell current held over the step (positive = discharge), scalar (series
            string) or per cell; include the balancing current a cell's balancer draws.
        voltage_v: Cell voltages measured at the end of the step; NaN skips the
            correction for that cell (prediction only).
        dt_s: Step length.
        noise: Assumed noise.
        iterations: Passes of the measurement update (1 = the plain EKF). Further passes
            re-linearise the OCV at the corrected SoC (iterated EKF): where the OCV slope
            changes quickly (NMC's kink near 90 % SoC, the ends of the curve), a single
            linearisation at a far-off guess overshoots and leaves the covariance
            over-confident, which stalls convergence from a wrong initial SoC.

    Returns:
        The new state; the input is not modified.

    Raises:
        ValueError: On a shape mismatch, a non-finite current or a bad ``dt_s``.
    """
    n = model.n_cells
    if state.n_cells != n:
        raise ValueError(
            f"EkfState has {state.n_cells} cells but the model {n}: start a new state with "
            "initial_ekf_state"
        )
    dt = _check_dt(dt_s)
    current = _cell_array(current_a, n=n, name="current_a")
    measured = _cell_array(voltage_v, n=n, name="voltage_v", allow_nan=True)
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    state = _reshape_rc(state, model)
    k = model.n_rc
    m = k + 1

    # Predict: exact zero-order hold.
    a = np.exp(-dt / model.tau_s)  # (k, n)
    rc_gain = model.rc_resistance_ohm * (1.0 - a)  # dv_k / dI over the step
    b_soc = _soc_input_gain(model, current, dt)
    soc = state.soc + b_soc * current
    rc = a * state.rc_voltage_v + rc_gain * current
    decay = np.concatenate((np.ones((n, 1)), a.T), axis=1)  # diagonal of A, (n, m)
    b = np.concatenate((b_soc[:, None], rc_gain.T), axis=1)  # B, (n, m)
    p = state.covariance * (decay[:, :, None] * decay[:, None, :])
    p = p + noise.current_std_a**2 * (b[:, :, None] * b[:, None, :])
    diag = np.arange(m)
    walk = np.empty(m)
    walk[0] = noise.soc_drift_per_sqrt_h**2
    walk[1:] = noise.rc_drift_v_per_sqrt_h**2
    p[:, diag, diag] += walk * (dt / 3600.0)

    # Correct with the end-of-step voltage: iterated (Gauss-Newton) update, each pass
    # re-linearising the OCV at the latest estimate.
    x_pred = np.concatenate((soc[:, None], rc.T), axis=1)
    ir_drop = model.r0_ohm * current
    r_total = model.r0_ohm + model.rc_resistance_ohm.sum(axis=0)
    r_meas = noise.voltage_std_v**2 + (noise.resistance_rel_std * np.abs(current) * r_total) ** 2
    h = np.empty((n, m))
    h[:, 1:] = -1.0
    x = x_pred
    for _ in range(iterations):
        h[:, 0] = model.docv_dsoc_v(x[:, 0])
        predicted = model.ocv_v(x[:, 0]) - ir_drop - x[:, 1:].sum(axis=1)
        residual = measured - predicted - np.einsum("ni,ni->n", h, x_pred - x)
        have = np.isfinite(residual)
        ph = np.einsum("nij,nj->ni", p, h)
        s = np.einsum("ni,ni->n", h, ph) + r_meas
        gain = ph / s[:, None]
        gain[~have] = 0.0
        x = x_pred + gain * np.where(have, residual, 0.0)[:, None]
    innovation = measured - (model.ocv_v(soc) - ir_drop - rc.sum(axis=0))
    ikh = np.eye(m)[None, :, :] - gain[:, :, None] * h[:, None, :]
    p = ikh @ p @ ikh.transpose(0, 2, 1) + r_meas[:, None, None] * (
        gain[:, :, None] * gain[:, None, :]
    )
    p = 0.5 * (p + p.transpose(0, 2, 1))
    lo = min(float(model.soc_grid[0]), 0.0)
    hi = max(float(model.soc_grid[-1]), 1.0)
    return EkfState(
        soc=np.clip(x[:, 0], lo, hi),
        rc_voltage_v=x[:, 1:].T,
        covariance=p,
        innovation_v=innovation,
    )


@dataclass(frozen=True, eq=False)
class CoulombState:
    """The ECM-based SoC (step 1): Coulomb counting through the model's capacity.

    Attributes:
        soc: SoC per cell, ``(n,)``.
        variance: Its variance, ``(n,)``; it only grows (no measurement corrects it).
    """

    soc: FloatArray
    variance: FloatArray

    def __post_init__(self) -> None:
        for name in ("soc", "variance"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        if self.soc.ndim != 1 or self.variance.shape != self.soc.shape:
            raise ValueError(
                f"CoulombState: soc and variance must both be (n,), got {self.soc.shape} and "
                f"{self.variance.shape}"
            )


def coulomb_step(
    state: CoulombState,
    model: EcmModel,
    *,
    current_a: ArrayLike,
    dt_s: float,
    noise: EkfNoise,
) -> CoulombState:
    """Advance the ECM-based SoC by one step of held current (positive = discharge).

    Its variance grows by the current noise through the capacity and by the SoC random
    walk of ``noise``, the same terms the EKF's prediction adds.
    """
    n = model.n_cells
    dt = _check_dt(dt_s)
    current = _cell_array(current_a, n=n, name="current_a")
    b_soc = _soc_input_gain(model, current, dt)
    variance = (
        state.variance
        + (noise.current_std_a * b_soc) ** 2
        + noise.soc_drift_per_sqrt_h**2 * dt / 3600.0
    )
    return CoulombState(soc=state.soc + b_soc * current, variance=variance)


@dataclass(frozen=True, eq=False)
class SocEstimate:
    """The combined cell SoC (step 3).

    Attributes:
        soc: SoC per cell, clipped to 0..1.
        std: Its standard deviation (see :func:`combine_soc` for the caveat).
        ekf_weight: Weight of the EKF estimate, 0..1 (the rest is the ECM-based SoC).
    """

    soc: FloatArray
    std: FloatArray
    ekf_weight: FloatArray


def combine_soc(coulomb: CoulombState, ekf: EkfState) -> SocEstimate:
    """Combine the ECM-based and the EKF SoC per cell, weighted by their covariances.

    Inverse-variance weighting, ``w = P_cc / (P_cc + P_ekf)`` on the EKF estimate and
    ``1 - w`` on the ECM-based one: the estimate that is less uncertain counts more. The
    ECM-based SoC's variance only grows, while the EKF's shrinks wherever the OCV has a
    slope, so in normal operation the weight moves to the EKF within minutes of a start
    (and a wrong initial guess of the ECM-based SoC fades out); it moves back where the
    EKF has been starved of information (long flat OCV plateau, missing voltages) or
    right after the ECM-based SoC has been re-anchored (``CoulombState`` with a small
    variance, e.g. at the end of a full charge).

    Caveat: both estimates integrate the same current measurement, so they are positively
    correlated; the combined variance ``P_cc P_ekf / (P_cc + P_ekf)`` treats them as
    independent and is therefore optimistic, at most by the smaller of the two variances.
    """
    p_cc = coulomb.variance
    p_ekf = ekf.covariance[:, 0, 0]
    total = p_cc + p_ekf
    w = np.where(total > 0, p_cc / np.where(total > 0, total, 1.0), 1.0)
    soc = w * ekf.soc + (1.0 - w) * coulomb.soc
    variance = np.where(total > 0, p_cc * p_ekf / np.where(total > 0, total, 1.0), 0.0)
    return SocEstimate(soc=np.clip(soc, 0.0, 1.0), std=np.sqrt(variance), ekf_weight=w)


@dataclass(frozen=True, eq=False)
class ThreeStepSocState:
    """The Pillar 2 SoC estimator's state: the ECM-based SoC and the EKF."""

    coulomb: CoulombState
    ekf: EkfState

    @classmethod
    def initial(
        cls,
        soc: ArrayLike,
        *,
        n_rc: int,
        soc_std: float = 0.1,
        rc_voltage_std_v: float = 0.01,
    ) -> ThreeStepSocState:
        """Both estimates start at ``soc`` with standard deviation ``soc_std``."""
        ekf = initial_ekf_state(soc, n_rc=n_rc, soc_std=soc_std, rc_voltage_std_v=rc_voltage_std_v)
        return cls(
            coulomb=CoulombState(soc=ekf.soc, variance=np.full(ekf.n_cells, soc_std**2)), ekf=ekf
        )


def three_step_soc(
    state: ThreeStepSocState,
    model: EcmModel,
    *,
    current_a: ArrayLike,
    voltage_v: ArrayLike,
    dt_s: float,
    noise: EkfNoise,
) -> tuple[ThreeStepSocState, SocEstimate]:
    """One Pillar 2 SoC cycle: ECM-based SoC, EKF correction, per-cell combination.

    Arguments as for :func:`ekf_step`.

    Returns:
        The new state and the combined per-cell SoC.
    """
    coulomb = coulomb_step(state.coulomb, model, current_a=current_a, dt_s=dt_s, noise=noise)
    ekf = ekf_step(
        state.ekf, model, current_a=current_a, voltage_v=voltage_v, dt_s=dt_s, noise=noise
    )
    return ThreeStepSocState(coulomb=coulomb, ekf=ekf), combine_soc(coulomb, ekf)
