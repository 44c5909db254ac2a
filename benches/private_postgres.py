"""A PostgreSQL instance of one's own: ``initdb`` in a temporary folder, on a free port.

For the fleet bench (sized for a write-heavy ingest: the machine's shared cluster runs with
PostgreSQL's defaults, 128 MB of shared buffers and a checkpoint every 1 GB of WAL) and for
the fault drills (which stop and start it). Needs PostgreSQL's server binaries (Debian:
``/usr/lib/postgresql/<version>/bin``); as root, ``initdb`` and ``pg_ctl`` run as the
``postgres`` user through ``runuser``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from benches.cloud import free_port

__all__ = [
    "INGEST_SIZING",
    "PostgresUnavailable",
    "PrivatePostgres",
    "postgres_bindir",
    "private_postgres",
]

INGEST_SIZING: Mapping[str, str] = {
    "shared_buffers": "4GB",  # the measurements index's hot pages stay in memory
    "effective_cache_size": "12GB",
    "wal_buffers": "64MB",
    "max_wal_size": "16GB",  # fewer checkpoints: fewer full-page images of index pages
    "checkpoint_timeout": "30min",
    "checkpoint_completion_target": "0.9",
    "wal_compression": "on",
    "log_checkpoints": "on",  # the bench copies the log into its report: what stalled when
    "log_autovacuum_min_duration": "0",
}
"""Settings for a 24 GiB machine that stores thousands of telemetry messages a second.
Durability is untouched: ``fsync`` and ``synchronous_commit`` stay on."""


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries, or no ``postgres`` user to run them as (as root)."""


def postgres_bindir() -> Path | None:
    """The newest PostgreSQL's bin folder (Debian's layout), else wherever initdb is."""
    versions = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]
    if versions:
        return max(versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PrivatePostgres:
    """A PostgreSQL instance in ``folder`` on ``port``, with one database ``dbname``."""

    bindir: Path
    folder: Path
    port: int
    as_postgres: bool  # root must run initdb and pg_ctl as the postgres user
    dbname: str = "bench"
    settings: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.dbname}"

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        command = [str(self.bindir / tool), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if check and done.returncode != 0:
            log = self.folder / "postgres.log"
            raise RuntimeError(
                f"{tool} {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}\n"
                + (log.read_text()[-2000:] if log.exists() else "")
            )

    def init(self) -> None:
        """``initdb``, start, and create the database."""
        import psycopg

        data = str(self.folder / "data")
        self._run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self.start()
        admin = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.dbname}"')

    def start(self) -> None:
        options = [f"-p {self.port}", f"-k {self.folder}", "-c listen_addresses=127.0.0.1"]
        options += [f"-c {key}={value}" for key, value in self.settings.items()]
        data, log = str(self.folder / "data"), str(self.folder / "postgres.log")
        self._run(
            "pg_ctl", "-D", data, "-l", log, "-o", " ".join(options), "-w", "-t", "60", "start"
        )

    def stop(self, *, mode: str = "fast", check: bool = True) -> None:
        data = str(self.folder / "data")
        self._run("pg_ctl", "-D", data, "-m", mode, "-w", "-t", "60", "stop", check=check)


@contextlib.contextmanager
def private_postgres(
    *, dbname: str = "bench", settings: Mapping[str, str] | None = None
) -> Iterator[PrivatePostgres]:
    """A started instance with ``settings`` (``-c key=value``), removed afterwards.

    Raises:
        PostgresUnavailable: Without the server binaries, or as root without a
            ``postgres`` user and ``runuser``.
    """
    bindir = postgres_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        raise PostgresUnavailable("PostgreSQL's initdb and pg_ctl are not installed")
    owner = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("no 'postgres' user to run initdb as") from None
        if shutil.which("runuser") is None:
            raise PostgresUnavailable("runuser is missing (to run initdb as postgres)")
    # not under a private temporary folder of root's: postgres must enter it
    folder = Path(tempfile.mkdtemp(prefix="bt-pg-"))
    if owner is not None:
        os.chown(folder, owner.pw_uid, owner.pw_gid)
    postgres = PrivatePostgres(
        bindir,
        folder,
        free_port(),
        as_postgres=owner is not None,
        dbname=dbname,
        settings=dict(settings or {}),
    )
    try:
        postgres.init()
        yield postgres
    finally:
        postgres.stop(mode="immediate", check=False)
        shutil.rmtree(folder, ignore_errors=True)
