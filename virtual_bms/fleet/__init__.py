"""Thousands of virtual BMSs in one process: ``batterytwin fleet`` and ``benches.fleet``.

- :func:`~virtual_bms.fleet.app.run_fleet` (``app``): provision, run, probe, account, report.
- :class:`~virtual_bms.fleet.runner.FleetRunner` (``runner``): one MQTT connection per BMS,
  store-and-forward, commands answered.
- :class:`~virtual_bms.fleet.population.FleetPopulation` (``population``): every BMS's cells
  in one vectorised twin, and their telemetry.
- ``mqtt_codec`` / ``mqtt_async`` / ``mqtt_blocking``: a lean MQTT 3.1.1 client (asyncio
  protocol for the fleet, blocking sockets for Locust users under gevent).
- ``probe``, ``cloud_client``, ``cpu``, ``report``: what the report measures and shows.

Nothing heavy is imported here.
"""
