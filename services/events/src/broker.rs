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

/// The login that makes the streams (and, with the event consumers, their consumers): held by
/// `msa-local` and the operator, never by a service. A service that could create or update a
/// stream or a consumer could make the server write its messages into another service's
/// subjects (a stream's `republish`, a push consumer's delivery subject: the server delivers
/// those itself, past the login's permissions), so services get neither.
pub const ADMIN: &str = "admin";

/// The app's streams (NATS wildcards match whole tokens only, so each is named).
fn streams(app: &str) -> impl Iterator<Item = String> + '_ {
    SERVICES
        .iter()
        .map(move |service| stream::name(app, service))
}

/// What `login` (a service, the [`OBSERVER`] or the [`ADMIN`]) of `app` may publish and
/// subscribe to.
pub fn permissions(app: &str, login: &str) -> (Vec<String>, Vec<String>) {
    let mut publish = vec!["$JS.API.INFO".to_owned()];
    match login {
        ADMIN => publish.push("$JS.API.>".to_owned()),
        OBSERVER => {
            // Reading messages by sequence; no consumer of its own (see [`ADMIN`]).
            for stream in streams(app) {
                publish.extend([
                    format!("$JS.API.STREAM.INFO.{stream}"),
                    format!("$JS.API.STREAM.MSG.GET.{stream}"),
                ]);
            }
        }
        service => publish.extend([
            // Its own events, and nothing else of the app's.
            format!("msa.{app}.{service}.>"),
            // Its own stream's state (to check it is there and as configured).
            format!("$JS.API.STREAM.INFO.{}", stream::name(app, service)),
        ]),
    }
    (publish, vec![format!("{}.>", inbox_prefix(login))])
}

fn quoted(items: &[String]) -> String {
    let items: Vec<String> = items.iter().map(|item| format!("\"{item}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// The `authorization { users = [...] }` block for these credentials.
pub fn authorization(app: &str, credentials: &[Credential]) -> String {
    // Users and passwords are generated (alphanumeric), so quoting needs no escapes.
    block(
        app,
        credentials.iter().map(|credential| {
            (
                credential.service.as_str(),
                credential.user.clone(),
                format!("\"{}\"", credential.password),
            )
        }),
    )
}

/// Every login of an app: its services', the [`OBSERVER`]'s and the [`ADMIN`]'s.
pub const LOGINS: [&str; 5] = [SERVICES[0], SERVICES[1], SERVICES[2], OBSERVER, ADMIN];

/// The user name of `login` in `app`'s broker.
pub fn user(app: &str, login: &str) -> String {
    format!("{app}-{login}")
}

/// The environment variable the broker reads `login`'s password from, in the configuration
/// [`authorization_from_environment`] renders.
pub fn password_variable(login: &str) -> String {
    format!("MSA_NATS_PASSWORD_{}", login.to_uppercase())
}

/// The `authorization` block for every login of `app`, each password a reference to an
/// environment variable ([`password_variable`]) that `nats-server` resolves when it reads its
/// configuration: the operator renders this into a ConfigMap, and the passwords stay in a
/// Secret given to the broker's container as those variables.
pub fn authorization_from_environment(app: &str) -> String {
    block(
        app,
        LOGINS.iter().map(|login| {
            (
                *login,
                user(app, login),
                format!("${}", password_variable(login)),
            )
        }),
    )
}

fn block<'a>(app: &str, logins: impl Iterator<Item = (&'a str, String, String)>) -> String {
    let mut block = String::from("authorization {\n  users = [\n");
    for (login, user, password) in logins {
        let (publish, subscribe) = permissions(app, login);
        let _ = writeln!(
            block,
            "    {{ user: \"{user}\", password: {password}, permissions: {{ publish: {{ allow: {} }}, subscribe: {{ allow: {} }} }} }}",
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

/// A credential for each service, the observer and the admin, with fresh passwords.
pub fn credentials(app: &str) -> Vec<Credential> {
    LOGINS
        .iter()
        .map(|login| Credential {
            service: (*login).to_owned(),
            user: user(app, login),
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
        assert_eq!(
            publish,
            [
                "$JS.API.INFO",
                "msa.shop.product.>",
                "$JS.API.STREAM.INFO.msa-shop-product"
            ]
        );
        assert_eq!(subscribe, ["_INBOX_product.>"]);
        let (observer, _) = permissions("shop", OBSERVER);
        assert!(
            !observer.iter().any(|p| p.starts_with("msa.")),
            "the observer publishes nothing"
        );
        assert!(
            !observer
                .iter()
                .any(|p| p.contains("CONSUMER") || p.contains("CREATE"))
        );
        let (admin, _) = permissions("shop", ADMIN);
        assert!(
            !admin.iter().any(|p| p.starts_with("msa.")),
            "the admin publishes no event"
        );
        let block = authorization("shop", &credentials("shop"));
        assert_eq!(block.matches("user: ").count(), 5);
        assert!(block.contains("user: \"shop-order\""));
        let from_environment = authorization_from_environment("shop");
        assert!(from_environment.contains(
            "{ user: \"shop-order\", password: $MSA_NATS_PASSWORD_ORDER, permissions: { publish: { allow: [\"$JS.API.INFO\", \"msa.shop.order.>\""
        ));
        assert_eq!(
            from_environment
                .matches("password: $MSA_NATS_PASSWORD_")
                .count(),
            5
        );
        // NATS wildcards match whole tokens: no partial ones.
        for login in ["user", OBSERVER, ADMIN] {
            for subject in permissions("shop", login).0 {
                assert!(
                    subject
                        .split('.')
                        .all(|token| token == "*" || token == ">" || !token.contains(['*', '>'])),
                    "{subject}"
                );
            }
        }
    }

    #[test]
    fn passwords_are_long_and_differ() {
        let (a, b) = (password(), password());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
