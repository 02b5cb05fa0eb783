-- Opening the file (store/database.py). Most of it is PRAGMAs run from Python; what both dialects
-- name alike is here (PostgreSQL's twin: postgres/database.sql).

-- name: schema_version
PRAGMA user_version;
