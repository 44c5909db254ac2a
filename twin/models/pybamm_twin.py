"""PyBaMM-backed cell twin: an electrochemical model built once, then stepped in place."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal

import casadi
import numpy as np
import pybamm
from numpy.typing import ArrayLike, NDArray

from twin.errors import ParameterSetError, TwinInputError
from twin.models.base import (
    CellStep,
    CellTruth,
    FloatArray,
    LimitCheck,
    LimitMonitor,
    TwinEvent,
    as_cell_array,
    check_dt,
)

__all__ = ["PybammStepError", "PybammTwin", "PybammTwinConfig"]

ModelName = Literal["SPM", "SPMe", "DFN"]
ThermalOption = Literal["lumped", "isothermal"]

_KELVIN: Final = 273.15
_CURRENT_INPUT: Final = "Current function [A]"
_AMBIENT_INPUT: Final = "Ambient temperature [K]"
_MODELS: Final[Mapping[str, Any]] = MappingProxyType(
    {
        "SPM": pybamm.lithium_ion.SPM,
        "SPMe": pybamm.lithium_ion.SPMe,
        "DFN": pybamm.lithium_ion.DFN,
    }
)
_THERMAL: Final = ("lumped", "isothermal")
_EMPTY_PBAR: Final = np.empty((0, 0))

# Relative change of an electrode or lithium-inventory capacity that triggers a new
# electrode state-of-health solve (a few ms); below it the SoC window is reused.
_ESOH_REFRESH_REL: Final = 1e-4
# Surface stoichiometry may overshoot [0, 1] by solver tolerance before we call it broken.
_STOICHIOMETRY_SLACK: Final = 1e-6
_MAX_ITERATIONS: Final = 12
_POWER_RTOL: Final = 1e-5
_POWER_ATOL_W: Final = 1e-4
_VOLTAGE_TOL_V: Final = 1e-5
# Voltage events ignore overshoots below solver/iteration noise (a CV hold on the limit).
_VOLTAGE_EVENT_SLACK_V: Final = 1e-4

# Rows of the per-step output vector (see _Engine._output_function): PyBaMM variable
# and how a distributed one is reduced to a number; r0 (-dV/dI) is appended last.
_OUTPUTS: Final[tuple[tuple[str, Literal["min", "max"] | None], ...]] = (
    ("Voltage [V]", None),
    ("Volume-averaged cell temperature [K]", None),
    ("Loss of lithium inventory [%]", None),
    ("Loss of active material in negative electrode [%]", None),
    ("Loss of active material in positive electrode [%]", None),
    ("Loss of capacity to negative lithium plating [A.h]", None),
    ("Negative electrode capacity [A.h]", None),
    ("Positive electrode capacity [A.h]", None),
    ("Total lithium capacity in particles [A.h]", None),
    ("Average negative particle stoichiometry", None),
    ("Negative particle surface stoichiometry", "min"),
    ("Negative particle surface stoichiometry", "max"),
    ("Positive particle surface stoichiometry", "min"),
    ("Positive particle surface stoichiometry", "max"),
    ("Electrolyte concentration [mol.m-3]", "min"),
)
_V, _T, _LLI, _LAM_N, _LAM_P, _PLATED, _Q_N, _Q_P, _Q_LI, _X_AVG = range(10)
_XN_MIN, _XN_MAX, _XP_MIN, _XP_MAX, _CE_MIN, _R0 = range(10, 16)
_N_OUTPUTS: Final = len(_OUTPUTS) + 1


def _allowed_options(name: str) -> tuple[str, ...]:
    options = pybamm.BatteryModelOptions({}).possible_options[name]
    return tuple(o for o in options if o != "none")


class PybammStepError(TwinInputError):
    """PyBaMM could not hold the requested input from the twin's present state.

    The twin keeps its last good state, so the caller may retry with a smaller load.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class PybammTwinConfig:
    """What to build: PyBaMM model, parameter set, options and initial state.

    Attributes:
        parameter_set: Name of a PyBaMM bundled parameter set, e.g. ``"Chen2020"``,
            ``"OKane2022"`` (both the LG M50 NMC811/graphite cell; OKane2022 carries
            lithium-plating parameters) or ``"Prada2013"`` (LFP, no thermal parameters:
            use ``thermal="isothermal"``).
        model: ``"SPMe"`` (default), ``"SPM"`` or ``"DFN"``.
        thermal: ``"lumped"`` (one cell temperature with heat exchange to ambient) or
            ``"isothermal"`` (cell temperature = ambient).
        sei: ``None`` or a PyBaMM ``"SEI"`` option, e.g. ``"solvent-diffusion limited"``.
        lithium_plating: ``None``, ``"irreversible"`` or ``"partially reversible"``
            (any PyBaMM ``"lithium plating"`` option).
        initial_soc: Initial state of charge, 0..1, set with PyBaMM's electrode
            state-of-health solve between the set's voltage limits.
        n_cells: Number of identical cells stepped together.
        initial_temperature_c: Initial cell temperature.
        ambient_temperature_c: Ambient used to report the initial state on ``reset()``
            (each step takes its own ``ambient_c``).
        min_temperature_c: Cell temperature below which an event is reported.
        max_temperature_c: Cell temperature above which an event is reported.
        parameter_overrides: Values added to or replacing entries of the parameter set
            (names as in PyBaMM, e.g. ``"Total heat transfer coefficient [W.m-2.K-1]"``);
            this is how a set gets parameters an option needs but the set lacks.
        rtol: Relative tolerance of the IDAKLU solver.
        atol: Absolute tolerance of the IDAKLU solver (states are scaled to order one).
        compile_model: Compile the model's CasADi functions to C with gcc (PyBaMM's
            AOT compile): about 3x faster steps for OKane2022, at a one-off compile of
            about a minute per configuration, cached on disk (``$PYBAMM_CASADI_AOT_CACHE``,
            default ``$TMPDIR/pybamm_casadi_aot``). No gain for Chen2020, whose Jacobian
            is cheap. Without a compiler PyBaMM logs a warning and runs uncompiled.
    """

    parameter_set: str = "Chen2020"
    model: ModelName = "SPMe"
    thermal: ThermalOption = "lumped"
    sei: str | None = None
    lithium_plating: str | None = None
    initial_soc: float = 1.0
    n_cells: int = 1
    initial_temperature_c: float = 25.0
    ambient_temperature_c: float = 25.0
    min_temperature_c: float = -20.0
    max_temperature_c: float = 60.0
    parameter_overrides: Mapping[str, object] = field(default_factory=dict)
    rtol: float = 1e-6
    atol: float = 1e-8
    compile_model: bool = False

    def __post_init__(self) -> None:
        source = "PybammTwinConfig"
        sets = sorted(pybamm.parameter_sets)
        if self.parameter_set not in sets:
            raise ParameterSetError(
                f"parameter_set {self.parameter_set!r} is not a PyBaMM bundled set "
                f"({source}); allowed: {', '.join(sets)}"
            )
        _check_choice("model", self.model, tuple(_MODELS), source=source)
        _check_choice("thermal", self.thermal, _THERMAL, source=source)
        if self.sei is not None:
            _check_choice("sei", self.sei, _allowed_options("SEI"), source=source)
        if self.lithium_plating is not None:
            _check_choice(
                "lithium_plating",
                self.lithium_plating,
                _allowed_options("lithium plating"),
                source=source,
            )
        soc = float(self.initial_soc)
        if not 0.0 <= soc <= 1.0:
            raise TwinInputError(
                f"initial_soc must be in 0..1, got {self.initial_soc!r} ({source})"
            )
        if isinstance(self.n_cells, bool) or int(self.n_cells) != self.n_cells or self.n_cells < 1:
            raise TwinInputError(
                f"n_cells must be an integer >= 1, got {self.n_cells!r} ({source})"
            )
        for name in (
            "initial_temperature_c",
            "ambient_temperature_c",
            "min_temperature_c",
            "max_temperature_c",
        ):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value <= -_KELVIN:
                raise TwinInputError(
                    f"{name} must be a finite temperature above -273.15 degC, "
                    f"got {getattr(self, name)!r} ({source})"
                )
        if self.min_temperature_c >= self.max_temperature_c:
            raise TwinInputError(
                f"min_temperature_c ({self.min_temperature_c!r}) must be below "
                f"max_temperature_c ({self.max_temperature_c!r}) ({source})"
            )
        for name in ("rtol", "atol"):
            value = float(getattr(self, name))
            if not math.isfinite(value) or value <= 0.0:
                raise TwinInputError(f"{name} must be > 0, got {getattr(self, name)!r} ({source})")
        object.__setattr__(
            self, "parameter_overrides", MappingProxyType(dict(self.parameter_overrides))
        )

    @property
    def options(self) -> dict[str, str]:
        """The PyBaMM model options this configuration selects."""
        return {
            "thermal": self.thermal,
            "SEI": self.sei or "none",
            "lithium plating": self.lithium_plating or "none",
        }


