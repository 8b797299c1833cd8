//! The relay: moves a service's events from its outbox into its JetStream stream, in order, and
//! marks each published only once the stream acknowledged it.
//!
//! - One relay per service at a time: it publishes only while it holds the `outbox-relay` lease
//!   (a conditional UPDATE, on SQLite and PostgreSQL alike; see `msa_service_kit::db::lease`).
//! - Exactly once in the stream: every event is published with `Nats-Msg-Id` = its id, so what a
//!   killed or timed-out relay published without marking is dropped as a duplicate when published
//!   again, within the stream's duplicate window (longer than a lease).
//! - In order per aggregate: each round publishes the next waiting event of each aggregate
//!   ([`crate::outbox::next_of_each_aggregate`]), so an event is published only after the previous
//!   one of its aggregate was acknowledged (stored or dropped as already stored): the first copy
//!   of each event in the stream comes after the first copy of the one before it. A busy
//!   aggregate gets one event per round and holds up no other.
//! - Late copies: a round ends within a bound (5 s, or a third of the lease if shorter), and a
//!   round that failed drops its connection, so nothing it handed to the client is sent later;
//!   a copy can reach the stream after the duplicate window only if the relay cannot mark what
//!   was acknowledged for longer than that window (the database down for 15 minutes). Consumers
//!   apply each aggregate's events by `sequence` and skip what they already applied, which
//!   makes even that harmless.
//! - NATS down: requests keep writing the outbox; the relay retries with a bounded backoff and
//!   publishes the backlog, in order, once NATS answers again.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, Context};
use futures::StreamExt;
use msa_service_kit::db::{Database, lease};
use tracing::{Instrument, debug, info, warn};

use crate::envelope::{CONTENT_TYPE, CloudEvent, SPEC_VERSION};
use crate::metrics::RelayMetrics;
use crate::outbox::{self, OutboxRow};
use crate::settings::{Broker, RelaySettings};
use crate::stream;

/// The lease's row (created by the events migration).
pub const LEASE: &str = "outbox-relay";

/// How long a request to NATS (a publish's acknowledgement, a stream update) may take.
const NATS_TIMEOUT: Duration = Duration::from_secs(5);

/// Backoff after a failed round: doubles from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// The relay's tasks; they run until [`Running::stop`] (or the process ends).
pub struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops them where they are, as a killed process would (nothing is flushed or marked).
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts the relay, the pruner and the backlog gauge for this service's outbox.
pub fn spawn(db: Database, settings: RelaySettings, metrics: RelayMetrics) -> Running {
    let mut tasks = vec![tokio::spawn(prune_loop(
        db.clone(),
        settings.clone(),
        metrics.clone(),
    ))];
    match settings.broker.clone() {
        // The backlog gauges only mean something when there is somewhere to publish to.
        Some(broker) => tasks.extend([
            tokio::spawn(backlog_loop(db.clone(), metrics.clone())),
            tokio::spawn(Relay::new(db, settings, metrics, broker).run()),
        ]),
        None => info!(
            service = settings.service,
            "no --nats-url: events are written to the outbox but not published"
        ),
    }
    Running { tasks }
}

/// A client that connects (and reconnects) in the background: a NATS that is down at start is
/// the same as one that goes down later.
pub async fn connect(broker: &Broker, service: &str) -> Result<Context, async_nats::ConnectError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("msa-{service}"))
        .custom_inbox_prefix(crate::broker::inbox_prefix(service))
        .retry_on_initial_connect()
        // Only the configured address: a server a cluster announces is not one this service
        // was told to trust with its password.
        .ignore_discovered_servers()
        .connection_timeout(NATS_TIMEOUT)
        .request_timeout(Some(NATS_TIMEOUT))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => info!("connected to NATS"),
                async_nats::Event::Disconnected => {
                    warn!("disconnected from NATS; events wait in the outbox")
                }
                other => debug!(event = %other, "NATS"),
            }
        });
    if let Some((user, password)) = &broker.credentials {
        options = options.user_and_password(user.clone(), password.clone());
    }
    // With `retry_on_initial_connect` this returns at once; it fails only for an address that
    // cannot be parsed, which the flags already refused.
    let client = options.connect(broker.url.as_str()).await?;
    let mut context = jetstream::new(client);
    context.set_timeout(NATS_TIMEOUT);
    Ok(context)
}

