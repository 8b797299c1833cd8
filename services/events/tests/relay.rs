//! The relay against a real `nats-server` (nothing of NATS is mocked), on SQLite and on
//! PostgreSQL: every event reaches the stream exactly once, in order per aggregate, through a
//! broker outage, a batch republished after its marks were lost, and a relay killed mid-way
//! with another replica taking over.

use std::time::Duration;

use msa_events::metrics::RelayMetrics;
use msa_events::outbox;
use msa_events::relay::{self, Running};
use msa_events::settings::{Broker, RelaySettings};
use msa_events::stream::StreamSettings;
use msa_events::testing::{NatsServer, Stored, assert_stream_matches_outbox, drained, read_stream};
use msa_events::types::UserData;
use msa_events::{Event, EventType};
use msa_service_kit::db::Database;
use msa_service_kit::on_both_backends;
use msa_service_kit::testing::{TestBackend, fresh_database};
use prometheus_client::registry::Registry;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

async fn database(backend: TestBackend) -> Database {
    let url = fresh_database(backend, "events").await;
    Database::connect(&url, &MIGRATOR).await.expect("migrate")
}

fn settings(nats: &NatsServer, lease: Duration) -> RelaySettings {
    RelaySettings {
        service: "user",
        app: "test".into(),
        broker: Some(Broker {
            url: nats.url(),
            credentials: None,
        }),
        stream: StreamSettings {
            max_bytes: 64 << 20,
            max_age: Duration::from_secs(3600),
            replicas: 1,
            duplicate_window: Duration::from_secs(900),
        },
        retention: Duration::from_secs(3600),
        lease,
        poll: Duration::from_millis(50),
        batch: 64,
    }
}

fn start(db: &Database, settings: RelaySettings) -> (Running, RelayMetrics) {
    let metrics = RelayMetrics::register(&mut Registry::default());
    (relay::spawn(db.clone(), settings, metrics.clone()), metrics)
}

