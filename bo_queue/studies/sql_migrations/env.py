"""Alembic's entry point: SQLStorage hands it the connection to migrate, in a transaction
(config.attributes["connection"])."""

from __future__ import annotations

from alembic import context

context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