pub struct Relay {
    db: Database,
    settings: RelaySettings,
    metrics: RelayMetrics,
    broker: Broker,
    /// The connection, made again after a round that failed: whatever the old one still held
    /// queued (async-nats queues publishes while disconnected and sends them on reconnect,
    /// however late) is dropped with it instead of reaching the stream after its duplicate
    /// window.
    jetstream: Option<Context>,
    holder: String,
    source: String,
    /// When the lease was last taken or renewed (by this replica's clock), if held.
    held_since: Option<Instant>,
    stream_ready: bool,
}

/// Why a round stopped early.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database: {0}")]
    Lease(String),
    #[error("stream {stream}: {error}")]
    Stream { stream: String, error: String },
    #[error("publish: {0}")]
    Publish(String),
    #[error("not connected to NATS")]
    NotConnected,
}

impl RoundError {
    fn stage(&self) -> &'static str {
        match self {
            RoundError::Database(_) | RoundError::Lease(_) => "database",
            RoundError::Stream { .. } => "stream",
            RoundError::Publish(_) => "publish",
            RoundError::NotConnected => "connect",
        }
    }
}

/// What a round did.
enum Round {
    /// Another replica relays.
    NotLeader,
    /// Nothing waited.
    Idle,
    /// Published this many; more may wait.
    Published,
}

impl Relay {
    pub fn new(
        db: Database,
        settings: RelaySettings,
        metrics: RelayMetrics,
        broker: Broker,
    ) -> Relay {
        let source = format!("/{}/{}", settings.app, settings.service);
        Relay {
            db,
            settings,
            metrics,
            broker,
            jetstream: None,
            holder: uuid::Uuid::new_v4().to_string(),
            source,
            held_since: None,
            stream_ready: false,
        }
    }