/// Writes `count` changes spread over `aggregates` users, each in a transaction of its own, from
/// four writers at once.
async fn write(db: &Database, aggregates: usize, count: usize) {
    let writers: Vec<_> = (0..4)
        .map(|writer| {
            let db = db.clone();
            tokio::spawn(async move {
                for i in (writer..count).step_by(4) {
                    let user = UserData {
                        id: format!("user-{}", i % aggregates),
                        name: format!("name {i}"),
                        email: format!("u{i}@example.com"),
                    };
                    let mut tx = db.begin_write().await.expect("begin");
                    msa_events::append(&mut tx, &Event::user(EventType::UserUpdated, &user))
                        .await
                        .expect("append");
                    msa_events::commit(tx).await.expect("commit");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("a writer");
    }
}

async fn audit(db: &Database, stored: &[Stored]) {
    assert_stream_matches_outbox(&db.pool, stored, "msa.test.user.", "/test/user").await;
    assert!(
        stored
            .iter()
            .all(|m| m.subject == "msa.test.user.updated.v1")
    );
}

async fn events_reach_the_stream_once_and_in_order(backend: TestBackend) {
    let nats = NatsServer::start().await;
    let db = database(backend).await;
    let (_relay, metrics) = start(&db, settings(&nats, Duration::from_secs(15)));
    write(&db, 7, 300).await;
    drained(&db.pool, Duration::from_secs(60)).await;
    let stored = read_stream(&nats.jetstream().await, "msa-test-user").await;
    audit(&db, &stored).await;
    assert_eq!(metrics.published.get(), 300);
    assert_eq!(metrics.leader.get(), 1);
}

async fn nats_down_requests_go_on_and_the_backlog_follows_in_order(backend: TestBackend) {
    let mut nats = NatsServer::start().await;
    let db = database(backend).await;
    let (_relay, _) = start(&db, settings(&nats, Duration::from_secs(15)));
    write(&db, 5, 20).await;
    drained(&db.pool, Duration::from_secs(30)).await;
    nats.kill();
    write(&db, 5, 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(outbox::backlog(&db.pool).await.unwrap().events, 100);
    nats.restart().await;
    drained(&db.pool, Duration::from_secs(60)).await;
    // A broker that hangs instead of dying: the same.
    nats.pause();
    write(&db, 5, 50).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(outbox::backlog(&db.pool).await.unwrap().events, 50);
    nats.resume();
    drained(&db.pool, Duration::from_secs(60)).await;
    let stored = read_stream(&nats.jetstream().await, "msa-test-user").await;
    assert_eq!(stored.len(), 170);
    audit(&db, &stored).await;
}

async fn a_batch_whose_marks_were_lost_is_dropped_as_duplicates(backend: TestBackend) {
    let nats = NatsServer::start().await;
    let db = database(backend).await;
    let (relay, _) = start(&db, settings(&nats, Duration::from_millis(500)));
    write(&db, 3, 40).await;
    drained(&db.pool, Duration::from_secs(30)).await;
    relay.stop();
    // As if the relay was killed after the stream acknowledged, before its marks committed.
    sqlx::query("UPDATE outbox SET published_ms = NULL")
        .execute(&db.pool)
        .await
        .unwrap();
    let (_again, metrics) = start(&db, settings(&nats, Duration::from_millis(500)));
    drained(&db.pool, Duration::from_secs(30)).await;
    assert_eq!(
        metrics.duplicates.get(),
        40,
        "every republished event was a duplicate"
    );
    let stored = read_stream(&nats.jetstream().await, "msa-test-user").await;
    audit(&db, &stored).await;
}

async fn one_relay_at_a_time_and_a_killed_one_is_replaced(backend: TestBackend) {
    let nats = NatsServer::start().await;
    let db = database(backend).await;
    let lease = Duration::from_millis(600);
    let (first, first_metrics) = start(&db, settings(&nats, lease));
    write(&db, 4, 20).await;
    drained(&db.pool, Duration::from_secs(30)).await;
    let (_second, second_metrics) = start(&db, settings(&nats, lease));
    write(&db, 4, 40).await;
    drained(&db.pool, Duration::from_secs(30)).await;
    assert_eq!(first_metrics.leader.get(), 1);
    assert_eq!(second_metrics.leader.get(), 0);
    assert_eq!(
        second_metrics.published.get(),
        0,
        "the replica without the lease published"
    );
    // Killed while it leads: the other takes over once the lease expires.
    first.stop();
    write(&db, 4, 60).await;
    drained(&db.pool, Duration::from_secs(30)).await;
    assert_eq!(second_metrics.leader.get(), 1);
    assert_eq!(second_metrics.published.get(), 60);
    let stored = read_stream(&nats.jetstream().await, "msa-test-user").await;
    assert_eq!(stored.len(), 120);
    audit(&db, &stored).await;
}

on_both_backends!(
    events_reach_the_stream_once_and_in_order,
    nats_down_requests_go_on_and_the_backlog_follows_in_order,
    a_batch_whose_marks_were_lost_is_dropped_as_duplicates,
    one_relay_at_a_time_and_a_killed_one_is_replaced,
);

/// A busy aggregate delays no other: each round takes the next event of every aggregate.
#[tokio::test]
async fn each_round_takes_the_next_event_of_every_aggregate() {
    let db = database(TestBackend::Sqlite).await;
    write(&db, 1, 300).await; // 300 events of user-0
    let mut tx = db.begin_write().await.unwrap();
    let other = UserData {
        id: "other".into(),
        name: "o".into(),
        email: "o@example.com".into(),
    };
    msa_events::append(&mut tx, &Event::user(EventType::UserUpdated, &other))
        .await
        .unwrap();
    msa_events::commit(tx).await.unwrap();
    let next = outbox::next_of_each_aggregate(&db.pool, 256).await.unwrap();
    let heads: Vec<(&str, i64)> = next
        .iter()
        .map(|row| (row.aggregate.as_str(), row.sequence))
        .collect();
    assert_eq!(heads, [("user-0", 1), ("other", 1)]);
}
