"""Broker side: who may use which topic, as Mosquitto files and as an embedded amqtt broker.

Production runs Mosquitto with the files :func:`write_mosquitto_files` renders (a PBKDF2
password file and an ACL); the embedded default and the tests run :class:`EmbeddedBroker`
(amqtt, in-process), which enforces the same :func:`device_acl` rules through
:class:`DeviceAclPlugin`, from fixed rules or from an :class:`AccountSource` read again
while it runs (the cloud's database, see :mod:`cloud.mqtt.credentials`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from cloud.mqtt.contract import UPLINK_CHANNELS, Channel, Topics

__all__ = [
    "INGEST_USER",
    "AccountSource",
    "AclRules",
    "BrokerAccounts",
    "DeviceAclPlugin",
    "EmbeddedBroker",
    "MosquittoFiles",
    "PasswordAuthPlugin",
    "device_acl",
    "hash_mosquitto_password",
    "render_mosquitto_acl",
    "render_mosquitto_conf",
    "render_mosquitto_password_hashes",
    "render_mosquitto_passwords",
    "topic_matches",
    "verify_mosquitto_password",
    "write_mosquitto_files",
]

INGEST_USER = "batterytwin-ingest"
_PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for $7$ hashes
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AclRules:
    """Topic filters one MQTT user may publish to and subscribe to (receive from)."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()


def device_acl(
    devices: Iterable[str], *, ingest_user: str = INGEST_USER, topics: Topics | None = None
) -> dict[str, AclRules]:
    """The ACL of the registered devices (user name = ``Device.name``) and the ingest.

    A device publishes only to its own telemetry, eis, events, status and acks topics and
    subscribes only to its own commands topic; the ingest reads every device's uplink
    topics and writes every device's commands topic.

    Raises:
        ContractError: If a device name is not a valid topic level.
    """
    topics = topics or Topics()
    acl = {
        name: AclRules(
            publish=tuple(topics.device(name, channel) for channel in UPLINK_CHANNELS),
            subscribe=(topics.device(name, Channel.commands),),
        )
        for name in devices
    }
    if ingest_user in acl:
        raise ValueError(f"a device may not be called {ingest_user!r}: that is the ingest's user")
    acl[ingest_user] = AclRules(
        publish=(topics.subscription(Channel.commands),),
        subscribe=tuple(topics.subscription(channel) for channel in UPLINK_CHANNELS),
    )
    return acl


def topic_matches(allowed: str, requested: str) -> bool:
    """Whether every topic that ``requested`` (a topic or a filter) matches is in ``allowed``."""
    want, have = requested.split("/"), allowed.split("/")
    for i, level in enumerate(have):
        if level == "#":
            return True
        if i >= len(want) or want[i] == "#":
            return False
        if level != "+" and level != want[i]:
            return False
    return len(want) == len(have)


def hash_mosquitto_password(password: str, *, salt: bytes | None = None) -> str:
    """A Mosquitto 2 password-file hash: ``$7$iterations$salt$pbkdf2-sha512`` (base64)."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS, 64)
    encode = base64.b64encode
    return f"$7${_PBKDF2_ITERATIONS}${encode(salt).decode()}${encode(digest).decode()}"


def verify_mosquitto_password(password: str, hashed: str) -> bool:
    """Check ``password`` against a ``$7$`` hash from :func:`hash_mosquitto_password`."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt, expected = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    except ValueError:
        return False
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, len(expected))
    return hmac.compare_digest(digest, expected)


def render_mosquitto_passwords(credentials: Mapping[str, str]) -> str:
    """A Mosquitto ``password_file`` from user name -> plain password."""
    return render_mosquitto_password_hashes(
        {user: hash_mosquitto_password(password) for user, password in credentials.items()}
    )


def render_mosquitto_password_hashes(hashes: Mapping[str, str]) -> str:
    """A Mosquitto ``password_file`` from user name -> stored hash (e.g. ``$7$...``)."""
    for user, hashed in hashes.items():
        if not user or ":" in user or any(ch.isspace() for ch in user):
            raise ValueError(f"user name {user!r} cannot go into a password file (':' or space)")
        if not hashed.startswith("$") or any(ch.isspace() for ch in hashed):
            raise ValueError(f"the password hash of {user!r} is not a Mosquitto hash ('$7$...')")
    return "".join(f"{user}:{hashed}\n" for user, hashed in hashes.items())


