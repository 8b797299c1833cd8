-- Issue 27: reservations expire. Portable SQL (SQLite and PostgreSQL).
--
-- When the stock was taken, in milliseconds since the Unix epoch: a reservation still `reserved`
-- a TTL later is released by the product service itself. Reservations made before this migration
-- read 0; the first sweep stamps them with its own time, so they get a full TTL from the upgrade.
ALTER TABLE reservations ADD COLUMN held_since_ms BIGINT NOT NULL DEFAULT 0;
CREATE INDEX reservations_by_state_age ON reservations (state, held_since_ms);
