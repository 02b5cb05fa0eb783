"""Storage: the SQLite file, its schema and every statement run against it."""
