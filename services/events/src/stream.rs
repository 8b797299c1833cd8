//! The JetStream stream a service publishes into: one per service and app, so a service's
//! credentials can be limited to its own stream and subjects.
//!
//! Durability of what the stream acknowledged is the server's `sync_interval` (set `always` in
//! every server msa runs: the default syncs to disk every two minutes, and acknowledged messages
//! were lost that way in a published crash test, nats-server issue 7564); the stream itself is
//! file-backed.

use std::time::Duration;

use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};

#[derive(Clone, Debug, PartialEq)]
pub struct StreamSettings {
    pub max_bytes: i64,
    pub max_age: Duration,
    pub replicas: usize,
    pub duplicate_window: Duration,
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
        ..Config::default()
    }
}

#[cfg(test)]
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
        assert!(config.deny_delete);
    }
}
