//! The flags (each also an `MSA_*` variable, as the operator passes them) that say where a
//! service's events go, checked before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use crate::stream::StreamSettings;

#[derive(clap::Args, Clone, Debug)]
pub struct EventsArgs {
    /// The NATS server the events go to (`nats://host:port`). Unset: events are still written
    /// to the outbox with every change, nothing publishes them, and the outbox keeps them only
    /// for `--outbox-retention-seconds`.
    #[arg(long, env = "MSA_NATS_URL")]
    pub nats_url: Option<String>,

    /// This service's NATS user; its password is read from `--nats-password-file`.
    #[arg(long, env = "MSA_NATS_USER")]
    pub nats_user: Option<String>,

    #[arg(long, env = "MSA_NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,

    /// The app the service belongs to: its events' subjects are `msa.<app>.<service>.…` and
    /// their source `/<app>/<service>`.
    #[arg(long, env = "MSA_APP", default_value = "local")]
    pub app: String,

    /// The stream keeps at most this many bytes (the oldest events go first).
    #[arg(long, env = "MSA_EVENTS_MAX_BYTES", default_value_t = 1 << 30, value_parser = clap::value_parser!(i64).range(1 << 20..=1 << 40))]
    pub events_max_bytes: i64,

    /// The stream keeps events at most this many hours.
    #[arg(long, env = "MSA_EVENTS_MAX_AGE_HOURS", default_value_t = 24 * 7, value_parser = clap::value_parser!(u64).range(1..=24 * 3650))]
    pub events_max_age_hours: u64,

    /// Copies of the stream in a NATS cluster: 1 or 3.
    #[arg(long, env = "MSA_EVENTS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    pub events_replicas: u8,

    /// How long the stream remembers an event id to drop it when published again. Longer than
    /// anything that can delay a republish (a relay killed mid-batch is replaced within
    /// `--relay-lease-ms`).
    #[arg(long, env = "MSA_EVENTS_DUPLICATE_WINDOW_SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(60..=86_400))]
    pub events_duplicate_window_seconds: u64,

    /// Published events are deleted from the outbox this long after they were acknowledged.
    #[arg(long, env = "MSA_OUTBOX_RETENTION_SECONDS", default_value_t = 3_600, value_parser = clap::value_parser!(u64).range(1..=30 * 86_400))]
    pub outbox_retention_seconds: u64,

    /// How long a replica holds the relay lease without renewing it; a killed relay's
    /// successor starts after at most this long.
    #[arg(long, env = "MSA_RELAY_LEASE_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(200..=600_000))]
    pub relay_lease_ms: u64,

    /// How often the relay looks for events other replicas wrote (its own wake it at once).
    #[arg(long, env = "MSA_RELAY_POLL_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub relay_poll_ms: u64,

    /// Events read from the outbox per round.
    #[arg(long, env = "MSA_RELAY_BATCH", default_value_t = 256, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub relay_batch: u16,
}

/// Where and how a service's relay publishes.
#[derive(Clone, Debug)]
pub struct RelaySettings {
    pub service: &'static str,
    pub app: String,
    pub broker: Option<Broker>,
    pub stream: StreamSettings,
    pub retention: Duration,
    pub lease: Duration,
    pub poll: Duration,
    pub batch: u16,
}

#[derive(Clone, Debug)]
pub struct Broker {
    pub url: String,
    pub credentials: Option<(String, String)>,
}

/// An app name is a Kubernetes object name: lowercase letters, digits and `-` (one NATS subject
/// token and part of a stream name).
fn valid_app(app: &str) -> bool {
    (1..=63).contains(&app.len())
        && app
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !app.starts_with('-')
        && !app.ends_with('-')
}

/// `nats://host:port` or `tls://host:port` with nothing after the port.
fn valid_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("nats://")
        .or_else(|| url.strip_prefix("tls://"))
    else {
        return false;
    };
    match rest.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty() && !host.contains('@') && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

