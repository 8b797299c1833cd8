-- Every number the service stores gets a range the database itself enforces, and reservations
-- gain the `committed` state (the order was confirmed: only its cancellation returns the stock).
--
-- Why ranges: SQLite turns an integer that overflows (stock + a returned quantity near 2^63)
-- into a floating-point value, which every reader then fails on. With stock and quantities at most
-- 2^53 − 1 (the largest integer JSON readers hold exactly), `stock + quantity` cannot overflow, and
-- a write outside the range is refused instead of stored. The API's own limits are narrower
-- (msa_service_kit::money: stock and quantities at most 10^9); these are what storage can hold.
--
-- Portable SQL (SQLite cannot add a constraint to a table): each table is copied into a new one
-- and renamed. A stock an old overflow already corrupted is brought back into range (to the API's
-- maximum of 10^9), so the product can be read and corrected again.
CREATE TABLE products_v2 (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL CHECK (length(name) > 0),
    description  TEXT NOT NULL,
    price_cents  BIGINT NOT NULL CHECK (price_cents BETWEEN 0 AND 100000000000),
    stock        BIGINT NOT NULL CHECK (stock BETWEEN 0 AND 9007199254740991),
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
INSERT INTO products_v2 (id, name, description, price_cents, stock, created_at, updated_at)
SELECT id, name, description, price_cents,
       CASE WHEN stock BETWEEN 0 AND 9007199254740991 THEN CAST(stock AS BIGINT)
            WHEN stock < 0 THEN 0
            ELSE 1000000000 END,
       created_at, updated_at
FROM products;

CREATE TABLE reservations_v2 (
    id          TEXT PRIMARY KEY,
    state       TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'released')),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
INSERT INTO reservations_v2 (id, state, created_at, updated_at)
SELECT id, state, created_at, updated_at FROM reservations;

CREATE TABLE reservation_items_v2 (
    reservation_id    TEXT NOT NULL REFERENCES reservations_v2 (id),
    product_id        TEXT NOT NULL REFERENCES products_v2 (id),
    quantity          BIGINT NOT NULL CHECK (quantity BETWEEN 1 AND 9007199254740991),
    unit_price_cents  BIGINT NOT NULL CHECK (unit_price_cents BETWEEN 0 AND 100000000000),
    PRIMARY KEY (reservation_id, product_id)
);
INSERT INTO reservation_items_v2 (reservation_id, product_id, quantity, unit_price_cents)
SELECT reservation_id, product_id, quantity, unit_price_cents FROM reservation_items;

DROP TABLE reservation_items;
DROP TABLE reservations;
DROP TABLE products;
ALTER TABLE products_v2 RENAME TO products;
ALTER TABLE reservations_v2 RENAME TO reservations;
ALTER TABLE reservation_items_v2 RENAME TO reservation_items;
CREATE INDEX products_created ON products (created_at, id);
