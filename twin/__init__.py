"""Battery twins: cell models (ECM, PyBaMM, FMU), packs, sensors and impedance.

Sign convention: positive current discharges (see :mod:`twin.models.base`).
"""
