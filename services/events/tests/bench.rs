//! `make bench-events` (ignored in `make test`): the relay's figures against a real
//! `nats-server` on this machine, printed as a table.
//!
//! 1. Commit → in the stream: events committed one at a time at a steady rate; each one's time
//!    from its commit to a reader of the stream receiving it (an upper bound of commit → ack).
//! 2. Events per second one relay sustains: a backlog of events of order-sized data drained into
//!    the stream, beside `nats bench` publishing the same number of messages of the same size
//!    into a stream like it (file storage, a message id each), synchronously (one at a time, as a relay would without pipelining)
//!    and asynchronously (as many in flight as it likes), in the same run.
//! 3. Drain after an outage: NATS killed for 60 s while events keep being written at a steady
//!    rate, started again; the seconds until the outbox is empty.
//!
//! Every loop is bounded in count and time. Runs on SQLite (a file under $TMPDIR).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::OrderedConfig;
use futures::StreamExt;
use msa_events::metrics::RelayMetrics;
use msa_events::relay::{self, Running};
use msa_events::settings::{Broker, RelaySettings};
use msa_events::stream::StreamSettings;
use msa_events::testing::{NatsServer, drained};
use msa_events::types::{OrderData, OrderLineData};
use msa_events::{Event, EventType};
use msa_service_kit::db::Database;
use msa_service_kit::testing::{TestBackend, fresh_database};
use prometheus_client::registry::Registry;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

fn settings(nats: &NatsServer) -> RelaySettings {
    RelaySettings {
        service: "order",
        app: "bench".into(),
        broker: Some(Broker {
            url: nats.url(),
            credentials: None,
        }),
        stream: StreamSettings {
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
            replicas: 1,
            duplicate_window: Duration::from_secs(900),
        },
        retention: Duration::from_secs(3600),
        lease: Duration::from_secs(15),
        poll: Duration::from_millis(500),
        batch: 256,
    }
}

fn start(db: &Database, nats: &NatsServer) -> Running {
    relay::spawn(
        db.clone(),
        settings(nats),
        RelayMetrics::register(&mut Registry::default()),
    )
}

/// An order event of a realistic size (three lines).
fn order_event(i: usize) -> Event {
    let order = OrderData {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: uuid::Uuid::new_v4().to_string(),
        status: "confirmed".into(),
        items: (0..3)
            .map(|line| OrderLineData {
                product_id: uuid::Uuid::new_v4().to_string(),
                quantity: 1 + line,
                unit_price_cents: 1999 + i as i64,
            })
            .collect(),
        total_cents: 11994,
        failure_reason: None,
        created_at: "2026-12-04T10:15:29.870Z".into(),
    };
    Event::order(EventType::OrderConfirmed, &order)
}

async fn commit(db: &Database, event: &Event) -> String {
    let mut tx = db.begin_write().await.expect("begin");
    msa_events::append(&mut tx, event).await.expect("append");
    msa_events::commit(tx).await.expect("commit");
    event.subject.clone()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn database() -> Database {
    let url = fresh_database(TestBackend::Sqlite, "bench").await;
    Database::connect(&url, &MIGRATOR).await.expect("migrate")
}

/// Commit → received from the stream, for `count` events at `rate` per second.
async fn latency(count: usize, rate: u32) -> (f64, f64, f64) {
    let nats = NatsServer::start().await;
    let db = database().await;
    let _relay = start(&db, &nats);
    // Let the relay make the stream before the reader looks for it.
    commit(&db, &order_event(0)).await;
    drained(&db.pool, Duration::from_secs(30)).await;
    let context = nats.jetstream().await;
    let stream = context
        .get_stream("msa-bench-order")
        .await
        .expect("the stream");
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
            ..OrderedConfig::default()
        })
        .await
        .expect("a reader");
    let committed: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut messages = consumer.messages().await.expect("messages");
    let reader = {
        let committed = committed.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(count);
            while latencies.len() < count {
                let Ok(Some(Ok(message))) =
                    tokio::time::timeout(Duration::from_secs(30), messages.next()).await
                else {
                    break;
                };
                let received = Instant::now();
                let (event, _) =
                    msa_events::envelope::CloudEvent::parse(&message.payload).expect("an envelope");
                if let Some(at) = committed.lock().unwrap().remove(&event.subject) {
                    latencies.push(received.duration_since(at).as_secs_f64() * 1000.0);
                }
            }
            latencies
        })
    };
    let every = Duration::from_secs(1) / rate;
    let mut tick = tokio::time::interval(every);
    for i in 0..count {
        tick.tick().await;
        let event = order_event(i);
        committed
            .lock()
            .unwrap()
            .insert(event.subject.clone(), Instant::now());
        commit(&db, &event).await;
    }
    let mut latencies = reader.await.expect("the reader");
    assert_eq!(latencies.len(), count, "every event read back");
    latencies.sort_by(f64::total_cmp);
    (
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 100.0),
    )
}

