"""MQTT between edge BMSs and the cloud: wire contract, broker, ingest and commands.

The contract (:mod:`cloud.mqtt.contract`) is pure pydantic and is what the virtual BMSs
import; :class:`IngestService` stores what devices send; :func:`publish_command` sends
commands; :class:`EmbeddedBroker` is the in-process broker of the embedded default.
Names are imported on first use, so importing the contract does not load amqtt or
SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud.mqtt.broker import EmbeddedBroker, device_acl, write_mosquitto_files
    from cloud.mqtt.commands import CommandError, publish_command
    from cloud.mqtt.contract import ContractError, Topics
    from cloud.mqtt.ingest import IngestConfig, IngestCounters, IngestError, IngestService

_HOME = {
    "CommandError": "commands",
    "ContractError": "contract",
    "EmbeddedBroker": "broker",
    "IngestConfig": "ingest",
    "IngestCounters": "ingest",
    "IngestError": "ingest",
    "IngestService": "ingest",
    "Topics": "contract",
    "device_acl": "broker",
    "publish_command": "commands",
    "write_mosquitto_files": "broker",
}
__all__ = [
    "CommandError",
    "ContractError",
    "EmbeddedBroker",
    "IngestConfig",
    "IngestCounters",
    "IngestError",
    "IngestService",
    "Topics",
    "device_acl",
    "publish_command",
    "write_mosquitto_files",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
