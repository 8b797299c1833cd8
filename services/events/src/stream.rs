//! The JetStream stream a service publishes into: one per service and app, so a service's
//! credentials can be limited to its own stream and subjects.
//!
//! Durability of what the stream acknowledged is the server's `sync_interval` (set `always` in
//! every server msa runs: the default syncs to disk every two minutes, and acknowledged messages
//! were lost that way in a published crash test, nats-server issue 7564); the stream itself is
//! file-backed.

use std::time::Duration;

#[cfg(feature = "relay")]
use async_nats::jetstream::Context;
#[cfg(feature = "relay")]
use async_nats::jetstream::context::GetStreamErrorKind;
#[cfg(feature = "relay")]
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};

#[derive(Clone, Debug, PartialEq)]
pub struct StreamSettings {
    pub max_bytes: i64,
    pub max_age: Duration,
    pub replicas: usize,
    pub duplicate_window: Duration,
}

impl Default for StreamSettings {
    /// The flags' defaults (`--events-max-bytes` and the rest).
    fn default() -> Self {
        StreamSettings {
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(7 * 24 * 3600),
            replicas: 1,
            duplicate_window: Duration::from_secs(900),
        }
    }
}

#[cfg(feature = "relay")]
/// Whether `current` (the stream as the server has it) already has everything `wanted` sets.
pub fn matches(current: &Config, wanted: &Config) -> bool {
    current.subjects == wanted.subjects
        && current.storage == wanted.storage
        && current.max_bytes == wanted.max_bytes
        && current.max_age == wanted.max_age
        && current.max_message_size == wanted.max_message_size
        && current.num_replicas == wanted.num_replicas
        && current.duplicate_window == wanted.duplicate_window
        && current.deny_delete == wanted.deny_delete
        && current.deny_purge == wanted.deny_purge
        && current.allow_rollup == wanted.allow_rollup
        && current.republish == wanted.republish
}

#[cfg(feature = "relay")]
/// What [`ensure`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Ensured {
    Made,
    Updated,
    /// It was as wanted already.
    AsWanted,
    /// It differs and this login may not change it: used as it is.
    Kept {
        refused: String,
    },
}

#[cfg(feature = "relay")]
/// Makes the stream `wanted` describes, or brings an existing one to it, idempotently. A login
/// that may only read the stream's state (a service's, see [`crate::broker::ADMIN`]) gets
/// [`Ensured::Kept`] for a stream that differs, and an error for one that does not exist.
pub async fn ensure(jetstream: &Context, wanted: Config) -> Result<Ensured, String> {
    match jetstream.get_stream(&wanted.name).await {
        Ok(mut existing) => {
            let current = existing
                .info()
                .await
                .map_err(|e| e.to_string())?
                .config
                .clone();
            if matches(&current, &wanted) {
                return Ok(Ensured::AsWanted);
            }
            match jetstream.update_stream(&wanted).await {
                Ok(_) => Ok(Ensured::Updated),
                Err(error) => Ok(Ensured::Kept {
                    refused: error.to_string(),
                }),
            }
        }
        Err(error)
            if matches!(
                error.kind(),
                GetStreamErrorKind::JetStream(ref e)
                    if e.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            jetstream.create_stream(wanted).await.map_err(|e| {
                format!("it does not exist and could not be made ({e}); msa-local and the operator make it")
            })?;
            Ok(Ensured::Made)
        }
        Err(error) => Err(error.to_string()),
    }
}

/// The largest event the stream takes; the services' own limits keep events far below it.
pub const MAX_EVENT_BYTES: i32 = 1 << 20;

/// `msa-<app>-<service>`.
pub fn name(app: &str, service: &str) -> String {
    format!("msa-{app}-{service}")
}

/// Every subject of the service's events: `msa.<app>.<service>.>`.
pub fn subjects(app: &str, service: &str) -> String {
    format!("msa.{app}.{service}.>")
}

#[cfg(feature = "relay")]
/// The stream's configuration, created or updated to this at every start.
pub fn config(app: &str, service: &str, settings: &StreamSettings) -> Config {
    Config {
        name: name(app, service),
        description: Some(format!("Events of the {service} service of msa app {app}")),
        subjects: vec![subjects(app, service)],
        storage: StorageType::File,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        max_bytes: settings.max_bytes,
        max_age: settings.max_age,
        max_message_size: MAX_EVENT_BYTES,
        num_replicas: settings.replicas,
        duplicate_window: settings.duplicate_window,
        // An event, once in the stream, is history: it ages out but is never taken back.
        deny_delete: true,
        deny_purge: true,
        allow_rollup: false,
        ..Config::default()
    }
}

#[cfg(all(test, feature = "relay"))]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_file_backed_deduplicating_and_bounded() {
        let settings = StreamSettings {
            max_bytes: 1 << 30,
            max_age: Duration::from_secs(3600),
            replicas: 3,
            duplicate_window: Duration::from_secs(900),
        };
        let config = config("shop", "order", &settings);
        assert_eq!(config.name, "msa-shop-order");
        assert_eq!(config.subjects, ["msa.shop.order.>"]);
        assert_eq!(config.storage, StorageType::File);
        assert_eq!(config.num_replicas, 3);
        assert_eq!(config.duplicate_window, Duration::from_secs(900));
        assert_eq!(config.max_bytes, 1 << 30);
        assert!(config.deny_delete && config.deny_purge && !config.allow_rollup);
        assert!(matches(&config, &config.clone()));
        let mut republishing = config.clone();
        republishing.republish = Some(async_nats::jetstream::stream::Republish {
            source: "msa.shop.order.>".into(),
            destination: "msa.shop.user.deleted.v1".into(),
            headers_only: false,
        });
        assert!(
            !matches(&republishing, &config),
            "a stream changed behind msa's back differs"
        );
    }
}