impl EventsArgs {
    /// Checks the flags and reads the password file.
    pub fn settings(&self, service: &'static str) -> anyhow::Result<RelaySettings> {
        if !valid_app(&self.app) {
            anyhow::bail!(
                "--app {:?} must be 1 to 63 lowercase letters, digits or '-' (the MicroserviceApp's name)",
                self.app
            );
        }
        // The stream refuses a duplicate window longer than what it keeps; and a relay's round
        // (at most a third of its lease) must fit well inside the window for a republished
        // event to be recognised.
        if self.events_duplicate_window_seconds > self.events_max_age_hours * 3600 {
            anyhow::bail!(
                "--events-duplicate-window-seconds {} is longer than --events-max-age-hours {} keeps events",
                self.events_duplicate_window_seconds,
                self.events_max_age_hours
            );
        }
        if self.relay_lease_ms.saturating_mul(4) > self.events_duplicate_window_seconds * 1000 {
            anyhow::bail!(
                "--relay-lease-ms {} must be at most a quarter of --events-duplicate-window-seconds {}",
                self.relay_lease_ms,
                self.events_duplicate_window_seconds
            );
        }
        if self.events_replicas == 2 {
            anyhow::bail!(
                "--events-replicas must be 1 or 3 (a stream of 2 loses its quorum with either copy)"
            );
        }
        let broker = match &self.nats_url {
            None => None,
            Some(url) if !valid_url(url) => anyhow::bail!(
                "--nats-url {url:?} must be nats://host:port or tls://host:port (credentials go in --nats-user and --nats-password-file)"
            ),
            Some(url) => {
                let credentials = match (&self.nats_user, &self.nats_password_file) {
                    (None, None) => None,
                    (Some(user), Some(file)) => {
                        let password = std::fs::read_to_string(file).map_err(|e| {
                            anyhow::anyhow!(
                                "cannot read --nats-password-file {}: {e}",
                                file.display()
                            )
                        })?;
                        Some((user.clone(), password.trim_end().to_owned()))
                    }
                    _ => anyhow::bail!(
                        "--nats-user and --nats-password-file go together: give both or neither"
                    ),
                };
                Some(Broker {
                    url: url.clone(),
                    credentials,
                })
            }
        };
        Ok(RelaySettings {
            service,
            app: self.app.clone(),
            broker,
            stream: StreamSettings {
                max_bytes: self.events_max_bytes,
                max_age: Duration::from_secs(self.events_max_age_hours * 3600),
                replicas: usize::from(self.events_replicas),
                duplicate_window: Duration::from_secs(self.events_duplicate_window_seconds),
            },
            retention: Duration::from_secs(self.outbox_retention_seconds),
            lease: Duration::from_millis(self.relay_lease_ms),
            poll: Duration::from_millis(self.relay_poll_ms),
            batch: self.relay_batch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        events: EventsArgs,
    }

    fn settings(args: &[&str]) -> anyhow::Result<RelaySettings> {
        let mut all = vec!["test"];
        all.extend(args);
        Flags::try_parse_from(all)?.events.settings("user")
    }

    #[test]
    fn settings_that_cannot_work_together_are_refused() {
        assert!(settings(&[]).is_ok());
        let window = settings(&[
            "--events-max-age-hours",
            "1",
            "--events-duplicate-window-seconds",
            "7200",
        ]);
        assert!(window.unwrap_err().to_string().contains("longer than"));
        let lease = settings(&[
            "--relay-lease-ms",
            "600000",
            "--events-duplicate-window-seconds",
            "600",
        ]);
        assert!(lease.unwrap_err().to_string().contains("a quarter"));
        assert!(settings(&["--events-replicas", "2"]).is_err());
        assert!(settings(&["--nats-url", "nats://127.0.0.1:4222", "--nats-user", "u"]).is_err());
        assert!(settings(&["--app", "Shop"]).is_err());
    }

    #[test]
    fn app_names_and_urls_are_checked() {
        assert!(valid_app("shop"));
        assert!(valid_app("my-shop-2"));
        assert!(!valid_app("Shop"));
        assert!(!valid_app("shop.a"));
        assert!(!valid_app("-shop"));
        assert!(!valid_app(""));
        assert!(valid_url("nats://127.0.0.1:4222"));
        assert!(valid_url("tls://nats.shop.svc:4222"));
        assert!(!valid_url("nats://user:pw@127.0.0.1:4222"));
        assert!(!valid_url("http://127.0.0.1:4222"));
        assert!(!valid_url("nats://127.0.0.1"));
        assert!(!valid_url("nats://127.0.0.1:0"));
    }
}
