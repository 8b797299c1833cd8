//! Every change of the user service is an event, written in the change's transaction and
//! relayed once into JetStream: the real binary, killed (SIGKILL) at many points of many
//! requests, with a real `nats-server`; afterwards the users table, the outbox and the stream
//! agree, table by table.

use std::time::{Duration, Instant};

use msa_events::testing::{
    NatsServer, assert_stream_matches_outbox, drained, last_events, read_stream,
};
use msa_service_kit::db::Database;
use msa_service_kit::testing::{ServiceProcess, TestBackend, fresh_database};
use serde_json::json;
use sqlx::Row;

const USER: &str = env!("CARGO_BIN_EXE_msa-user");

/// Random creates (emails from a small set, so some conflict), updates and deletes until
/// `until`; errors (the process was killed) are expected and ignored.
async fn load(base: String, until: Instant, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut ids: Vec<String> = Vec::new();
    while Instant::now() < until {
        let email = format!("u{}@example.com", rng.u32(0..40));
        let sent = match (rng.u8(0..10), ids.is_empty()) {
            (0..=4, _) | (_, true) => {
                http.post(format!("{base}/users"))
                    .json(&json!({"name": format!("n{}", rng.u32(..)), "email": email}))
                    .send()
                    .await
            }
            (5..=7, false) => {
                let id = &ids[rng.usize(..ids.len())];
                http.put(format!("{base}/users/{id}"))
                    .json(&json!({"name": format!("m{}", rng.u32(..)), "email": email}))
                    .send()
                    .await
            }
            _ => {
                let id = ids.swap_remove(rng.usize(..ids.len()));
                http.delete(format!("{base}/users/{id}")).send().await
            }
        };
        match sent {
            Ok(response) if response.status() == 201 => {
                if let Ok(body) = response.json::<serde_json::Value>().await
                    && let Some(id) = body["id"].as_str()
                {
                    ids.push(id.to_owned());
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn killed_at_many_points_the_users_their_events_and_the_stream_agree(backend: TestBackend) {
    let nats = NatsServer::start().await;
    let url = fresh_database(backend, "user").await;
    let seed = fastrand::u64(..);
    eprintln!("seed {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let args = [
        "--database-url",
        &url,
        "--nats-url",
        &nats.url(),
        "--app",
        "test",
        "--relay-poll-ms",
        "20",
        "--relay-lease-ms",
        "1000",
    ];
    for round in 0..12u64 {
        let service = ServiceProcess::start(USER, &args, &[]).await;
        let until = Instant::now() + Duration::from_millis(rng.u64(100..700));
        let writers: Vec<_> = (0..6)
            .map(|w| {
                tokio::spawn(load(
                    service.base_url.clone(),
                    until,
                    seed ^ (round * 16 + w),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.u64(30..600))).await;
        drop(service); // SIGKILL, with requests and a relay batch in flight
        for writer in writers {
            writer.await.unwrap();
        }
    }
    // Once more, to publish what the last kill left behind.
    let service = ServiceProcess::start(USER, &args, &[]).await;
    let db = Database::connect(&url, &msa_user::MIGRATOR).await.unwrap();
    drained(&db.pool, Duration::from_secs(60)).await;
    assert!(service.stop());

    let users = sqlx::query("SELECT id, name, email FROM users")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let last = last_events(&db.pool).await;
    for user in &users {
        let id: String = user.get("id");
        let data = json!({"id": id, "name": user.get::<String, _>("name"), "email": user.get::<String, _>("email")});
        let (kind, event) = last
            .get(&id)
            .unwrap_or_else(|| panic!("user {id} has no event"));
        assert!(
            kind == "dev.msa.user.registered.v1" || kind == "dev.msa.user.updated.v1",
            "user {id} exists but its last event is {kind}"
        );
        assert_eq!(event, &data, "user {id}: the row and its last event differ");
    }
    let deleted = last
        .iter()
        .filter(|(id, _)| !users.iter().any(|u| u.get::<String, _>("id") == **id))
        .inspect(|(id, (kind, _))| {
            assert_eq!(
                kind, "dev.msa.user.deleted.v1",
                "user {id} is gone but its last event is {kind}"
            );
        })
        .count();
    eprintln!(
        "{} users, {deleted} deleted, {} events",
        users.len(),
        msa_events::outbox::all(&db.pool).await.unwrap().len()
    );
    assert!(
        users.len() > 10,
        "the load created too few users to show anything"
    );
    let stored = read_stream(&nats.jetstream().await, "msa-test-user").await;
    assert_stream_matches_outbox(&db.pool, &stored, "msa.test.user.", "/test/user").await;
}

msa_service_kit::on_both_backends!(
    killed_at_many_points_the_users_their_events_and_the_stream_agree
);

#[derive(Clone, Debug)]
enum Change {
    Create { email: u8 },
    Update { user: usize, email: u8 },
    Delete { user: usize },
}

fn change() -> impl proptest::strategy::Strategy<Value = Change> {
    use proptest::prelude::*;
    prop_oneof![
        (0..6u8).prop_map(|email| Change::Create { email }),
        (0..8usize, 0..6u8).prop_map(|(user, email)| Change::Update { user, email }),
        (0..8usize).prop_map(|user| Change::Delete { user }),
    ]
}

/// Any sequence of changes, refused ones included (a taken email, an unknown user): each user
/// row equals its last event, each deleted user's last event says so, and each aggregate has
/// exactly as many events as changes that succeeded.
async fn changes_and_events_agree(changes: Vec<Change>) {
    use msa_user::model::User;
    use msa_user::store;
    let url = fresh_database(TestBackend::Sqlite, "user").await;
    let db = Database::connect(&url, &msa_user::MIGRATOR).await.unwrap();
    let mut ids: Vec<String> = Vec::new();
    let mut succeeded = std::collections::HashMap::<String, i64>::new();
    for (i, change) in changes.into_iter().enumerate() {
        let user = |id: String, email: u8| User {
            id,
            name: format!("name {i}"),
            email: format!("u{email}@example.com"),
            created_at: "2026-12-04T00:00:00Z".into(),
            updated_at: "2026-12-04T00:00:00Z".into(),
        };
        let (id, done) = match change {
            Change::Create { email } => {
                let id = uuid::Uuid::new_v4().to_string();
                let done = store::insert(&db, &user(id.clone(), email)).await.is_ok();
                if done {
                    ids.push(id.clone());
                }
                (id, done)
            }
            Change::Update { user: n, email } => {
                let id = ids
                    .get(n)
                    .cloned()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let done = store::update(&db, &user(id.clone(), email))
                    .await
                    .unwrap_or(false);
                (id, done)
            }
            Change::Delete { user: n } => {
                let id = ids
                    .get(n)
                    .cloned()
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                (id.clone(), store::delete(&db, &id).await.unwrap())
            }
        };
        if done {
            *succeeded.entry(id).or_default() += 1;
        }
    }
    let rows = msa_events::outbox::all(&db.pool).await.unwrap();
    for (id, count) in &succeeded {
        let events = rows.iter().filter(|r| &r.aggregate == id).count() as i64;
        assert_eq!(
            events, *count,
            "user {id}: {count} changes, {events} events"
        );
    }
    assert_eq!(
        rows.len() as i64,
        succeeded.values().sum::<i64>(),
        "events of changes that failed"
    );
    let last = last_events(&db.pool).await;
    for (id, (kind, data)) in &last {
        match store::get(&db, id).await.unwrap() {
            Some(user) => {
                assert_ne!(kind, "dev.msa.user.deleted.v1");
                assert_eq!(
                    data,
                    &json!({"id": user.id, "name": user.name, "email": user.email})
                );
            }
            None => assert_eq!(kind, "dev.msa.user.deleted.v1"),
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
    #[test]
    fn any_sequence_of_changes_leaves_rows_and_events_agreeing(
        changes in proptest::collection::vec(change(), 1..40)
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(changes_and_events_agree(changes));
    }
}
