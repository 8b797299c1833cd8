-- Portable SQL (SQLite and PostgreSQL). Money is integer cents; stock can never go negative.
CREATE TABLE products (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL CHECK (length(name) > 0),
    description  TEXT NOT NULL,
    price_cents  BIGINT NOT NULL CHECK (price_cents >= 0),
    stock        BIGINT NOT NULL CHECK (stock >= 0),
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX products_created ON products (created_at, id);

-- Stock held for an order. The id is the caller's (the order id), which makes reserving and
-- releasing idempotent. state: reserved | released.
CREATE TABLE reservations (
    id          TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('reserved', 'released')),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE reservation_items (
    reservation_id    TEXT NOT NULL REFERENCES reservations (id),
    product_id        TEXT NOT NULL REFERENCES products (id),
    quantity          BIGINT NOT NULL CHECK (quantity > 0),
    unit_price_cents  BIGINT NOT NULL,
    PRIMARY KEY (reservation_id, product_id)
);
