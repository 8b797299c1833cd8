//! `msa-local events`: the events of a local run's streams, one line each, as the observer login
//! (which may read every stream and publish nothing). Without `-f` it prints what the streams
//! hold, oldest first, and exits; with `-f` it goes on printing events as they come.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use futures::StreamExt;
use msa_events::EventType;
use msa_events::broker::{OBSERVER, SERVICES, inbox_prefix};
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

pub async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let url_file = broker::url_file(&args.data_dir);
    let url = std::fs::read_to_string(&url_file).with_context(|| {
        format!(
            "no broker address in {}: is `msa-local up --data-dir {}` running with a nats-server?",
            url_file.display(),
            args.data_dir.display()
        )
    })?;
    let password_file = broker::password_file(&args.data_dir, OBSERVER);
    let password = std::fs::read_to_string(&password_file)
        .with_context(|| format!("cannot read {}", password_file.display()))?;
    let kind = args
        .kind
        .as_deref()
        .map(resolve_type)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let client = async_nats::ConnectOptions::with_user_and_password(
        format!("{APP}-{OBSERVER}"),
        password.trim().to_owned(),
    )
    .custom_inbox_prefix(inbox_prefix(OBSERVER))
    .connection_timeout(Duration::from_secs(5))
    .request_timeout(Some(Duration::from_secs(5)))
    .connect(url.trim())
    .await
    .with_context(|| format!("cannot connect to the run's broker at {}", url.trim()))?;
    let context = jetstream::new(client);
    let services: Vec<&str> = match kind {
        Some(kind) => vec![kind.service()],
        None => SERVICES.to_vec(),
    };
    let filter = kind.map(|kind| kind.subject(APP)).unwrap_or_default();
    let mut feeds = Vec::new();
    let mut held = 0u64;
    for service in services {
        let name = msa_events::stream::name(APP, service);
        let stream = match context.get_stream(&name).await {
            Ok(stream) => stream,
            // No event of this service yet: its stream is made when it first publishes.
            Err(_) if !args.follow => continue,
            Err(error) => bail!(
                "cannot read stream {name}: {error} (it is made when the {service} service starts)"
            ),
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: filter.clone(),
                ..OrderedConfig::default()
            })
            .await
            .with_context(|| format!("cannot read stream {name}"))?;
        held += consumer.cached_info().num_pending;
        feeds.push(consumer.messages().await?.boxed());
    }
    let mut merged = futures::stream::select_all(feeds);
    let wanted = |event: &CloudEvent| args.subject.as_ref().is_none_or(|s| *s == event.subject);
    if args.follow {
        while let Some(message) = merged.next().await {
            let message = message?;
            match CloudEvent::parse(&message.payload) {
                Ok((event, _)) if wanted(&event) => println!("{}", line(&event)),
                Ok(_) => {}
                Err(error) => eprintln!("{}: not an msa event: {error}", message.subject),
            }
        }
        return Ok(());
    }
    // What the streams hold now, oldest first: read until each has nothing pending (bounded by
    // what they held when asked, so a busy run cannot keep this going).
    let mut events = Vec::new();
    let mut read = 0u64;
    while read < held {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(2), merged.next()).await
        else {
            break;
        };
        let message = message?;
        read += 1;
        if let Ok((event, _)) = CloudEvent::parse(&message.payload)
            && wanted(&event)
        {
            events.push(event);
        }
    }
    events.sort_by(|a, b| order(a).cmp(&order(b)));
    for event in &events {
        println!("{}", line(event));
    }
    Ok(())
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
