"""A small PythonFMU cell with foreign conventions, built into an FMU by the tests.

Not a battery model worth using: it exists to test the importer against an FMU that is
not ours. Its names are not the default mapping's, its current is positive when
*charging*, its temperatures are in kelvin, and it fails on purpose once its time passes
``fail_after_s`` (to test how a failing doStep is reported).
"""

from pythonfmu import Fmi2Causality, Fmi2Slave, Fmi2Variability, Real


class ToyCell(Fmi2Slave):
    author = "batterytwin tests"
    description = "Toy cell: V = 3.0 + 1.2 SoC + R I, charging current positive, kelvin"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.I_batt = 0.0
        self.T_amb = 298.15
        self.V_term = 3.6
        self.SOC = 0.5
        self.T_cell = 298.15
        self.SOC0 = 0.5
        self.Q_Ah = 2.0
        self.R_ohm = 0.05
        self.fail_after_s = 1.0e9
        # No units declared (PythonFMU 0.7 has no unit argument): a foreign FMU whose
        # conventions only its documentation tells.
        for name in ("I_batt", "T_amb"):
            self.register_variable(Real(name, causality=Fmi2Causality.input))
        for name in ("V_term", "SOC", "T_cell"):
            self.register_variable(Real(name, causality=Fmi2Causality.output))
        for name in ("SOC0", "Q_Ah", "R_ohm", "fail_after_s"):
            self.register_variable(
                Real(name, causality=Fmi2Causality.parameter, variability=Fmi2Variability.tunable)
            )

    def exit_initialization_mode(self):
        self.SOC = self.SOC0
        self._outputs()

    def _outputs(self):
        self.V_term = 3.0 + 1.2 * self.SOC + self.R_ohm * self.I_batt
        self.T_cell = self.T_amb + 0.01 * self.I_batt**2

    def do_step(self, current_time, step_size):
        if current_time >= self.fail_after_s:
            self.log("toy cell: failing on purpose past fail_after_s")
            return False
        self.SOC += self.I_batt * step_size / 3600.0 / self.Q_Ah
        self._outputs()
        return True
