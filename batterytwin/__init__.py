"""The ``batterytwin`` command line."""