    pub async fn run(mut self) {
        let mut backoff = BACKOFF.0;
        loop {
            match self.round().await {
                Ok(Round::Published) => backoff = BACKOFF.0,
                Ok(Round::Idle) => {
                    backoff = BACKOFF.0;
                    tokio::select! {
                        () = outbox::committed() => {}
                        () = tokio::time::sleep(self.settings.poll) => {}
                    }
                }
                Ok(Round::NotLeader) => tokio::time::sleep(self.settings.poll).await,
                Err(error) => {
                    self.metrics.failed(error.stage());
                    warn!(%error, retry_in_ms = backoff.as_millis() as u64, "relay round failed; events wait in the outbox");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    }

    /// Holds (takes or renews) the lease; false when another replica holds it.
    async fn lead(&mut self) -> Result<bool, RoundError> {
        let renew_after = self.settings.lease / 3;
        if self
            .held_since
            .is_some_and(|since| since.elapsed() < renew_after)
        {
            return Ok(true);
        }
        let started = Instant::now();
        let lease_ms = i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX);
        let held = lease::acquire(&self.db, LEASE, &self.holder, outbox::now_ms(), lease_ms)
            .await
            .map_err(|problem| RoundError::Lease(problem.to_string()))?;
        if held != self.held_since.is_some() {
            if held {
                info!(
                    service = self.settings.service,
                    "this replica relays the outbox now"
                );
            } else {
                info!(
                    service = self.settings.service,
                    "another replica relays the outbox now"
                );
            }
        }
        // Counted from before the UPDATE: the lease may have been taken that early.
        self.held_since = held.then_some(started);
        self.metrics.leader.set(i64::from(held));
        Ok(held)
    }

    /// The connection, if it is up now (a new one is made when there is none).
    async fn connected(&mut self) -> Result<Context, RoundError> {
        if self.jetstream.is_none() {
            let context = connect(&self.broker, self.settings.service)
                .await
                .map_err(|error| RoundError::Publish(format!("cannot connect: {error}")))?;
            self.jetstream = Some(context);
        }
        match &self.jetstream {
            Some(context)
                if context.client().connection_state()
                    == async_nats::connection::State::Connected =>
            {
                Ok(context.clone())
            }
            _ => Err(RoundError::NotConnected),
        }
    }

    /// Makes the stream or brings it to the flags, where this login may (see [`stream::ensure`]).
    async fn ensure_stream(&self, jetstream: &Context) -> Result<(), RoundError> {
        let wanted = stream::config(
            &self.settings.app,
            self.settings.service,
            &self.settings.stream,
        );
        let name = wanted.name.clone();
        match stream::ensure(jetstream, wanted).await {
            Ok(stream::Ensured::Kept { refused }) => warn!(
                stream = %name, error = %refused,
                "the stream differs from this service's flags and this login may not change it; publishing into it as it is"
            ),
            Ok(outcome) => info!(stream = %name, ?outcome, "stream ready"),
            Err(error) => {
                return Err(RoundError::Stream {
                    stream: name,
                    error,
                });
            }
        }
        Ok(())
    }

    async fn round(&mut self) -> Result<Round, RoundError> {
        if !self.lead().await? {
            return Ok(Round::NotLeader);
        }
        let jetstream = self.connected().await?;
        if !self.stream_ready {
            self.ensure_stream(&jetstream).await?;
            self.stream_ready = true;
        }
        let window =
            outbox::next_of_each_aggregate(&self.db.pool, i64::from(self.settings.batch)).await?;
        if window.is_empty() {
            return Ok(Round::Idle);
        }
        // A lease that lapsed while reading is not used to publish: another replica may lead.
        if !self.lead().await? {
            return Ok(Round::NotLeader);
        }
        let (acked, failure) = self.publish(&jetstream, &window).await;
        if failure.is_some() {
            // Start over: a new connection (nothing queued on the old one goes out late) and
            // the stream made again if it was lost.
            self.jetstream = None;
            self.stream_ready = false;
        }
        outbox::mark_published(&self.db.pool, &acked, outbox::now_ms()).await?;
        match failure {
            Some(error) => Err(error),
            None if acked.is_empty() => Err(RoundError::Publish(format!(
                "none of {} waiting events could be read from the outbox",
                window.len()
            ))),
            None => Ok(Round::Published),
        }
    }

    /// Publishes the window's events (pipelined: all are sent before the acknowledgements are
    /// awaited, together) and returns the ids the stream acknowledged, and the first failure.
    /// The round ends within [`NATS_TIMEOUT`] and a third of the lease, whichever is shorter:
    /// what was not acknowledged by then is published again by the next round.
    async fn publish<'a>(
        &self,
        jetstream: &Context,
        window: &'a [OutboxRow],
    ) -> (Vec<&'a str>, Option<RoundError>) {
        let deadline = tokio::time::Instant::now() + NATS_TIMEOUT.min(self.settings.lease / 3);
        let mut pending = futures::stream::FuturesUnordered::new();
        let mut failure = None;
        for row in window {
            let subject = subject(&self.settings.app, &row.event_type);
            let span = msa_telemetry::producer_span(&subject, row.traceparent.as_deref());
            let payload = match self.envelope(row) {
                Ok(payload) => payload,
                Err(error) => {
                    // Written by this code from a JSON value: unreadable only if edited by hand.
                    warn!(event = %row.id, %error, "outbox row's data is not JSON; it waits until fixed");
                    continue;
                }
            };
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, row.id.as_str());
            if let Some(traceparent) = &row.traceparent {
                headers.insert("traceparent", traceparent.as_str());
            }
            let sent = Instant::now();
            let handed = tokio::time::timeout_at(
                deadline,
                jetstream
                    .publish_with_headers(subject, headers, payload.into())
                    .instrument(span.clone()),
            )
            .await;
            match handed {
                Ok(Ok(ack)) => pending.push(async move {
                    let acked = ack.into_future().instrument(span.clone()).await;
                    (row.id.as_str(), acked, sent, span)
                }),
                Ok(Err(error)) => {
                    msa_telemetry::fail_span(&span, "publish");
                    failure = Some(RoundError::Publish(error.to_string()));
                    break;
                }
                Err(_) => {
                    failure = Some(RoundError::Publish(
                        "timed out handing events to NATS".into(),
                    ));
                    break;
                }
            }
        }
        let mut acked = Vec::with_capacity(pending.len());
        loop {
            match tokio::time::timeout_at(deadline, pending.next()).await {
                Ok(Some((id, Ok(ack), sent, _))) => {
                    self.metrics
                        .publish_seconds
                        .observe(sent.elapsed().as_secs_f64());
                    self.metrics.published.inc();
                    if ack.duplicate {
                        self.metrics.duplicates.inc();
                    }
                    acked.push(id);
                }
                Ok(Some((_, Err(error), _, span))) => {
                    msa_telemetry::fail_span(&span, "publish");
                    failure.get_or_insert(RoundError::Publish(error.to_string()));
                }
                Ok(None) => break,
                Err(_) => {
                    failure.get_or_insert(RoundError::Publish(format!(
                        "{} acknowledgements did not come within the round",
                        pending.len()
                    )));
                    break;
                }
            }
        }
        (acked, failure)
    }

