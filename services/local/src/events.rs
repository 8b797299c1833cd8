//! `msa-local events`: the events of a local run's streams, one line each, read as the observer
//! login (which may read each stream's messages by sequence and nothing else: no consumer of
//! its own, see `msa_events::broker::ADMIN`). Without `-f` it prints the last `--last` events,
//! oldest first, and exits; with `-f` it then goes on printing events as they come.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use msa_events::EventType;
use msa_events::broker::{OBSERVER, SERVICES};
use msa_events::envelope::CloudEvent;

use crate::broker::{self, APP};

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// The run's data folder.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Keep printing events as they are published (Ctrl-C stops).
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only this type: in full (`dev.msa.order.confirmed.v1`) or without its prefix and version
    /// (`order.confirmed`).
    #[arg(long = "type")]
    kind: Option<String>,
    /// Only the events of this user, product or order (the events' `subject`).
    #[arg(long)]
    subject: Option<String>,
    /// How many of each stream's latest events to look through first.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    last: u64,
}

/// `order.confirmed`, `order.confirmed.v1` or `dev.msa.order.confirmed.v1` → the type.
pub fn resolve_type(name: &str) -> Result<EventType, String> {
    EventType::ALL
        .into_iter()
        .find(|kind| {
            let full = kind.as_str();
            let tail = full.trim_start_matches("dev.msa.");
            name == full || name == tail || Some(name) == tail.strip_suffix(".v1")
        })
        .ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL
                .iter()
                .map(|k| {
                    k.as_str()
                        .trim_start_matches("dev.msa.")
                        .trim_end_matches(".v1")
                })
                .collect();
            format!("unknown event type {name:?}; known: {}", known.join(", "))
        })
}

/// Printing order: by time (as a time: the text varies in its fraction's length), then each
/// aggregate's events by their sequence.
fn order(event: &CloudEvent) -> (Option<jiff::Timestamp>, &str, i64) {
    (
        event.time.parse().ok(),
        event.subject.as_str(),
        event.sequence,
    )
}

/// One line per event: time, type, aggregate, its number in the aggregate, and the data.
pub fn line(event: &CloudEvent) -> String {
    format!(
        "{}  {:<33} {}  #{:<3} {}",
        event.time, event.kind, event.subject, event.sequence, event.data
    )
}

/// One stream being read: the next sequence to read.
struct Reader {
    stream: jetstream::stream::Stream,
    next: u64,
}

impl Reader {
    /// The events from `next` to the stream's last now, in stream order.
    async fn read_new(&mut self) -> anyhow::Result<Vec<CloudEvent>> {
        let state = self.stream.info().await?.state.clone();
        let mut events = Vec::new();
        let from = self.next.max(state.first_sequence);
        for sequence in from..=state.last_sequence {
            match self.stream.get_raw_message(sequence).await {
                Ok(message) => {
                    if let Ok((event, _)) = CloudEvent::parse(&message.payload) {
                        events.push(event);
                    }
                }
                // Aged out meanwhile: nothing to show.
                Err(_) => continue,
            }
        }
        self.next = self.next.max(state.last_sequence + 1);
        Ok(events)
    }
}

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let url_file = broker::url_file(&args.data_dir);
    let url = std::fs::read_to_string(&url_file).with_context(|| {
        format!(
            "no broker address in {}: is `msa-local up --data-dir {}` running with a nats-server?",
            url_file.display(),
            args.data_dir.display()
        )
    })?;
    let kind = args
        .kind
        .as_deref()
        .map(resolve_type)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let context = broker::connect(&args.data_dir, url.trim(), OBSERVER).await?;
    let services: Vec<&str> = match kind {
        Some(kind) => vec![kind.service()],
        None => SERVICES.to_vec(),
    };
    let mut readers = Vec::new();
    for service in services {
        let name = msa_events::stream::name(APP, service);
        let mut stream = context
            .get_stream(&name)
            .await
            .with_context(|| format!("cannot read stream {name}"))?;
        let last = stream.info().await?.state.last_sequence;
        readers.push(Reader {
            stream,
            next: last.saturating_sub(args.last) + 1,
        });
    }
    let wanted = |event: &CloudEvent| {
        kind.is_none_or(|kind| kind.as_str() == event.kind)
            && args.subject.as_ref().is_none_or(|s| *s == event.subject)
    };
    loop {
        let mut events = Vec::new();
        for reader in &mut readers {
            events.extend(reader.read_new().await?.into_iter().filter(|e| wanted(e)));
        }
        events.sort_by(|a, b| order(a).cmp(&order(b)));
        for event in &events {
            println!("{}", line(event));
        }
        if !args.follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_found_by_their_full_name_or_their_tail() {
        assert_eq!(
            resolve_type("order.confirmed"),
            Ok(EventType::OrderConfirmed)
        );
        assert_eq!(
            resolve_type("order.confirmed.v1"),
            Ok(EventType::OrderConfirmed)
        );
        assert_eq!(
            resolve_type("dev.msa.product.stock_changed.v1"),
            Ok(EventType::ProductStockChanged)
        );
        let unknown = resolve_type("order.lost").unwrap_err();
        assert!(unknown.contains("user.registered"), "{unknown}");
    }
}
