"""Signatures: model-signing bundles per version (several signers), append-only like versions."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002_signatures'
down_revision = '0001_initial'
branch_labels = None
depends_on = None

_GUARDS = (
    ("signature", "UPDATE", "stored signatures are immutable"),
    ("signature", "DELETE", "stored signatures are immutable"),
)


def upgrade() -> None:
    op.create_table('signature',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('signer', sa.String(length=500), nullable=False),
    sa.Column('key_fingerprint', sa.String(length=71), nullable=False),
    sa.Column('public_key', sa.Text(), nullable=False),
    sa.Column('bundle', sa.Text(), nullable=False),
    sa.Column('bundle_sha256', sa.String(length=64), nullable=False),
    sa.Column('signed_by', sa.String(length=200), nullable=False),
    sa.Column('signed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['version.id'], name=op.f('fk_signature_version_id_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_signature')),
    sa.UniqueConstraint('version_id', 'key_fingerprint', name=op.f('uq_signature_version_id_key_fingerprint'))
    )
    with op.batch_alter_table('signature', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_signature_version_id'), ['version_id'], unique=False)
    dialect = op.get_bind().dialect.name
    for table, when, message in _GUARDS:
        name = f"guard_{table}_{when.lower()}"
        if dialect == "sqlite":
            op.execute(f"CREATE TRIGGER {name} BEFORE {when} ON {table} BEGIN SELECT RAISE(ABORT, '{message}'); END")
        elif dialect == "postgresql":
            op.execute(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{message}'; END $$"
            )
            op.execute(f"CREATE TRIGGER {name} BEFORE {when} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    for table, when, _ in _GUARDS:
        name = f"guard_{table}_{when.lower()}"
        if dialect == "sqlite":
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        elif dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    with op.batch_alter_table('signature', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_signature_version_id'))

    op.drop_table('signature')