    fn envelope(&self, row: &OutboxRow) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(&CloudEvent {
            specversion: SPEC_VERSION.to_owned(),
            id: row.id.clone(),
            source: self.source.clone(),
            kind: row.event_type.clone(),
            subject: row.aggregate.clone(),
            time: row.time.clone(),
            datacontenttype: CONTENT_TYPE.to_owned(),
            traceparent: row.traceparent.clone(),
            sequence: row.sequence,
            data: serde_json::from_str(&row.data)?,
        })
    }
}

/// `dev.msa.order.confirmed.v1` in app `shop` → `msa.shop.order.confirmed.v1`.
pub fn subject(app: &str, event_type: &str) -> String {
    let tail = event_type.strip_prefix("dev.msa.").unwrap_or(event_type);
    format!("msa.{app}.{tail}")
}

/// Deletes published events past their retention (and, with no broker, any event past it).
async fn prune_loop(db: Database, settings: RelaySettings, metrics: RelayMetrics) {
    let every = (settings.retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let retention_ms = i64::try_from(settings.retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::time::sleep(every).await;
        let before = outbox::now_ms().saturating_sub(retention_ms);
        loop {
            match outbox::prune(&db.pool, before, settings.broker.is_none(), 1_000).await {
                Ok(deleted) => {
                    metrics.pruned.inc_by(deleted);
                    if deleted < 1_000 {
                        break;
                    }
                }
                Err(error) => {
                    warn!(%error, "cannot prune the outbox; trying again later");
                    break;
                }
            }
        }
    }
}

/// Keeps the backlog gauges current on every replica (whichever relays).
async fn backlog_loop(db: Database, metrics: RelayMetrics) {
    loop {
        match outbox::backlog(&db.pool).await {
            Ok(backlog) => {
                metrics.backlog.set(backlog.events);
                let age_ms = backlog
                    .oldest_created_ms
                    .map_or(0, |oldest| outbox::now_ms().saturating_sub(oldest).max(0));
                metrics.oldest_age_seconds.set(age_ms as f64 / 1000.0);
            }
            Err(error) => debug!(%error, "cannot read the outbox backlog"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_events_subject_is_its_type_under_the_app() {
        assert_eq!(
            subject("shop", "dev.msa.order.confirmed.v1"),
            "msa.shop.order.confirmed.v1"
        );
        for kind in crate::types::EventType::ALL {
            assert_eq!(subject("shop", kind.as_str()), kind.subject("shop"));
        }
    }
}
