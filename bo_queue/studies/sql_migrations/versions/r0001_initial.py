"""The first schema: studies, trials, trial_values, intermediate_values, snapshots.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STUDY_ID = sa.String(128)
UTCDateTime = sa.DateTime(timezone=True)  # SQLStorage reads what SQLite stores as UTC


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", STUDY_ID, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("iteration", sa.Integer, nullable=False),
        sa.Column("completed_trials", sa.Integer, nullable=False),
        sa.Column("failed_trials", sa.Integer, nullable=False),
        sa.Column("running_trials", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("saved_at", UTCDateTime, nullable=False),
    )
    op.create_table(
        "trials",
        sa.Column("study_id", STUDY_ID, sa.ForeignKey("studies.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("trial_index", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("batch", sa.Integer, nullable=False),
        sa.Column("generator", sa.Text, nullable=False),
        sa.Column("task_id", sa.Text),
        sa.Column("worker", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("leased_until", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("error", sa.Text),
    )
    for name, columns in (
        ("trial_values", [
            sa.Column("metric", sa.String(64), primary_key=True),
            sa.Column("mean", sa.Float, nullable=False),
            sa.Column("sem", sa.Float),
        ]),
        ("intermediate_values", [
            sa.Column("metric", sa.String(64), primary_key=True),
            sa.Column("step", sa.BigInteger, primary_key=True, autoincrement=False),
            sa.Column("value", sa.Float, nullable=False),
        ]),
    ):
        op.create_table(
            name,
            sa.Column("study_id", STUDY_ID, primary_key=True),
            sa.Column("trial_index", sa.BigInteger, primary_key=True, autoincrement=False),
            *columns,
            sa.ForeignKeyConstraint(["study_id", "trial_index"],
                                    ["trials.study_id", "trials.trial_index"],
                                    ondelete="CASCADE"),
        )
    op.create_table(
        "snapshots",
        sa.Column("study_id", STUDY_ID, sa.ForeignKey("studies.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("iteration", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("model", sa.LargeBinary, nullable=False),
        sa.Column("saved_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    for name in ("snapshots", "intermediate_values", "trial_values", "trials", "studies"):
        op.drop_table(name)
