-- Issue 27: every order ends. Portable SQL (SQLite and PostgreSQL).
--
-- When each order was recorded, in milliseconds since the Unix epoch, so the recoverer can find
-- orders pending longer than its bound with an integer comparison (the RFC 3339 text of
-- `created_at` does not sort by time when fractions of a second vary in length). Orders recorded
-- before this migration read 0: any still pending is overdue and recovered at once.
ALTER TABLE orders ADD COLUMN created_at_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX orders_by_status_age ON orders (status, created_at_ms);

-- Leases: one row per job that must run on one replica at a time. A replica holds a lease while
-- `holder` is its id and `expires_at_ms` is in the future; it takes or renews it with one
-- conditional UPDATE (held by itself, or expired), so two replicas cannot both hold it.
CREATE TABLE leases (
    name           TEXT PRIMARY KEY,
    holder         TEXT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);
INSERT INTO leases (name, holder, expires_at_ms) VALUES ('recoverer', '', 0);