def _check_choice(name: str, value: object, allowed: tuple[str, ...], *, source: str) -> None:
    if value not in allowed:
        raise TwinInputError(
            f"{name} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r} ({source})"
        )


class _Engine:
    """The PyBaMM/CasADi objects: one discretised model and one IDAKLU solver group.

    Relies on ``pybamm.IDAKLUSolver`` internals of PyBaMM 26 (``solver._setup["solver"]``,
    the C++ solver group): calling it directly skips building a ``pybamm.Solution`` per
    step, which is most of the per-step Python overhead of ``solver.step``.
    """

    def __init__(self, config: PybammTwinConfig) -> None:
        self.config = config
        try:
            model = _MODELS[config.model](config.options)
        except pybamm.OptionError as err:
            raise TwinInputError(
                f"PyBaMM rejects the options of {_describe(config)}: {err} (PybammTwinConfig)"
            ) from err
        # Voltage cut-offs are reported as events, never enforced: drop PyBaMM's
        # terminating events so a step always runs its full length.
        model.events = []
        values = self._parameter_values(model)
        self.nominal_capacity_ah = float(values["Nominal cell capacity [A.h]"])
        self.upper_voltage_v = float(values["Upper voltage cut-off [V]"])
        self.lower_voltage_v = float(values["Lower voltage cut-off [V]"])
        self.esoh = pybamm.lithium_ion.ElectrodeSOHSolver(
            values.copy(),
            param=pybamm.LithiumIonParameters(model.options),
            options=model.options,
        )
        values.update(
            {
                _CURRENT_INPUT: pybamm.InputParameter(_CURRENT_INPUT),
                _AMBIENT_INPUT: pybamm.InputParameter(_AMBIENT_INPUT),
            }
        )
        solver_options = {"compile": True} if config.compile_model else None
        self.solver = pybamm.IDAKLUSolver(
            rtol=config.rtol, atol=config.atol, options=solver_options
        )
        simulation = pybamm.Simulation(model, parameter_values=values, solver=self.solver)
        try:
            simulation.build()
        except KeyError as err:
            raise ParameterSetError(
                f"parameter set {config.parameter_set!r} lacks a parameter needed by "
                f"{_describe(config)}: {err}; supply it in parameter_overrides"
            ) from err
        except ZeroDivisionError as err:
            raise ParameterSetError(
                f"a function of parameter set {config.parameter_set!r} divides by zero for "
                f"{_describe(config)}: an ageing function probably needs another option, e.g. "
                "OKane2022's dead-lithium decay rate (lithium_plating='partially reversible') "
                "divides by the SEI thickness, so set sei as well (PybammTwinConfig)"
            ) from err
        self.model = simulation.built_model
        self.n_states = int(self.model.len_rhs_and_alg)
        # The solver group stacks inputs in sorted-name order (BaseSolver._set_up_model_inputs).
        self.input_names = sorted(ip.name for ip in self.model.input_parameters)
        self.current_column = self.input_names.index(_CURRENT_INPUT)
        self._i_ambient = (
            self.input_names.index(_AMBIENT_INPUT) if _AMBIENT_INPUT in self.input_names else None
        )
        nominal = {_CURRENT_INPUT: 0.0, _AMBIENT_INPUT: config.ambient_temperature_c + _KELVIN}
        self.solver.set_up(self.model, {name: nominal[name] for name in self.input_names})
        self._group = self.solver._setup["solver"]
        self._outputs = self._output_function()
        self._mapped: dict[int, Any] = {1: self._outputs}
        self._voltage = casadi.Function(
            "voltage",
            self._outputs.mx_in(),
            [self._outputs(*self._outputs.mx_in())[_V]],
        )
        self._mapped_voltage: dict[int, Any] = {1: self._voltage}
        self.y0 = np.asarray(self.model.y0_list[0], dtype=np.float64).ravel()

    def _parameter_values(self, model: Any) -> Any:
        config = self.config
        values = pybamm.ParameterValues(config.parameter_set)
        needed = {p.name for p in model.parameters if not isinstance(p, pybamm.InputParameter)}
        unknown = sorted(set(config.parameter_overrides) - needed - set(values.keys()))
        if unknown:
            raise ParameterSetError(
                f"parameter_overrides name(s) {unknown} are neither in parameter set "
                f"{config.parameter_set!r} nor used by {_describe(config)} (PybammTwinConfig)"
            )
        values.update(dict(config.parameter_overrides), check_already_exists=False)
        missing = sorted(n for n in needed if n not in values)
        if missing:
            listed = ", ".join(repr(m) for m in missing[:20])
            if len(missing) > 20:
                listed += f" and {len(missing) - 20} more"
            raise ParameterSetError(
                f"parameter set {config.parameter_set!r} lacks {len(missing)} parameter(s) "
                f"needed by {_describe(config)}: {listed}. "
                "Choose another set or option (e.g. 'OKane2022' has lithium-plating "
                "parameters, thermal='isothermal' needs no thermal ones) or supply them "
                "in parameter_overrides (PybammTwinConfig)"
            )
        values.update({"Initial temperature [K]": config.initial_temperature_c + _KELVIN})
        try:
            values.set_initial_state(config.initial_soc, options=model.options)
        except (ValueError, pybamm.SolverError) as err:
            raise ParameterSetError(
                f"cannot set initial_soc={config.initial_soc!r} for parameter set "
                f"{config.parameter_set!r}: {err} (PybammTwinConfig)"
            ) from err
        return values

    def _output_function(self) -> Any:
        """CasADi function (t, y, p) -> outputs, with r0 = -dV/dI appended."""
        t = casadi.MX.sym("t")
        y = casadi.MX.sym("y", self.n_states)
        p = {name: casadi.MX.sym(name) for name in self.input_names}
        rows = []
        for name, reduction in _OUTPUTS:
            expr = self.model.get_processed_variable(name).to_casadi(t, y, inputs=p)
            if reduction == "min":
                expr = casadi.mmin(expr)
            elif reduction == "max":
                expr = casadi.mmax(expr)
            rows.append(expr)
        voltage = rows[_V]
        current = p[_CURRENT_INPUT]
        dv_di = casadi.jacobian(voltage, current)
        n_rhs = int(self.model.len_rhs)
        if self.model.len_alg > 0:
            # Algebraic states (potentials in the DFN) follow a current step at once:
            # implicit function theorem, dV/dI = dV/dI|y - dV/dy_a (dg/dy_a)^-1 dg/dI.
            g = self.model.concatenated_algebraic.to_casadi(t, y, inputs=p)
            dg_dya = casadi.jacobian(g, y)[:, n_rhs:]
            dg_di = casadi.jacobian(g, current)
            dv_dya = casadi.jacobian(voltage, y)[:, n_rhs:]
            dv_di = dv_di - casadi.mtimes(dv_dya, casadi.solve(dg_dya, dg_di))
        rows.append(-dv_di)
        stacked = casadi.vertcat(*[p[name] for name in self.input_names])
        return casadi.Function("twin_outputs", [t, y, stacked], [casadi.vertcat(*rows)])

    def inputs(self, current_a: FloatArray, ambient_c: FloatArray) -> FloatArray:
        """Stack per-cell inputs as the solver group expects, shape ``(m, n_inputs)``."""
        params = np.empty((current_a.shape[0], len(self.input_names)))
        params[:, self.current_column] = current_a
        if self._i_ambient is not None:
            params[:, self._i_ambient] = ambient_c + _KELVIN
        return params

    def integrate(
        self, y0: FloatArray, params: FloatArray, *, dt_s: float, t_interp: FloatArray
    ) -> tuple[NDArray[np.float64], list[str | None]]:
        """Integrate each row of ``y0`` over ``[0, dt_s]`` with its own inputs.

        Returns:
            States at ``[0, *t_interp]``, shape ``(m, 1 + len(t_interp), n_states)``, and
            per row ``None`` or the solver's failure message.
        """
        m = y0.shape[0]
        n_points = 1 + t_interp.shape[0]
        out = np.full((m, n_points, self.n_states), np.nan)
        failures: list[str | None] = [None] * m
        try:
            solutions = self._group.solve(
                np.array([0.0, dt_s]),
                t_interp,
                y0,
                np.zeros_like(y0),
                params,
                logger=None,
                pbar=_EMPTY_PBAR,
            )
        except ValueError as err:
            return out, [f"IDAKLU error: {err}"] * m
        for row, solution in enumerate(solutions):
            if solution.flag < 0:
                failures[row] = pybamm.solvers.idaklu_solver.idaklu.sundials_error_message(
                    solution.flag
                )
                continue
            ys = np.asarray(solution.y)
            if ys.size != n_points * self.n_states:
                failures[row] = "the solver stopped before the end of the step"
                continue
            out[row] = ys.reshape(n_points, self.n_states)
        return out, failures

    def outputs(self, y: FloatArray, params: FloatArray) -> FloatArray:
        """Output vector per row, shape ``(m, n_outputs)``."""
        m = y.shape[0]
        fn = self._mapped.get(m)
        if fn is None:
            fn = self._mapped[m] = self._outputs.map(m)
        return np.asarray(fn(0.0, y.T, params.T), dtype=np.float64).T.reshape(m, -1)

    def voltage(self, y: FloatArray, params: FloatArray) -> FloatArray:
        """Terminal voltage per row of ``y``, shape ``(m,)``."""
        m = y.shape[0]
        fn = self._mapped_voltage.get(m)
        if fn is None:
            fn = self._mapped_voltage[m] = self._voltage.map(m)
        return np.asarray(fn(0.0, y.T, params.T), dtype=np.float64).reshape(m)

    def window(self, *, q_n_ah: float, q_p_ah: float, q_li_ah: float) -> tuple[float, float, float]:
        """Electrode state of health for the present capacities: ``(x_0, x_100, Q [A.h])``."""
        result = self.esoh.solve({"Q_n": q_n_ah, "Q_p": q_p_ah, "Q_Li": q_li_ah})
        return (
            float(np.ravel(result["x_0"])[0]),
            float(np.ravel(result["x_100"])[0]),
            float(np.ravel(result["Q"])[0]),
        )


