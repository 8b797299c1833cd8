-- Issue 27: POST /orders honours Idempotency-Key. Portable SQL (SQLite and PostgreSQL).
-- One row per key a user sent, written in the same transaction as its order; the first
-- request's final answer is added when it finishes (see src/idempotency.rs).
CREATE TABLE idempotency_keys (
    user_id          TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    fingerprint      TEXT NOT NULL,
    order_id         TEXT NOT NULL REFERENCES orders (id),
    answer_status    BIGINT,
    answer_body      TEXT,
    PRIMARY KEY (user_id, idempotency_key)
);
