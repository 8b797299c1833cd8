-- Portable SQL (SQLite and PostgreSQL). Emails are stored lowercased, so UNIQUE is case-insensitive.
CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL CHECK (length(name) > 0),
    email       TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX users_created ON users (created_at, id);
