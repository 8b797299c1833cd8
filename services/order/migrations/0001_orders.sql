-- Portable SQL (SQLite and PostgreSQL). Money is integer cents.
CREATE TABLE orders (
    id               TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'confirmed', 'shipped', 'delivered', 'cancelled', 'failed')),
    total_cents      BIGINT NOT NULL CHECK (total_cents >= 0),
    failure_reason   TEXT,
    -- 1 while stock held for this order still has to be given back to the product service
    -- (a release that failed); a background task retries until it succeeds.
    release_pending  BIGINT NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX orders_by_user ON orders (user_id, created_at, id);
CREATE INDEX orders_release_pending ON orders (release_pending);

CREATE TABLE order_items (
    order_id          TEXT NOT NULL REFERENCES orders (id),
    line              BIGINT NOT NULL,
    product_id        TEXT NOT NULL,
    quantity          BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_cents  BIGINT NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, line)
);