def render_mosquitto_acl(acl: Mapping[str, AclRules]) -> str:
    """A Mosquitto ``acl_file``: write for publish filters, read for subscribe filters.

    Mosquitto denies everything not listed, so a device's credentials cannot publish to
    another device's topics (the broker drops such a message; the ingest never sees it).
    """
    blocks = []
    for user, rules in acl.items():
        lines = [f"user {user}"]
        lines += [f"topic write {t}" for t in rules.publish]
        lines += [f"topic read {t}" for t in rules.subscribe]
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def render_mosquitto_conf(
    *,
    password_file: Path,
    acl_file: Path,
    port: int = 1883,
    bind: str = "127.0.0.1",
    tls_port: int = 8883,
    cafile: Path | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    persistence_dir: Path | None = None,
) -> str:
    """A minimal ``mosquitto.conf`` for the cloud: authenticated, ACL, sized for the ingest.

    ``max_inflight_messages`` and ``max_queued_messages`` are raised because the ingest
    acknowledges a message only after storing it and expects the broker to keep what
    arrives while it restarts. With ``persistence_dir`` the broker saves its sessions
    (subscriptions and queued messages) there and restores them when it restarts, so a
    broker restart loses neither the ingest's subscription nor what devices sent meanwhile
    (Mosquitto 2.0.11 does not restore shared ``$share/...`` subscriptions: with
    ``cloud ingest --workers N`` the ingest's guard, a plain subscription, stores what
    devices send between the restart and the workers' new SUBSCRIBE; docs/fleet.md,
    Fault drills); without it (tests) they live in memory only.

    Given ``certfile`` and ``keyfile`` (the broker's certificate and key, PEM), a second
    listener on ``tls_port`` at ``bind`` serves MQTT over TLS with the same users and ACL.
    Clients are not asked for certificates (``require_certificate false``: they log in with
    passwords); ``cafile``, optional, is the CA Mosquitto trusts for client certificates
    that are offered anyway.

    Raises:
        ValueError: If only one of ``certfile`` and ``keyfile`` is given, or ``cafile``
            without them.
    """
    if (certfile is None) != (keyfile is None):
        raise ValueError("a TLS listener needs both certfile and keyfile: give both")
    if cafile is not None and certfile is None:
        raise ValueError("cafile is for the TLS listener: give certfile and keyfile too")
    conf = (
        f"listener {port} {bind}\n"
        "allow_anonymous false\n"
        f"password_file {password_file}\n"
        f"acl_file {acl_file}\n"
        "max_inflight_messages 1000\n"
        "max_queued_messages 100000\n"
        "message_size_limit 1048576\n"
        + (
            f"persistence true\npersistence_location {persistence_dir}/\nautosave_interval 30\n"
            if persistence_dir is not None
            else "persistence false\n"
        )
    )
    if certfile is None:
        return conf
    # listener options (cafile, certfile, ...) belong to the listener line above them
    return (
        f"{conf}\nlistener {tls_port} {bind}\n"
        + (f"cafile {cafile}\n" if cafile is not None else "")
        + f"certfile {certfile}\nkeyfile {keyfile}\nrequire_certificate false\n"
    )


@dataclass(frozen=True, slots=True)
class MosquittoFiles:
    password_file: Path
    acl_file: Path


def write_mosquitto_files(
    directory: Path,
    *,
    credentials: Mapping[str, str] | None = None,
    acl: Mapping[str, AclRules],
    password_hashes: Mapping[str, str] | None = None,
) -> MosquittoFiles:
    """Write ``passwd`` (mode 0600) and ``acl`` into ``directory`` for Mosquitto to load.

    Args:
        credentials: User name -> plain password (hashed here).
        password_hashes: User name -> stored ``$7$`` hash; give this or ``credentials``.
    """
    if (credentials is None) == (password_hashes is None):
        raise ValueError("give either credentials (plain passwords) or password_hashes")
    directory.mkdir(parents=True, exist_ok=True)
    passwords = directory / "passwd"
    passwords.touch(mode=0o600)
    passwords.chmod(0o600)  # also when the file was there already
    passwords.write_text(
        render_mosquitto_passwords(credentials)
        if credentials is not None
        else render_mosquitto_password_hashes(password_hashes or {})
    )
    acl_file = directory / "acl"
    acl_file.write_text(render_mosquitto_acl(acl))
    return MosquittoFiles(password_file=passwords, acl_file=acl_file)


