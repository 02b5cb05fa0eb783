-- What store/pgdatabase.py needs to open a database: check it is ours, migrate it, record the
-- shard count (select_shards, insert_shards: queries.sql). PostgreSQL only (SQLite has PRAGMAs
-- for these), except the schema version, which both dialects name alike.

-- name: session_read_only
-- 'on' on a hot standby or with default_transaction_read_only: reads work, writes cannot.
SELECT current_setting('transaction_read_only');

-- name: schema_probe
-- Whether the current schema has our meta table, and whether it holds any relation at all
-- (leaving out those an extension created, e.g. pg_stat_statements' views): an empty schema is
-- migrated, one with someone else's tables is refused.
SELECT
    EXISTS (
        SELECT 1 FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relname = 'meta' AND c.relkind = 'r'
    ),
    EXISTS (
        SELECT 1 FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND NOT EXISTS (
              SELECT 1 FROM pg_depend AS d
              WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
          )
    );

-- name: select_schema_meta
SELECT key, value FROM meta WHERE key IN ('application', 'schema_version');

-- name: migration_lock
-- Held until the end of the transaction: one migration (or first shard count) at a time, across
-- every process on this database.
SELECT pg_advisory_xact_lock(%s);

-- name: set_schema_version
INSERT INTO meta (key, value) VALUES ('schema_version', %s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: schema_version
SELECT value FROM meta WHERE key = 'schema_version';
