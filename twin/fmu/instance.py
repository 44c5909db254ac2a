"""One running FMU instance behind a version-neutral interface (FMI 2.0 or 3.0, CS or ME).

:class:`FmuInstance` hides the differences FMPy exposes (``setReal`` vs ``setFloat64``,
``setupExperiment`` vs ``enterInitializationMode(startTime=)``, co-simulation ``doStep``
vs model exchange integrated with CVode) so :class:`twin.fmu.twin.FmuTwin` deals only with
"set these inputs, advance ``dt_s``, read these outputs". Every failing call becomes an
:class:`~twin.errors.FmuError` that names the model, the call and the FMU's last log line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from twin.errors import FmuError
from twin.fmu import fmpy_adapter
from twin.fmu.describe import FmuDescription, FmuVariable

__all__ = ["FmuInstance"]

_ME_RELATIVE_TOLERANCE = 1e-8


class FmuInstance:
    """One instantiated FMU, initialised and ready to step from time 0.

    Args:
        model_description: FMPy's description of the extracted FMU.
        description: The same, as :class:`FmuDescription`.
        unzipdir: Where the FMU was extracted (shared by all instances).
        interface: ``"CoSimulation"`` or ``"ModelExchange"``.
        start_values: Parameter and start values applied at every (re)initialisation.
    """

    def __init__(
        self,
        *,
        model_description: Any,
        description: FmuDescription,
        unzipdir: Any,
        interface: str,
        start_values: Mapping[str, float],
    ) -> None:
        self._md = model_description
        self.description = description
        self.interface = interface
        self._three = description.fmi_version.startswith("3")
        self._log = fmpy_adapter.FmuLog()
        self._fmu = fmpy_adapter.instantiate(
            unzipdir=unzipdir,
            model_description=model_description,
            interface=interface,
            log=self._log,
        )
        self._start_values = dict(start_values)
        self._solver: Any = None
        self.time_s = 0.0
        self._initialise()

    # ---------------------------------------------------------------- helpers
    def _fail(self, call: str, exc: BaseException) -> FmuError:
        return FmuError(
            f"{self.description.model_name}: {call} failed at t={self.time_s:g} s: {exc} "
            f"(FMU log: {self._log.last()})"
        )

    def _set(self, variable: FmuVariable, value: float) -> None:
        vr = [variable.value_reference]
        f = self._fmu
        kind = variable.type
        if variable.is_real:
            (f.setFloat64 if self._three else f.setReal)(vr, [float(value)])
        elif kind == "Boolean":
            f.setBoolean(vr, [bool(value)])
        elif kind.startswith("Int") or kind.startswith("UInt") or kind == "Enumeration":
            if float(value) != int(value):
                raise FmuError(
                    f"{self.description.model_name}: {variable.name} is an integer; got {value}"
                )
            setter = f.setInt32 if self._three else f.setInteger
            if self._three and kind not in ("Int32", "Enumeration"):
                setter = getattr(f, f"set{kind}")
            setter(vr, [int(value)])
        else:
            raise FmuError(
                f"{self.description.model_name}: {variable.name} has type {kind}; only numbers "
                "can be set"
            )

    def set_values(self, values: Mapping[str, float]) -> None:
        """Set variables by name (inputs each step; parameters before initialisation)."""
        for name, value in values.items():
            self._set(self.description.variable(name), value)

    def set_reals(self, value_references: Sequence[int], values: Sequence[float]) -> None:
        """Set float variables by value reference (the per-step fast path)."""
        try:
            f = self._fmu
            (f.setFloat64 if self._three else f.setReal)(list(value_references), list(values))
        except Exception as exc:
            raise self._fail("setting inputs", exc) from exc

    def get_reals(self, value_references: Sequence[int]) -> list[float]:
        """Read float variables by value reference."""
        try:
            f = self._fmu
            return list((f.getFloat64 if self._three else f.getReal)(list(value_references)))
        except Exception as exc:
            raise self._fail("reading outputs", exc) from exc

    # ----------------------------------------------------------- life cycle
    def _initialise(self) -> None:
        f = self._fmu
        try:
            self.set_values(self._start_values)
            if self._three:
                f.enterInitializationMode(startTime=0.0)
            else:
                f.setupExperiment(startTime=0.0)
                f.enterInitializationMode()
            f.exitInitializationMode()
            if self.interface == "ModelExchange":
                self._settle_discrete_states()
                f.enterContinuousTimeMode()
                self._solver = fmpy_adapter.cvode_solver(
                    fmu=f,
                    model_description=self._md,
                    start_time_s=0.0,
                    relative_tolerance=_ME_RELATIVE_TOLERANCE,
                )
        except FmuError:
            raise
        except Exception as exc:
            raise self._fail("initialisation", exc) from exc
        self.time_s = 0.0

    def _settle_discrete_states(self) -> None:
        f = self._fmu
        update = f.updateDiscreteStates if self._three else f.newDiscreteStates
        needed, terminate = True, False
        while needed and not terminate:
            needed, terminate, *_ = update()
        if terminate:
            raise FmuError(f"{self.description.model_name} asked to terminate at an event")

    def reset(self) -> None:
        """Back to time 0 with the start values (``fmiReset``: no re-extraction)."""
        try:
            self._fmu.reset()
        except Exception as exc:
            raise self._fail("reset", exc) from exc
        self._solver = None
        self._initialise()

    def do_step(self, dt_s: float) -> None:
        """Advance ``dt_s`` with the inputs last set (held constant over the step)."""
        if self.interface == "CoSimulation":
            try:
                result = self._fmu.doStep(
                    currentCommunicationPoint=self.time_s, communicationStepSize=dt_s
                )
            except Exception as exc:
                raise self._fail("doStep", exc) from exc
            if self._three and result[1]:
                raise FmuError(
                    f"{self.description.model_name} asked to terminate at t={self.time_s:g} s "
                    f"(FMU log: {self._log.last()})"
                )
        else:
            self._integrate(dt_s)
        self.time_s += dt_s

    def _integrate(self, dt_s: float) -> None:
        f, solver = self._fmu, self._solver
        t, t_end = self.time_s, self.time_s + dt_s
        try:
            # The inputs just changed: restart the integrator at the discontinuity.
            f.setTime(t)
            solver.reset(t)
            while t_end - t > 1e-12 * max(1.0, abs(t_end)):
                state_event, _roots, t = solver.step(t, t_end)
                f.setTime(t)
                step_event, terminate = False, False
                if self._md.modelExchange.needsCompletedIntegratorStep:
                    step_event, terminate = f.completedIntegratorStep()[:2]
                if terminate:
                    raise FmuError(f"{self.description.model_name} asked to terminate")
                if state_event or step_event:
                    f.enterEventMode()
                    self._settle_discrete_states()
                    f.enterContinuousTimeMode()
                    solver.reset(t)
        except FmuError:
            raise
        except Exception as exc:
            raise self._fail("model-exchange integration", exc) from exc

    @property
    def can_roll_back(self) -> bool:
        """The FMU can save and restore its state (needed for power and voltage control)."""
        return self.description.can_get_and_set_state and self.interface == "CoSimulation"

    def save_state(self) -> Any:
        """An opaque handle of the present state (free it with :meth:`free_state`)."""
        try:
            return self._fmu.getFMUState(), self.time_s
        except Exception as exc:
            raise self._fail("getFMUState", exc) from exc

    def restore_state(self, state: Any) -> None:
        handle, time_s = state
        try:
            self._fmu.setFMUState(handle)
        except Exception as exc:
            raise self._fail("setFMUState", exc) from exc
        self.time_s = time_s

    def free_state(self, state: Any) -> None:
        try:
            self._fmu.freeFMUState(state[0])
        except Exception as exc:
            raise self._fail("freeFMUState", exc) from exc

    def close(self) -> None:
        """Terminate and free the instance (idempotent; errors at shutdown are ignored)."""
        f, self._fmu = self._fmu, None
        self._solver = None
        if f is None:
            return
        with contextlib.suppress(Exception):
            f.terminate()
        with contextlib.suppress(Exception):
            f.freeInstance()