def _describe(config: PybammTwinConfig) -> str:
    return (
        f"model={config.model!r} thermal={config.thermal!r} sei={config.sei!r} "
        f"lithium_plating={config.lithium_plating!r}"
    )


class PybammTwin:
    """A cell twin backed by a PyBaMM electrochemical model (SPM, SPMe or DFN).

    The model is parameterised and discretised once, with the applied current and the
    ambient temperature as ``pybamm.InputParameter``; each step restarts PyBaMM's IDAKLU
    solver from the stored state vector with a constant current for ``dt_s``. Only the
    last state (one vector per cell) is kept, never a solution history, so memory is
    bounded over months of steps.

    ``n_cells > 1`` solves the cells as independent rows of one IDAKLU call (a loop in
    C++, not vectorised physics): cost grows linearly with the number of cells. PyBaMM
    is here for fidelity; use the ECM twin for scale.

    Truth quantities:

    * ``soc``: lithium in the negative particles placed in the present usable window,
      ``(x_avg - x_0) / (x_100 - x_0)``, where ``x_avg`` is PyBaMM's "Average negative
      particle stoichiometry" and ``x_0``/``x_100`` come from PyBaMM's electrode
      state-of-health (eSOH) solve, the one that sets ``initial_soc``, between the set's
      0 % and 100 % SoC open-circuit voltages, for the present electrode capacities and
      lithium inventory. So SoC is the charge a slow discharge would still deliver once
      the particles relax, over ``capacity_ah``; lithium consumed by side reactions
      (SEI, plating) leaves it, as it is no longer cyclable.
    * ``capacity_ah``: that window's capacity ``Q``, re-solved whenever an electrode or
      the lithium inventory changes by more than 0.01 %.
    * ``r0_ohm``: instantaneous resistance ``-dV/dI`` at the present state and current,
      with diffusion and thermal states frozen (CasADi derivative of PyBaMM's terminal
      voltage; algebraic states follow via the implicit function theorem). It contains
      the ohmic drops (electrolyte, electrodes, contact, SEI film) and the linearised
      charge-transfer resistance, which PyBaMM (without double layer) applies at once.
    * ``lli_pct``, ``lam_negative_pct``, ``lam_positive_pct``: PyBaMM's "Loss of lithium
      inventory [%]" and "Loss of active material in negative/positive electrode [%]".
    * ``plated_lithium_ah``: "Loss of capacity to negative lithium plating [A.h]" (zero
      without a plating option).

    Events (reported, never clipped) flag steps that end above the set's "Upper voltage
    cut-off [V]", below its "Lower voltage cut-off [V]", or outside the configured cell
    temperature limits, once per step while the limit is exceeded.

    Args:
        config: What to build; defaults to ``PybammTwinConfig()``.

    Raises:
        ParameterSetError: If the parameter set lacks parameters the options need, or
            PyBaMM cannot set the initial state.
        TwinInputError: If PyBaMM rejects the option combination.
    """

    def __init__(self, config: PybammTwinConfig | None = None) -> None:
        self._config = config or PybammTwinConfig()
        self._engine = _Engine(self._config)
        n = self._config.n_cells
        self._t_end = np.empty(1)
        self._cells = np.arange(n)
        self._y = np.tile(self._engine.y0, (n, 1))
        self._time_s = 0.0
        self._windows = np.zeros((n, 6))
        self._last: CellStep
        self._limits = LimitMonitor()
        self._initial = self._report_initial()

    @property
    def config(self) -> PybammTwinConfig:
        """The configuration this twin was built from."""
        return self._config

    @property
    def n_cells(self) -> int:
        """Number of cells stepped together."""
        return self._config.n_cells

    @property
    def time_s(self) -> float:
        """Simulated time since the initial state."""
        return self._time_s

    @property
    def nominal_capacity_ah(self) -> float:
        """The parameter set's nominal capacity (what 1C means for this cell)."""
        return self._engine.nominal_capacity_ah

    @property
    def voltage_limits_v(self) -> tuple[float, float]:
        """The parameter set's (lower, upper) voltage cut-offs used for events."""
        return self._engine.lower_voltage_v, self._engine.upper_voltage_v

    @property
    def last_step(self) -> CellStep:
        """The most recent step (or the initial report after ``reset()``)."""
        return self._last

    def reset(self) -> CellStep:
        """Return to the initial state and report it."""
        self._y = self._initial_y.copy()
        self._time_s = 0.0
        self._windows = self._initial_windows.copy()
        self._last = self._initial
        self._limits.reset()
        return self._initial

    def _report_initial(self) -> CellStep:
        n = self.n_cells
        current = np.zeros(n)
        ambient = np.full(n, self._config.ambient_temperature_c)
        if self._engine.model.len_alg > 0:
            # Make the algebraic initial guesses consistent (IDA's initial-condition
            # solve) so the first report shows the model's real voltage.
            params = self._engine.inputs(current, ambient)
            ys, failures = self._engine.integrate(
                self._y, params, dt_s=1e-6, t_interp=np.array([1e-6])
            )
            if any(failures):
                raise ParameterSetError(
                    f"PyBaMM found no consistent initial state for {_describe(self._config)} "
                    f"with parameter set {self._config.parameter_set!r}: {failures[0]}"
                )
            self._y = ys[:, 0, :].copy()
        out = self._engine.outputs(self._y, self._engine.inputs(current, ambient))
        try:
            window = self._solve_window(out[0, (_Q_N, _Q_P, _Q_LI)], cell=0)
        except PybammStepError as err:
            raise ParameterSetError(
                f"{err} (parameter set {self._config.parameter_set!r})"
            ) from err
        self._windows = np.tile(window, (n, 1))
        self._initial_y = self._y.copy()
        self._initial_windows = self._windows.copy()
        self._last = self._make_step(current, out)
        return self._last

    # -- stepping -------------------------------------------------------------------

    def step(self, *, current_a: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep:
        """Hold ``current_a`` (A, positive = discharge) for ``dt_s`` seconds.

        Args:
            current_a: Per-cell current, or one value for all cells.
            dt_s: Step length.
            ambient_c: Per-cell ambient temperature, or one value for all cells.

        Raises:
            TwinInputError: On NaN/inf inputs or ``dt_s <= 0``.
            PybammStepError: If PyBaMM cannot hold the current (e.g. the voltage
                collapses); the twin keeps its last good state.
        """
        source = "PybammTwin.step"
        dt = check_dt(dt_s, source=source)
        current = as_cell_array(current_a, n_cells=self.n_cells, name="current_a", source=source)
        ambient = self._ambient(ambient_c, source=source)
        self._t_end[0] = dt
        params = self._engine.inputs(current, ambient)
        ys, failures = self._engine.integrate(self._y, params, dt_s=dt, t_interp=self._t_end)
        y_end = ys[:, -1, :]
        out = self._checked_outputs(self._cells, y_end, params, failures, dt=dt, what="")
        return self._commit(y_end, out, current, dt)

    def step_power(self, *, power_w: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep:
        """Hold a per-cell power (W, positive = discharge) for ``dt_s`` seconds.

        The twin applies the constant current whose mean power over the step equals
        ``power_w``; the mean is taken by Simpson's rule on the terminal voltage at the
        start (just after the current changes), middle and end of the step, so the
        energy moved matches ``power_w * dt_s``. The current is found by re-stepping
        from the saved state: a fixed-point update ``I = P / V_mean``, then secant
        iterations, to 1e-5 relative (or 0.1 mW); typically 3 solves per step.

        Raises:
            TwinInputError: On NaN/inf inputs or ``dt_s <= 0``.
            PybammStepError: If no current delivers the power (beyond the cell's maximum
                power, or the solver fails); the twin keeps its last good state.
        """
        source = "PybammTwin.step_power"
        dt = check_dt(dt_s, source=source)
        power = as_cell_array(power_w, n_cells=self.n_cells, name="power_w", source=source)
        ambient = self._ambient(ambient_c, source=source)
        engine = self._engine
        t_interp = np.array([0.5 * dt, dt])

        def evaluate(cells: NDArray[np.intp], current: FloatArray) -> _Trial:
            params = engine.inputs(current, ambient[cells])
            ys, failures = engine.integrate(self._y[cells], params, dt_s=dt, t_interp=t_interp)
            y_end = ys[:, -1, :]
            out = self._checked_outputs(
                cells,
                y_end,
                params,
                failures,
                dt=dt,
                what=f" while solving for power_w={_fmt(power[cells])} W",
            )
            v_start = engine.voltage(ys[:, 0, :], params)
            v_mid = engine.voltage(ys[:, 1, :], params)
            v_mean = (v_start + 4.0 * v_mid + out[:, _V]) / 6.0
            return _Trial(
                residual=current * v_mean - power[cells],
                y_end=y_end,
                out=out,
                newton=power[cells] / v_mean,
            )

        return self._hold(
            guess=power / self._last.voltage_v,
            evaluate=evaluate,
            tolerance=np.maximum(_POWER_RTOL * np.abs(power), _POWER_ATOL_W),
            dt=dt,
            target=lambda cell: f"power_w={power[cell]:.6g} W",
        )

    def step_voltage(self, *, voltage_v: ArrayLike, dt_s: float, ambient_c: ArrayLike) -> CellStep:
        """Hold the terminal voltage at ``voltage_v`` for ``dt_s`` seconds (CV step).

        The twin applies the constant current whose end-of-step terminal voltage equals
        ``voltage_v`` (to 10 uV), found by re-stepping from the saved state: first the
        previous step's current, then a Newton update with ``r0_ohm``, then secant
        iterations. Within the step the voltage drifts slightly as a real CV current
        would decay; at every step end it is on target, so a CCCV charge samples as a
        flat voltage with a tapering current.

        Args:
            voltage_v: Per-cell target voltage, or one value for all cells.
            dt_s: Step length.
            ambient_c: Per-cell ambient temperature, or one value for all cells.

        Raises:
            TwinInputError: On NaN/inf/non-positive inputs or ``dt_s <= 0``.
            PybammStepError: If no current holds the voltage or the solver fails; the
                twin keeps its last good state.
        """
        source = "PybammTwin.step_voltage"
        dt = check_dt(dt_s, source=source)
        target = as_cell_array(voltage_v, n_cells=self.n_cells, name="voltage_v", source=source)
        if (target <= 0.0).any():
            i = int(np.flatnonzero(target <= 0.0)[0])
            raise TwinInputError(
                f"voltage_v must be > 0, got {target[i]!r} for cell {i} ({source})"
            )
        ambient = self._ambient(ambient_c, source=source)
        engine = self._engine
        t_interp = np.array([dt])

        def evaluate(cells: NDArray[np.intp], current: FloatArray) -> _Trial:
            params = engine.inputs(current, ambient[cells])
            ys, failures = engine.integrate(self._y[cells], params, dt_s=dt, t_interp=t_interp)
            y_end = ys[:, -1, :]
            out = self._checked_outputs(
                cells,
                y_end,
                params,
                failures,
                dt=dt,
                what=f" while solving for voltage_v={_fmt(target[cells])} V",
            )
            error_v = out[:, _V] - target[cells]
            return _Trial(
                residual=error_v, y_end=y_end, out=out, newton=current + error_v / out[:, _R0]
            )

        return self._hold(
            guess=self._last.current_a.copy(),
            evaluate=evaluate,
            tolerance=np.full(self.n_cells, _VOLTAGE_TOL_V),
            dt=dt,
            target=lambda cell: f"voltage_v={target[cell]:.6g} V",
        )

    # -- internals ------------------------------------------------------------------

    def _ambient(self, ambient_c: ArrayLike, *, source: str) -> FloatArray:
        ambient = as_cell_array(ambient_c, n_cells=self.n_cells, name="ambient_c", source=source)
        cold = ambient <= -_KELVIN
        if cold.any():
            i = int(np.flatnonzero(cold)[0])
            raise TwinInputError(
                f"ambient_c must be above -273.15 degC, got {ambient[i]!r} for cell {i} ({source})"
            )
        return ambient

    def _hold(
        self,
        *,
        guess: FloatArray,
        evaluate: Callable[[NDArray[np.intp], FloatArray], _Trial],
        tolerance: FloatArray,
        dt: float,
        target: Callable[[int], str],
    ) -> CellStep:
        """Find per-cell constant currents that zero ``evaluate``'s residual, then commit."""
        n = self.n_cells
        current = np.asarray(guess, dtype=np.float64).copy()
        y_end = np.empty_like(self._y)
        out = np.empty((n, _N_OUTPUTS))
        done = np.zeros(n, dtype=bool)
        previous_current = np.full(n, np.nan)
        previous_residual = np.full(n, np.nan)
        for _ in range(_MAX_ITERATIONS):
            cells = np.flatnonzero(~done)
            trial = evaluate(cells, current[cells])
            y_end[cells] = trial.y_end
            out[cells] = trial.out
            converged = np.abs(trial.residual) <= tolerance[cells]
            done[cells[converged]] = True
            if done.all():
                return self._commit(y_end, out, current, dt)
            open_ = ~converged
            rest = cells[open_]
            i_now, r_now = current[rest], trial.residual[open_]
            i_old, r_old = previous_current[rest], previous_residual[rest]
            with np.errstate(divide="ignore", invalid="ignore"):
                secant = i_now - r_now * (i_now - i_old) / (r_now - r_old)
            following = np.where(np.isfinite(secant), secant, trial.newton[open_])
            previous_current[rest], previous_residual[rest] = i_now, r_now
            if not np.isfinite(following).all():
                break
            current[rest] = following
        cell = int(np.flatnonzero(~done)[0])
        raise PybammStepError(
            f"PyBaMM found no constant current for {target(cell)} over dt_s={dt:g} s on "
            f"cell {cell} from t={self._time_s:.0f} s (last trial current_a="
            f"{current[cell]:.6g} A; {self._describe_last(cell)}); the request may exceed "
            "what the cell can deliver. The twin keeps its last good state."
        )

    def _checked_outputs(
        self,
        cells: NDArray[np.intp],
        y_end: FloatArray,
        params: FloatArray,
        failures: list[str | None],
        *,
        dt: float,
        what: str,
    ) -> FloatArray:
        """Outputs at the step end; raise if a row failed or left the physical domain."""
        out = self._engine.outputs(y_end, params)
        low, high = -_STOICHIOMETRY_SLACK, 1.0 + _STOICHIOMETRY_SLACK
        bad = (
            ~np.isfinite(out).all(axis=1)
            | (out[:, _XN_MIN] < low)
            | (out[:, _XN_MAX] > high)
            | (out[:, _XP_MIN] < low)
            | (out[:, _XP_MAX] > high)
            | (out[:, _CE_MIN] <= 0.0)
        )
        bad |= np.array([f is not None for f in failures])
        if not bad.any():
            return out
        row = int(np.flatnonzero(bad)[0])
        cell = int(cells[row])
        o = out[row]
        reason = failures[row]
        if reason is None:
            reason = "the state became non-finite"
            for index, electrode in (
                (_XN_MIN, "negative"),
                (_XN_MAX, "negative"),
                (_XP_MIN, "positive"),
                (_XP_MAX, "positive"),
            ):
                if not low <= o[index] <= high:
                    reason = (
                        f"{electrode} particle surface stoichiometry reached {o[index]:.4g}, "
                        "outside 0..1 (the electrode is emptied or filled)"
                    )
                    break
            else:
                if o[_CE_MIN] <= 0.0:
                    reason = f"the electrolyte is depleted (minimum {o[_CE_MIN]:.4g} mol/m3)"
        current = params[row, self._engine.current_column]
        raise PybammStepError(
            f"PyBaMM could not hold current_a={current:.6g} A for dt_s={dt:g} s on cell {cell} "
            f"from t={self._time_s:.0f} s{what} ({self._describe_last(cell)}): {reason}. "
            "The twin keeps its last good state; reduce the load or stop at the voltage cut-off."
        )

    def _describe_last(self, cell: int) -> str:
        last = self._last
        return (
            f"last good state: voltage {last.voltage_v[cell]:.4f} V, "
            f"SoC {last.truth.soc[cell]:.4f}, "
            f"temperature {last.surface_temperature_c[cell]:.2f} degC"
        )

    def _commit(
        self, y_end: FloatArray, out: FloatArray, current: FloatArray, dt: float
    ) -> CellStep:
        windows = self._refreshed_windows(out)
        self._y = np.array(y_end, dtype=np.float64, copy=True)
        self._windows = windows
        self._time_s += dt
        self._last = self._make_step(current, out)
        return self._last

    def _refreshed_windows(self, out: FloatArray) -> FloatArray:
        """Per-cell (Q_n, Q_p, Q_Li, x_0, x_100, Q), re-solved where capacities moved."""
        keys = out[:, (_Q_N, _Q_P, _Q_LI)]
        windows = self._windows
        stale = (np.abs(keys - windows[:, :3]) > _ESOH_REFRESH_REL * np.abs(windows[:, :3])).any(
            axis=1
        )
        if not stale.any():
            return windows
        windows = windows.copy()
        for cell in np.flatnonzero(stale):
            windows[cell] = self._solve_window(keys[cell], cell=int(cell))
        return windows

    def _solve_window(self, key: FloatArray, *, cell: int) -> FloatArray:
        q_n, q_p, q_li = (float(k) for k in key)
        try:
            x_0, x_100, capacity = self._engine.window(q_n_ah=q_n, q_p_ah=q_p, q_li_ah=q_li)
        except (ValueError, pybamm.SolverError) as err:
            raise PybammStepError(
                f"PyBaMM's electrode state-of-health solve failed for cell {cell} at "
                f"t={self._time_s:.0f} s (Q_n={q_n:.4g} A.h, Q_p={q_p:.4g} A.h, "
                f"Q_Li={q_li:.4g} A.h): {err}"
            ) from err
        return np.array([q_n, q_p, q_li, x_0, x_100, capacity])

    def _make_step(self, current: FloatArray, out: FloatArray) -> CellStep:
        windows = self._windows
        x_0, x_100, capacity = windows[:, 3], windows[:, 4], windows[:, 5]
        voltage = out[:, _V].copy()
        temperature = out[:, _T] - _KELVIN
        truth = CellTruth(
            soc=(out[:, _X_AVG] - x_0) / (x_100 - x_0),
            capacity_ah=capacity.copy(),
            r0_ohm=out[:, _R0].copy(),
            lli_pct=out[:, _LLI].copy(),
            lam_negative_pct=out[:, _LAM_N].copy(),
            lam_positive_pct=out[:, _LAM_P].copy(),
            plated_lithium_ah=out[:, _PLATED].copy(),
        )
        return CellStep(
            time_s=self._time_s,
            current_a=np.array(current, dtype=np.float64, copy=True),
            voltage_v=voltage,
            surface_temperature_c=temperature,
            truth=truth,
            events=self._events(voltage, temperature),
        )

    def _events(self, voltage: FloatArray, temperature_c: FloatArray) -> tuple[TwinEvent, ...]:
        lower_v, upper_v = self.voltage_limits_v
        config = self._config
        slack = _VOLTAGE_EVENT_SLACK_V
        return self._limits.check(
            time_s=self._time_s,
            checks=(
                LimitCheck("over_voltage", voltage, upper_v, above=True, slack=slack),
                LimitCheck("under_voltage", voltage, lower_v, above=False, slack=slack),
                LimitCheck("over_temperature", temperature_c, config.max_temperature_c, above=True),
                LimitCheck(
                    "under_temperature", temperature_c, config.min_temperature_c, above=False
                ),
            ),
        )


@dataclass(frozen=True, slots=True)
class _Trial:
    """One trial step of an iteration for a subset of cells."""

    residual: FloatArray
    y_end: FloatArray
    out: FloatArray
    newton: FloatArray
    """A one-point update of the current, used until a secant is available."""


def _fmt(values: FloatArray) -> str:
    if values.shape[0] == 1:
        return f"{values[0]:.6g}"
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"
