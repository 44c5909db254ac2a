"""Apply the database migrations (on service start and from the command line)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).parent / "migrations"


def _config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(engine: Engine) -> None:
    """Bring the database at ``engine`` to the newest schema."""
    with engine.begin() as connection:
        cfg = _config(engine)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def autogenerate(engine: Engine, message: str) -> None:
    """Write a new revision from the difference between the models and ``engine``."""
    with engine.begin() as connection:
        cfg = _config(engine)
        cfg.attributes["connection"] = connection
        command.revision(cfg, message=message, autogenerate=True)
