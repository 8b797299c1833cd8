//! Who may say what on the broker: the `authorization` block of a `nats-server` configuration
//! giving each component its own user, allowed to publish only its own service's events and to
//! manage only its own stream and its own consumers. Events will make services act (a
//! `user.deleted` closes orders), so they are trusted because the broker checked who published
//! them, not because of the network. Rendered by `msa-local` and the operator alike (pure).

use std::fmt::Write;

use crate::stream;

/// The services whose events flow through the broker.
pub const SERVICES: [&str; 3] = ["user", "product", "order"];

/// One component's login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub service: String,
    pub user: String,
    pub password: String,
}

/// The inbox prefix a service's client must use (`--nats-inbox-prefix` is not a flag: the relay
/// sets it from the service's name), so replies to one service cannot be read by another.
pub fn inbox_prefix(service: &str) -> String {
    format!("_INBOX_{service}")
}

/// The login that may read every stream of the app and publish nothing (`msa-local events`).
pub const OBSERVER: &str = "observer";

/// The app's streams (NATS wildcards match whole tokens only, so each is named).
fn streams(app: &str) -> impl Iterator<Item = String> + '_ {
    SERVICES
        .iter()
        .map(move |service| stream::name(app, service))
}

/// What the observer may do: read the app's streams through ephemeral consumers of its own.
fn observer_permissions(app: &str) -> (Vec<String>, Vec<String>) {
    let mut publish = vec!["$JS.API.INFO".to_owned()];
    for stream in streams(app) {
        publish.extend([
            format!("$JS.API.STREAM.INFO.{stream}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
            format!("$JS.API.CONSUMER.INFO.{stream}.*"),
            format!("$JS.API.CONSUMER.DELETE.{stream}.*"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"),
        ]);
    }
    (publish, vec![format!("{}.>", inbox_prefix(OBSERVER))])
}

/// What `service` of `app` (or the [`OBSERVER`]) may publish and subscribe to.
pub fn permissions(app: &str, service: &str) -> (Vec<String>, Vec<String>) {
    if service == OBSERVER {
        return observer_permissions(app);
    }
    let own_stream = stream::name(app, service);
    let mut publish = vec![
        // Its own events, and nothing else of the app's.
        format!("msa.{app}.{service}.>"),
        // Its own stream: create or update it at start, read its state.
        format!("$JS.API.STREAM.CREATE.{own_stream}"),
        format!("$JS.API.STREAM.UPDATE.{own_stream}"),
        format!("$JS.API.STREAM.INFO.{own_stream}"),
        "$JS.API.INFO".to_owned(),
    ];
    // Its own durable consumers (named after it) on any of the app's streams.
    for stream in streams(app) {
        publish.extend([
            format!("$JS.API.CONSUMER.CREATE.{stream}.{service}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.{service}.>"),
            format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{service}"),
            format!("$JS.API.CONSUMER.INFO.{stream}.{service}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{service}"),
            format!("$JS.ACK.{stream}.{service}.>"),
        ]);
    }
    let subscribe = vec![format!("{}.>", inbox_prefix(service))];
    (publish, subscribe)
}

fn quoted(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|item| format!("\"{item}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// The `authorization { users = [...] }` block for these credentials.
pub fn authorization(app: &str, credentials: &[Credential]) -> String {
    let mut block = String::from("authorization {\n  users = [\n");
    for credential in credentials {
        let (publish, subscribe) = permissions(app, &credential.service);
        // Users and passwords are generated (alphanumeric), so quoting needs no escapes.
        let _ = writeln!(
            block,
            "    {{ user: \"{}\", password: \"{}\", permissions: {{ publish: {{ allow: {} }}, subscribe: {{ allow: {} }} }} }}",
            credential.user,
            credential.password,
            quoted(&publish),
            quoted(&subscribe),
        );
    }
    block.push_str("  ]\n}\n");
    block
}

/// A fresh password: 32 alphanumeric characters from the OS's random source.
pub fn password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 32];
    // uuid's v4 comes from the OS's random source; two give 32 random bytes.
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

/// A credential for each service and the observer, with fresh passwords.
pub fn credentials(app: &str) -> Vec<Credential> {
    SERVICES
        .iter()
        .chain(&[OBSERVER])
        .map(|service| Credential {
            service: (*service).to_owned(),
            user: format!("{app}-{service}"),
            password: password(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_may_publish_its_own_events_only() {
        let (publish, subscribe) = permissions("shop", "product");
        assert!(publish.contains(&"msa.shop.product.>".to_owned()));
        assert!(!publish.iter().any(|p| p.starts_with("msa.shop.user")));
        assert!(publish.contains(&"$JS.API.STREAM.UPDATE.msa-shop-product".to_owned()));
        // Another service's stream: only its own consumers on it, never the stream itself.
        assert!(
            publish
                .iter()
                .filter(|p| p.contains("msa-shop-user"))
                .all(
                    |p| p.starts_with("$JS.API.CONSUMER.") && p.contains("msa-shop-user.product")
                        || p.starts_with("$JS.ACK.msa-shop-user.product.")
                ),
            "{publish:?}"
        );
        assert_eq!(subscribe, ["_INBOX_product.>"]);
        let block = authorization("shop", &credentials("shop"));
        assert_eq!(block.matches("user: ").count(), 4);
        let (publish, _) = permissions("shop", OBSERVER);
        assert!(
            !publish.iter().any(|p| p.starts_with("msa.")),
            "the observer publishes nothing"
        );
        // NATS wildcards match whole tokens: no partial ones.
        for (publish, _) in [permissions("shop", "user"), permissions("shop", OBSERVER)] {
            for subject in publish {
                assert!(
                    subject
                        .split('.')
                        .all(|token| token == "*" || token == ">" || !token.contains(['*', '>'])),
                    "{subject}"
                );
            }
        }
        assert!(block.contains("user: \"shop-order\""));
    }

    #[test]
    fn passwords_are_long_and_differ() {
        let (a, b) = (password(), password());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