/// Events per second one relay drains from a backlog of `count`.
async fn throughput(count: usize) -> f64 {
    let nats = NatsServer::start().await;
    let db = database().await;
    for i in 0..count {
        commit(&db, &order_event(i)).await;
    }
    let started = Instant::now();
    let _relay = start(&db, &nats);
    drained(&db.pool, Duration::from_secs(300)).await;
    count as f64 / started.elapsed().as_secs_f64()
}

/// `nats bench` publishing `count` messages of `size` bytes into a file-backed stream of
/// its own on a fresh server: messages per second, synchronously and asynchronously.
async fn nats_bench(count: usize, size: usize) -> Option<(f64, f64)> {
    let nats_cli = std::env::var("MSA_NATS_CLI").ok()?;
    let mut rates = Vec::new();
    for mode in ["sync", "async"] {
        let nats = NatsServer::start().await;
        let output = std::process::Command::new(&nats_cli)
            .args([
                "--server",
                &nats.url(),
                "bench",
                "js",
                "pub",
                mode,
                "bench.subject",
            ])
            .args([
                "--no-context",
                "--create",
                "--storage",
                "file",
                "--purge",
                "--dedup",
            ])
            .args(["--msgs", &count.to_string(), "--size", &size.to_string()])
            .args(["--clients", "1", "--no-progress"])
            .output()
            .expect("run nats bench");
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "nats bench {mode}:\n{text}");
        // "… stats: 12,345 msgs/sec ~ …"
        let rate = text
            .lines()
            .find(|line| line.contains("stats:") && line.contains("msgs/sec"))
            .and_then(|line| line.split("stats:").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .map(|n| n.replace(',', ""))
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no rate in nats bench's output:\n{text}"));
        rates.push(rate);
    }
    Some((rates[0], rates[1]))
}

/// Seconds to empty the outbox after NATS was down for `down`, with events written at `rate`
/// per second throughout; and how many were waiting when it came back.
async fn outage(down: Duration, rate: u32) -> (f64, i64) {
    let mut nats = NatsServer::start().await;
    let db = database().await;
    let _relay = start(&db, &nats);
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let db = db.clone();
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
            // Bounded: at most ten minutes of writes.
            for i in 0..(rate as usize * 600) {
                if !writing.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                tick.tick().await;
                commit(&db, &order_event(i)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    nats.kill();
    tokio::time::sleep(down).await;
    let waiting = msa_events::outbox::backlog(&db.pool).await.unwrap().events;
    nats.restart().await;
    let back = Instant::now();
    let deadline = back + Duration::from_secs(300);
    loop {
        let backlog = msa_events::outbox::backlog(&db.pool).await.unwrap();
        // Empty, or no older than the steady state (what was written in the last moment).
        let now_ms = msa_events::outbox::now_ms();
        if backlog
            .oldest_created_ms
            .is_none_or(|oldest| now_ms - oldest < 1_000)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog did not drain in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = back.elapsed().as_secs_f64();
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    (seconds, waiting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: make bench-events"]
async fn relay_figures() {
    let size = serde_json::to_vec(&order_event(0).data).unwrap().len() + 330;
    eprintln!(">> commit → in the stream: 2,000 events at 200/s");
    let (p50, p99, max) = latency(2_000, 200).await;
    eprintln!(">> events/s one relay sustains: a backlog of 20,000");
    let relay_rate = throughput(20_000).await;
    eprintln!(">> nats bench, the same count and size");
    let bench = nats_bench(20_000, size).await;
    eprintln!(">> NATS down 60 s while 200 events/s are written");
    let (drain, waiting) = outage(Duration::from_secs(60), 200).await;

    println!(
        "\nevents relay, SQLite, one relay, nats-server on 127.0.0.1 (sync_interval: always)\n"
    );
    println!("| figure | value |");
    println!("| --- | --- |");
    println!(
        "| commit → in the stream, p50 / p99 / max (200 events/s) | {p50:.2} / {p99:.2} / {max:.2} ms |"
    );
    println!(
        "| relay: events/s draining a backlog (≈{size} B envelopes, one in flight per aggregate, ≤ 256 per window) | {relay_rate:.0} |"
    );
    match bench {
        Some((sync, asynchronous)) => {
            println!(
                "| nats bench js pub sync, same count and size | {sync:.0} msgs/s (relay ÷ this = {:.2}) |",
                relay_rate / sync
            );
            println!(
                "| nats bench js pub async, same count and size | {asynchronous:.0} msgs/s (relay ÷ this = {:.2}) |",
                relay_rate / asynchronous
            );
        }
        None => {
            println!("| nats bench | not run (MSA_NATS_CLI unset; make bench-events sets it) |")
        }
    }
    println!("| NATS down 60 s at 200 events/s written: waiting when it came back | {waiting} |");
    println!("| … seconds until the backlog drained (writes going on) | {drain:.2} s |");
}
