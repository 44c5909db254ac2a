"""The virtual test bench: test requests, bench runs on twins, results and their storage.

- :class:`~cloud.testbench.service.BenchService`: the request handler, the benches and the
  data collector inside the cloud app (MQTT or in-process).
- :class:`~cloud.testbench.messages.TestRequest`: the request format (REST and MQTT).
- :func:`~cloud.testbench.runner.run_test` with
  :func:`~cloud.testbench.procedures.plan_test`: a test on a twin, pure.
- :func:`~cloud.testbench.collector.store_result`: the collector's one way in.

Topics, formats and the REST API: ``docs/test_bench.md``.
"""

from cloud.testbench.collector import store_result
from cloud.testbench.messages import TestRequest
from cloud.testbench.procedures import plan_test
from cloud.testbench.runner import run_test
from cloud.testbench.service import BenchConfig, BenchService
from cloud.testbench.topics import BenchTopics

__all__ = [
    "BenchConfig",
    "BenchService",
    "BenchTopics",
    "TestRequest",
    "plan_test",
    "run_test",
    "store_result",
]
