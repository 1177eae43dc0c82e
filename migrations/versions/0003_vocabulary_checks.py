"""CHECK constraints for the status and kind vocabularies

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

RUN_STATUSES = ("pending", "running", "done", "failed")
CHECKS = {  # table -> {column: allowed values}; the values as app/db/models.py has them at this revision
    'model_versions': {'kind': ("generator", "verifier")},
    'rounds': {'status': RUN_STATUSES},
    'evaluations': {'status': RUN_STATUSES},
    'rollouts': {'status': ("active", "done")},
    'executions': {
        'status': ("passed", "failed", "error", "timeout", "memory", "output_limit", "sandbox_error"),
        'suite_kind': ("public", "private"),
    },
    'jobs': {'state': ("queued", "running", "done", "failed", "superseded")},
}


def upgrade() -> None:
    for table, columns in CHECKS.items():
        with op.batch_alter_table(table) as batch:
            for column, values in columns.items():
                listed = ", ".join(f"'{v}'" for v in values)
                batch.create_check_constraint(column, f"{column} IN ({listed})")


def downgrade() -> None:
    for table, columns in CHECKS.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.drop_constraint(op.f(f"ck_{table}_{column}"), type_="check")
