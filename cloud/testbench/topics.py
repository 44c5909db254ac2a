"""The bench's MQTT topics, and the broker rights the service's user needs on them.

========================================  =========================  ===================
topic                                     payload                    who publishes
========================================  =========================  ===================
``batterytwin/testbench/requests``        a test request             LIMS, REST API
``batterytwin/testbench/results/{uuid}``  status and data messages   the bench
``batterytwin/testbench/errors``          ``rejected`` without uuid  the bench
========================================  =========================  ===================

All with QoS 1, not retained.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, field_validator

from cloud.mqtt.broker import AclRules

__all__ = ["BenchTopics", "bench_acl"]

_ROOT = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class BenchTopics(BaseModel):
    """Topic names under ``root`` (tests give each test its own root)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    root: str = "batterytwin/testbench"

    @field_validator("root")
    @classmethod
    def _plain(cls, value: str) -> str:
        if not _ROOT.match(value):
            raise ValueError(
                f"root must be topic levels of letters, digits, '_', '.', '-', got {value!r}"
            )
        return value

    @property
    def requests(self) -> str:
        return f"{self.root}/requests"

    @property
    def errors(self) -> str:
        return f"{self.root}/errors"

    @property
    def results_filter(self) -> str:
        return f"{self.root}/results/+"

    def results(self, uuid: str) -> str:
        return f"{self.root}/results/{uuid}"

    def uuid_of(self, topic: str) -> str | None:
        """The uuid of a results topic; None for any other topic."""
        prefix = f"{self.root}/results/"
        if topic.startswith(prefix) and "/" not in topic[len(prefix) :]:
            return topic[len(prefix) :]
        return None


def bench_acl(topics: BenchTopics | None = None) -> AclRules:
    """What the bench service (and a LIMS) may do: publish and read every bench topic."""
    topics = topics or BenchTopics()
    every = (topics.requests, topics.results_filter, topics.errors)
    return AclRules(publish=every, subscribe=every)
