-- Issue 29: every change is also an event, written here in the change's own transaction and
-- relayed to NATS JetStream (services/events). Portable SQL (SQLite and PostgreSQL); the same
-- file is every service's migration (each service's migrations folder links to it).

-- Events not yet acknowledged by the stream (published_ms NULL), and for a while those that were.
CREATE TABLE outbox (
    id            TEXT PRIMARY KEY,    -- the event id (a UUID), also its Nats-Msg-Id
    aggregate     TEXT NOT NULL,       -- the CloudEvents subject: the user, product or order id
    sequence      BIGINT NOT NULL CHECK (sequence > 0),
    event_type    TEXT NOT NULL,
    event_time    TEXT NOT NULL,       -- RFC 3339, when the change was written
    created_ms    BIGINT NOT NULL,     -- never less than the aggregate's previous event's
    traceparent   TEXT,
    data          TEXT NOT NULL,       -- the event's data, JSON
    published_ms  BIGINT,
    UNIQUE (aggregate, sequence)
);
CREATE INDEX outbox_unpublished ON outbox (published_ms, created_ms, aggregate, sequence);
-- Each aggregate's waiting events in order: the relay takes the first of each.
CREATE INDEX outbox_waiting ON outbox (published_ms, aggregate, sequence);

-- Each aggregate's last event number and time: outbox rows are pruned once published, these are
-- not, so an aggregate's events stay numbered 1, 2, 3… without gaps for as long as it exists.
CREATE TABLE event_sequences (
    aggregate  TEXT PRIMARY KEY,
    sequence   BIGINT NOT NULL,
    last_ms    BIGINT NOT NULL
);

-- One relay per service at a time (the order service has this table since its migration 0002).
CREATE TABLE IF NOT EXISTS leases (
    name           TEXT PRIMARY KEY,
    holder         TEXT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);
INSERT INTO leases (name, holder, expires_at_ms) VALUES ('outbox-relay', '', 0) ON CONFLICT (name) DO NOTHING;
