"""Initial schema: adapters, versions, files, base models, datasets, eval scores, aliases, hub copies, events."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0001_initial'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('adapter',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('namespace', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adapter')),
    sa.UniqueConstraint('namespace', 'name', name=op.f('uq_adapter_namespace_name'))
    )
    op.create_table('base_model',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('identity_digest', sa.String(length=71), nullable=False),
    sa.Column('name', sa.String(length=1000), nullable=False),
    sa.Column('revision', sa.String(length=200), nullable=True),
    sa.Column('architecture', sa.String(length=200), nullable=True),
    sa.Column('model_type', sa.String(length=100), nullable=True),
    sa.Column('hidden_size', sa.Integer(), nullable=True),
    sa.Column('vocab_size', sa.Integer(), nullable=True),
    sa.Column('num_layers', sa.Integer(), nullable=True),
    sa.Column('num_heads', sa.Integer(), nullable=True),
    sa.Column('is_encoder_decoder', sa.Boolean(), nullable=True),
    sa.Column('config_digest', sa.String(length=71), nullable=True),
    sa.Column('embedding_fingerprint', sa.String(length=71), nullable=True),
    sa.Column('tokenizer_digest', sa.String(length=71), nullable=True),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_base_model')),
    sa.UniqueConstraint('identity_digest', name=op.f('uq_base_model_identity_digest'))
    )
    with op.batch_alter_table('base_model', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_base_model_name'), ['name'], unique=False)

    op.create_table('dataset',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=71), nullable=False),
    sa.Column('name', sa.String(length=1000), nullable=True),
    sa.Column('format', sa.String(length=20), nullable=True),
    sa.Column('records', sa.BigInteger(), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset')),
    sa.UniqueConstraint('digest', name=op.f('uq_dataset_digest'))
    )
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_name'), ['name'], unique=False)

    op.create_table('event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=50), nullable=False),
    sa.Column('subject', sa.String(length=500), nullable=False),
    sa.Column('details_json', sa.Text(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event')),
    sa.UniqueConstraint('hash', name=op.f('uq_event_hash')),
    sa.UniqueConstraint('prev_hash', name=op.f('uq_event_prev_hash'))
    )
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_event_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_event_subject'), ['subject'], unique=False)

    op.create_table('version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('adapter_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=71), nullable=False),
    sa.Column('manifest', sa.Text(), nullable=False),
    sa.Column('peft_type', sa.String(length=32), nullable=False),
    sa.Column('task_type', sa.String(length=32), nullable=True),
    sa.Column('num_virtual_tokens', sa.Integer(), nullable=True),
    sa.Column('token_dim', sa.Integer(), nullable=True),
    sa.Column('num_transformer_submodules', sa.Integer(), nullable=True),
    sa.Column('init_method', sa.String(length=32), nullable=True),
    sa.Column('init_text', sa.Text(), nullable=True),
    sa.Column('tokenizer', sa.String(length=1000), nullable=True),
    sa.Column('template', sa.Text(), nullable=True),
    sa.Column('peft_version', sa.String(length=100), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('tags_json', sa.Text(), nullable=False),
    sa.Column('training_json', sa.Text(), nullable=False),
    sa.Column('peft_config_json', sa.Text(), nullable=False),
    sa.Column('base_model_id', sa.Integer(), nullable=True),
    sa.Column('dataset_id', sa.Integer(), nullable=True),
    sa.Column('parent_digest', sa.String(length=71), nullable=True),
    sa.Column('lineage_verified', sa.Boolean(), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['adapter_id'], ['adapter.id'], name=op.f('fk_version_adapter_id_adapter')),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_model.id'], name=op.f('fk_version_base_model_id_base_model')),
    sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], name=op.f('fk_version_dataset_id_dataset')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_version')),
    sa.UniqueConstraint('adapter_id', 'digest', name=op.f('uq_version_adapter_id_digest')),
    sa.UniqueConstraint('adapter_id', 'number', name=op.f('uq_version_adapter_id_number'))
    )
    with op.batch_alter_table('version', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_version_adapter_id'), ['adapter_id'], unique=False)
        batch_op.create_index('ix_version_base_model_created', ['base_model_id', 'created_at'], unique=False)
        batch_op.create_index('ix_version_created_at', ['created_at'], unique=False)
        batch_op.create_index('ix_version_dataset_created', ['dataset_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_version_digest'), ['digest'], unique=False)
        batch_op.create_index(batch_op.f('ix_version_parent_digest'), ['parent_digest'], unique=False)
        batch_op.create_index(batch_op.f('ix_version_peft_type'), ['peft_type'], unique=False)

    op.create_table('alias',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('adapter_id', sa.Integer(), nullable=False),
    sa.Column('alias', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['adapter_id'], ['adapter.id'], name=op.f('fk_alias_adapter_id_adapter')),
    sa.ForeignKeyConstraint(['version_id'], ['version.id'], name=op.f('fk_alias_version_id_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alias')),
    sa.UniqueConstraint('adapter_id', 'alias', name=op.f('uq_alias_adapter_id_alias'))
    )
    with op.batch_alter_table('alias', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alias_adapter_id'), ['adapter_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_alias_version_id'), ['version_id'], unique=False)

    op.create_table('eval_score',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('metric', sa.String(length=100), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('dataset_digest', sa.String(length=71), nullable=True),
    sa.Column('dataset_name', sa.String(length=1000), nullable=True),
    sa.Column('split', sa.String(length=100), nullable=True),
    sa.Column('recorded_by', sa.String(length=200), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['version.id'], name=op.f('fk_eval_score_version_id_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_eval_score'))
    )
    with op.batch_alter_table('eval_score', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_eval_score_version_id'), ['version_id'], unique=False)

    op.create_table('file',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('path', sa.String(length=1000), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['version.id'], name=op.f('fk_file_version_id_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_file')),
    sa.UniqueConstraint('version_id', 'path', name=op.f('uq_file_version_id_path'))
    )
    with op.batch_alter_table('file', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_file_sha256'), ['sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_file_version_id'), ['version_id'], unique=False)

    op.create_table('hub_copy',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('endpoint', sa.String(length=1000), nullable=False),
    sa.Column('repo_id', sa.String(length=300), nullable=False),
    sa.Column('commit_sha', sa.String(length=64), nullable=False),
    sa.Column('tag', sa.String(length=200), nullable=True),
    sa.Column('pushed_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['version_id'], ['version.id'], name=op.f('fk_hub_copy_version_id_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hub_copy')),
    sa.UniqueConstraint('version_id', 'endpoint', 'repo_id', name=op.f('uq_hub_copy_version_id_endpoint_repo_id'))
    )
    with op.batch_alter_table('hub_copy', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hub_copy_version_id'), ['version_id'], unique=False)
    _create_guards()


# Published versions, their files and the audit log are append-only: the database refuses edits
# even from code that bypasses the library. Status (deprecate/yank) is the one mutable column.
_IMMUTABLE_VERSION_COLUMNS = (
    "adapter_id, number, digest, manifest, peft_type, task_type, num_virtual_tokens, token_dim, "
    "num_transformer_submodules, init_method, init_text, tokenizer, template, peft_version, description, "
    "tags_json, training_json, peft_config_json, base_model_id, dataset_id, parent_digest, "
    "lineage_verified, created_by, created_at"
)
_GUARDS = (
    ("version", "UPDATE OF " + _IMMUTABLE_VERSION_COLUMNS, "published versions are immutable"),
    ("version", "DELETE", "published versions are immutable"),
    ("file", "UPDATE", "published files are immutable"),
    ("file", "DELETE", "published files are immutable"),
    ("event", "UPDATE", "the audit log is append-only"),
    ("event", "DELETE", "the audit log is append-only"),
)


def _create_guards() -> None:
    dialect = op.get_bind().dialect.name
    for table, when, message in _GUARDS:
        name = f"guard_{table}_{when.split()[0].lower()}"
        if dialect == "sqlite":
            op.execute(
                f"CREATE TRIGGER {name} BEFORE {when} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
            )
        elif dialect == "postgresql":
            op.execute(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS "
                f"$$ BEGIN RAISE EXCEPTION '{message}'; END $$"
            )
            op.execute(f"CREATE TRIGGER {name} BEFORE {when} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()")


def _drop_guards() -> None:
    dialect = op.get_bind().dialect.name
    for table, when, _ in _GUARDS:
        name = f"guard_{table}_{when.split()[0].lower()}"
        if dialect == "sqlite":
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        elif dialect == "postgresql":
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON {table}")
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")


def downgrade() -> None:
    _drop_guards()
    with op.batch_alter_table('hub_copy', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hub_copy_version_id'))

    op.drop_table('hub_copy')
    with op.batch_alter_table('file', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_file_version_id'))
        batch_op.drop_index(batch_op.f('ix_file_sha256'))

    op.drop_table('file')
    with op.batch_alter_table('eval_score', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_eval_score_version_id'))

    op.drop_table('eval_score')
    with op.batch_alter_table('alias', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_alias_version_id'))
        batch_op.drop_index(batch_op.f('ix_alias_adapter_id'))

    op.drop_table('alias')
    with op.batch_alter_table('version', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_version_peft_type'))
        batch_op.drop_index(batch_op.f('ix_version_parent_digest'))
        batch_op.drop_index(batch_op.f('ix_version_digest'))
        batch_op.drop_index('ix_version_dataset_created')
        batch_op.drop_index('ix_version_created_at')
        batch_op.drop_index('ix_version_base_model_created')
        batch_op.drop_index(batch_op.f('ix_version_adapter_id'))

    op.drop_table('version')
    with op.batch_alter_table('event', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_event_subject'))
        batch_op.drop_index(batch_op.f('ix_event_action'))

    op.drop_table('event')
    with op.batch_alter_table('dataset', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dataset_name'))

    op.drop_table('dataset')
    with op.batch_alter_table('base_model', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_base_model_name'))

    op.drop_table('base_model')
    op.drop_table('adapter')
