"""BMS estimators: pure functions over per-cell arrays (one cell or thousands), no I/O.

Each module holds one estimator; the runtime (``virtual_bms.runtime``) feeds them sensor
readings and commands, the benches score them against the twin's truth.
"""
