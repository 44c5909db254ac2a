"""FMU import/export of twins (built in a later issue)."""
