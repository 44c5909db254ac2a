"""The virtual test bench: test requests, bench runs on twins, results and their storage.

- :class:`~cloud.testbench.service.BenchService`: the request handler, the benches and the
  data collector inside the cloud app (MQTT or in-process).
- :class:`~cloud.testbench.messages.TestRequest`: the request format (REST and MQTT).
- :func:`~cloud.testbench.runner.run_test` with
  :func:`~cloud.testbench.procedures.plan_test`: a test on a twin, pure.
- :func:`~cloud.testbench.collector.store_result`: the collector's one way in.

Topics, formats and the REST API: ``docs/test_bench.md``. Nothing is imported here, so
``batterytwin`` starts without the cloud's dependencies.
"""
