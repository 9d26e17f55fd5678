"""What studies gained after the first schema: the early-stopped count and warm-start
sources of a study, and when each trial's result came and the metadata it came with.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UTCDateTime = sa.DateTime(timezone=True)


def upgrade() -> None:
    # batch: SQLite alters a table by copying it, which Alembic does for us there
    with op.batch_alter_table("studies") as studies:
        studies.add_column(sa.Column("early_stopped_trials", sa.Integer, nullable=False,
                                     server_default="0"))
        studies.add_column(sa.Column("warm_start_from", sa.JSON, nullable=False,
                                     server_default="[]"))
    with op.batch_alter_table("trials") as trials:
        trials.add_column(sa.Column("reported_at", UTCDateTime))
        trials.add_column(sa.Column("result_metadata", sa.JSON))
    op.execute(  # what 0001's load counted from the trials
        "UPDATE studies SET early_stopped_trials = (SELECT COUNT(*) FROM trials"
        " WHERE trials.study_id = studies.id AND trials.status = 'EARLY_STOPPED')"
    )


def downgrade() -> None:
    with op.batch_alter_table("trials") as trials:
        trials.drop_column("result_metadata")
        trials.drop_column("reported_at")
    with op.batch_alter_table("studies") as studies:
        studies.drop_column("warm_start_from")
        studies.drop_column("early_stopped_trials")