@dataclass(frozen=True, slots=True)
class BrokerAccounts:
    """Who may log in to the broker and which topics each user may use."""

    passwords: Mapping[str, str]
    """User name -> ``$7$`` hash; a user not in here cannot connect."""
    acl: Mapping[str, AclRules]


class AccountSource:
    """Broker accounts from a blocking ``load`` (a database read), cached for amqtt.

    ``load`` runs in a worker thread, so the broker's event loop never waits on the
    database, and its result is reused for ``max_age_s``. While a reload is running, topic
    checks go on with the previous accounts. A login that the cached accounts refuse is
    checked once more against accounts read after it began (at most one read per
    ``retry_s``; the refused client waits for it), so a device registered, or given a new
    password, while the broker runs connects at once. If a read fails, the previous
    accounts stay in use for another ``max_age_s`` (the error is logged).

    Args:
        load: Returns the current accounts; called from a worker thread.
        max_age_s: How long one read is reused.
        retry_s: The shortest time between two reads caused by refused logins.
    """

    def __init__(
        self,
        load: Callable[[], BrokerAccounts],
        *,
        max_age_s: float = 5.0,
        retry_s: float = 0.5,
    ) -> None:
        if not 0 < retry_s <= max_age_s:
            raise ValueError(
                f"need 0 < retry_s <= max_age_s, got retry_s={retry_s}, max_age_s={max_age_s}"
            )
        self._load = load
        self.max_age_s = max_age_s
        self.retry_s = retry_s
        self._accounts: BrokerAccounts | None = None
        self._read_at = 0.0  # time.monotonic() when the last read began
        self._lock = asyncio.Lock()

    def _usable(self, read_after: float | None) -> BrokerAccounts | None:
        if self._accounts is None:
            return None
        if read_after is not None:
            return self._accounts if self._read_at >= read_after else None
        return self._accounts if time.monotonic() - self._read_at < self.max_age_s else None

    async def get(self, *, read_after: float | None = None) -> BrokerAccounts:
        """The accounts, read again when older than ``max_age_s``.

        Args:
            read_after: A ``time.monotonic()`` time, e.g. when a login began: return
                accounts whose read began no earlier (waiting until ``retry_s`` after the
                previous read, so that refused logins cannot flood the database).

        Raises:
            Exception: Whatever ``load`` raised, when there are no previous accounts.
        """
        accounts = self._usable(read_after)
        if accounts is not None:
            return accounts
        if read_after is None and self._accounts is not None and self._lock.locked():
            return self._accounts  # a read is under way: do not queue topic checks behind it
        async with self._lock:
            accounts = self._usable(read_after)
            if accounts is not None:
                return accounts
            if read_after is not None:
                await asyncio.sleep(self._read_at + self.retry_s - time.monotonic())
            started = time.monotonic()
            try:
                self._accounts = await asyncio.to_thread(self._load)
            except Exception:
                if self._accounts is None:
                    raise
                _log.exception("could not read the MQTT accounts; keeping the previous ones")
            self._read_at = started
            return self._accounts


def _password_ok(passwords: Mapping[str, str], session: Session) -> bool:
    hashed = passwords.get(session.username or "")
    return hashed is not None and verify_mosquitto_password(session.password or "", hashed)


class PasswordAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt authentication against ``$7$`` hashes; without hashes everyone may connect.

    The hashes are fixed (``passwords``) or come from an :class:`AccountSource`
    (``accounts``), which is consulted on every connect.

    Unlike amqtt's anonymous plugin it never marks a session anonymous, because amqtt
    drops anonymous sessions on disconnect and the ingest needs its persistent session.
    """

    @dataclass
    class Config:
        passwords: dict[str, str] | None = None  # user -> $7$ hash; None: no authentication
        accounts: AccountSource | None = None  # instead of passwords: read while running

    async def authenticate(self, *, session: Session) -> bool:
        source = self.config.accounts
        if source is not None:
            began = time.monotonic()
            try:
                if _password_ok((await source.get()).passwords, session):
                    return True
                # perhaps registered (or given a new password) since the last read
                accounts = await source.get(read_after=began)
                return _password_ok(accounts.passwords, session)
            except Exception:
                _log.exception("MQTT login of %r refused: no accounts to check", session.username)
                return False
        passwords = self.config.passwords
        if passwords is None:
            return True
        return _password_ok(passwords, session)


class DeviceAclPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt topic check with :class:`AclRules` per user, as the Mosquitto ACL does.

    The rules are fixed (``publish``, ``subscribe``) or come from an
    :class:`AccountSource` (``accounts``), consulted on every check (it caches).
    """

    @dataclass
    class Config:
        publish: dict[str, list[str]] = field(default_factory=dict)
        subscribe: dict[str, list[str]] = field(default_factory=dict)
        accounts: AccountSource | None = None  # instead of publish/subscribe

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        if session is None or topic is None or session.username is None:
            return False
        allowed: Iterable[str]
        source = self.config.accounts
        if source is not None:
            try:
                rules = (await source.get()).acl.get(session.username, AclRules())
            except Exception:
                _log.exception("MQTT topic %r refused to %r: no ACL", topic, session.username)
                return False
            allowed = rules.publish if action == Action.PUBLISH else rules.subscribe
        else:
            table = self.config.publish if action == Action.PUBLISH else self.config.subscribe
            allowed = table.get(session.username, [])
        return any(topic_matches(pattern, topic) for pattern in allowed)


class EmbeddedBroker:
    """An in-process amqtt broker on a free port, for the embedded default and tests.

    Example::

        async with EmbeddedBroker() as broker:
            async with aiomqtt.Client("127.0.0.1", broker.port) as client: ...

    Args:
        host: Address to listen on.
        port: TCP port; 0 picks a free one (read it back from :attr:`port`).
        credentials: User name -> plain password; ``None`` lets everyone connect.
        acl: Rules per user (e.g. :func:`device_acl`); ``None`` allows every topic.
        accounts: Passwords and rules read while the broker runs (instead of
            ``credentials`` and ``acl``): users added later can connect without a restart.
            Without any of the three, the broker is open (anonymous, every topic).

    Raises:
        ValueError: If ``accounts`` is given together with ``credentials`` or ``acl``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: Mapping[str, str] | None = None,
        acl: Mapping[str, AclRules] | None = None,
        accounts: AccountSource | None = None,
    ) -> None:
        if accounts is not None and (credentials is not None or acl is not None):
            raise ValueError(
                "give accounts (read while running) or credentials/acl (fixed), not both"
            )
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._broker: Broker | None = None
        passwords = (
            None
            if credentials is None
            else {user: hash_mosquitto_password(pw) for user, pw in credentials.items()}
        )
        plugins: dict[str, Any] = {
            f"{__name__}.PasswordAuthPlugin": {"passwords": passwords},
        }
        if acl is not None:
            plugins[f"{__name__}.DeviceAclPlugin"] = {
                "publish": {user: list(rules.publish) for user, rules in acl.items()},
                "subscribe": {user: list(rules.subscribe) for user, rules in acl.items()},
            }
        if accounts is not None:
            plugins = {
                f"{__name__}.PasswordAuthPlugin": {"accounts": accounts},
                f"{__name__}.DeviceAclPlugin": {"accounts": accounts},
            }
        self._config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": plugins,
        }

    @property
    def port(self) -> int:
        """The port the broker listens on (only while it runs)."""
        if self._port is None:
            raise RuntimeError("the broker is not running: use 'async with EmbeddedBroker()'")
        return self._port

    async def start(self) -> None:
        """Start listening; :meth:`stop` or leaving the ``async with`` block stops it."""
        if self._broker is not None:
            raise RuntimeError("the broker is already running")
        broker = Broker(self._config)
        await broker.start()
        self._broker = broker
        sockets = broker._servers["default"].instance.sockets  # amqtt keeps its servers private
        self._port = int(sockets[0].getsockname()[1])
        _log.info("embedded MQTT broker on %s:%d", self.host, self._port)

    async def stop(self) -> None:
        """Disconnect every client and stop listening."""
        broker, self._broker, self._port = self._broker, None, None
        if broker is not None:
            await broker.shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
