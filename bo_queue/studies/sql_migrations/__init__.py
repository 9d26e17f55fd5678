"""SQLStorage's schema migrations (Alembic): SQLStorage runs them on first use."""
