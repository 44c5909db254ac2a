"""Cloud estimators (D2.3's analytics engine): the heavy ones an edge BMS cannot run.

Each module is a pure estimator over arrays or a spectrum (no database, no HTTP); the
scheduler (:mod:`cloud.estimators.scheduler`) feeds them stored data and stores results.
"""
