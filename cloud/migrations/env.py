"""Alembic environment: runs the migrations on the connection the service hands over."""

from __future__ import annotations

from alembic import context

from cloud import models  # noqa: F401  (registers every table on Base.metadata)
from cloud.db import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
