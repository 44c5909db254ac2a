"""Each device's own MQTT password, issued by the cloud, and the broker accounts built from them.

A device's password is shown once when it is issued (:func:`issue_device_password`); the
database keeps only its Mosquitto ``$7$`` hash (``Device.mqtt_password_hash``). Both
brokers take their accounts from the database: Mosquitto through the files
:func:`write_broker_files` renders, the embedded broker through
:func:`database_account_source`, read again while it runs.

A device without a hash (registered through the REST API and never given a password)
is left out of the password list: it cannot connect while authentication is on, until
a password is issued for it. Its ACL entry stays, so issuing one is all it takes.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud.models import Device
from cloud.mqtt.broker import (
    INGEST_USER,
    AccountSource,
    AclRules,
    BrokerAccounts,
    device_acl,
    hash_mosquitto_password,
    render_mosquitto_conf,
    write_mosquitto_files,
)
from cloud.mqtt.contract import Channel, ContractError, Topics
from cloud.mqtt.tls import MQTTS_PORT

__all__ = [
    "broker_accounts",
    "database_account_source",
    "issue_device_password",
    "new_device_password",
    "write_broker_files",
]

_PASSWORD_BYTES = 24  # 32 URL-safe characters
_log = logging.getLogger(__name__)


def issue_device_password(session: Session, device: Device) -> str:
    """Give ``device`` a new random MQTT password and return it (the only time it is shown).

    Only the hash is stored; the previous password stops working once the session commits
    (Mosquitto: once its files are written again and it reloads them).
    """
    password, device.mqtt_password_hash = new_device_password()
    session.flush()
    _log.info("issued a new MQTT password for device %r", device.name)
    return password


def new_device_password() -> tuple[str, str]:
    """A new random MQTT password and its Mosquitto ``$7$`` hash (the one to store)."""
    password = secrets.token_urlsafe(_PASSWORD_BYTES)
    return password, hash_mosquitto_password(password)


def broker_accounts(
    session: Session,
    *,
    ingest_user: str = INGEST_USER,
    ingest_password_hash: str,
    topics: Topics | None = None,
    extra_acl: Mapping[str, AclRules] | None = None,
) -> BrokerAccounts:
    """Every device's password hash and the :func:`device_acl` rules, plus the ingest's.

    ``extra_acl`` adds rules to named users (the cloud service's user also runs the test
    bench: :func:`cloud.testbench.topics.bench_acl`).

    Devices without a hash get ACL rules but no password, so they cannot log in. A device
    whose name is not a valid topic level, or is the ingest's user name, is left out (with
    a warning), so that one bad row does not lock every device out.
    """
    topics = topics or Topics()
    rows = session.execute(select(Device.name, Device.mqtt_password_hash).order_by(Device.name))
    hashes: dict[str, str | None] = {}
    for name, hashed in rows:
        try:
            topics.device(name, Channel.telemetry)
        except ContractError as error:
            _log.warning("device left out of the MQTT accounts: %s", error.reason)
            continue
        if name == ingest_user:
            _log.warning("device %r left out of the MQTT accounts: it is the ingest's user", name)
            continue
        hashes[name] = hashed
    acl = device_acl(hashes, ingest_user=ingest_user, topics=topics)
    for user, extra in (extra_acl or {}).items():
        rules = acl.get(user, AclRules())
        acl[user] = AclRules(
            publish=(*rules.publish, *extra.publish),
            subscribe=(*rules.subscribe, *extra.subscribe),
        )
    passwords = {name: hashed for name, hashed in hashes.items() if hashed is not None}
    passwords[ingest_user] = ingest_password_hash
    return BrokerAccounts(passwords=passwords, acl=acl)


def database_account_source(
    sessions: sessionmaker[Session],
    *,
    ingest_user: str = INGEST_USER,
    ingest_password_hash: str,
    topics: Topics | None = None,
    extra_acl: Mapping[str, AclRules] | None = None,
    max_age_s: float = 5.0,
) -> AccountSource:
    """Accounts for :class:`~cloud.mqtt.broker.EmbeddedBroker`, read from the database.

    Each read opens a short-lived session in a worker thread; see
    :class:`~cloud.mqtt.broker.AccountSource` for how long a read is reused.
    """

    def load() -> BrokerAccounts:
        with sessions() as session:
            return broker_accounts(
                session,
                ingest_user=ingest_user,
                ingest_password_hash=ingest_password_hash,
                topics=topics,
                extra_acl=extra_acl,
            )

    return AccountSource(load, max_age_s=max_age_s, retry_s=min(0.5, max_age_s))


@dataclass(frozen=True)
class MosquittoTlsListener:
    """A TLS listener for :func:`write_broker_files`: the broker's certificate and key."""

    certfile: Path
    keyfile: Path
    port: int = MQTTS_PORT
    cafile: Path | None = None  # only to check client certificates

    def conf_options(self) -> dict[str, Any]:
        return {
            "tls_port": self.port,
            "certfile": self.certfile.resolve(),
            "keyfile": self.keyfile.resolve(),
            "cafile": self.cafile.resolve() if self.cafile else None,
        }


def write_broker_files(
    session: Session,
    directory: Path,
    *,
    ingest_user: str = INGEST_USER,
    ingest_password: str,
    topics: Topics | None = None,
    port: int = 1883,
    bind: str = "127.0.0.1",
    tls: MosquittoTlsListener | None = None,
    extra_acl: Mapping[str, AclRules] | None = None,
) -> Path:
    """Write ``passwd``, ``acl`` and ``mosquitto.conf`` for Mosquitto into ``directory``.

    With ``tls`` the conf adds a TLS listener (usually on 8883) next to the plain one.

    Run it again after adding a device or issuing a password, then have Mosquitto reload
    its files (``kill -HUP``; clients already connected stay connected).

    Returns:
        The path of ``mosquitto.conf`` (start Mosquitto with ``mosquitto -c`` on it).
    """
    directory = directory.resolve()  # Mosquitto reads the paths relative to its own cwd
    accounts = broker_accounts(
        session,
        ingest_user=ingest_user,
        ingest_password_hash=hash_mosquitto_password(ingest_password),
        topics=topics,
        extra_acl=extra_acl,
    )
    files = write_mosquitto_files(directory, password_hashes=accounts.passwords, acl=accounts.acl)
    (directory / "persistence").mkdir(exist_ok=True)
    conf = directory / "mosquitto.conf"
    conf.write_text(
        render_mosquitto_conf(
            password_file=files.password_file,
            acl_file=files.acl_file,
            port=port,
            bind=bind,
            persistence_dir=directory / "persistence",
            **(tls.conf_options() if tls else {}),
        )
    )
    return conf
